"""Online learners, progressive validation and the model registry: known answers, exact rollback, and
a checkpoint plus the tail of the log giving the model a full replay gives."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import numpy as np
import pytest
from rtopt.handlers.learners import (
    FTRL,
    SGD,
    AdaGrad,
    ChallengerStarted,
    Example,
    ExampleBatch,
    LearnerDefined,
    LearnerHandler,
    ModelCheckpointed,
    ModelPromoted,
    ModelRolledBack,
    Progressive,
    parameters,
    replay_tail,
)
from scipy import stats

from rtopt import Engine, InvalidEvent

TRUE_WEIGHTS = {"f0": 2.0, "f1": -3.0, "f2": 1.5, "f3": -2.0}


def logistic_data(n: int, seed: int, features: int = 20) -> tuple[list[dict[str, float]], list[float]]:
    """Labels drawn from a logistic model with 4 relevant features among ``features``, plus a bias."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features))
    margin = sum(w * x[:, int(name[1:])] for name, w in TRUE_WEIGHTS.items()) + 0.5
    y = (rng.random(n) < 1 / (1 + np.exp(-margin))).astype(float)
    rows = [{"bias": 1.0, **{f"f{j}": float(v) for j, v in enumerate(row)}} for row in x]
    return rows, y.tolist()


def linear_data(n: int, seed: int) -> tuple[list[dict[str, float]], list[float]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    return [{"bias": 1.0, "a": float(a), "b": float(b)} for a, b in x], (0.5 + 3 * x[:, 0] - 2 * x[:, 1]).tolist()


def test_ftrl_recovers_the_signs_of_a_sparse_logistic_model_and_l1_zeroes_the_rest() -> None:
    rows, labels = logistic_data(6000, seed=1)
    sparse, dense = FTRL(alpha=0.1, l1=100.0, l2=1.0), FTRL(alpha=0.1, l1=0.0, l2=1.0)
    for x, y in zip(rows, labels, strict=True):
        sparse.learn_one(x, y)
        dense.learn_one(x, y)
    weights = sparse.weights()
    assert all(math.copysign(1, weights[name]) == math.copysign(1, w) for name, w in TRUE_WEIGHTS.items())
    irrelevant = [f"f{j}" for j in range(4, 20)]
    assert all(weights[name] == 0.0 for name in irrelevant)
    assert all(dense.weights()[name] != 0.0 for name in irrelevant)  # without L1 noise leaves them non-zero


@pytest.mark.parametrize("model", [SGD(learning_rate=0.05), AdaGrad(learning_rate=0.5)], ids=["sgd", "adagrad"])
def test_sgd_and_adagrad_converge_on_a_linear_problem(model) -> None:
    rows, targets = linear_data(3000, seed=2)
    for x, y in zip(rows, targets, strict=True):
        model.learn_one(x, y)
    assert model.w == pytest.approx({"bias": 0.5, "a": 3.0, "b": -2.0}, abs=1e-3)
    batched = msgspec.structs.replace(model, w={}, **({"g2": {}} if isinstance(model, AdaGrad) else {}))
    for start in range(0, 3000, 10):
        batched.learn_many(rows[start : start + 10], targets[start : start + 10])
    assert batched.w == pytest.approx({"bias": 0.5, "a": 3.0, "b": -2.0}, abs=2e-2)


def test_logistic_sgd_learns_the_logistic_model() -> None:
    rows, labels = logistic_data(8000, seed=3, features=4)
    model = AdaGrad(loss="logistic", learning_rate=0.5)
    for x, y in zip(rows, labels, strict=True):
        model.learn_one(x, y)
    for name, w in TRUE_WEIGHTS.items():
        assert model.w[name] == pytest.approx(w, abs=0.5)


def test_progressive_metrics_match_direct_computations() -> None:
    rng = np.random.default_rng(4)
    labels = (rng.random(2000) < 0.4).astype(float)
    predictions = np.clip(0.3 * labels + rng.random(2000) * 0.7, 0.0, 1.0).round(3)
    metrics = Progressive()
    for p, y in zip(predictions, labels, strict=True):
        metrics.update(float(p), float(y))
    summary = metrics.summary()
    clipped = np.clip(predictions, 1e-15, 1 - 1e-15)
    log_loss = -np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))
    u = stats.mannwhitneyu(predictions[labels == 1], predictions[labels == 0]).statistic
    bins = np.minimum((predictions * 10).astype(int), 9)
    ece = sum(abs(predictions[bins == b].sum() - labels[bins == b].sum()) for b in range(10)) / 2000
    assert summary["log_loss"] == pytest.approx(log_loss, rel=1e-12)
    assert summary["accuracy"] == pytest.approx(np.mean((predictions >= 0.5) == (labels == 1)))
    assert summary["auc"] == pytest.approx(u / (labels.sum() * (2000 - labels.sum())), abs=1e-9)
    assert summary["calibration_error"] == pytest.approx(ece, rel=1e-12)


def test_examples_are_scored_before_they_are_learnt() -> None:
    with Engine.open(":memory:", seed=1, handlers=[LearnerHandler()]) as engine:
        engine.publish(LearnerDefined(model="m", learner="ftrl"), time=0.0)
        engine.publish(Example(model="m", features={"x": 1.0}, label=1.0), time=1.0)
        metrics = engine.state("learners", "m").champion.metrics
    assert metrics.summary()["log_loss"] == pytest.approx(math.log(2))  # a fresh model says 0.5


def learn_stream(engine: Engine, rows: list, labels: list, start: float = 0.0) -> None:
    engine.publish_many(
        [Example(model="m", features=x, label=y) for x, y in zip(rows, labels, strict=True)], time=start
    )


def test_rollback_restores_the_exact_earlier_parameters(tmp_path: Path) -> None:
    rows, labels = logistic_data(2500, seed=5, features=6)
    with Engine.open(tmp_path / "m.sqlite", seed=1, handlers=[LearnerHandler()]) as engine:
        engine.publish(LearnerDefined(model="m", learner="ftrl", checkpoint_every=1000, keep_versions=5), time=0.0)
        learn_stream(engine, rows, labels)
        checkpoints = [e.payload for e in engine.read(types=[ModelCheckpointed])]
        assert [(c.version, c.samples) for c in checkpoints] == [(1, 1000), (2, 2000)]
        assert parameters(engine.state("learners", "m").champion.learner) != checkpoints[0].parameters
        engine.publish(ModelRolledBack(model="m", version=1, reason="quality dropped"), time=1.0)
        model = engine.state("learners", "m")
        assert parameters(model.champion.learner) == checkpoints[0].parameters and model.version == 1
        with pytest.raises(InvalidEvent) as refused:
            engine.publish(ModelRolledBack(model="m", version=7))
        assert refused.value.field == "version"
    assert Engine.verify(tmp_path / "m.sqlite", handlers=[LearnerHandler()]).ok


def test_latest_checkpoint_and_the_tail_give_the_model_of_a_full_replay(tmp_path: Path) -> None:
    rows, labels = logistic_data(2300, seed=6, features=6)
    log = tmp_path / "m.sqlite"
    with Engine.open(log, seed=1, handlers=[LearnerHandler()]) as engine:
        engine.publish(LearnerDefined(model="m", learner="adagrad", options={"loss": "logistic"}), time=0.0)
        learn_stream(engine, rows[:1500], labels[:1500])
        engine.publish(ExampleBatch(model="m", features=rows[1500:1510], labels=labels[1500:1510]), time=1.0)
        learn_stream(engine, rows[1510:], labels[1510:], start=2.0)
        live = parameters(engine.state("learners", "m").champion.learner)
        restored = replay_tail(engine.read(), "m")
    with Engine.replay(log, handlers=[LearnerHandler()]) as replayed:
        assert parameters(replayed.state("learners", "m").champion.learner) == live
    assert parameters(restored) == live


def test_a_better_challenger_is_promoted_after_enough_examples_and_a_worse_one_never() -> None:
    rows, labels = logistic_data(3000, seed=7, features=4)
    with Engine.open(":memory:", seed=1, handlers=[LearnerHandler()]) as engine:
        engine.publish(LearnerDefined(model="m", learner="sgd", options={"loss": "logistic", "learning_rate": 1e-4}))
        engine.publish(LearnerDefined(model="w", learner="adagrad", options={"loss": "logistic"}))
        engine.publish(ChallengerStarted(model="m", learner="ftrl", options={"l1": 0.0}, margin=0.05, min_samples=400))
        engine.publish(ChallengerStarted(model="w", learner="sgd", options={"learning_rate": 1e-4, "loss": "logistic"}))
        for model in ("m", "w"):
            engine.publish_many([Example(model=model, features=x, label=y) for x, y in zip(rows, labels, strict=True)])
        promoted = [e.payload for e in engine.read(types=[ModelPromoted])]
        checkpoints = {e.payload.version: e.payload for e in engine.read(types=[ModelCheckpointed], stream="m")}
        champion = engine.state("learners", "m")
        assert engine.state("learners", "w").challenger is not None  # still in shadow, never better
    assert [(p.model, p.version) for p in promoted] == [("m", 1)]
    assert checkpoints[1].role == "challenger" and checkpoints[1].samples >= 400
    assert isinstance(champion.champion.learner, FTRL) and champion.challenger is None


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (LearnerDefined(model="n", learner="ftrl", options={"alfa": 0.1}), "options.alfa"),
        (LearnerDefined(model="n", learner="sgd", options={"learning_rate": "fast"}), "options.learning_rate"),
        (LearnerDefined(model="m", learner="sgd"), "model"),
        (Example(model="nope", features={"x": 1.0}, label=1.0), "model"),
        (Example(model="m", features={"y": 1.0}, label=1.0), "features"),
        (Example(model="m", features={"x": 1.0}, label=2.0), "label"),
        (ExampleBatch(model="m", features=[{"x": 1.0}], labels=[1.0, 0.0]), "labels"),
    ],
)
def test_bad_learner_events_are_refused_with_the_field_named(event, field: str) -> None:
    with Engine.open(":memory:", seed=1, handlers=[LearnerHandler()]) as engine:
        engine.publish(LearnerDefined(model="m", learner="ftrl", features=["x"]))
        with pytest.raises(InvalidEvent) as refused:
            engine.publish(event)
        assert refused.value.field == field
        assert engine.stats().rejected == {"invalid command": 1}


def test_the_readme_learners_example_runs() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = readme.split("## Online learners and the model registry", 1)[1].split("```python", 1)[1]
    scope: dict = {}
    exec(compile(example.split("```", 1)[0], "README.md", "exec"), scope)
    assert scope["p_good"] < 0.5  # long prompts were never good
    assert scope["model"].champion.metrics.summary()["accuracy"] > 0.9
    assert sorted(scope["model"].versions) == [1, 2, 3]
    assert scope["engine"].state("learners", "quality").version == 1
