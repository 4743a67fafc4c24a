"""The ``dialsum`` command line, run as a real subprocess: the main job, predict, validate-config, sample-data."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def dialsum(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tasks.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=900
    )


def test_help_teaches_with_examples(tmp_path):
    result = dialsum("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "dialsum run --config config/tiny.yaml" in result.stdout
    for command in ("run", "predict", "validate-config", "sample-data"):
        assert command in result.stdout


def test_validate_config_prints_resolved_config(tmp_path):
    result = dialsum(
        "validate-config",
        str(REPO / "config" / "base_config.yaml"),
        "--set",
        "training.learning_rate=3e-5",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "learning_rate: 3.0e-05" in result.stdout and "valid" in result.stderr


def test_validate_config_reports_every_problem_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  archtecture: bart\ntraining:\n  learning_rate: -1\n  num_train_epochs: many\n")
    result = dialsum("validate-config", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for key in (
        "model.archtecture",
        "did you mean 'architecture'",
        "training.learning_rate",
        "training.num_train_epochs",
    ):
        assert key in result.stderr


def test_run_with_missing_data_and_no_sample_data_is_an_error(tmp_path):
    config = tmp_path / "real.yaml"
    config.write_text(
        "model:\n  architecture: bart\n  checkpoint: scratch\n"
        f"data:\n  train_path: {tmp_path}/none/train.csv\n  val_path: {tmp_path}/none/dev.csv\n  test_path: null\n"
        f"general:\n  artifact_root: {tmp_path}/artifacts\n"
    )
    result = dialsum("run", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "none/train.csv" in result.stderr and "does not exist" in result.stderr
    assert not (tmp_path / "none").exists()  # no sample data was invented for a real config


def test_sample_data_command(tmp_path):
    result = dialsum("sample-data", "--out", str(tmp_path / "d"), "--n", "50", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "d" / "train.csv", encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 50
    assert dialsum("sample-data", "--out", str(tmp_path / "e"), "--n", "3", cwd=tmp_path).returncode == 2


@pytest.mark.slow
def test_main_job_tiny_config_learns_and_leaves_the_run_directory(tmp_path):
    """The README's main job, as a user runs it from a fresh checkout (config/tiny.yaml unchanged)."""
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    (workdir / "config").symlink_to(REPO / "config")
    result = dialsum("run", "--config", "config/tiny.yaml", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]

    run_dirs = list((workdir / "artifacts" / "runs" / "tiny").iterdir())
    assert len(run_dirs) == 1
    run = run_dirs[0]
    for name in ("model", "metrics.json", "predictions.csv", "predictions.jsonl", "manifest.json", "config.yaml"):
        assert (run / name).exists(), name

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    AutoModelForSeq2SeqLM.from_pretrained(run / "model")
    AutoTokenizer.from_pretrained(run / "model")

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["validation"]["eval_rouge1"] >= 0.5, metrics  # the model really learns
    validation = metrics["validation"]
    assert validation["collapsed"] is False and validation["collapse_reason"] is None, validation
    assert validation["eval_collapsed"] == 0.0 and validation["eval_distinct_predictions"] >= 0.5
    # It learned more than copying the dialogue's first three turns.
    assert validation["eval_rouge2"] > validation["eval_lead3_rouge2"] > 0
    assert validation["eval_rouge2_margin_over_lead3"] == pytest.approx(
        validation["eval_rouge2"] - validation["eval_lead3_rouge2"]
    )
    with open(workdir / "data" / "sample" / "test.csv", encoding="utf-8") as handle:
        test_fnames = [row["fname"] for row in csv.DictReader(handle)]
    with open(run / "predictions.csv", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["fname", "summary"]
        rows = list(reader)
    assert [row["fname"] for row in rows] == test_fnames
    assert len({row["summary"] for row in rows}) > len(rows) // 2  # not one summary for every dialogue

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert list(manifest["stages"]) == ["prepare_data", "train", "evaluate", "generate_predictions"]
    assert all(stage["worker"].startswith("local@") for stage in manifest["stages"].values())
    assert "ROUGE-1" in result.stdout and "validation" in result.stdout
    # The closing table: model against LEAD-3, distinct share, collapse verdict, five predictions with references.
    assert "LEAD-3" in result.stdout and "margin" in result.stdout and "collapsed: no" in result.stdout
    assert "sample predictions (first 5 of validation)" in result.stdout
    assert result.stdout.count("    model: ") == 5 and result.stdout.count("    ref:   ") == 5
    from pipeline.registry import ModelRegistry

    registry = ModelRegistry(workdir / "artifacts")
    assert registry.promote(registry.list()[-1]["id"])["stage"] == "production"  # healthy: no force needed

    # predict with the trained model on the test file: same summaries as the run's own predictions
    out = tmp_path / "submission.csv"
    predict = dialsum(
        "predict", "--model", str(run / "model"), "--input", "data/sample/test.csv", "--out", str(out), cwd=workdir
    )
    assert predict.returncode == 0, predict.stderr[-3000:]
    with open(out, encoding="utf-8") as handle:
        assert list(csv.DictReader(handle)) == rows


@pytest.mark.slow
def test_really_collapsed_tiny_run_is_flagged_and_refused_production(tmp_path):
    """tiny.yaml with length-grouped batches at lr 3e-3 collapses (its own comment says so; run in full it writes one
    summary for all 200 dev dialogues). Sixty steps on 1,000 dialogues already show it, at a fraction of the cost."""
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    (workdir / "config").symlink_to(REPO / "config")
    overrides = {
        "training.group_by_length": "true",
        "training.learning_rate": "3e-3",
        "data.sample_size": "1000",
        "training.max_steps": "60",
        "training.eval_steps": "60",
        "training.save_steps": "60",
    }
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    result = dialsum("run", "--config", "config/tiny.yaml", *sets, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]

    (run,) = (workdir / "artifacts" / "runs" / "tiny").iterdir()
    validation = json.loads((run / "metrics.json").read_text())["validation"]
    assert validation["collapsed"] is True and validation["eval_collapsed"] == 1.0, validation
    assert "of the predictions are distinct" in validation["collapse_reason"]
    assert validation["eval_distinct_predictions"] < 0.5
    # The signature of collapse: ROUGE-2 below LEAD-3's, whatever ROUGE-1 says.
    assert validation["eval_rouge2_margin_over_lead3"] < 0
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert any(record.get("event") == "collapse" and record["step"] == 60 for record in history)
    assert "is collapsed" in result.stderr  # the warning
    assert f"collapsed: yes: {validation['collapse_reason']}" in result.stdout

    from pipeline.registry import ModelRegistry

    registry = ModelRegistry(workdir / "artifacts")
    (entry,) = registry.list()
    with pytest.raises(ValueError, match=rf"{entry['id']}.*collapsed.*force=True"):
        registry.promote(entry["id"])
    assert registry.promote(entry["id"], force=True)["stage"] == "production"
