"""ExperimentTracker with W&B disabled and offline (real files, real wandb), and redact_secrets."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from pipeline.tracking import END_STATUSES, ExperimentTracker, redact_secrets

CONFIG = {
    "experiment": {"name": "kobart_baseline"},
    "generation": {"max_new_tokens": 64},
    "tokenizer": {"pad_token": "<pad>"},
    "celery": {"broker_url": "redis://:hunter2@redis:6379/0"},
    "wandb": {"mode": "offline", "api_key": "wandb-key-123"},
    "hf_token": "hf_abc",
}


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every W&B directory (and the temp dir it litters) into tmp_path, never the home directory."""
    for var, sub in [
        ("WANDB_DIR", "wandb_dir"),
        ("WANDB_CACHE_DIR", "wandb_cache"),
        ("WANDB_CONFIG_DIR", "wandb_config"),
        ("WANDB_DATA_DIR", "wandb_data"),
        ("TMPDIR", "tmp"),
    ]:
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    yield tmp_path
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:  # a failed test must not leak a live run
        wandb.run.finish()


@pytest.fixture
def tracker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ExperimentTracker:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return ExperimentTracker(tmp_path / "artifacts", {"mode": "disabled"})


def test_disabled_mode_keeps_local_record_and_never_imports_wandb(tmp_path: Path) -> None:
    # A fresh interpreter: other tests in this process may already have imported wandb.
    script = textwrap.dedent(
        """
        import sys
        from pipeline.tracking import ExperimentTracker

        tracker = ExperimentTracker(sys.argv[1], {"mode": "disabled", "project": "dialsum"})
        experiment_id = tracker.start_experiment("exp", {"lr": 0.1}, tags=["t"])
        tracker.log_metrics({"loss": 1.5}, step=1)
        tracker.log_metrics({"loss": 0.5}, step=2)
        tracker.end_experiment(experiment_id)
        assert tracker.wandb_run_id(experiment_id) is None
        assert "wandb" not in sys.modules, "wandb was imported in disabled mode"
        print(experiment_id)
        """
    )
    root = tmp_path / "artifacts"
    result = subprocess.run(
        [sys.executable, "-c", script, str(root)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    experiment_id = result.stdout.strip().splitlines()[-1]
    assert experiment_id.startswith("exp-")

    record = json.loads((root / "experiments" / experiment_id / "experiment.json").read_text())
    assert record["status"] == "completed"
    assert record["config"] == {"lr": 0.1}
    assert record["wandb_run_id"] is None
    lines = (root / "experiments" / experiment_id / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["metrics"]["loss"] for line in lines] == [1.5, 0.5]
    assert not (root / "wandb").exists()


def test_offline_mode_creates_run_and_logs(wandb_env: Path) -> None:
    root = wandb_env / "artifacts"
    tracker = ExperimentTracker(root, {"mode": "offline", "project": "dialsum", "tags": ["base"]})
    experiment_id = tracker.start_experiment("exp", CONFIG, tags=["sweep"], group="sweep-1")

    import wandb

    run_id = tracker.wandb_run_id(experiment_id)
    assert run_id and wandb.run is not None and wandb.run.id == run_id
    # Secrets never reach the W&B config; hyperparameters with "token" in their name do.
    assert wandb.run.config["hf_token"] == "***"
    assert wandb.run.config["wandb"]["api_key"] == "***"
    assert wandb.run.config["celery"]["broker_url"] == "redis://:***@redis:6379/0"
    assert wandb.run.config["generation"]["max_new_tokens"] == 64
    assert set(wandb.run.tags) == {"base", "sweep"}

    tracker.log_metrics({"train/loss": 2.0}, step=1)
    tracker.log_metrics({"eval/rouge_combined_f1": 0.31}, step=2)
    tracker.end_experiment(experiment_id, "completed")
    assert wandb.run is None

    run_dirs = list((root / "wandb").glob(f"**/offline-run-*-{run_id}"))
    assert len(run_dirs) == 1 and list(run_dirs[0].glob("*.wandb"))
    record = tracker.get(experiment_id)
    assert record["status"] == "completed" and record["wandb_run_id"] == run_id
    assert "hunter2" not in (root / "experiments" / experiment_id / "experiment.json").read_text()
    assert [(line["step"], line["metrics"]) for line in tracker.get_metrics(experiment_id)] == [
        (1, {"train/loss": 2.0}),
        (2, {"eval/rouge_combined_f1": 0.31}),
    ]


def test_wandb_mode_env_var_lowers_but_never_raises_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert ExperimentTracker(tmp_path, {"mode": "online"}).mode == "offline"
    assert ExperimentTracker(tmp_path, {"mode": "disabled"}).mode == "disabled"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert ExperimentTracker(tmp_path, {"mode": "online"}).mode == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    assert ExperimentTracker(tmp_path).mode == "disabled"


def test_invalid_wandb_mode_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="wandb.mode"):
        ExperimentTracker(tmp_path, {"mode": "cloud"})


@pytest.mark.parametrize("status", END_STATUSES)
def test_end_experiment_statuses(tracker: ExperimentTracker, status: str) -> None:
    experiment_id = tracker.start_experiment("exp", {"lr": 0.1})
    assert tracker.get(experiment_id)["status"] == "running"
    record = tracker.end_experiment(experiment_id, status, notes="redis://u:pw@host failed")
    assert record == tracker.get(experiment_id)
    assert record["status"] == status
    assert record["notes"] == "redis://u:***@host failed"
    assert record["ended_at"] >= record["started_at"]
    assert record["duration_s"] >= 0


def test_invalid_status_is_an_error(tracker: ExperimentTracker) -> None:
    experiment_id = tracker.start_experiment("exp", {})
    with pytest.raises(ValueError, match="finished"):
        tracker.end_experiment(experiment_id, "finished")
    assert tracker.get(experiment_id)["status"] == "running"


def test_unknown_experiment_and_no_running_experiment(tracker: ExperimentTracker) -> None:
    with pytest.raises(RuntimeError, match="start_experiment"):
        tracker.log_metrics({"loss": 1.0})
    with pytest.raises(KeyError, match="nope"):
        tracker.get("nope")
    with pytest.raises(KeyError, match="nope"):
        tracker.end_experiment("nope")
    with pytest.raises(KeyError, match="nope"):
        tracker.log_metrics({"loss": 1.0}, experiment_id="nope")
    with pytest.raises(ValueError, match="directory name"):
        tracker.start_experiment("bad/name", {})


def test_log_metrics_defaults_to_latest_experiment_and_list(tracker: ExperimentTracker) -> None:
    first = tracker.start_experiment("a", {})
    second = tracker.start_experiment("b", {}, group="g")
    tracker.log_metrics({"loss": 1.0})
    tracker.log_metrics({"loss": 0.5}, step=3, experiment_id=first)
    assert tracker.get_metrics(second)[0]["metrics"] == {"loss": 1.0}
    assert tracker.get_metrics(second)[0]["step"] is None
    assert tracker.get_metrics(first)[0]["step"] == 3
    assert [record["id"] for record in tracker.list()] == [first, second]
    assert tracker.get(second)["group"] == "g"


def test_restart_with_run_id_keeps_history(tracker: ExperimentTracker) -> None:
    experiment_id = tracker.start_experiment("exp", {}, run_id="run-abc123")
    assert experiment_id == "run-abc123"
    tracker.log_metrics({"loss": 1.0}, step=1)
    started_at = tracker.get(experiment_id)["started_at"]
    tracker.end_experiment(experiment_id, "failed")

    # A redelivered task starts the same run again.
    assert tracker.start_experiment("exp", {}, run_id="run-abc123") == experiment_id
    tracker.log_metrics({"loss": 0.8}, step=2)
    record = tracker.get(experiment_id)
    assert record["status"] == "running" and record["started_at"] == started_at and record["ended_at"] is None
    assert [line["step"] for line in tracker.get_metrics(experiment_id)] == [1, 2]
    assert len(tracker.list()) == 1


def test_redact_secrets_nested_dicts_and_urls() -> None:
    config = {
        "db": {"Password": "p", "user": "u", "nested": [{"API_KEY": "k"}, {"apiKey": "k2"}]},
        "client_secret": {"a": 1},
        "auth": {"token": "t", "hf_token": "h", "GITHUB_TOKEN": "g", "optional_token": None},
        "broker": "redis://:pw@redis:6379/0",
        "backend": "redis://user:pw@host",
        "plain": "redis://host:6379/0",
        "user_only": "https://user@host/path",
        "urls": ("postgresql://admin:s3cret@db:5432/x", "text with amqp://guest:guest@rabbit// inside"),
        "max_new_tokens": 128,
        "tokenizer": {"pad_token": "<pad>", "special_tokens": ["#Person1#"]},
    }
    redacted = redact_secrets(config)
    assert redacted == {
        "db": {"Password": "***", "user": "u", "nested": [{"API_KEY": "***"}, {"apiKey": "***"}]},
        "client_secret": "***",
        "auth": {"token": "***", "hf_token": "***", "GITHUB_TOKEN": "***", "optional_token": None},
        "broker": "redis://:***@redis:6379/0",
        "backend": "redis://user:***@host",
        "plain": "redis://host:6379/0",
        "user_only": "https://user@host/path",
        "urls": ("postgresql://admin:***@db:5432/x", "text with amqp://guest:***@rabbit// inside"),
        "max_new_tokens": 128,
        "tokenizer": {"pad_token": "<pad>", "special_tokens": ["#Person1#"]},
    }
    assert config["db"]["Password"] == "p"  # the input is not modified
    assert redact_secrets(3) == 3 and redact_secrets(None) is None
