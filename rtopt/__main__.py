"""``python -m rtopt``: the command-line interface."""

from rtopt.cli import main

raise SystemExit(main())
