"""Domain handler chains: bandits and, as they land, experiments, detection and optimisation.

Each handler package declares itself under the ``rtopt.handlers`` entry point group; the engine finds
handlers there, so the kernel never imports this package.
"""
