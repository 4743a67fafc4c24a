"""A real cluster for the orchestration benchmarks: a private ``redis-server`` and ``dialsum worker``-style workers.

The workers are started with exactly the command lines ``dialsum worker --gpus none --cpu-workers K`` plans
(``tasks.worker.plan_workers``: ``tasks.pool:TaskPool``, concurrency 1, both queues, threads split between workers),
except that ``-A`` may name a module under ``bench/`` that adds stand-in tasks to the real app, and that the worker
may be stock Celery prefork instead (``STOCK``: see ``bench/worker_variants.py``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from benchlib import BENCH_DIR, REPO

# The worker as ``dialsum worker`` starts it, and stock Celery prefork: the same command line with ``--pool prefork``
# and the preload's gc.freeze() undone (bench/worker_variants.py), to show what tasks/pool.py and the freeze are worth.
PRODUCT, STOCK = "dialsum worker", "stock Celery prefork"
VARIANTS = (PRODUCT, STOCK)


def worker_command(argv: list[str], env: dict[str, str], variant: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a ``variant`` worker, from what ``plan_workers`` planned."""
    if variant == PRODUCT:
        return argv, env
    if variant != STOCK:
        raise ValueError(f"unknown worker variant {variant!r}")
    argv = list(argv)
    argv[argv.index("--pool") + 1] = "prefork"
    env = {key: value for key, value in env.items() if key != "CELERY_CUSTOM_WORKER_POOL"}
    return argv, {**env, "BENCH_GC_UNFREEZE": "1"}


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """Redis plus ``workers`` Celery workers running ``app_module``; a context manager that stops them all.

    Args:
        directory: Where redis and the workers' log live.
        workers: How many CPU workers (each consumes both queues, like a CPU-only node's).
        app_module: The Celery app module given to ``-A`` (``tasks.app``, or a bench module importing it; the stock
            worker needs one, since ``bench/worker_variants.py`` undoes the freeze).
        variant: ``PRODUCT`` or ``STOCK``.
        env: Extra environment of the workers.
    """

    def __init__(
        self,
        directory: Path,
        workers: int,
        app_module: str = "tasks.app",
        variant: str = PRODUCT,
        env: dict | None = None,
    ):
        if variant == STOCK and app_module == "tasks.app":
            raise ValueError("the stock worker needs a bench module (-A worker_variants) to undo gc.freeze()")
        self.directory = directory
        self.workers = workers
        self.app_module = app_module
        self.variant = variant
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.env = {
            **os.environ,
            "DIALSUM_BROKER_URL": self.url,
            "DIALSUM_SOFT_SHUTDOWN_TIMEOUT": "0.5",  # nothing to checkpoint when the benchmark stops them
            "PYTHONPATH": os.pathsep.join([str(BENCH_DIR), str(REPO), os.environ.get("PYTHONPATH", "")]),
            **(env or {}),
        }
        self.processes: list[subprocess.Popen] = []
        self.started_in = 0.0

    @property
    def log_path(self) -> Path:
        return self.directory / "workers.log"

    def __enter__(self) -> Cluster:
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._start_redis()
            start = time.monotonic()
            self._start_workers()
            self._wait_for_workers()
            self.started_in = time.monotonic() - start
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        args += ["--save", "", "--appendonly", "no"]
        self.processes.append(
            subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        )
        import redis

        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def _start_workers(self) -> None:
        from tasks.host import host_cores
        from tasks.worker import plan_workers

        log = self.log_path.open("w")
        for spec in plan_workers("none", None, self.workers, host_cores(), loglevel="warning"):
            argv, env = worker_command(list(spec.argv), spec.env, self.variant)
            argv[argv.index("tasks.app")] = self.app_module
            process = subprocess.Popen(
                argv,
                cwd=REPO,
                env={**self.env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends the pool children with it
            )
            self.processes.append(process)

    def _wait_for_workers(self, timeout: float = 180) -> None:
        from tasks.app import app

        app.conf.update(broker_url=self.url, result_backend=self.url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            replies = app.control.ping(timeout=1.0)
            if len(replies) >= self.workers:
                return
            if any(process.poll() is not None for process in self.processes):
                break
        raise RuntimeError(f"{self.workers} worker(s) did not answer; log:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        """Stop the workers (SIGTERM, then SIGKILL to their own process group) and redis."""
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self.processes = []
