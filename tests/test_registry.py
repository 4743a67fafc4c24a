"""ModelRegistry on real files: registration, ranking, promotion, errors, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from pipeline.artifacts import registry_dir
from pipeline.registry import ModelRegistry

CONFIG = {"experiment": {"name": "kobart_baseline"}, "training": {"learning_rate": 5e-5}}


def make_model_dir(root: Path, name: str) -> Path:
    path = root / "runs" / name / "model"
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path)


def test_register_list_get(tmp_path: Path, registry: ModelRegistry) -> None:
    model = make_model_dir(tmp_path, "a")
    lineage = {"run_id": "run-1", "dataset_fingerprint": "abc", "sweep_id": "sw", "trial_id": 3}
    model_id = registry.register(model, {"rouge_combined_f1": 0.4, "eval_loss": 2}, CONFIG, lineage, tags=["base"])

    assert model_id.startswith("model-")
    entry = registry.get(model_id)
    assert entry["id"] == model_id
    assert entry["name"] == "kobart_baseline"
    assert entry["model_path"] == str(model.resolve())
    assert entry["metrics"] == {"rouge_combined_f1": 0.4, "eval_loss": 2}
    assert entry["config"] == CONFIG
    assert entry["lineage"] == lineage
    assert entry["tags"] == ["base"]
    assert entry["stage"] == "none"
    assert entry["created_at"].endswith("+00:00")
    assert registry.list() == [entry]
    assert registry.list("kobart_baseline") == [entry]
    assert registry.list("other") == []
    assert (registry_dir(tmp_path) / "index.json").is_file()


def test_default_name_and_explicit_name(tmp_path: Path, registry: ModelRegistry) -> None:
    unnamed = registry.register(make_model_dir(tmp_path, "a"), {"m": 1.0}, {})
    named = registry.register(make_model_dir(tmp_path, "b"), {"m": 1.0}, CONFIG, name="custom")
    assert registry.get(unnamed)["name"] == "model"
    assert registry.get(named)["name"] == "custom"


def test_register_same_model_twice_is_idempotent(tmp_path: Path, registry: ModelRegistry) -> None:
    model = make_model_dir(tmp_path, "a")
    first = registry.register(model, {"rouge_combined_f1": 0.4}, CONFIG, {"run_id": "run-1"})
    again = registry.register(str(model), {"rouge_combined_f1": 0.4}, CONFIG, {"run_id": "run-1"})
    assert first == again
    assert len(registry.list()) == 1
    changed = registry.register(model, {"rouge_combined_f1": 0.5}, CONFIG)
    assert changed != first
    assert len(registry.list()) == 2


def test_best_maximize_minimize_and_name_filter(tmp_path: Path, registry: ModelRegistry) -> None:
    low = registry.register(make_model_dir(tmp_path, "low"), {"rouge_combined_f1": 0.3, "eval_loss": 1.0}, CONFIG)
    high = registry.register(make_model_dir(tmp_path, "high"), {"rouge_combined_f1": 0.5, "eval_loss": 2.0}, CONFIG)
    registry.register(make_model_dir(tmp_path, "nometric"), {"eval_loss": 0.1}, CONFIG)
    other = registry.register(make_model_dir(tmp_path, "other"), {"rouge_combined_f1": 0.9}, CONFIG, name="t5")

    assert registry.best()["id"] == other
    assert registry.best(name="kobart_baseline")["id"] == high
    assert registry.best("rouge_combined_f1", goal="minimize")["id"] == low
    assert registry.best("eval_loss", goal="minimize", name="kobart_baseline")["model_path"].endswith("nometric/model")
    assert registry.best("bleu") is None
    assert registry.best(name="nobody") is None
    with pytest.raises(ValueError, match="goal"):
        registry.best(goal="max")


def test_best_on_empty_registry(registry: ModelRegistry) -> None:
    assert registry.best() is None
    assert registry.list() == []


def test_promote_demotes_previous_holder(tmp_path: Path, registry: ModelRegistry) -> None:
    first = registry.register(make_model_dir(tmp_path, "a"), {"m": 1.0}, CONFIG)
    second = registry.register(make_model_dir(tmp_path, "b"), {"m": 2.0}, CONFIG)
    other = registry.register(make_model_dir(tmp_path, "c"), {"m": 3.0}, CONFIG, name="t5")
    registry.promote(other)

    assert registry.get_stage("kobart_baseline") is None
    promoted = registry.promote(first)
    assert promoted["stage"] == "production"
    assert registry.get_stage("kobart_baseline")["id"] == first

    registry.promote(second)
    assert registry.get(first)["stage"] == "archived"
    assert registry.get(second)["stage"] == "production"
    assert registry.get_stage("kobart_baseline")["id"] == second
    # Another model family keeps its own production model.
    assert registry.get_stage("t5")["id"] == other

    registry.promote(first, stage="staging")
    assert registry.get_stage("kobart_baseline", "staging")["id"] == first
    assert registry.get_stage("kobart_baseline")["id"] == second


def test_promote_rejects_unknown_id_and_empty_stage(tmp_path: Path, registry: ModelRegistry) -> None:
    model_id = registry.register(make_model_dir(tmp_path, "a"), {"m": 1.0}, CONFIG)
    with pytest.raises(KeyError, match="model-missing"):
        registry.promote("model-missing")
    with pytest.raises(ValueError, match="stage"):
        registry.promote(model_id, stage="")


def test_collapsed_model_is_refused_production_unless_forced(tmp_path: Path, registry: ModelRegistry) -> None:
    from pipeline.config import ConfigManager

    config = ConfigManager().validate({"experiment": {"name": "tiny"}})
    collapsed_metrics = {"rouge1": 0.42, "distinct_predictions": 0.02, "top_prediction_share": 0.62, "collapsed": 1.0}
    healthy = registry.register(make_model_dir(tmp_path, "a"), {"rouge1": 0.3, "collapsed": 0.0}, config)
    collapsed = registry.register(make_model_dir(tmp_path, "b"), collapsed_metrics, config)
    registry.promote(healthy)

    with pytest.raises(ValueError) as refused:
        registry.promote(collapsed)
    message = str(refused.value)
    assert collapsed in message and "collapsed" in message and "force=True" in message
    assert "only 2.0% of the predictions are distinct" in message and "one prediction is 62.0%" in message
    assert registry.get_stage("tiny")["id"] == healthy  # nothing changed
    registry.promote(collapsed, stage="staging")  # other stages are not guarded
    assert registry.promote(collapsed, force=True)["stage"] == "production"
    assert registry.get(healthy)["stage"] == "archived"


def test_missing_model_dir_is_an_error_naming_it(tmp_path: Path, registry: ModelRegistry) -> None:
    missing = tmp_path / "runs" / "nowhere" / "model"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        registry.register(missing, {"m": 1.0}, CONFIG)
    assert registry.list() == []


@pytest.mark.parametrize("bad", ["0.4", None, True, [0.4], float("nan")])
def test_non_numeric_metric_is_an_error_naming_key(tmp_path: Path, registry: ModelRegistry, bad: object) -> None:
    with pytest.raises(ValueError, match="rouge2_f1"):
        registry.register(make_model_dir(tmp_path, "a"), {"rouge1_f1": 0.5, "rouge2_f1": bad}, CONFIG)
    assert registry.list() == []


def test_numpy_metrics_are_stored_as_json_numbers(tmp_path: Path, registry: ModelRegistry) -> None:
    model_id = registry.register(make_model_dir(tmp_path, "a"), {"f1": np.float32(0.5), "n": np.int64(3)}, CONFIG)
    raw = json.loads((registry_dir(tmp_path) / "index.json").read_text())
    assert raw["models"][model_id]["metrics"] == {"f1": 0.5, "n": 3}


def test_get_unknown_id_names_it_and_how_to_list(registry: ModelRegistry) -> None:
    with pytest.raises(KeyError, match=r"model-nope.*list\(\)"):
        registry.get("model-nope")


def test_secrets_are_not_stored(tmp_path: Path, registry: ModelRegistry) -> None:
    config = {**CONFIG, "celery": {"broker_url": "redis://:hunter2@redis:6379/0"}, "wandb": {"api_key": "k"}}
    model_id = registry.register(make_model_dir(tmp_path, "a"), {"m": 1.0}, config)
    text = (registry_dir(tmp_path) / "index.json").read_text()
    assert "hunter2" not in text
    assert registry.get(model_id)["config"]["wandb"]["api_key"] == "***"


@pytest.mark.parametrize("content", ["{not json", "[]", '{"version": 1}'])
def test_corrupted_index_is_an_error_naming_the_file(tmp_path: Path, registry: ModelRegistry, content: str) -> None:
    index = registry_dir(tmp_path) / "index.json"
    index.parent.mkdir(parents=True)
    index.write_text(content)
    with pytest.raises(ValueError, match="index.json"):
        registry.list()
    with pytest.raises(ValueError, match="corrupted"):
        registry.register(make_model_dir(tmp_path, "a"), {"m": 1.0}, CONFIG)
    # The damaged index is left for a human to inspect, never silently reset.
    assert index.read_text() == content


def _register_many(root: str, worker: int, count: int, barrier) -> None:
    registry = ModelRegistry(root)
    barrier.wait()
    for i in range(count):
        model = Path(root) / "runs" / f"w{worker}" / f"m{i}"
        registry.register(model, {"rouge_combined_f1": worker + i / 10}, CONFIG, {"worker": worker, "i": i})


def test_concurrent_writers_lose_no_entry(tmp_path: Path) -> None:
    workers, per_worker = 8, 5
    for worker in range(workers):
        for i in range(per_worker):
            (tmp_path / "runs" / f"w{worker}" / f"m{i}").mkdir(parents=True)
    # spawn: forking a pytest process that other tests may have loaded wandb (threads) into is unsafe.
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers)
    processes = [
        context.Process(target=_register_many, args=(str(tmp_path), worker, per_worker, barrier))
        for worker in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0] * workers

    index = json.loads((registry_dir(tmp_path) / "index.json").read_text())
    assert len(index["models"]) == workers * per_worker
    entries = ModelRegistry(tmp_path).list()
    assert {(entry["lineage"]["worker"], entry["lineage"]["i"]) for entry in entries} == {
        (worker, i) for worker in range(workers) for i in range(per_worker)
    }
