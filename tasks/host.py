"""What this host offers the dialsum workers on it: its CPU cores, and the other workers already running here.

Two workers started separately on one machine (two terminals, the per-GPU systemd units, two pods of one node sharing
a ``hostPath``) used to size their thread pools to every core each, and both took the node name ``cpu0@<host>``:
two tiny trainings took 4.8x longer than through one launcher, and Flower showed one worker. So every dialsum worker
on a host records itself in a host-local registry, a directory with one JSON file per worker process and a lock file:

* node names are chosen under the lock, the lowest free ``cpu<k>`` (a GPU that already has a worker is refused);
* each task's pool child sets torch's thread count to the host's cores divided by the workers registered *when the
  task starts*, so a worker started later shrinks the share of the tasks that start after it (running tasks keep
  theirs: torch's pool cannot shrink under a running kernel, and each task runs in a fresh child anyway);
* the host's cores are the CPUs this process may run on (affinity) capped by the cgroup CPU quota (``cpu.max``,
  v1 ``cpu.cfs_quota_us``): inside a container the affinity mask is the whole node even when the quota is 4 cores.

Entries of processes that died without cleaning up (SIGKILL) are ignored and removed by the next reader: the pid is
checked. The registry is ``DIALSUM_HOST_REGISTRY`` or ``<tmp>/dialsum-workers-<uid>``; workers of different users or
containers with separate ``/tmp`` do not see each other unless they share it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REGISTRY_ENV = "DIALSUM_HOST_REGISTRY"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def registry_dir() -> Path:
    """This host's registry directory (created on first use): one per host name, so machines that share a
    filesystem (or namespaces that play nodes on one machine) keep separate registries."""
    configured = os.environ.get(REGISTRY_ENV, "").strip()
    base = Path(configured) if configured else Path(tempfile.gettempdir()) / f"dialsum-workers-{os.getuid()}"
    directory = base / socket.gethostname()
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one owned by another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


@contextlib.contextmanager
def _locked() -> Iterator[Path]:
    directory = registry_dir()
    with open(directory / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield directory
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_live(directory: Path) -> dict[int, list[str]]:
    """Node names per live registered pid; files of dead pids and unreadable files are removed."""
    live: dict[int, list[str]] = {}
    for path in directory.glob("*.json"):
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            pid, names = int(entry["pid"]), [str(name) for name in entry["names"]]
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if pid_alive(pid):
            live[pid] = names
        else:
            path.unlink(missing_ok=True)
    return live


def registered_workers() -> dict[int, list[str]]:
    """Node names of the live dialsum workers on this host, by the pid that registered them."""
    with _locked() as directory:
        return _read_live(directory)


def worker_count() -> int:
    """How many dialsum worker processes are registered on this host (at least 1: the caller)."""
    return max(1, sum(len(names) for names in registered_workers().values()))


def register(pid: int, names: list[str]) -> None:
    """Record ``names`` as the workers of process ``pid`` (replacing what ``pid`` registered before)."""
    with _locked() as directory:
        _write(directory, pid, names)


def unregister(pid: int) -> None:
    """Remove the entry of ``pid`` (a stopping worker or launcher)."""
    with _locked() as directory:
        (directory / f"{pid}.json").unlink(missing_ok=True)


def _write(directory: Path, pid: int, names: list[str]) -> None:
    tmp = directory / f".{pid}.json.tmp"
    tmp.write_text(json.dumps({"pid": pid, "names": names, "registered_at": time.time()}), encoding="utf-8")
    os.replace(tmp, directory / f"{pid}.json")


def reserve(pid: int, choose: Callable[[set[str]], list[str]]) -> list[str]:
    """Choose node names and register them as ``pid``'s in one step, under the registry lock.

    ``choose`` gets the names live workers on this host already hold and returns the new ones; a launcher started
    at the same moment waits for the lock and then sees them, so two launchers never pick the same name.
    """
    with _locked() as directory:
        names = choose({name for names in _read_live(directory).values() for name in names})
        _write(directory, pid, names)
        return names


def cgroup_cpu_limit(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (``cpu.max`` of v2, ``cfs_quota_us`` of v1), None if unlimited.

    Every level from the process's own cgroup up to the root is read and the smallest quota wins: a container's
    limit is often set on a parent of the cgroup its processes sit in.
    """
    try:
        lines = proc_cgroup.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    limits: list[float] = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        relative = Path(path.lstrip("/"))
        if controllers == "":  # cgroup v2: "0::/user.slice/..."
            for level in [relative, *relative.parents]:
                limits += _v2_limit(cgroup_root / level / "cpu.max")
        elif "cpu" in controllers.split(","):  # cgroup v1: "4:cpu,cpuacct:/docker/<id>"
            for base in (cgroup_root / "cpu,cpuacct", cgroup_root / "cpu"):
                for level in [relative, *relative.parents]:
                    limits += _v1_limit(base / level)
    return min(limits) if limits else None


def _v2_limit(path: Path) -> list[float]:
    try:
        quota, period = (path.read_text(encoding="utf-8").split() + ["100000"])[:2]
    except OSError:
        return []
    if quota == "max" or not re.fullmatch(r"\d+", quota) or not re.fullmatch(r"\d+", period) or int(period) == 0:
        return []
    return [int(quota) / int(period)]


def _v1_limit(directory: Path) -> list[float]:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text(encoding="utf-8"))
        period = int((directory / "cpu.cfs_period_us").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [quota / period] if quota > 0 and period > 0 else []


def host_cores() -> int:
    """CPU cores the workers of this host may use: the affinity mask, capped by the cgroup quota (rounded up)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(cores, math.ceil(limit))) if limit else cores


def thread_share() -> int:
    """Torch threads for a task starting now: the host's cores split between its registered dialsum workers."""
    return max(1, host_cores() // worker_count())
