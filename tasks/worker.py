"""``dialsum worker``: start one Celery worker process per GPU (and CPU workers) on this node, in the foreground.

Each worker is a plain ``python -m celery -A tasks.app worker`` child process, so what runs is the stock Celery
CLI and ``celery -A tasks.app inspect ...`` sees ordinary nodes:

* GPU worker ``k``: ``CUDA_VISIBLE_DEVICES=k`` in its environment before Python starts (with
  ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so ``k`` is the GPU ``nvidia-smi`` calls ``k``), node ``gpu<k>@%h``,
  ``--concurrency 1 --pool custom -E`` with ``CELERY_CUSTOM_WORKER_POOL=tasks.pool:TaskPool`` (Celery's prefork
  pool, tasks/pool.py) on queue ``gpu``. With ``worker_max_tasks_per_child=1`` (tasks/app.py) every task runs in a
  fresh pool child, and GPU memory is returned when that child exits. This launcher never imports torch; CUDA is
  meant to be initialized only in the pool child that runs a task.
* CPU workers ``cpu<k>@%h`` see no GPU: on a GPU node one of them consumes ``cpu`` so tokenizing and ROUGE do not
  hold a GPU; on a CPU-only node (``--gpus none``) they consume both ``gpu`` and ``cpu``.
* torch/OpenMP/MKL threads are split between all the dialsum workers of the host, however they were started
  (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` at launch; ``DIALSUM_TORCH_THREADS=auto`` recomputed as each task starts,
  from the host registry of tasks/host.py): two trainings with default thread counts on one machine ran 6x slower
  than with their cores split. Node names are chosen in the same registry, so two launchers never both start
  ``cpu0``. :func:`configure_worker_process` applies the torch part in the pool child.

Stopping: SIGTERM or SIGINT to the launcher is forwarded to every worker as SIGTERM. The workers run with
``REMAP_SIGTERM=SIGQUIT``, so Celery turns SIGTERM into a cold shutdown preceded by the soft-shutdown window
(``worker_soft_shutdown_timeout``, tasks/app.py): the running task gets that long to reach a checkpoint, then its
unacknowledged (late-ack) message goes back on the queue for another worker. Celery sleeps out the whole window even
when idle (``worker_enable_soft_shutdown_on_idle``); a second signal cancels the running task right away (requeued),
and the worker still exits at the end of the window. A worker still running ``STOP_GRACE`` seconds after the window
(seen when Redis went away as it stopped: blocked on a futex, deaf to more signals) is SIGKILLed with its pool.

A worker that dies on its own is logged with its node name and exit status and the others keep running: a node
losing one GPU should not stop the work on the rest. The launcher exits non-zero once all workers have ended if any
of them failed; restart policy belongs to the supervisor (systemd ``Restart=on-failure``; use ``KillMode=mixed`` so
only the launcher receives SIGTERM and forwards it once).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Iterator, Mapping, Sequence

CELERY_APP = "tasks.app"
# Celery's cold-shutdown handler carries EX_FAILURE (1) as exit status (celery.apps.worker); 5.7 was seen exiting 0
# after it, but either one after a stop we requested is a clean stop, not a crash.
COLD_SHUTDOWN_EXIT = 1
POLL_SECONDS = 0.2
# After the soft-shutdown window a worker has this long to finish its cold shutdown before it is SIGKILLed.
STOP_GRACE = 10.0
# Celery's prefork pool, replacing each finished child within 0.1 s (tasks/pool.py); ``--pool custom`` loads it.
PREFORK_POOL = "tasks.pool:TaskPool"
# Set by the launcher, which registered its workers on the host (tasks/host.py): they must not do it again.
LAUNCHED_ENV = "DIALSUM_LAUNCHED_BY"


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """One worker process to start.

    Attributes:
        name: Celery node name, e.g. ``gpu0@%h`` (Celery expands ``%h`` to the host name).
        queues: Queues the worker consumes.
        env: Variables added to the inherited environment of the child.
        argv: The full command line.
    """

    name: str
    queues: tuple[str, ...]
    env: dict[str, str]
    argv: list[str]

    def command_line(self) -> str:
        """The command as a shell line with its environment additions in front (what ``--dry-run`` prints)."""
        assignments = [f"{key}={shlex.quote(value)}" for key, value in self.env.items()]
        return " ".join([*assignments, shlex.join(self.argv)])


def plan_workers(
    gpus: str,
    queues: str | None,
    cpu_workers: int,
    cores: int,
    host: str | None = None,
    loglevel: str = "info",
    taken: Collection[str] = (),
) -> list[WorkerSpec]:
    """The worker processes ``dialsum worker`` starts on this node; starts nothing.

    Args:
        gpus: ``"0,2"`` (GPU indices as ``nvidia-smi`` numbers them), ``"all"`` (ask ``nvidia-smi -L``) or ``"none"``.
        queues: Comma-separated queues overriding the default of the main workers (``gpu`` for GPU workers,
            ``gpu,cpu`` for the CPU workers of a CPU-only node); ``None`` for the default.
        cpu_workers: CPU workers to add: with GPUs at most one (``cpu0`` on queue ``cpu``; 0 for none), without
            GPUs this many (at least 1).
        cores: CPU cores of the node, split between all the workers for their thread pools.
        host: Host part of the node names; ``None`` leaves ``%h`` for Celery to expand.
        loglevel: Celery ``--loglevel``.
        taken: Node names other dialsum workers on this host already hold (tasks/host.py): CPU workers take the
            lowest free ``cpu<k>``, a GPU with a worker is refused, and the cores are split among them all.

    Returns:
        One spec per worker process, GPU workers first.

    Raises:
        ValueError: A bad ``--gpus``, ``--queues`` or ``--cpu-workers``, ``all`` on a node without GPUs, or a GPU
            that already has a worker on this host.
    """
    if cpu_workers < 0:
        raise ValueError(f"--cpu-workers must be 0 or more, got {cpu_workers}")
    indices = parse_gpus(gpus)
    chosen = parse_queues(queues) if queues is not None else None
    host = host or "%h"
    taken = set(taken)
    busy = [k for k in indices if f"gpu{k}@{host}" in taken]
    if busy:
        raise ValueError(
            f"GPU {busy[0]} already has a dialsum worker on this host (gpu{busy[0]}@{host}); stop it first or "
            f"start this one with other --gpus"
        )
    if not indices and cpu_workers < 1:
        raise ValueError("--cpu-workers must be at least 1 with --gpus none (nothing would run on this node)")
    free_cpu_names = (name for k in itertools.count() if (name := f"cpu{k}@{host}") not in taken)
    members = [(f"gpu{k}@{host}", chosen or ("gpu",), str(k)) for k in indices]
    if indices and cpu_workers:
        # CUDA_VISIBLE_DEVICES="" so a CPU stage cannot grab a GPU that a training is pinned to.
        members.append((next(free_cpu_names), ("cpu",), ""))
    elif not indices:
        members += [(next(free_cpu_names), chosen or ("gpu", "cpu"), "") for _ in range(cpu_workers)]
    # The launch-time share; each task's pool child recomputes it from the workers registered when it starts.
    threads = str(max(1, cores // (len(members) + len(taken))))
    return [_spec(name, member_queues, devices, threads, loglevel) for name, member_queues, devices in members]


def _spec(name: str, queues: tuple[str, ...], devices: str, threads: str, loglevel: str) -> WorkerSpec:
    env = {
        "CUDA_VISIBLE_DEVICES": devices,
        # CUDA numbers devices fastest-first by default, nvidia-smi by PCI bus: make index k the same GPU in both.
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        # "auto": each task sets torch's threads to the host's share when it starts (tasks/host.py); a number wins.
        "DIALSUM_TORCH_THREADS": os.environ.get("DIALSUM_TORCH_THREADS", "").strip() or "auto",
        # SIGTERM -> Celery's cold shutdown with the soft-shutdown window, which requeues the late-ack message.
        "REMAP_SIGTERM": "SIGQUIT",
        "PYTHONUNBUFFERED": "1",
        "CELERY_CUSTOM_WORKER_POOL": PREFORK_POOL,
    }
    argv = [sys.executable, "-m", "celery", "-A", CELERY_APP, "worker", "-n", name]
    argv += ["--concurrency", "1", "--pool", "custom", "-Q", ",".join(queues), "-E", "--loglevel", loglevel]
    return WorkerSpec(name=name, queues=queues, env=env, argv=argv)


def parse_gpus(gpus: str) -> list[int]:
    """GPU indices from ``--gpus``: an explicit list, ``all`` (from ``nvidia-smi -L``) or ``none`` (empty list)."""
    text = gpus.strip().lower()
    if text == "none":
        return []
    if text == "all":
        return discover_gpus()
    items = [item.strip() for item in text.split(",")]
    if not text or not all(item.isdigit() for item in items):
        raise ValueError(f"--gpus must be a comma-separated list of GPU indices (e.g. 0,1), all or none; got {gpus!r}")
    indices = [int(item) for item in items]
    duplicates = sorted({k for k in indices if indices.count(k) > 1})
    if duplicates:
        raise ValueError(f"--gpus lists GPU {duplicates[0]} twice ({gpus!r}): each GPU gets exactly one worker")
    return indices


def parse_queues(queues: str) -> tuple[str, ...]:
    """Queue names from ``--queues``; only the queues tasks/app.py declares (a typo would consume nothing)."""
    from tasks.app import app  # celery only, no torch

    known = [queue.name for queue in app.conf.task_queues]
    names = tuple(name.strip() for name in queues.split(",") if name.strip())
    unknown = [name for name in names if name not in known]
    if not names or unknown:
        raise ValueError(f"--queues must be a comma-separated subset of {','.join(known)}; got {queues!r}")
    return names


def discover_gpus() -> list[int]:
    """GPU indices listed by ``nvidia-smi -L`` (this process never imports torch nor initializes CUDA)."""
    fix = "no GPU found ({}); on a CPU-only machine use --gpus none"
    binary = shutil.which("nvidia-smi")
    if binary is None:
        raise ValueError(fix.format("nvidia-smi is not on PATH"))
    try:
        result = subprocess.run([binary, "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ValueError(fix.format(f"nvidia-smi -L failed: {error}")) from error
    # "GPU 0: NVIDIA H200 (UUID: GPU-...)"; MIG devices are indented lines below their GPU and are skipped.
    indices = [int(match) for match in re.findall(r"^GPU (\d+):", result.stdout, flags=re.MULTILINE)]
    if result.returncode != 0 or not indices:
        detail = (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"
        raise ValueError(fix.format(f"nvidia-smi -L: {detail}"))
    return indices


def configure_worker_process() -> int | None:
    """Apply ``DIALSUM_TORCH_THREADS`` in a pool child: ``torch.set_num_threads(n)``; returns ``n`` (None: unset).

    ``auto`` (what ``dialsum worker`` sets) is the host's cores split between the dialsum workers registered on it
    right now (:func:`tasks.host.thread_share`). Meant for the start of each task (``task_prerun``): importing torch
    here, in the child that runs tasks, is fine.

    Raises:
        ValueError: ``DIALSUM_TORCH_THREADS`` is neither ``auto`` nor a positive integer.
    """
    value = os.environ.get("DIALSUM_TORCH_THREADS", "").strip()
    if not value:
        return None
    if value == "auto":
        from tasks.host import thread_share

        threads = thread_share()
    elif value.isdigit() and int(value) >= 1:
        threads = int(value)
    else:
        raise ValueError(f"DIALSUM_TORCH_THREADS must be auto or a positive integer, got {value!r}")
    import torch

    torch.set_num_threads(threads)
    return threads


def stop_deadline() -> float:
    """Seconds a worker gets from SIGTERM to exit before it is killed: the soft-shutdown window plus ``STOP_GRACE``."""
    return float(os.environ.get("DIALSUM_SOFT_SHUTDOWN_TIMEOUT", 30)) + STOP_GRACE


def run_workers(specs: Sequence[WorkerSpec], environ: Mapping[str, str] | None = None) -> int:
    """Start ``specs`` as child processes and supervise them until all have ended.

    Args:
        specs: Workers from :func:`plan_workers`.
        environ: Base environment (default ``os.environ``); each child gets it plus its spec's ``env``.

    Returns:
        0 when every worker ended cleanly, 1 when any failed (each failure is logged to stderr).
    """
    base = dict(os.environ if environ is None else environ)
    children = Supervisor("dialsum worker", clean_stop_codes=(0, COLD_SHUTDOWN_EXIT), stop_deadline=stop_deadline())
    with children.forwarding_signals():
        for spec in specs:
            if children.stopping:
                break
            children.log(f"starting {spec.name} on queue(s) {','.join(spec.queues)}: {spec.command_line()}")
            children.start(spec.name, spec.argv, {**base, **spec.env, LAUNCHED_ENV: str(os.getpid())})
        children.wait()
    return 1 if children.failed else 0


class Supervisor:
    """Foreground child processes: started in their own sessions, signals forwarded, exits logged by name.

    Args:
        label: Prefix of the messages this supervisor writes to stderr.
        clean_stop_codes: Exit statuses that count as clean after a stop was requested.
        stop_deadline: Seconds after the first SIGTERM at which a child still running is SIGKILLed with its whole
            process group (None: wait forever).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, label: str, clean_stop_codes: Sequence[int] = (0,), stop_deadline: float | None = None) -> None:
        self.label = label
        self.clean_stop_codes = tuple(clean_stop_codes)
        self.stop_deadline = stop_deadline
        self.processes: dict[str, subprocess.Popen] = {}
        self.stopping = False
        self.stop_requested_at: float | None = None
        self.killed: set[str] = set()
        self.failed: list[str] = []

    def start(self, name: str, argv: list[str], env: Mapping[str, str]) -> None:
        """Start one child; in its own session, so a Ctrl+C in the terminal reaches it once, through us."""
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        process = subprocess.Popen(argv, env=dict(env), start_new_session=True, preexec_fn=preexec)
        self.processes[name] = process
        if self.stopping:  # the signal came while Popen ran, before this child could be reached
            process.send_signal(signal.SIGTERM)

    @contextlib.contextmanager
    def forwarding_signals(self) -> Iterator[Supervisor]:
        """While inside, SIGTERM/SIGINT to this process stop the children; an error inside stops them too."""
        previous = {signum: signal.signal(signum, self._on_signal) for signum in self.SIGNALS}
        try:
            yield self
        except BaseException:
            self.terminate()  # a launcher error (e.g. a failed Popen) must not leave children behind
            raise
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame) -> None:
        if not self.stopping:
            self.log(f"{signal.Signals(signum).name} received: stopping {len(self.live())} process(es)")
        self.terminate()

    def terminate(self) -> None:
        """Send SIGTERM to every live child (for SIGINT too: SIGTERM is the workers' graceful, requeueing path)."""
        self.stopping = True
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()
        for process in self.live():
            process.send_signal(signal.SIGTERM)

    def _kill_overdue(self) -> None:
        """SIGKILL, with their pool children, the children still running ``stop_deadline`` s after the stop.

        A Celery worker whose Redis went away as it stopped was seen to wait on a futex for 2 to 25 minutes, deaf to
        more SIGTERMs: its shutdown tries to hand the unacknowledged message back to a broker that is not there.
        That message is not lost: it stays in Redis's unacked set and returns after the visibility timeout, and the
        run's lease expires, so the lease reaper of any live worker re-enqueues the stage sooner (RELIABILITY.md).
        """
        if self.stop_deadline is None or self.stop_requested_at is None:
            return
        if time.monotonic() - self.stop_requested_at < self.stop_deadline:
            return
        for name, process in self.processes.items():
            if process.poll() is None and name not in self.killed:
                self.killed.add(name)
                self.log(
                    f"{name} still running {self.stop_deadline:.0f} s after SIGTERM (is its broker reachable?): "
                    f"killing it and its pool children; its unacknowledged task returns through the lease reaper or "
                    f"the visibility timeout"
                )
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)  # its own session: the group is the worker and its pool

    def live(self) -> list[subprocess.Popen]:
        """Children still running."""
        return [process for process in self.processes.values() if process.poll() is None]

    def wait(self) -> None:
        """Block until every child has exited, logging each exit."""
        running = dict(self.processes)
        while running:
            for name, process in list(running.items()):
                code = process.poll()
                if code is not None:
                    del running[name]
                    self._record_exit(name, code, len(running))
            if running:
                self._kill_overdue()
                time.sleep(POLL_SECONDS)

    def _record_exit(self, name: str, code: int, remaining: int) -> None:
        status = f"exit status {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"
        # After our SIGTERM, dying of it is a clean stop too (a child still starting has no handler for it yet); so
        # is our own SIGKILL of a worker that overran the stop deadline (logged when it was sent).
        if name in self.killed and code == -signal.SIGKILL:
            self.log(f"{name} stopped (killed after the stop deadline)")
            return
        if code == 0 or (self.stopping and code in (*self.clean_stop_codes, -signal.SIGTERM)):
            self.log(f"{name} stopped ({status})")
            return
        self.failed.append(name)
        if self.stopping:
            self.log(f"{name} failed while stopping ({status})")
        elif remaining:
            self.log(f"{name} died unexpectedly ({status}); the other {remaining} keep running")
        else:
            self.log(f"{name} died unexpectedly ({status})")

    def log(self, message: str) -> None:
        """A supervisor message on stderr, apart from the children's own output."""
        print(f"{self.label}: {message}", file=sys.stderr, flush=True)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the launcher dies, so a SIGKILLed launcher leaves no workers."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def main(args) -> int:
    """``dialsum worker`` with parsed arguments (see tasks/cli.py)."""
    from tasks import host

    specs: list[WorkerSpec] = []

    hostname = socket.gethostname()  # what Celery puts for %h in a node name

    def choose(taken: set[str]) -> list[str]:
        local = {name.replace(f"@{hostname}", "@%h") for name in taken}
        specs[:] = plan_workers(args.gpus, args.queues, args.cpu_workers, host.host_cores(), None, args.loglevel, local)
        return [spec.name.replace("%h", hostname) for spec in specs]

    if args.dry_run:
        choose({name for names in host.registered_workers().values() for name in names})
        for spec in specs:
            print(spec.command_line())
        return 0
    # Names and the host's thread share are decided under the host registry's lock (tasks/host.py), so workers
    # started separately on one machine never share a node name and split its cores between them.
    host.reserve(os.getpid(), choose)
    try:
        return run_workers(specs)
    finally:
        host.unregister(os.getpid())
