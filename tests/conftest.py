"""Shared fixtures: real sample data on disk and a micro config that trains a real tiny model in seconds."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Tests never reach a hub or W&B servers; keep W&B's files out of the home directory too.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _own_host_registry(tmp_path_factory, monkeypatch):
    """Each test's workers register in a host registry of their own (tasks/host.py).

    Workers of a test running in parallel, or of a session fixture still alive, would otherwise hold ``cpu0@<host>``
    and the next test's worker would be named ``cpu1``, as a second worker on a real host must be.
    """
    monkeypatch.setenv("DIALSUM_HOST_REGISTRY", str(tmp_path_factory.mktemp("host-registry")))


def wait_until(predicate, timeout: float, what: str, context=lambda: "", interval: float = 0.2):
    """The first truthy value of ``predicate()``, polled every ``interval`` s; fails naming ``what`` after ``timeout``.

    ``context()`` (the end of a log, say) is shown with the failure.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"no {what} within {timeout:.0f} s\n{context()[-6000:]}")


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """Korean sample data (train 300, dev 30, test 15 rows) written once per session."""
    from pipeline.sample_data import write_sample_data

    directory = tmp_path_factory.mktemp("sample")
    write_sample_data(directory, n_train=300, n_dev=30, n_test=15, seed=0)
    return directory


def micro_config_dict(sample_dir: Path, artifact_root: Path) -> dict:
    """tiny.yaml shrunk further: 8 optimizer steps, evaluation and checkpoint every 4."""
    from pipeline.config import ConfigManager

    config = ConfigManager().load_config(REPO / "config" / "tiny.yaml")
    config["general"]["artifact_root"] = str(artifact_root)
    config["data"].update(
        sample_data=False,
        train_path=str(sample_dir / "train.csv"),
        val_path=str(sample_dir / "dev.csv"),
        test_path=str(sample_dir / "test.csv"),
    )
    config["model"]["scratch"].update(vocab_size=600, d_model=64, ffn_dim=128)
    config["training"].update(
        max_steps=8,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=16,
        eval_strategy="steps",
        eval_steps=4,
        save_strategy="steps",
        save_steps=4,
        logging_steps=2,
        save_total_limit=None,
    )
    config["generation"].update(num_beams=1, max_length=16)
    config["inference"]["batch_size"] = 8
    return ConfigManager().validate(config)


@pytest.fixture
def micro_config(sample_dir, tmp_path) -> dict:
    """A fresh micro config whose artifact root is this test's tmp_path."""
    return copy.deepcopy(micro_config_dict(sample_dir, tmp_path / "artifacts"))


@pytest.fixture
def micro_config_file(micro_config, tmp_path) -> Path:
    """The micro config written as YAML, for the examples that load a file."""
    from pipeline.config import ConfigManager

    path = tmp_path / "micro.yaml"
    ConfigManager().save_config(micro_config, path)
    return path


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A real ``redis-server`` on a free loopback port, in its own directory; it can be stopped and restarted."""

    def __init__(self, directory: Path, port: int | None = None, persist: bool = False):
        self.directory = directory
        self.port = port or free_port()
        self.persist = persist
        self.process = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        import shutil
        import subprocess
        import time

        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server (.ci/run does this)")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory), "--save", ""]
        args += ["--appendonly", "yes" if self.persist else "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def redis_server(tmp_path):
    """A private redis-server for one test."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def _stop(process: subprocess.Popen, timeout: float = 60) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def celery_command(env: dict, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks.app", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout + result.stderr


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, sample_dir):
    directory = tmp_path_factory.mktemp("cluster")
    redis = RedisServer(directory).start()
    # A short soft-shutdown window keeps teardown fast; production keeps 30 s to reach a checkpoint.
    env = {
        **os.environ,
        "DIALSUM_BROKER_URL": redis.url,
        "FLOWER_BASIC_AUTH": "admin:s3cret",
        "DIALSUM_SOFT_SHUTDOWN_TIMEOUT": "2",
        # Session-scoped, so set up before the per-test registry: its workers get one of their own.
        "DIALSUM_HOST_REGISTRY": str(directory / "host-registry"),
    }
    log = open(directory / "workers.log", "w")
    workers = subprocess.Popen(
        [sys.executable, "-m", "tasks.cli", "worker", "--gpus", "none", "--cpu-workers", "2"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    flower_port = free_port()
    flower = subprocess.Popen(
        [sys.executable, "-m", "tasks.cli", "flower", "--port", str(flower_port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            answer = celery_command(env, "inspect", "ping", "--timeout", "3")
            if "cpu0@" in answer and "cpu1@" in answer:
                break
            time.sleep(1)
        else:
            pytest.fail(f"workers did not answer ping; log:\n{(directory / 'workers.log').read_text()[-3000:]}")
        os.environ["DIALSUM_BROKER_URL"] = redis.url
        from tasks.client import PipelineClient

        client = PipelineClient(redis.url)
        yield {
            "client": client,
            "redis": redis,
            "env": env,
            "flower": f"http://127.0.0.1:{flower_port}",
            "config": micro_config_dict(sample_dir, directory / "artifacts"),
            "dir": directory,
        }
    finally:
        _stop(flower)
        _stop(workers)
        log.close()
        redis.stop()
