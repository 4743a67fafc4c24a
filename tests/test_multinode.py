"""Several nodes against one broker: Linux network namespaces play the nodes.

Three namespaces are made for the test and nothing else is touched: ``<tag>r`` holds a bridge (the "switch",
10.203.0.1/24) and redis-server listening on that address; ``<tag>a`` and ``<tag>b`` are the nodes, each with one
veth cable to the switch (10.203.0.2 and .3), its own host name (a UTS namespace, so Celery names the workers
``cpu0@nodea`` and ``cpu0@nodeb`` exactly as on two machines), its own CPU cores where the machine has two or more,
and its own unmodified ``dialsum worker --gpus none``. Every node reaches Redis over the virtual network only; the
test process itself reads Redis through its unix socket, so the host's own network namespace gets no address and no
interface. All namespaces share the filesystem, which stands in for the shared artifact root.

Skipped, with the reason, only where ``ip netns add`` is refused (not root, no CAP_SYS_ADMIN, no ``ip``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import yaml

from tests.conftest import REPO, micro_config_dict

pytestmark = pytest.mark.slow

SUBNET = "10.203.0"
REDIS_ADDRESS = f"{SUBNET}.1"
NODES = {"nodea": f"{SUBNET}.2", "nodeb": f"{SUBNET}.3"}
PASSWORD = "multinode-test-password"
MAX_STEPS = 40


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


class VirtualCluster:
    """Namespaces, links, redis-server and one worker per node; :meth:`close` undoes all of it."""

    def __init__(self, directory: Path):
        self.directory = directory
        tag = f"ds{os.getpid()}{secrets.token_hex(2)}"  # never an existing namespace of someone else
        self.switch = f"{tag}r"
        self.namespaces = {node: f"{tag}{node[-1]}" for node in NODES}
        self.made: list[str] = []
        self.workers: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.cut_off: set[str] = set()
        self.redis_process: subprocess.Popen | None = None
        self.socket = directory / "redis.sock"
        self.broker_url = f"redis://:{PASSWORD}@{REDIS_ADDRESS}:6379/0"
        self.redis = redis.Redis(unix_socket_path=str(self.socket), password=PASSWORD, decode_responses=True)
        self.env = {
            **os.environ,
            "DIALSUM_BROKER_URL": self.broker_url,
            "DIALSUM_SOFT_SHUTDOWN_TIMEOUT": "2",  # fast teardown; production keeps 30 s to reach a checkpoint
            "WANDB_MODE": "disabled",
            "PYTHONUNBUFFERED": "1",
        }

    # ------------------------------------------------------------------ network
    def make_namespace(self, name: str) -> str | None:
        """Create namespace ``name``; the reason when this machine refuses (None when it worked)."""
        try:
            result = _ip("netns", "add", name, check=False)
        except FileNotFoundError:
            return "the `ip` command (iproute2) is not installed"
        if result.returncode != 0:
            return f"`ip netns add` failed: {result.stderr.strip() or f'exit status {result.returncode}'}"
        self.made.append(name)
        return None

    def build_network(self) -> None:
        """The switch namespace's bridge with Redis's address, and one veth cable per node namespace."""
        for namespace in self.namespaces.values():
            reason = self.make_namespace(namespace)
            if reason:
                raise RuntimeError(reason)
        switch = self.switch
        _ip("-n", switch, "link", "set", "lo", "up")
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "addr", "add", f"{REDIS_ADDRESS}/24", "dev", "br0")
        _ip("-n", switch, "link", "set", "br0", "up")
        for node, address in NODES.items():
            namespace = self.namespaces[node]
            # Both ends are created inside our namespaces: no interface ever appears in the host's namespace.
            cable = ["type", "veth", "peer", "name", "eth0", "netns", namespace]
            _ip("-n", switch, "link", "add", self.port(node), *cable)
            _ip("-n", switch, "link", "set", self.port(node), "master", "br0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")

    @staticmethod
    def port(node: str) -> str:
        """The switch-side end of ``node``'s cable."""
        return f"v{node}"

    def cut(self, node: str) -> None:
        """Take ``node``'s cable down at the switch: its packets vanish, nothing tells its processes."""
        _ip("-n", self.switch, "link", "set", self.port(node), "down")
        self.cut_off.add(node)

    # ---------------------------------------------------------------- processes
    def _popen(self, namespace: str, argv: list[str], log_name: str, cpus: str | None = None) -> subprocess.Popen:
        prefix = ["ip", "netns", "exec", namespace]
        if cpus:
            prefix += ["taskset", "-c", cpus]
        log = self.directory / f"{log_name}.log"
        self.logs[log_name] = log
        with open(log, "w") as handle:  # the child keeps its own descriptor
            return subprocess.Popen(
                prefix + argv, cwd=REPO, env=self.env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )

    def start_redis(self) -> None:
        import shutil

        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server (.ci/run does this)")
        argv = [binary, "--bind", REDIS_ADDRESS, "--port", "6379", "--requirepass", PASSWORD, "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.directory), "--unixsocket", str(self.socket)]
        argv += ["--unixsocketperm", "700"]
        self.redis_process = self._popen(self.switch, argv, "redis")
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(redis.ConnectionError, FileNotFoundError):
                if self.redis.ping():
                    return
            if time.monotonic() > deadline or self.redis_process.poll() is not None:
                raise RuntimeError(f"redis-server did not start:\n{self.tail('redis')}")
            time.sleep(0.1)

    def start_worker(self, node: str, cpus: str | None) -> None:
        """``dialsum worker --gpus none`` in ``node``'s namespace, under host name ``node`` (Celery's ``%h``)."""
        argv = ["unshare", "--uts", "sh", "-c", 'hostname "$1" && shift && exec "$@"', "sh", node]
        argv += [sys.executable, "-m", "tasks.cli", "worker", "--gpus", "none", "--cpu-workers", "1"]
        self.workers[node] = self._popen(self.namespaces[node], argv, node, cpus)

    def run_in_switch(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        """A short command (a client) on the Redis side of the network."""
        return subprocess.run(
            ["ip", "netns", "exec", self.switch, *argv],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def wait_for_workers(self, timeout: float) -> None:
        """Until every node's worker answers a ping over the virtual network."""
        expected = {f"cpu0@{node}" for node in NODES}
        deadline = time.monotonic() + timeout
        answer = ""
        while time.monotonic() < deadline:
            for node, process in self.workers.items():
                if process.poll() is not None:
                    raise RuntimeError(f"worker of {node} exited ({process.returncode}):\n{self.tail(node)}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                ping = [sys.executable, "-m", "celery", "-A", "tasks.app", "inspect", "ping", "--timeout", "3"]
                result = self.run_in_switch(ping, timeout=60)
                answer = result.stdout + result.stderr
                if all(name in answer for name in expected):
                    return
            time.sleep(1)
        raise RuntimeError(f"workers did not answer ping in {timeout:.0f}s: {answer[-1500:]}\n{self.all_tails()}")

    def pids(self, namespace: str) -> list[int]:
        """Every process in ``namespace``: only ones this test started can be there."""
        result = _ip("netns", "pids", namespace, check=False)
        return [int(pid) for pid in result.stdout.split()] if result.returncode == 0 else []

    def kill_all(self, namespace: str) -> None:
        for pid in self.pids(namespace):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.pids(namespace) and time.monotonic() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        """Stop everything this cluster started and delete its namespaces; never raises."""
        for node, process in self.workers.items():
            # A reachable node stops the way an operator would stop it (SIGTERM to the launcher). A cut-off one
            # would block on Redis in its shutdown (it requeues its task there), so it is killed outright.
            if node not in self.cut_off and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=30)
        for namespace in self.made:
            with contextlib.suppress(Exception):
                self.kill_all(namespace)
        for process in [*self.workers.values(), self.redis_process]:
            if process is not None:
                with contextlib.suppress(Exception):
                    process.wait(timeout=10)
        for namespace in reversed(self.made):
            with contextlib.suppress(Exception):
                _ip("netns", "del", namespace, check=False)
        self.redis.close()

    # -------------------------------------------------------------------- state
    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs.get(name)
        return path.read_text(errors="replace")[-chars:] if path and path.exists() else ""

    def all_tails(self) -> str:
        return "\n".join(f"--- {name}.log\n{self.tail(name)}" for name in self.logs)

    def trials(self, sweep_id: str) -> list[dict]:
        raw = self.redis.hgetall(f"dialsum:sweep:{sweep_id}:trials")
        return sorted((json.loads(value) for value in raw.values()), key=lambda trial: trial["index"])

    def run_record(self, run_id: str) -> dict:
        return self.redis.hgetall(f"dialsum:run:{run_id}")

    def submit_sweep(self, config: dict, sweep: dict, parallel: int, name: str) -> str:
        """``dialsum sweep`` run as a client on the Redis side; returns the sweep id."""
        from pipeline.config import ConfigManager

        config_path = ConfigManager().save_config(config, self.directory / f"{name}.yaml")
        sweep_path = self.directory / f"{name}-sweep.yaml"
        sweep_path.write_text(yaml.safe_dump(sweep))
        argv = [sys.executable, "-m", "tasks.cli", "sweep", "--config", str(config_path), "--sweep", str(sweep_path)]
        result = self.run_in_switch([*argv, "--parallel", str(parallel)], timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        match = re.search(r"^sweep (sweep-\S+) submitted", result.stdout, flags=re.MULTILINE)
        assert match, result.stdout
        return match.group(1)

    def wait_for_sweep(self, sweep_id: str, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while self.redis.hget(f"dialsum:sweep:{sweep_id}", "status") == "running":
            if time.monotonic() > deadline:
                pytest.fail(
                    f"sweep {sweep_id} still running after {timeout:.0f}s: "
                    f"{[(t['trial_id'], t['status'], t['worker']) for t in self.trials(sweep_id)]}\n{self.all_tails()}"
                )
            time.sleep(0.5)
        return self.trials(sweep_id)


def _node_cpus() -> dict[str, str | None]:
    """Disjoint CPU sets per node where the machine has two cores or more (two machines do not share cores)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < len(NODES):
        return dict.fromkeys(NODES)
    share = len(cpus) // len(NODES)
    return {node: ",".join(map(str, cpus[k * share : (k + 1) * share])) for k, node in enumerate(NODES)}


@pytest.fixture
def virtual_cluster(tmp_path):
    """The virtual cluster, or a skip naming why namespaces cannot be made here."""
    nodes = VirtualCluster(tmp_path)
    reason = nodes.make_namespace(nodes.switch)  # the one try that decides whether this machine allows it
    if reason is not None:
        print(f"multi-node test skipped: {reason}")
        pytest.skip(f"network namespaces cannot be made here: {reason} (needs root or CAP_SYS_ADMIN)")
    try:
        nodes.build_network()
        nodes.start_redis()
        for node, cpus in _node_cpus().items():
            nodes.start_worker(node, cpus)
        nodes.wait_for_workers(timeout=180)
        yield nodes
    finally:
        nodes.close()


def _checkpoints(run_dir: str) -> list[int]:
    """Steps of the complete checkpoints in a run directory (HF writes trainer_state.json last)."""
    states = Path(run_dir).glob("checkpoints/checkpoint-*/trainer_state.json")
    return sorted(int(path.parent.name.split("-")[1]) for path in states)


def _cut_candidate(cluster: VirtualCluster, sweep_id: str, node: str) -> dict | None:
    """A trial whose train runs on ``node`` mid-way (past a complete checkpoint, well before its last step), once
    ``node`` has already finished another trial; else None."""
    trials = cluster.trials(sweep_id)
    if not any(trial["status"] == "finished" and trial["worker"].endswith(f"@{node}") for trial in trials):
        return None
    for trial in trials:
        record = cluster.run_record(trial["run_id"]) if trial.get("run_id") else {}
        if record.get("status") != "running" or record.get("stage") != "train":
            continue
        if not record.get("worker", "").endswith(f"@{node}"):
            continue
        step = json.loads(record.get("progress") or "{}").get("step", 0)
        if step <= MAX_STEPS - 16 and _checkpoints(record["run_dir"]):
            return {**trial, "record": record, "step": step}
    return None


def test_a_sweep_spreads_over_two_nodes_and_finishes_when_one_is_cut_off(virtual_cluster, sample_dir, tmp_path):
    cluster = virtual_cluster
    root = tmp_path / "artifacts"  # on the filesystem every namespace shares: the shared artifact root
    config = micro_config_dict(sample_dir, root)
    config["training"].update(max_steps=MAX_STEPS, logging_steps=2, save_steps=4, eval_steps=4)
    grid = {
        "method": "grid",
        "metric": {"name": "eval/rouge_combined_f1", "goal": "maximize"},
        "parameters": {"learning_rate": {"values": [1e-3, 3e-3]}, "seed": {"values": [1, 2]}},
    }
    # Two trials at a time on two single-slot nodes: while one node trains (~10 s), the other trial's train can only
    # go to the other node, so both nodes train in the first round and again in the second.
    sweep_id = cluster.submit_sweep(config, grid, parallel=2, name="grid")

    # Node b's cable is pulled while it trains its second trial (it has finished one, so its name must stay in the
    # results). Why every trial still finishes:
    # - Node b can no longer reach Redis, and its training polls Redis for a cancel request every half second and
    #   reports progress every two steps: its pool child blocks on the dead TCP connection (the packets vanish, no
    #   error comes back for minutes) within a step or two. So it stops writing into the shared run directory,
    #   except for a checkpoint it may be saving at that moment, which completes in well under a second. Should it
    #   get past that (its worker cancels tasks when it notices the lost connection), it only stops sooner.
    # - Production settings: its train message stays unacknowledged in Redis for the 48 h visibility timeout. What
    #   brings it back is the run's lease (tasks/lease.py): node b can no longer renew it, it expires after
    #   DIALSUM_LEASE_SECONDS (30 s), and node a's worker, whose lease reaper scans every 5 s, re-publishes the stage
    #   message it recorded (same task id, same chain: evaluate, predict) on the `gpu` queue.
    # - Node a runs that message: its `train` takes the lease and resumes from the run's latest complete checkpoint
    #   (HF writes trainer_state.json last, and only complete ones count), written by node b on the shared
    #   filesystem. Had node b finished the stage before the cut, its manifest.json would make node a return the
    #   stored result instead.
    # - Node b is never reconnected during the test: its blocked child would then carry on training the run that
    #   node a has taken over, in the same directory. Teardown kills its processes before the namespaces go.
    deadline = time.monotonic() + 300
    victim = None
    while victim is None:
        victim = _cut_candidate(cluster, sweep_id, "nodeb")
        if victim is None:
            states = [(t["trial_id"], t["status"], t["worker"]) for t in cluster.trials(sweep_id)]
            assert time.monotonic() < deadline, f"node b never trained a second trial: {states}\n{cluster.all_tails()}"
            assert cluster.redis.hget(f"dialsum:sweep:{sweep_id}", "status") == "running", f"ended uncut: {states}"
            time.sleep(0.2)
    cluster.cut("nodeb")

    trials = cluster.wait_for_sweep(sweep_id, timeout=300)
    assert [trial["status"] for trial in trials] == ["finished"] * 4, trials
    points = {(trial["params"]["training.learning_rate"], trial["params"]["general.seed"]) for trial in trials}
    assert points == {(1e-3, 1), (1e-3, 2), (3e-3, 1), (3e-3, 2)}
    # Spread: both nodes' workers trained trials; each run's manifest names the node (platform.node() inside the
    # node's UTS namespace) and the worker that trained it.
    assert {trial["worker"] for trial in trials} == {f"cpu0@{node}" for node in NODES}, trials
    for trial in trials:
        manifest = json.loads((Path(cluster.run_record(trial["run_id"])["run_dir"]) / "manifest.json").read_text())
        train = manifest["stages"]["train"]
        assert train["worker"] == trial["worker"] and train["host"] == trial["worker"].split("@")[1], train
        assert train["global_step"] == MAX_STEPS, train
    assert (root / "sweeps" / sweep_id / "leaderboard.json").is_file()

    # The cut-off trial was finished by node a...
    record = cluster.run_record(victim["run_id"])
    run_dir = Path(record["run_dir"])
    assert next(t for t in trials if t["trial_id"] == victim["trial_id"])["worker"] == "cpu0@nodea"
    # ...resuming from a checkpoint node b wrote, rather than starting over...
    resumed = json.loads((run_dir / "history.jsonl").read_text().splitlines()[0])
    assert resumed.get("event") == "resume", resumed
    assert int(Path(resumed["checkpoint"]).name.split("-")[1]) >= 4, resumed
    # ...by running the very message node b had fetched (same task id, its result stored by node a's worker), not a
    # resubmission.
    train_task_id = json.loads(record["task_ids"])[1]
    result = json.loads(cluster.redis.get(f"celery-task-meta-{train_task_id}"))
    assert result["status"] == "SUCCESS" and result["worker"] == "cpu0@nodea", result
