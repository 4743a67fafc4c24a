"""Faults with real processes: workers killed, terminated or crashing on a task, Redis restarted, a task outliving the
visibility timeout. Every run either finishes once or fails with a reason (RELIABILITY.md lists these scenarios).

Each test has its own persistent ``redis-server`` and its own workers: ``dialsum worker``'s command line for one CPU
worker (tasks.worker.plan_workers), on app ``tests.fault_stages`` (the real app; one injected fault, see there), each
with its own node name, as if on its own machine. Runs are submitted with the ``dialsum`` CLI and followed through
the run records and lease logs in Redis, as an operator would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from pipeline.artifacts import latest_checkpoint
from pipeline.config import ConfigManager
from pipeline.registry import ModelRegistry
from tasks.lease import lease_holder, lease_log
from tasks.worker import plan_workers
from tests.conftest import REPO, RedisServer, micro_config_dict, wait_until
from tests.fault_stages import DEAF_EXPERIMENT, KILLER_EXPERIMENT

pytestmark = pytest.mark.slow


class Node:
    """One worker process, as ``dialsum worker --gpus none --cpu-workers 1`` starts it on host ``host``."""

    def __init__(self, host: str, broker_url: str, directory: Path, **env: str):
        spec = plan_workers("none", None, 1, cores=1, host=host)[0]
        argv = list(spec.argv)
        argv[argv.index("-A") + 1] = "tests.fault_stages"
        self.name = spec.name
        self.log_path = directory / f"worker-{host}.log"
        base = {key: value for key, value in os.environ.items() if not key.startswith("DIALSUM_")}
        environment = {**base, **spec.env, "DIALSUM_BROKER_URL": broker_url, "DIALSUM_SOFT_SHUTDOWN_TIMEOUT": "3"}
        with open(self.log_path, "wb") as log:
            # Its own process group: killing the group is the whole worker (main process and pool child) dying.
            self.process = subprocess.Popen(
                argv, cwd=REPO, env={**environment, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> None:
        wait_until(lambda: f"{self.name} ready." in self.log(), timeout, f"{self.name} ready", self.log)

    def kill(self) -> None:
        """SIGKILL to the main process and its pool child at once: the machine lost power."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


@pytest.fixture
def broker(tmp_path):
    """A persistent redis-server (append-only file), restartable on the same port."""
    server = RedisServer(tmp_path, persist=True).start()
    yield server
    server.stop()


@pytest.fixture
def nodes(broker, tmp_path):
    """Start workers with ``start(host, **env)``; all are stopped at the end."""
    started: list[Node] = []

    def start(host: str, **env: str) -> Node:
        node = Node(host, broker.url, tmp_path, **env)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def start_two(nodes, **env: str):
    """Workers on hosts ``a`` and ``b``, ready; and a function giving the end of both logs (for failure messages)."""
    workers = [nodes("a", **env), nodes("b", **env)]
    for worker in workers:
        worker.wait_ready()
    return workers, lambda: "\n".join(worker.log()[-3000:] for worker in workers)


def training_with_a_checkpoint(client, run_id: str, workers: list[Node], context) -> tuple[Path, Node, Node]:
    """Once the run trains and has a complete checkpoint: its run directory, the worker training it, the other one."""
    run_dir = Path(wait_for_status(client, run_id, ("running",), 120, context)["run_dir"])
    holder = wait_until(
        lambda: (lambda h: h if h and h["stage"] == "train" and saved_checkpoint(run_dir) else None)(
            lease_holder(client, run_id)
        ),
        180,
        "train with a checkpoint",
        context,
    )
    busy = next(worker for worker in workers if worker.name == holder["node"])
    return run_dir, busy, next(worker for worker in workers if worker is not busy)


def config_file(sample_dir: Path, tmp_path: Path, experiment: str, steps: int = 8, every: int = 4) -> Path:
    config = micro_config_dict(sample_dir, tmp_path / "artifacts")
    config["experiment"]["name"] = experiment
    config["training"].update(max_steps=steps, save_steps=every, eval_steps=every)
    path = tmp_path / f"{experiment}.yaml"
    ConfigManager().save_config(config, path)
    return path


def dialsum(broker_url: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "tasks.cli", *args, "--broker", broker_url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def submit(broker_url: str, config: Path) -> str:
    return re.search(r"run-[0-9a-f]{12}", dialsum(broker_url, "submit", "--config", str(config)))[0]


def record(client: redis.Redis, run_id: str) -> dict:
    return client.hgetall(f"dialsum:run:{run_id}")


def wait_for_status(client, run_id: str, statuses: tuple[str, ...], timeout: float, context) -> dict:
    return wait_until(
        lambda: (lambda r: r if r.get("status") in statuses else None)(record(client, run_id)),
        timeout,
        f"run {run_id} {'/'.join(statuses)}",
        lambda: f"{record(client, run_id)}\n{context()}",
    )


def takes(client, run_id: str, stage: str) -> list[dict]:
    """Every time a worker took the run's lease for ``stage``."""
    return [e for e in lease_log(client, run_id) if e["stage"] == stage and e["event"] in ("acquired", "taken over")]


def training_runs(client: redis.Redis) -> list[str]:
    """Runs whose train stage holds its lease right now."""
    leases = (json.loads(client.get(key) or "{}") for key in client.scan_iter("dialsum:lease:*"))
    return [lease["task_id"] for lease in leases if lease.get("stage") == "train"]


def registered_models(root: Path, run_id: str) -> list[dict]:
    return [entry for entry in ModelRegistry(root).list() if entry["lineage"].get("run_id") == run_id]


def restore_unacked(client: redis.Redis) -> int:
    """Put every unacknowledged message back on its queue, as kombu does once the visibility timeout has passed."""
    restored = 0
    for tag, raw in client.hgetall("unacked").items():
        payload, _exchange, routing_key = json.loads(raw)
        payload["headers"]["redelivered"] = True
        payload["properties"]["delivery_info"]["redelivered"] = True
        with client.pipeline() as pipe:
            pipe.rpush(routing_key, json.dumps(payload))
            pipe.hdel("unacked", tag)
            pipe.zrem("unacked_index", tag)
            pipe.execute()
        restored += 1
    return restored


def saved_checkpoint(run_dir: Path) -> str | None:
    """The run's latest complete checkpoint (an interrupted save does not count), as the trainer resumes from it."""
    found = latest_checkpoint(run_dir / "checkpoints")
    return str(found) if found else None


# --- 1. kill -9 of the worker running train, production settings --------------------------------------------------


def test_worker_killed_after_a_checkpoint_resumes_on_another_within_2_minutes(broker, nodes, sample_dir, tmp_path):
    # Production settings: the 48 h visibility timeout (the dead worker's message would come back in two days), the
    # 30 s lease and the 5 s reaper.
    client = redis.Redis.from_url(broker.url, decode_responses=True)
    workers, context = start_two(nodes)
    run_id = submit(broker.url, config_file(sample_dir, tmp_path, "killed", steps=80, every=10))
    # The first checkpoint is on disk and train is still running: kill the whole worker that holds the lease.
    run_dir, victim, survivor = training_with_a_checkpoint(client, run_id, workers, context)
    victim.kill()
    killed_at = time.time()
    latest_at_kill = saved_checkpoint(run_dir)
    # The dead worker's delivery stays unacknowledged in Redis; nothing else is in flight (the survivor is idle).
    dead_deliveries = set(client.hkeys("unacked"))
    assert dead_deliveries

    taken = wait_until(
        lambda: [e for e in takes(client, run_id, "train") if e["node"] == survivor.name], 150, "takeover"
    )
    recovery = taken[0]["at"] - killed_at
    print(f"train of {run_id} running again on {survivor.name} {recovery:.1f} s after its worker was killed")
    assert recovery < 120

    wait_for_status(client, run_id, ("completed",), 300, context)
    train = json.loads((run_dir / "manifest.json").read_text())["stages"]["train"]
    assert train["resumed_from"] == latest_at_kill  # the global step continued from the last save
    assert train["global_step"] == 80
    # Never two trainings at once: the survivor took the lease only after the victim was dead, once.
    assert [e["node"] for e in takes(client, run_id, "train")] == [victim.name, survivor.name]
    assert taken[0]["at"] > killed_at
    assert len(registered_models(tmp_path / "artifacts", run_id)) == 1

    # The dead worker's message comes back: from the reaper once the run has no lease and no stage in flight (a
    # message fetched over 60 s ago that nothing runs), or else from Redis two days later, which we do here. Either
    # way the survivor finds the run done and does nothing.
    events_before = len(lease_log(client, run_id))
    restore_unacked(client)
    dropped = f"dropping train of run {run_id}"
    wait_until(
        lambda: dropped in survivor.log() and not dead_deliveries & set(client.hkeys("unacked")),
        60,
        "the old message dropped",
        context,
    )
    # Dropped because the run had moved on: completed, or (if the reaper returned it between stages) past train.
    assert re.search(rf"{dropped} \(task [^)]+\): the run is (completed|at \w+) already", survivor.log())
    assert record(client, run_id)["status"] == "completed"
    assert len(lease_log(client, run_id)) == events_before
    assert len(registered_models(tmp_path / "artifacts", run_id)) == 1


# --- 2. a task that kills its worker every time ----------------------------------------------------------------------


def test_task_killing_its_worker_every_time_fails_after_the_cap_and_others_flow(broker, nodes, sample_dir, tmp_path):
    client = redis.Redis.from_url(broker.url, decode_responses=True)
    workers, context = start_two(nodes)
    killer = submit(broker.url, config_file(sample_dir, tmp_path, KILLER_EXPERIMENT))
    others = [submit(broker.url, config_file(sample_dir, tmp_path, f"bystander-{k}")) for k in range(2)]

    failed = wait_for_status(client, killer, ("failed",), 300, context)
    assert "delivered 4 times and its worker died each time" in failed["error"]
    assert "DIALSUM_MAX_DELIVERIES=3" in failed["error"]
    train_task = json.loads(failed["task_ids"])[1]
    assert json.loads(client.get(f"celery-task-meta-{train_task}"))["status"] == "FAILURE"
    # Each delivery took the lease from the dead child of the previous one, at once: no 30 s lease wait.
    assert len(takes(client, killer, "train")) == 4
    for run_id in others:
        assert wait_for_status(client, run_id, ("completed", "failed"), 300, context)["status"] == "completed"
    for worker in workers:
        assert worker.process.poll() is None  # both workers are still up


# --- 3. Redis restarted in the middle of a sweep ---------------------------------------------------------------------


def test_redis_restart_mid_sweep_loses_no_trial_and_runs_none_twice(broker, nodes, sample_dir, tmp_path):
    client = redis.Redis.from_url(broker.url, decode_responses=True)
    workers, context = start_two(nodes)
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        "method: grid\nmetric: {name: eval_loss, goal: minimize}\n"
        "parameters:\n  training.learning_rate: {values: [0.001, 0.002]}\n"
    )
    config = config_file(sample_dir, tmp_path, "restart", steps=40, every=20)
    log_path = tmp_path / "client.log"
    with open(log_path, "w") as log:  # the client follows the sweep across the restart
        sweep_client = subprocess.Popen(
            [sys.executable, "-m", "tasks.cli", "sweep", "--config", str(config), "--sweep", str(sweep_file)]
            + ["--parallel", "2", "--wait", "--broker", broker.url],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        # Restart while a trial trains (the 2 s down time is more than a worker's lease renewal period).
        wait_until(lambda: training_runs(client), 180, "a training", context)
        broker.stop()
        time.sleep(2)
        broker.start()
        assert sweep_client.wait(timeout=420) == 0, log_path.read_text()
    finally:
        if sweep_client.poll() is None:
            sweep_client.kill()
    trials = [json.loads(value) for value in client.hgetall(next(client.scan_iter("dialsum:sweep:*:trials"))).values()]
    assert [trial["status"] for trial in trials] == ["finished"] * 2, trials
    run_ids = {trial["run_id"] for trial in trials}
    assert len(run_ids) == 2
    for run_id in run_ids:
        assert record(client, run_id)["status"] == "completed"
        assert len(takes(client, run_id, "train")) == 1, lease_log(client, run_id)  # none trained twice
        assert len(registered_models(tmp_path / "artifacts", run_id)) == 1


# --- 4. a task longer than the visibility timeout ---------------------------------------------------------------------


def test_task_longer_than_the_visibility_timeout_runs_once(broker, nodes, sample_dir, tmp_path):
    client = redis.Redis.from_url(broker.url, decode_responses=True)
    # Redis hands an unacknowledged message to another worker after 3 s, while the training takes far longer.
    workers, context = start_two(nodes, DIALSUM_VISIBILITY_TIMEOUT="3")
    # kombu returns overdue messages on a 10 s tick: the training must outlast 3 s plus a whole tick (~25 s here).
    run_id = submit(broker.url, config_file(sample_dir, tmp_path, "long", steps=400, every=400))
    run_dir = Path(wait_for_status(client, run_id, ("completed",), 300, context)["run_dir"])

    assert f"dropping train of run {run_id}" in context()  # the message came back while train ran...
    assert len(takes(client, run_id, "train")) == 1  # ...and train ran once
    train = json.loads((run_dir / "manifest.json").read_text())["stages"]["train"]
    assert train["resumed_from"] is None and train["global_step"] == 400
    assert len(registered_models(tmp_path / "artifacts", run_id)) == 1


# --- 7. SIGTERM to the worker running train ---------------------------------------------------------------------------


def test_sigterm_during_train_requeues_and_another_worker_resumes(broker, nodes, sample_dir, tmp_path):
    client = redis.Redis.from_url(broker.url, decode_responses=True)
    workers, context = start_two(nodes)
    # Long enough that the training cannot finish within the stopped worker's 3 s soft-shutdown window.
    run_id = submit(broker.url, config_file(sample_dir, tmp_path, "terminated", steps=300, every=20))
    run_dir, stopped, other = training_with_a_checkpoint(client, run_id, workers, context)
    stopped.stop()  # SIGTERM: the soft-shutdown window (3 s here), then a cold shutdown that requeues the message
    assert stopped.process.returncode is not None

    wait_for_status(client, run_id, ("completed",), 300, context)
    train = json.loads((run_dir / "manifest.json").read_text())["stages"]["train"]
    assert train["resumed_from"] and train["global_step"] == 300
    assert [e["node"] for e in takes(client, run_id, "train")] == [stopped.name, other.name]
    assert len(registered_models(tmp_path / "artifacts", run_id)) == 1


# --- 9. stages past their time limit ----------------------------------------------------------------------------------


def test_a_stage_past_its_time_limit_fails_once_with_the_setting_to_raise(broker, nodes, sample_dir, tmp_path):
    client = redis.Redis.from_url(broker.url, decode_responses=True)
    # A 10 s limit for train, so the soft limit is at 1 s; short leases, so a wrongful re-run would show within seconds.
    workers, context = start_two(nodes, DIALSUM_TIME_LIMIT_TRAIN="10", DIALSUM_LEASE_SECONDS="3")
    # One training sees the soft limit's exception and ends itself; the other is deaf to it and is killed at 10 s.
    soft = submit(broker.url, config_file(sample_dir, tmp_path, "slow", steps=5000, every=5000))
    hard = submit(broker.url, config_file(sample_dir, tmp_path, DEAF_EXPERIMENT))

    soft_record = wait_for_status(client, soft, ("failed",), 180, context)
    assert "train of run" in soft_record["error"] and "ran past its soft time limit (1 s" in soft_record["error"]
    assert "DIALSUM_TIME_LIMIT_TRAIN=10 s on the worker. Raise it there" in soft_record["error"]
    hard_record = wait_for_status(client, hard, ("failed",), 180, context)
    assert f"train of run {hard} ran past its time limit: DIALSUM_TIME_LIMIT_TRAIN=10 s" in hard_record["error"]
    train_task = json.loads(hard_record["task_ids"])[1]
    assert json.loads(client.get(f"celery-task-meta-{train_task}"))["result"]["exc_type"] == "TimeLimitExceeded"
    assert [e["event"] for e in lease_log(client, hard) if e["stage"] == "train"] == ["acquired", "ended"]

    # Neither is run again: the killed one's lease was ended and its stage record cleared, so after several lease
    # lifetimes and reaper ticks each training was still started once, and both workers are up.
    time.sleep(3 * 3 + 2 * 5)
    for run_id in (soft, hard):
        assert len(takes(client, run_id, "train")) == 1, lease_log(client, run_id)
        assert not client.sismember("dialsum:active", run_id)
        assert record(client, run_id)["status"] == "failed"
    for worker in workers:
        assert worker.process.poll() is None


class _TaskWhoseReportFails:
    """A stage task at the moment its progress report raises ``error`` (the broker gone, or Celery's soft limit)."""

    def __init__(self, error: BaseException):
        self.error = error

    def update_state(self, **_):
        raise self.error


def test_progress_reports_are_best_effort_but_never_swallow_the_soft_time_limit():
    # The soft limit's exception is raised wherever the stage happens to be: one CI run caught it inside a progress
    # report, which swallowed it, so the training went on to the hard limit.
    from celery.exceptions import SoftTimeLimitExceeded

    from tasks.stages import _progress_reporter

    _progress_reporter(_TaskWhoseReportFails(redis.ConnectionError("broker restarting")), "run-1")({"step": 1})
    with pytest.raises(SoftTimeLimitExceeded):
        _progress_reporter(_TaskWhoseReportFails(SoftTimeLimitExceeded()), "run-1")({"step": 1})


# --- 11. a Redis without persistence restarts empty -------------------------------------------------------------------


def test_redis_that_forgets_everything_loses_no_run_after_recover(sample_dir, tmp_path):
    """kill -9 of a Redis without AOF or RDB while one run trains and two wait in the queue; it comes back empty."""
    broker = RedisServer(tmp_path / "redis", persist=False)
    (tmp_path / "redis").mkdir()
    broker.start()
    client = redis.Redis.from_url(broker.url, decode_responses=True)
    worker = Node("a", broker.url, tmp_path)
    root = tmp_path / "artifacts"
    try:
        worker.wait_ready()
        assert "neither an append-only file nor RDB snapshots" in worker.log()  # said at startup, where operators look
        configs = [config_file(sample_dir, tmp_path, f"forget{k}", steps=40, every=20) for k in range(3)]
        submitted = subprocess.run(
            [sys.executable, "-m", "tasks.cli", "submit", "--config", str(configs[0]), "--broker", broker.url],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert submitted.returncode == 0 and "dialsum recover --root" in submitted.stderr, submitted.stderr
        run_ids = [submitted.stdout.split()[0]] + [submit(broker.url, config) for config in configs[1:]]
        run_dir = Path(wait_for_status(client, run_ids[0], ("running",), 120, worker.log)["run_dir"])
        wait_until(
            lambda: (lease_holder(client, run_ids[0]) or {}).get("stage") == "train" and saved_checkpoint(run_dir),
            180,
            "train with a checkpoint",
            worker.log,
        )
        assert {record(client, run_id).get("status") for run_id in run_ids[1:]} == {"queued"}

        broker.process.kill()  # kill -9: no chance to write anything
        broker.process.wait(timeout=10)
        broker.process = None
        broker.start()  # same port, nothing in it
        assert all(record(client, run_id) == {} for run_id in run_ids[1:])  # the queued runs are gone from Redis

        status = dialsum(broker.url, "status", "--root", str(root))
        for run_id in run_ids[1:]:
            assert f"{run_id}: known on disk" in status and "unknown to the broker" in status, status
        recovered = dialsum(broker.url, "recover", "--root", str(root))
        for run_id in run_ids[1:]:
            assert re.search(rf"{run_id}\s+resubmitted", recovered), recovered
        assert re.search(rf"{run_ids[0]}\s+(resubmitted|running)", recovered), recovered

        for run_id in run_ids:
            wait_for_status(client, run_id, ("completed",), 420, worker.log)
        again = dialsum(broker.url, "recover", "--root", str(root))
        assert "0 run(s) resubmitted" in again, again  # idempotent: everything is known or completed now
    finally:
        worker.stop()
        broker.stop()
    for run_id, config in zip(run_ids, configs, strict=True):
        run_dir = next((root / "runs").glob(f"*/{run_id}"))
        train = json.loads((run_dir / "manifest.json").read_text())["stages"]["train"]
        assert train["global_step"] == 40, (config, train)
        assert (run_dir / "predictions.csv").is_file()
        assert len(registered_models(root, run_id)) == 1  # trained to the end once, registered once
