"""The distributed pipeline end to end: a real redis-server, real `dialsum worker` processes, real Flower.

One cluster (redis + two CPU workers consuming both queues + Flower) is started for the module;
runs use the micro config, so each trains a real tiny model in seconds.
"""

from __future__ import annotations

import base64
import copy
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, celery_command, wait_until

pytestmark = pytest.mark.slow


def _config(cluster, seed: int | None = None, **training) -> dict:
    config = copy.deepcopy(cluster["config"])
    config["training"].update(training)
    if seed is not None:
        config["general"]["seed"] = seed
    return config


def test_run_through_broker_passes_all_stages_on_their_queues(cluster):
    handle = cluster["client"].submit(_config(cluster))
    manifest = handle.wait(timeout=300, progress=False)

    assert manifest["status"] == "completed"
    expected_queues = {"prepare_data": "cpu", "train": "gpu", "evaluate": "cpu", "generate_predictions": "gpu"}
    assert {stage: record["queue"] for stage, record in manifest["stages"].items()} == expected_queues
    assert all(record["worker"].split("@")[0] in ("cpu0", "cpu1") for record in manifest["stages"].values())
    run = Path(manifest["run_dir"])
    for name in ("model", "metrics.json", "predictions.csv", "predictions.jsonl", "manifest.json", "config.yaml"):
        assert (run / name).exists(), name
    assert json.loads((run / "manifest.json").read_text())["stages"].keys() == expected_queues.keys()
    assert handle.status()["stage_states"] == dict.fromkeys(expected_queues, "SUCCESS")

    # Resubmitting the same config finds every stage done and trains nothing again; overrides given as a mapping, as
    # a Python user writes them, resolve to the same config (and so the same run).
    seed = manifest["config"]["general"]["seed"]
    resubmitted = cluster["client"].submit(_config(cluster, seed=seed + 1), overrides={"general.seed": seed})
    assert resubmitted.id == handle.id
    again = resubmitted.wait(timeout=120, progress=False)
    assert again["stages"]["train"]["finished_at"] == manifest["stages"]["train"]["finished_at"]

    # Flower lists the run's four stage tasks with their states, with the credentials and only with them. Its view
    # comes from task events, which may arrive after the client read the result: wait for it, do not read it once.
    task_ids = handle.status()["task_ids"]
    expected_states = {f"dialsum.{stage}": "SUCCESS" for stage in expected_queues}

    def flower_states() -> dict[str, str]:
        tasks = _flower_json(cluster, "/api/tasks")
        return {tasks[task_id]["name"]: tasks[task_id]["state"] for task_id in task_ids if task_id in tasks}

    wait_until(
        lambda: flower_states() == expected_states,
        60,
        "all four stages SUCCESS in Flower",
        lambda: str(flower_states()),
    )
    wait_until(
        lambda: {name.split("@")[0] for name in _flower_json(cluster, "/api/workers?refresh=true")} >= {"cpu0", "cpu1"},
        60,
        "Flower listing both workers",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(cluster["flower"] + "/api/workers", timeout=10)
    assert refused.value.code == 401


def _flower_json(cluster, path: str) -> dict:
    token = base64.b64encode(b"admin:s3cret").decode()
    request = urllib.request.Request(cluster["flower"] + path, headers={"Authorization": f"Basic {token}"})
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_two_runs_train_at_the_same_time_on_two_workers(cluster):
    first = cluster["client"].submit(_config(cluster, max_steps=80, seed=1))
    second = cluster["client"].submit(_config(cluster, max_steps=80, seed=2))
    manifests = [first.wait(timeout=400, progress=False), second.wait(timeout=400, progress=False)]
    timeline = [
        (stage, record["worker"], record["started_at"], record["finished_at"])
        for manifest in manifests
        for stage, record in manifest["stages"].items()
    ]
    trains = [manifest["stages"]["train"] for manifest in manifests]
    assert trains[0]["worker"] != trains[1]["worker"], timeline
    overlap = min(trains[0]["finished_at"], trains[1]["finished_at"]) - max(
        trains[0]["started_at"], trains[1]["started_at"]
    )
    assert overlap > 0, timeline


def test_cancel_stops_a_running_train_within_10_seconds_and_keeps_its_checkpoint(cluster):
    config = _config(
        cluster, max_steps=5000, save_steps=4, save_total_limit=2, eval_strategy="no", load_best_model_at_end=False
    )
    handle = cluster["client"].submit(config)
    deadline = time.monotonic() + 180
    while (handle.status().get("progress") or {}).get("step", 0) < 6:
        assert time.monotonic() < deadline, handle.status()
        time.sleep(0.5)
    cancelled_at = time.monotonic()
    handle.cancel()
    while handle.status()["status"] != "cancelled":
        assert time.monotonic() - cancelled_at < 10, handle.status()
        time.sleep(0.2)
    status = handle.status()
    assert "cancelled at step" in status["error"]
    checkpoints = Path(status["run_dir"]) / "checkpoints"
    assert list(checkpoints.glob("checkpoint-*/trainer_state.json"))
    with pytest.raises(Exception, match="cancelled"):
        handle.wait(timeout=5, progress=False)


def test_bad_config_is_refused_before_anything_is_enqueued(cluster):
    import redis

    from pipeline.config import ConfigError

    connection = redis.Redis.from_url(cluster["redis"].url)
    before = {key for key in connection.keys("dialsum:run:*")}
    config = _config(cluster)
    config["model"]["archtecture"] = "bart"
    with pytest.raises(ConfigError, match=r"model\.archtecture.*did you mean 'architecture'"):
        cluster["client"].submit(config)
    assert connection.llen("gpu") == 0 and connection.llen("cpu") == 0
    assert {key for key in connection.keys("dialsum:run:*")} == before


def test_celery_inspect_registered_lists_the_stage_tasks(cluster):
    output = celery_command(cluster["env"], "inspect", "registered", "--timeout", "5")
    for stage in ("prepare_data", "train", "evaluate", "generate_predictions"):
        assert f"dialsum.{stage}" in output


def test_cli_submit_wait_and_status(cluster):
    config_path = cluster["dir"] / "cli.yaml"
    from pipeline.config import ConfigManager

    ConfigManager().save_config(_config(cluster, seed=7), config_path)
    result = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "submit", "--config", str(config_path), "--wait"],
        cwd=REPO,
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    run_id = result.stdout.splitlines()[0]
    assert "ROUGE-1" in result.stdout and "queue=gpu" in result.stdout
    # stderr is a pipe, not a terminal: plain progress lines, no bar redrawn with carriage returns.
    progress = [line for line in result.stderr.splitlines() if line.startswith(f"run {run_id}: ")]
    assert "\r" not in result.stderr and any(line.startswith(f"run {run_id}: train ") for line in progress), (
        result.stderr
    )
    assert len(progress) <= 4 + 10 + 10, progress  # stage changes, tenths of the steps, and one per 30 s at most
    status = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "status"],
        cwd=REPO,
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run_id in status.stdout and "completed" in status.stdout
    # `dialsum run --broker` submits the same config and follows it; every stage is already done.
    rerun = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "run", "--config", str(config_path), "--broker", cluster["redis"].url],
        cwd=REPO,
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"run {run_id} submitted" in rerun.stdout and "ROUGE-1" in rerun.stdout
    unknown = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "status", "run-nope"],
        cwd=REPO,
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 2 and "no run 'run-nope'" in unknown.stderr
