"""The docstring examples of ``rtopt.streams``, ``rtopt.handlers`` and ``rtopt.apps``, run under their installed
names (pytest's ``--doctest-modules`` would import the folders as top-level ``streams``, ``handlers``, ``apps``)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ("rtopt.streams", "rtopt.handlers", "rtopt.apps")
FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


def module_names() -> list[str]:
    names = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        names.append(package_name)
        names.extend(info.name for info in pkgutil.walk_packages(package.__path__, package_name + "."))
    return names


def docstring_examples() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder()
    examples = []
    for name in module_names():
        examples.extend(test for test in finder.find(importlib.import_module(name), name) if test.examples)
    return sorted(examples, key=lambda test: test.name)


@pytest.mark.parametrize("example", docstring_examples(), ids=lambda test: test.name)
def test_docstring_example(example: doctest.DocTest) -> None:
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    runner.run(example, out=report.append, clear_globs=True)
    assert runner.failures == 0, "".join(report)
