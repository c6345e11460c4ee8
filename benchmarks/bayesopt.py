"""Bayesian optimisation: rtopt's GP studies through the engine beside Optuna, scikit-optimize and
bayesian-optimization, on the same functions and budgets.

Every figure is measured in one run, in one process, with BLAS on one thread for every library (set
before numpy loads: on the small matrices of Bayesian optimisation more threads only wait). Problems,
each minimised:

- **branin** (2-D, minimum 0.397887) and **hartmann6** (6-D, minimum -3.32237): the standard test functions;
- **llm**: minus the expected composite reward of the simulated "code" task of ``rtopt tune`` over
  temperature, top_p and max_tokens (an integer), whose optimum is found on a fine grid.

Methods, each with 10 initial points then model-guided ones, ``--evaluations`` evaluations per run and
``--seeds`` seeds:

- **rtopt**: ``Engine.open(":memory:")`` with ``rtopt.handlers.bayesopt.BayesOptHandler``, ``define_study``
  with its defaults (Matérn 5/2 ARD, log-EI, a Latin hypercube of 10), then ``suggest`` and ``tell``;
- **rtopt-random**: the same study with ``method="random"``: the budget spent on uniform draws;
- **optuna-tpe**: ``optuna.samplers.TPESampler(seed=...)`` (10 startup trials) through ask and tell;
- **skopt-gp**: ``skopt.gp_minimize`` (``n_initial_points=10``, its default gp_hedge acquisition);
- **bayes-opt**: ``bayes_opt.BayesianOptimization(f=None)``, 10 uniform points registered, then
  ``suggest`` and ``register`` (integers rounded inside the objective).

Figures: median simple regret (best value so far minus the minimum) and its interquartile range after 20
and after ``--evaluations`` evaluations, and CPU seconds per suggestion (the library's own work: the
objective's evaluation is not counted), with ratios against rtopt. Then how rtopt's fit + suggest time
grows with the observations (``--sizes``): a study whose initial design holds that many points is told
all of them, then the CPU time of a warm-started refit of its hyperparameters (as the study makes on its
schedule) and of its next suggestion are measured.

Goals: rtopt's median regret at 50 evaluations at most 1e-3 on branin and 0.01 on hartmann6 and below
every library's on llm; under 0.1 s CPU per suggestion at 50 observations and under 1 s at 200 and 1,000.

Run ``python benchmarks/bayesopt.py`` (``--quick`` for a tiny run, ``--json`` for one JSON object on
stdout). A library that is not installed (the ``bench`` extra: ``pip install -e ".[bench]"``) is skipped.
"""

from __future__ import annotations

import os

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402

import msgspec  # noqa: E402
import numpy as np  # noqa: E402
from rtopt.handlers.bayesopt import BayesOptHandler  # noqa: E402
from rtopt.handlers.bayesopt.gp import fit_hyperparameters, standardise  # noqa: E402
from rtopt.handlers.bayesopt.handler import training_set  # noqa: E402
from rtopt.handlers.bayesopt.kernels import make_kernel  # noqa: E402
from rtopt.handlers.bayesopt.objectives import OBJECTIVES  # noqa: E402
from rtopt.handlers.bayesopt.options import parse_study  # noqa: E402
from rtopt.handlers.bayesopt.simulation import LLM_SPACE, TASKS  # noqa: E402

from rtopt import Engine  # noqa: E402

INITIAL = 10
REGRET_FLOOR = 1e-9  # the denominator of a regret ratio: below it a regret is as good as zero


class Problem(msgspec.Struct, frozen=True):
    """A box to minimise over: bounds, which coordinates are integers, the function and its minimum."""

    name: str
    bounds: list[tuple[float, float]]
    integers: list[int]
    function: Callable[[np.ndarray], float]
    minimum: float

    def space(self) -> dict[str, object]:
        """The search space of an rtopt study."""
        return {
            f"x{i}": {"type": "int", "low": low, "high": high} if i in self.integers else (low, high)
            for i, (low, high) in enumerate(self.bounds)
        }

    def at(self, x: Sequence[float]) -> float:
        """The function at ``x``, integers rounded."""
        point = np.array([round(v) if i in self.integers else v for i, v in enumerate(x)], dtype=float)
        return self.function(point)


def llm_problem() -> Problem:
    task = TASKS["code"]
    bounds = [LLM_SPACE["temperature"], LLM_SPACE["top_p"], (64.0, 1024.0)]
    return Problem("llm", bounds, [2], lambda x: -float(task.expected_reward(x[0], x[1], x[2])), -task.optimum()[1])


PROBLEMS = {
    **{
        name: Problem(name, objective.bounds, [], objective.function, objective.minimum)
        for name, objective in OBJECTIVES.items()
    },
    "llm": llm_problem(),
}


class Run(msgspec.Struct):
    """One method on one problem and seed: the best value after each evaluation and the CPU seconds
    spent suggesting."""

    best: list[float]
    cpu: float


def _trace(values: list[float]) -> list[float]:
    return np.minimum.accumulate(values).tolist()


def run_rtopt(problem: Problem, seed: int, evaluations: int, method: str = "gp") -> Run:
    values, cpu = [], 0.0
    with Engine.open(":memory:", seed=seed, handlers=[BayesOptHandler()]) as engine:
        engine.define_study("s", space=problem.space(), direction="minimize", method=method, time=0.0)
        for step in range(evaluations):
            started = time.process_time()
            (suggestion,) = engine.suggest("s", time=float(step))
            cpu += time.process_time() - started
            value = problem.at([suggestion.params[f"x{i}"] for i in range(len(problem.bounds))])
            started = time.process_time()
            engine.tell(suggestion.id, value, time=float(step))
            cpu += time.process_time() - started
            values.append(value)
    return Run(_trace(values), cpu / evaluations)


def run_optuna(problem: Problem, seed: int, evaluations: int) -> Run:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=INITIAL))
    values, cpu = [], 0.0
    for _ in range(evaluations):
        started = time.process_time()
        trial = study.ask()
        x = [
            trial.suggest_int(f"x{i}", int(low), int(high))
            if i in problem.integers
            else trial.suggest_float(f"x{i}", low, high)
            for i, (low, high) in enumerate(problem.bounds)
        ]
        cpu += time.process_time() - started
        value = problem.at(x)
        started = time.process_time()
        study.tell(trial, value)
        cpu += time.process_time() - started
        values.append(value)
    return Run(_trace(values), cpu / evaluations)


def run_skopt(problem: Problem, seed: int, evaluations: int) -> Run:
    from skopt import gp_minimize
    from skopt.space import Integer, Real

    dimensions = [
        Integer(int(low), int(high)) if i in problem.integers else Real(low, high)
        for i, (low, high) in enumerate(problem.bounds)
    ]
    values: list[float] = []
    spent = [0.0]

    def objective(x: list[float]) -> float:
        started = time.process_time()
        value = problem.at(x)
        values.append(value)
        spent[0] += time.process_time() - started
        return value

    started = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gp_minimize(objective, dimensions, n_calls=evaluations, n_initial_points=INITIAL, random_state=seed)
    return Run(_trace(values), (time.process_time() - started - spent[0]) / evaluations)


def run_bayes_opt(problem: Problem, seed: int, evaluations: int) -> Run:
    from bayes_opt import BayesianOptimization

    names = [f"x{i}" for i in range(len(problem.bounds))]
    optimizer = BayesianOptimization(
        f=None,
        pbounds=dict(zip(names, problem.bounds, strict=True)),
        random_state=seed,
        verbose=0,
        allow_duplicate_points=True,
    )
    rng = np.random.default_rng(seed)
    values, cpu = [], 0.0
    for step in range(evaluations):
        started = time.process_time()
        if step < INITIAL:
            params = {
                name: float(rng.uniform(low, high)) for name, (low, high) in zip(names, problem.bounds, strict=True)
            }
        else:
            params = optimizer.suggest()
        cpu += time.process_time() - started
        value = problem.at([params[name] for name in names])
        started = time.process_time()
        optimizer.register(params=params, target=-value)
        cpu += time.process_time() - started
        values.append(value)
    return Run(_trace(values), cpu / evaluations)


METHODS: dict[str, tuple[str | None, Callable[[Problem, int, int], Run]]] = {
    "rtopt": (None, run_rtopt),
    "rtopt-random": (None, lambda p, s, e: run_rtopt(p, s, e, method="random")),
    "optuna-tpe": ("optuna", run_optuna),
    "skopt-gp": ("skopt", run_skopt),
    "bayes-opt": ("bayes_opt", run_bayes_opt),
}


def fit_and_suggest_seconds(size: int, seed: int = 0) -> dict[str, float]:
    """CPU seconds for rtopt, on hartmann6 with ``size`` observations, to refit the hyperparameters (warm
    started, as a study does on its schedule) and to make the next suggestion."""
    problem = PROBLEMS["hartmann6"]
    with Engine.open(":memory:", seed=seed, handlers=[BayesOptHandler()]) as engine:
        # refit_growth: no refits while the observations are told; the one refit measured is made below
        engine.define_study(
            "s", space=problem.space(), direction="minimize", n_initial=size, refit_growth=100.0, time=0.0
        )
        for suggestion in engine.suggest("s", n=size, time=1.0):
            engine.tell(suggestion.id, problem.at([suggestion.params[f"x{i}"] for i in range(6)]), time=2.0)
        study = engine.state("bayesopt", "s")
        options = parse_study(study.definition)[1]
        x, y = training_set(study, options)
        started = time.process_time()
        fit_hyperparameters(
            make_kernel(study.definition.kernel, 6),
            x,
            standardise(y)[0],
            np.random.default_rng(seed),
            start=np.array(study.hyperparameters),
            restarts=options.restarts,
        )
        fitted = time.process_time()
        engine.suggest("s", time=3.0)
        suggested = time.process_time()
    return {"fit": fitted - started, "suggest": suggested - fitted, "total": suggested - started, "points": len(y)}


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def summarise(runs: list[Run], problem: Problem, at: int) -> dict[str, float]:
    regrets = np.array([run.best[at - 1] - problem.minimum for run in runs])
    low, median, high = np.percentile(regrets, [25, 50, 75])
    return {"median": float(median), "iqr": float(high - low)}


def run(seeds: int, evaluations: int, sizes: Sequence[int], problems: Sequence[str] = tuple(PROBLEMS)) -> dict:
    available = {name: runner for name, (module, runner) in METHODS.items() if module is None or _importable(module)}
    missing = sorted(set(METHODS) - set(available))
    checkpoints = sorted({min(20, evaluations), evaluations})
    results: dict = {"missing": missing, "evaluations": evaluations, "seeds": seeds, "problems": {}}
    for name in problems:
        problem, table = PROBLEMS[name], {}
        for method, runner in available.items():
            runs = [runner(problem, seed, evaluations) for seed in range(seeds)]
            table[method] = {
                "regret": {str(at): summarise(runs, problem, at) for at in checkpoints},
                "cpu_per_suggestion": float(np.mean([r.cpu for r in runs])),
            }
        results["problems"][name] = table
    results["fit_and_suggest_seconds"] = {str(size): fit_and_suggest_seconds(size) for size in sizes}
    return results


def report(results: dict) -> str:
    lines = []
    if results["missing"]:
        lines.append(f"not installed, skipped: {', '.join(results['missing'])}")
    last = str(results["evaluations"])
    for name, table in results["problems"].items():
        lines.append(f"\n{name}: median simple regret [IQR] over {results['seeds']} seeds")
        ours = table["rtopt"]
        at = list(ours["regret"])
        header = "".join(f"{'after ' + a:>28}" for a in at)
        lines.append(f"{'method':<14}{header}{'cpu s/suggest':>16}{'regret ratio':>14}{'cpu ratio':>11}")
        for method, row in table.items():
            cells = "".join(f"{row['regret'][a]['median']:>14.3g} [{row['regret'][a]['iqr']:>9.2g}]" for a in at)
            regret_ratio = row["regret"][last]["median"] / max(ours["regret"][last]["median"], REGRET_FLOOR)
            cpu_ratio = row["cpu_per_suggestion"] / ours["cpu_per_suggestion"]
            lines.append(
                f"{method:<14}{cells}{row['cpu_per_suggestion']:>16.4f}{regret_ratio:>14.3g}{cpu_ratio:>11.2f}"
            )
    lines.append("\nrtopt CPU seconds by observations (hartmann6; the model keeps at most max_points of them):")
    lines.append(f"{'observations':>14}{'model points':>14}{'refit':>10}{'suggest':>10}{'total':>10}")
    for size, t in results["fit_and_suggest_seconds"].items():
        lines.append(f"{size:>14}{t['points']:>14}{t['fit']:>10.3f}{t['suggest']:>10.3f}{t['total']:>10.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds per method and problem (default 10)")
    parser.add_argument("--evaluations", type=int, default=50, help="evaluations per run (default 50)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[50, 200, 1000], help="observations for the scaling")
    parser.add_argument(
        "--problem", dest="problems", action="append", choices=list(PROBLEMS), help="a problem to run (default all)"
    )
    parser.add_argument("--quick", action="store_true", help="2 seeds, 14 evaluations, sizes 20 and 40")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.evaluations, args.sizes = 2, 14, [20, 40]
    results = run(args.seeds, args.evaluations, args.sizes, args.problems or list(PROBLEMS))
    print(json.dumps(results) if args.json else report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
