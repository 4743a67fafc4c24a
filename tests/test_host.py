"""Workers that share a host (tasks/host.py): unique node names, one thread share, the cgroup CPU quota.

The pure parts (quota files, name choice) are checked on files and sets made here; the point of it all is checked
with real processes: two ``dialsum worker --gpus none`` launchers started separately on one real redis-server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import host
from tasks.worker import plan_workers
from tests.conftest import wait_until
from tests.test_worker_flower import cleanup, cluster_env, inspect, node, start, stop, wait_for_ping

# --- the cgroup CPU quota ------------------------------------------------------------------------------------------


def _cgroup_tree(tmp_path: Path, proc_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(proc_line + "\n")
    return root, proc


def test_cgroup_v2_quota_is_read_and_the_smallest_level_wins(tmp_path):
    root, proc = _cgroup_tree(
        tmp_path,
        "0::/kubepods/pod1/container",
        {
            "cpu.max": "max 100000\n",
            "kubepods/cpu.max": "1600000 100000\n",
            "kubepods/pod1/cpu.max": "400000 100000\n",  # the pod's limit: 4 cores
            "kubepods/pod1/container/cpu.max": "max 100000\n",
        },
    )
    assert host.cgroup_cpu_limit(root, proc) == 4.0


def test_cgroup_v1_quota_and_no_quota(tmp_path):
    root, proc = _cgroup_tree(
        tmp_path,
        "4:cpu,cpuacct:/docker/abc",
        {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"},
    )
    assert host.cgroup_cpu_limit(root, proc) == 2.5
    unlimited, proc = _cgroup_tree(tmp_path / "u", "0::/user.slice", {"user.slice/cpu.max": "max 100000\n"})
    assert host.cgroup_cpu_limit(unlimited, proc) is None
    assert host.cgroup_cpu_limit(tmp_path / "absent", tmp_path / "absent-proc") is None


# --- names and shares ----------------------------------------------------------------------------------------------


def test_names_skip_those_taken_on_the_host_and_cores_are_split_with_them():
    specs = plan_workers("none", None, cpu_workers=2, cores=8, taken={"cpu0@%h", "cpu2@%h"})
    assert [spec.name for spec in specs] == ["cpu1@%h", "cpu3@%h"]
    assert {spec.env["OMP_NUM_THREADS"] for spec in specs} == {"2"}  # 8 cores over 4 workers on the host
    gpu_node = plan_workers("0,1", None, cpu_workers=1, cores=8, taken={"cpu0@%h"})
    assert [spec.name for spec in gpu_node] == ["gpu0@%h", "gpu1@%h", "cpu1@%h"]
    with pytest.raises(ValueError, match=r"GPU 1 already has a dialsum worker on this host \(gpu1@%h\)"):
        plan_workers("1", None, cpu_workers=0, cores=8, taken={"gpu1@%h"})


def test_registry_forgets_dead_processes_and_counts_the_live(tmp_path, monkeypatch):
    monkeypatch.setenv(host.REGISTRY_ENV, str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host.register(int(dead.stdout), ["cpu7@x"])  # a worker SIGKILLed without cleaning up
    host.register(os.getpid(), ["cpu0@x", "cpu1@x"])
    assert host.registered_workers() == {os.getpid(): ["cpu0@x", "cpu1@x"]}
    assert host.worker_count() == 2
    assert not (host.registry_dir() / f"{int(dead.stdout)}.json").exists()
    host.unregister(os.getpid())
    assert host.registered_workers() == {} and host.worker_count() == 1


# --- real processes ------------------------------------------------------------------------------------------------


def _thread_share(env: dict[str, str]) -> int:
    """What a task starting now in a pool child of this host would set (tasks/worker.configure_worker_process)."""
    code = "import torch; from tasks.worker import configure_worker_process as c; c(); print(torch.get_num_threads())"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "DIALSUM_TORCH_THREADS": "auto"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1])


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker processes through /proc")
def test_two_launchers_started_separately_get_distinct_names_and_split_the_cores(redis_server, tmp_path):
    env = cluster_env(redis_server)
    marker = f"DIALSUM_BROKER_URL={redis_server.url}"
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    launchers = [start(["worker", "--gpus", "none"], env, logs[0])]
    try:
        wait_for_ping(node("cpu0"), env, launchers[0], logs[0])
        alone = _thread_share(env)
        launchers.append(start(["worker", "--gpus", "none"], env, logs[1]))  # a second terminal, same command
        wait_for_ping(node("cpu1"), env, launchers[1], logs[1])
        assert "cpu1@%h" not in logs[0].read_text() and "starting cpu1@" in logs[1].read_text()
        # Both answer under their own names (two cpu0 would be one worker to Flower and to celery inspect).
        answers = inspect("ping", env, f"{node('cpu0')},{node('cpu1')}")
        assert f"{node('cpu0')}: OK" in answers and f"{node('cpu1')}: OK" in answers
        registry = {name for names in host.registered_workers().values() for name in names}
        assert registry == {node("cpu0"), node("cpu1")}
        assert alone == host.host_cores()
        assert _thread_share(env) == max(1, host.host_cores() // 2)  # a task starting now takes half the cores

        assert stop(launchers.pop()) == 0, logs[1].read_text()
        wait_until(lambda: len(host.registered_workers()) == 1, 30, "the stopped launcher gone from the registry")
        assert _thread_share(env) == host.host_cores()  # the next task may use the whole host again
    finally:
        cleanup(launchers, marker)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker processes through /proc")
def test_a_plain_celery_worker_registers_itself(redis_server, tmp_path):
    env = cluster_env(redis_server)
    marker = f"DIALSUM_BROKER_URL={redis_server.url}"
    log = tmp_path / "celery.log"
    argv = [sys.executable, "-m", "celery", "-A", "tasks.app", "worker", "-n", "plain@%h", "-c", "1", "-Q", "cpu"]
    with open(log, "wb") as out:
        worker = subprocess.Popen(argv, cwd=Path(__file__).resolve().parents[1], env=env, stdout=out, stderr=out)
    try:
        wait_until(
            lambda: json.dumps(host.registered_workers()).count(node("plain")) == 1, 90, "registration", log.read_text
        )
        assert _thread_share(env) == max(1, host.host_cores() // 1)
    finally:
        cleanup([worker], marker)
