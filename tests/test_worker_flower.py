"""``dialsum worker`` and ``dialsum flower``: planning as pure functions, then real processes on a real redis-server."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tasks.flower import flower_command
from tasks.worker import configure_worker_process, plan_workers
from tests.conftest import free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
STAGES = ("dialsum.prepare_data", "dialsum.train", "dialsum.evaluate", "dialsum.generate_predictions")


# --- plan_workers -------------------------------------------------------------------------------------------------


def test_one_pinned_worker_per_gpu_plus_a_cpu_worker():
    specs = plan_workers("0,1,2,3", None, cpu_workers=1, cores=20, host="node7")
    assert [spec.name for spec in specs] == ["gpu0@node7", "gpu1@node7", "gpu2@node7", "gpu3@node7", "cpu0@node7"]
    for k, spec in enumerate(specs[:4]):
        assert spec.env["CUDA_VISIBLE_DEVICES"] == str(k)
        assert spec.queues == ("gpu",)
        assert spec.argv[spec.argv.index("--concurrency") + 1] == "1"
        assert spec.argv[spec.argv.index("--pool") + 1] == "custom"
        assert spec.env["CELERY_CUSTOM_WORKER_POOL"] == "tasks.pool:TaskPool"
        assert spec.argv[spec.argv.index("-Q") + 1] == "gpu"
        assert spec.argv[spec.argv.index("-n") + 1] == f"gpu{k}@node7"
        assert "-E" in spec.argv
        assert spec.argv[:6] == [sys.executable, "-m", "celery", "-A", "tasks.app", "worker"]
    cpu = specs[4]
    assert cpu.queues == ("cpu",) and cpu.env["CUDA_VISIBLE_DEVICES"] == ""
    for spec in specs:
        # 20 cores over 5 worker processes
        assert {spec.env[name] for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")} == {"4"}
        assert spec.env["DIALSUM_TORCH_THREADS"] == "auto"  # recomputed from the host registry as each task starts
        assert spec.env["REMAP_SIGTERM"] == "SIGQUIT" and spec.env["PYTHONUNBUFFERED"] == "1"


def test_cpu_only_node_runs_cpu_workers_on_both_queues():
    specs = plan_workers("none", None, cpu_workers=2, cores=7)
    assert [spec.name for spec in specs] == ["cpu0@%h", "cpu1@%h"]
    assert all(spec.queues == ("gpu", "cpu") and spec.argv[spec.argv.index("-Q") + 1] == "gpu,cpu" for spec in specs)
    assert all(spec.env["OMP_NUM_THREADS"] == "3" and spec.env["CUDA_VISIBLE_DEVICES"] == "" for spec in specs)


def test_queues_override_and_thread_floor():
    specs = plan_workers("1", "gpu,cpu", cpu_workers=0, cores=1)
    assert [(spec.name, spec.queues) for spec in specs] == [("gpu1@%h", ("gpu", "cpu"))]
    assert specs[0].env["OMP_NUM_THREADS"] == "1"


@pytest.mark.parametrize("gpus", ["0,0", "x", "", "1,-2", "0,,1"])
def test_bad_gpu_lists_name_the_flag(gpus):
    with pytest.raises(ValueError, match="--gpus"):
        plan_workers(gpus, None, cpu_workers=1, cores=4)


def test_bad_queues_and_cpu_workers_name_the_flag():
    with pytest.raises(ValueError, match="--queues"):
        plan_workers("0", "gpus", cpu_workers=1, cores=4)
    with pytest.raises(ValueError, match="--cpu-workers"):
        plan_workers("none", None, cpu_workers=0, cores=4)


def test_all_without_nvidia_smi_says_to_use_none(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no nvidia-smi on it
    with pytest.raises(ValueError, match="no GPU found.*--gpus none"):
        plan_workers("all", None, cpu_workers=1, cores=4)


def _nvidia_smi(directory: Path, script: str) -> None:
    path = directory / "nvidia-smi"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_all_reads_gpu_indices_from_nvidia_smi(tmp_path, monkeypatch):
    # The listing format of `nvidia-smi -L`, including MIG lines, which must not count as GPUs.
    _nvidia_smi(
        tmp_path,
        "echo 'GPU 0: NVIDIA H200 (UUID: GPU-aaaa)'\n"
        "echo '  MIG 1g.18gb     Device  0: (UUID: MIG-bbbb)'\n"
        "echo 'GPU 1: NVIDIA H200 (UUID: GPU-cccc)'",
    )
    monkeypatch.setenv("PATH", str(tmp_path))
    specs = plan_workers("all", None, cpu_workers=0, cores=4)
    assert [(spec.name, spec.env["CUDA_VISIBLE_DEVICES"]) for spec in specs] == [("gpu0@%h", "0"), ("gpu1@%h", "1")]


def test_all_with_failing_nvidia_smi_says_to_use_none(tmp_path, monkeypatch):
    _nvidia_smi(tmp_path, "echo 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2; exit 9")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ValueError, match="no GPU found.*could not communicate.*--gpus none"):
        plan_workers("all", None, cpu_workers=1, cores=4)


def test_configure_worker_process_sets_torch_threads():
    code = "import torch; from tasks.worker import configure_worker_process as c; print(c(), torch.get_num_threads())"
    env = {**os.environ, "DIALSUM_TORCH_THREADS": "3"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3", "3"]


def test_configure_worker_process_rejects_bad_values(monkeypatch):
    monkeypatch.setenv("DIALSUM_TORCH_THREADS", "zero")
    with pytest.raises(ValueError, match="DIALSUM_TORCH_THREADS must be auto or a positive integer"):
        configure_worker_process()
    monkeypatch.delenv("DIALSUM_TORCH_THREADS")
    assert configure_worker_process() is None


def test_worker_dry_run_prints_the_pinning():
    result = dialsum("worker", "--gpus", "0,1", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for k in (0, 1):
        assert lines[k].startswith(f"CUDA_VISIBLE_DEVICES={k} ")
        assert f" -n gpu{k}@%h " in lines[k] and " -Q gpu " in lines[k] and " --concurrency 1 " in lines[k]
    assert lines[2].startswith("CUDA_VISIBLE_DEVICES='' ") and " -n cpu0@%h " in lines[2] and " -Q cpu " in lines[2]
    threads = max(1, len(os.sched_getaffinity(0)) // 3)
    assert all(f"OMP_NUM_THREADS={threads} " in line and "REMAP_SIGTERM=SIGQUIT" in line for line in lines)


def test_worker_errors_exit_2_naming_the_flag():
    result = dialsum("worker", "--gpus", "0,0")
    assert result.returncode == 2 and "error: --gpus" in result.stderr


# --- flower_command -----------------------------------------------------------------------------------------------


def test_flower_uses_basic_auth_from_the_environment():
    argv, env, printed = flower_command("127.0.0.1", 5555, False, {"FLOWER_BASIC_AUTH": "ann:pw", "PATH": "/bin"})
    assert printed is None and env["FLOWER_BASIC_AUTH"] == "ann:pw" and env["PATH"] == "/bin"
    assert argv[-3:] == ["flower", "--address=127.0.0.1", "--port=5555"]


def test_flower_generates_a_password_kept_off_the_command_line():
    argv, env, printed = flower_command("10.0.0.5", 8080, False, {"FLOWER_UNAUTHENTICATED_API": "true"})
    user, password = env["FLOWER_BASIC_AUTH"].split(":")
    assert user == "dialsum" and len(password) >= 20
    assert printed == f"Flower: http://10.0.0.5:8080  user: dialsum  password: {password}"
    assert not any(password in arg for arg in argv)
    assert "FLOWER_UNAUTHENTICATED_API" not in env
    assert flower_command("10.0.0.5", 8080, False, {})[1]["FLOWER_BASIC_AUTH"] != env["FLOWER_BASIC_AUTH"]


@pytest.mark.parametrize("address", ["127.0.0.1", "127.3.2.1", "::1"])
def test_flower_without_auth_only_on_loopback(address):
    _, env, printed = flower_command(address, 5555, True, {"FLOWER_BASIC_AUTH": "ann:pw"})
    assert printed is None and env["FLOWER_UNAUTHENTICATED_API"] == "true" and "FLOWER_BASIC_AUTH" not in env


@pytest.mark.parametrize("address", ["0.0.0.0", "10.1.2.3", "localhost", "::"])
def test_flower_refuses_no_auth_off_loopback(address):
    with pytest.raises(ValueError, match="--no-auth-on-loopback.*--address"):
        flower_command(address, 5555, True, {})


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_flower_port_range(port):
    with pytest.raises(ValueError, match="--port"):
        flower_command("127.0.0.1", port, False, {})


# --- real processes on a real broker --------------------------------------------------------------------------------


def dialsum(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tasks.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def cluster_env(redis_server, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLOWER_")}
    # A short soft-shutdown window keeps SIGTERM tests quick (the default gives a running task 30 s).
    return {**env, "DIALSUM_BROKER_URL": redis_server.url, "DIALSUM_SOFT_SHUTDOWN_TIMEOUT": "2", **extra}


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "tasks.cli", *args], cwd=REPO, env=env, stdout=out, stderr=out)


def processes_with(env_entry: str) -> set[int]:
    """Live processes whose environment holds ``env_entry`` (our broker URL marks the launcher's descendants)."""
    marker = env_entry.encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.add(int(entry.name))
            except OSError:
                continue  # gone meanwhile, or not ours
    return found


def stop(process: subprocess.Popen, timeout: float = 40) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


def cleanup(processes: list[subprocess.Popen], env_entry: str) -> None:
    for process in processes:
        stop(process, timeout=15)
    for pid in processes_with(env_entry):  # anything the launchers left behind
        if pid != os.getpid():
            os.kill(pid, signal.SIGKILL)


def node(name: str) -> str:
    """The node name Celery makes of ``<name>@%h`` on this machine."""
    return f"{name}@{socket.gethostname()}"


def inspect(command: str, env: dict[str, str], destination: str) -> str:
    """``celery inspect`` as a user runs it; naming the destination lets it return as soon as that node answers."""
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks.app", "inspect", command, "--timeout", "5", "-d", destination],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout + result.stderr


def wait_for_ping(name: str, env: dict[str, str], launcher: subprocess.Popen, log: Path) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert launcher.poll() is None, f"launcher exited {launcher.returncode}:\n{log.read_text()}"
        output = inspect("ping", env, name)
        if f"{name}: OK" in output:
            return output
        time.sleep(0.5)
    raise AssertionError(f"no pong from {name} within 60 s:\n{log.read_text()}")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker processes through /proc")
def test_worker_serves_the_stages_and_stops_on_sigterm(redis_server, tmp_path):
    env = cluster_env(redis_server)
    marker = f"DIALSUM_BROKER_URL={redis_server.url}"
    log = tmp_path / "worker.log"
    launcher = start(["worker", "--gpus", "none", "--cpu-workers", "1"], env, log)
    try:
        assert "pong" in wait_for_ping(node("cpu0"), env, launcher, log)
        registered = inspect("registered", env, node("cpu0"))
        assert all(name in registered for name in STAGES), registered

        workers = processes_with(marker) - {launcher.pid, os.getpid()}
        assert len(workers) >= 2  # the worker's main process and its pool child
        started = time.monotonic()
        assert stop(launcher) == 0, log.read_text()
        assert time.monotonic() - started < 40
        assert not processes_with(marker) & workers, log.read_text()
        text = log.read_text()
        # SIGTERM is remapped to Celery's cold shutdown (an idle worker skips the soft-shutdown wait).
        assert "Cold shutdown" in text and "cpu0@%h stopped" in text
    finally:
        cleanup([launcher], marker)


def worker_main_pid(launcher: subprocess.Popen, node: str) -> int | None:
    """The pid of the worker process ``node`` (e.g. ``cpu1@%h``) the launcher started, once it runs."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == launcher.pid and node.encode() in argv:
                return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker processes through /proc")
def test_a_dead_worker_is_reported_and_the_others_keep_running(redis_server, tmp_path):
    env = cluster_env(redis_server)
    marker = f"DIALSUM_BROKER_URL={redis_server.url}"
    log = tmp_path / "worker.log"
    launcher = start(["worker", "--gpus", "none", "--cpu-workers", "2"], env, log)
    try:
        wait_for_ping(node("cpu0"), env, launcher, log)
        os.kill(
            wait_until(lambda: worker_main_pid(launcher, "cpu1@%h"), 40, "cpu1 running", log.read_text, interval=0.5),
            signal.SIGKILL,
        )
        wait_until(
            lambda: "cpu1@%h died unexpectedly (killed by SIGKILL)" in log.read_text(),
            40,
            "the death logged",
            log.read_text,
            interval=0.5,
        )
        assert launcher.poll() is None
        assert "pong" in inspect("ping", env, node("cpu0"))
        assert stop(launcher) == 1  # one worker failed
        assert "cpu0@%h stopped" in log.read_text()
    finally:
        cleanup([launcher], marker)


def get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(":".join(auth).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""  # not listening yet


def listed_workers(base: str, auth: tuple[str, str]) -> list[str]:
    status, body = get(f"{base}/api/workers?refresh=true", auth)
    return list(json.loads(body)) if status == 200 else []


def test_flower_lists_workers_only_with_credentials(redis_server, tmp_path):
    env = cluster_env(redis_server)
    marker = f"DIALSUM_BROKER_URL={redis_server.url}"
    processes = []
    try:
        worker_log = tmp_path / "worker.log"
        processes.append(start(["worker", "--gpus", "none"], env, worker_log))
        given_port, generated_port = free_port(), free_port()
        given_log, generated_log = tmp_path / "flower-given.log", tmp_path / "flower-generated.log"
        processes.append(
            start(["flower", "--port", str(given_port)], {**env, "FLOWER_BASIC_AUTH": "test:secret"}, given_log)
        )
        processes.append(start(["flower", "--port", str(generated_port)], env, generated_log))

        given = f"http://127.0.0.1:{given_port}"
        wait_until(
            lambda: get(f"{given}/healthcheck")[0] == 200,
            40,
            "Flower answering /healthcheck",
            given_log.read_text,
            interval=0.5,
        )
        nodes = wait_until(
            lambda: listed_workers(given, ("test", "secret")),
            40,
            "the worker listed by Flower",
            worker_log.read_text,
            interval=0.5,
        )
        assert node("cpu0") in nodes, nodes
        assert get(f"{given}/api/workers")[0] == 401
        assert get(f"{given}/api/workers", ("test", "wrong"))[0] == 401

        generated = f"http://127.0.0.1:{generated_port}"
        wait_until(
            lambda: get(f"{generated}/healthcheck")[0] == 200,
            40,
            "Flower answering /healthcheck",
            generated_log.read_text,
            interval=0.5,
        )
        lines = [line for line in generated_log.read_text().splitlines() if "password:" in line]
        assert len(lines) == 1 and lines[0].startswith(f"Flower: {generated}  user: dialsum  password: ")
        password = lines[0].rsplit(" ", 1)[1]
        assert get(f"{generated}/api/workers", ("dialsum", password))[0] == 200
        assert get(f"{generated}/api/workers")[0] == 401
        assert "password:" not in given_log.read_text()  # FLOWER_BASIC_AUTH given: nothing generated

        for process in processes[1:]:
            assert stop(process, timeout=15) == 0
        assert sum("password:" in line for line in generated_log.read_text().splitlines()) == 1
    finally:
        cleanup(processes, marker)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker processes through /proc")
def test_worker_stops_when_its_redis_goes_away_as_it_stops(redis_server, tmp_path, micro_config_file):
    """A whole box shutting down: Redis stops at the moment the worker gets SIGTERM (after it has run a task)."""
    env = cluster_env(redis_server)  # soft-shutdown window 2 s: the stop deadline is 12 s
    marker = f"DIALSUM_BROKER_URL={redis_server.url}"
    log = tmp_path / "worker.log"
    launcher = start(["worker", "--gpus", "none"], env, log)
    try:
        wait_for_ping(node("cpu0"), env, launcher, log)
        submitted = dialsum("submit", "--config", str(micro_config_file), "--wait", env=env, timeout=400)
        assert submitted.returncode == 0, submitted.stderr[-3000:]
        workers = processes_with(marker) - {launcher.pid, os.getpid()}
        redis_server.stop()
        launcher.send_signal(signal.SIGTERM)
        try:
            code = launcher.wait(timeout=120)  # far past the deadline: a hang, not a slow stop, fails this
        except subprocess.TimeoutExpired:
            pytest.fail(f"dialsum worker still running 120 s after SIGTERM with its Redis gone:\n{log.read_text()}")
        assert code in (0, 1), log.read_text()
        assert not processes_with(marker) & workers, log.read_text()  # no worker or pool child left behind
        assert "cpu0@%h stopped" in log.read_text()
    finally:
        cleanup([launcher], marker)


def test_a_worker_deaf_to_sigterm_is_killed_with_its_children_at_the_stop_deadline(tmp_path):
    """What a worker blocked in its shutdown looks like to the launcher: SIGTERM ignored, a pool child below it."""
    from tasks.worker import Supervisor

    pid_file = tmp_path / "child.pid"
    code = (
        "import os, signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)']); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(600)"
    )
    supervisor = Supervisor("test", stop_deadline=2.0)
    with supervisor.forwarding_signals():
        supervisor.start("deaf@%h", [sys.executable, "-c", code], dict(os.environ))
        wait_until(lambda: pid_file.exists() and pid_file.read_text(), 60, "the pool child started")
        supervisor.terminate()
        supervisor.wait()  # returns only once the deadline's SIGKILL has ended it
    assert supervisor.killed == {"deaf@%h"} and not supervisor.failed
    grandchild = int(pid_file.read_text())
    wait_until(lambda: not Path(f"/proc/{grandchild}").exists() or "Z" in _proc_state(grandchild), 10, "child gone")


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
