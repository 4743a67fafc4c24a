"""The artifact root: its layout, content hashes, atomic writes and a file lock.

Everything a run leaves behind lives under one root (a local path or a filesystem every node
mounts), laid out as in DESIGN.md::

    <root>/datasets/<fingerprint>/      prepared (tokenized) data
    <root>/runs/<experiment>/<run_id>/  config.yaml, checkpoints/, model/, metrics.json, predictions.csv, ...
    <root>/sweeps/<sweep_id>/           sweep state and reports
    <root>/registry/                    the model registry

Writers never leave a half-written file or directory where a reader could see it: they write
under a temporary name in the same directory and rename, which is atomic on POSIX filesystems.
A write that fails because the disk is full, read-only or not writable raises
:class:`OutputDirectoryError`, which names the directory and what to do, with the OS error as its cause.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Config keys that do not change what a run computes; they are left out of the run id so that
# renaming a W&B project or moving the predictions file does not retrain an identical model.
_RUN_ID_IGNORED_KEYS = {
    "experiment": {"description", "tags"},
    "general": {"output_dir", "device"},
    "wandb": None,  # whole section
    "inference": {"output_path"},
}

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")

# What a failed write's errno means for the user, and what to do about it.
_OUTPUT_FIXES = {
    errno.ENOSPC: ("no space is left on its filesystem", "free space there"),
    errno.EDQUOT: ("the disk quota is exhausted", "free space or raise the quota"),
    errno.EROFS: ("its filesystem is mounted read-only", "remount it read-write"),
    errno.EACCES: ("permission denied", "give this user write permission on it"),
    errno.EPERM: ("operation not permitted", "give this user write permission on it"),
}
# torch.save reports a full disk as "unexpected pos N vs M", without an errno: an I/O-looking error
# (OSError, RuntimeError) of a writer whose filesystem has less than this left is taken for a full disk.
_FULL_BELOW_BYTES = 1 << 20


class OutputDirectoryError(OSError):
    """Writing under an output directory failed: its filesystem is full, read-only or not writable.

    The message names the directory and the fix; ``errno`` is the OS error's and ``__cause__`` the
    original exception.
    """


def _free_bytes(path: Path) -> int | None:
    """Bytes available to this user on the filesystem of ``path`` (its nearest existing ancestor)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            stats = os.statvfs(candidate)
            return stats.f_bavail * stats.f_frsize
    return None


def output_error(error: BaseException, directory: str | Path) -> OutputDirectoryError | None:
    """The clear error for a write under ``directory`` that failed with ``error``, or None if it is no disk problem.

    Recognized: an OSError with errno ENOSPC, EDQUOT, EROFS, EACCES or EPERM; an error whose text carries
    one of those (safetensors and torch report them so); an OSError or RuntimeError while the filesystem
    is (nearly) full. Call it before removing the partial output, which frees the space that shows the
    disk was full.

    Args:
        error: What the write raised.
        directory: The directory written in, named in the message.

    Returns:
        An error naming the directory, the problem and the fix (``error`` becomes its cause when raised
        ``from`` it), or None when ``error`` is not about the disk.
    """
    if isinstance(error, OutputDirectoryError) or not isinstance(error, Exception):
        return None
    directory = Path(directory)
    code = error.errno if isinstance(error, OSError) and error.errno in _OUTPUT_FIXES else None
    if code is None:
        text = str(error)
        code = next((number for number in _OUTPUT_FIXES if os.strerror(number) in text), None)
    free = _free_bytes(directory)
    if code is None and isinstance(error, (OSError, RuntimeError)) and free is not None and free < _FULL_BELOW_BYTES:
        code = errno.ENOSPC
    if code is None:
        return None
    problem, fix = _OUTPUT_FIXES[code]
    if code in (errno.ENOSPC, errno.EDQUOT) and free is not None:
        problem += f" ({free:,} bytes free)"
    return OutputDirectoryError(
        code,
        f"cannot write to {directory}: {problem}; {fix}, or point general.output_dir (run files) or "
        f"general.artifact_root (caches, registry) at another directory ({type(error).__name__}: {error})",
    )


@contextlib.contextmanager
def output_errors(directory: str | Path, cleanup: Any = None) -> Iterator[None]:
    """Raise :class:`OutputDirectoryError` (see :func:`output_error`) for a block that writes under ``directory``.

    Args:
        directory: The directory the block writes in; named in the error.
        cleanup: Called without arguments when the block fails, after the disk was looked at and
            before the error propagates: removes the block's partial output.
    """
    try:
        yield
    except BaseException as error:
        wrapped = output_error(error, directory)
        if cleanup is not None:
            cleanup()
        if wrapped is None:
            raise
        raise wrapped from error


def datasets_dir(root: str | Path) -> Path:
    """Directory holding prepared datasets, one sub-directory per fingerprint."""
    return Path(root) / "datasets"


def runs_dir(root: str | Path) -> Path:
    """Directory holding all runs, grouped by experiment name."""
    return Path(root) / "runs"


def run_dir(root: str | Path, experiment: str, run_id: str) -> Path:
    """Directory of one run: ``<root>/runs/<experiment>/<run_id>``."""
    return runs_dir(root) / safe_name(experiment) / safe_name(run_id)


def sweeps_dir(root: str | Path) -> Path:
    """Directory holding sweep state and reports."""
    return Path(root) / "sweeps"


def registry_dir(root: str | Path) -> Path:
    """Directory of the file-based model registry."""
    return Path(root) / "registry"


def safe_name(name: str) -> str:
    """Return ``name`` if it is usable as one path component, else raise ValueError.

    Experiment names and run ids become directory names; a ``/`` or ``..`` in them would let a
    config write outside the artifact root.
    """
    if not name or name in {".", ".."} or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise ValueError(f"{name!r} is not usable as a directory name: use letters, digits, '_', '-' and '.' only")
    return name


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal objects hash equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(obj: Any, length: int = 16) -> str:
    """Short sha256 hex digest of ``obj``'s canonical JSON."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:length]


def file_sha256(path: str | Path) -> str:
    """Full sha256 hex digest of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_id_for(config: dict[str, Any]) -> str:
    """Run id derived from the parts of a resolved config that change what the run computes.

    The same trial configured twice gets the same id, so it finds its own checkpoints (resume)
    and its finished result (no second training).
    """
    relevant = copy.deepcopy(config)
    for section, keys in _RUN_ID_IGNORED_KEYS.items():
        if section not in relevant:
            continue
        if keys is None:
            relevant.pop(section)
        else:
            for key in keys:
                relevant[section].pop(key, None)
    return "run-" + content_hash(relevant, 12)


def latest_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    """The ``checkpoint-N`` directory with the highest N, or None when there is none.

    Only complete checkpoints count: HF writes ``trainer_state.json`` last, so a directory
    without it is a save that was interrupted.
    """
    directory = Path(checkpoints_dir)
    if not directory.is_dir():
        return None
    candidates = []
    for child in directory.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and (child / "trainer_state.json").is_file():
            candidates.append((int(match.group(1)), child))
    return max(candidates)[1] if candidates else None


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented UTF-8 JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; on any error the old file (if any) is untouched.

    Raises:
        OutputDirectoryError: The directory's filesystem is full, read-only or not writable.
    """
    target = Path(path)
    tmp_name = None

    def discard() -> None:
        if tmp_name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)

    with output_errors(target.parent, cleanup=discard):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; workers of other users on a shared artifact root must read the file.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    return target


@contextlib.contextmanager
def atomic_directory(final_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``final_dir`` only if the block succeeds.

    On success an existing ``final_dir`` is moved aside, the new one renamed into place and the
    old one deleted; a failure inside the block (disk full, a crash in ``save_pretrained``)
    removes the temporary directory and leaves ``final_dir`` as it was.

    Raises:
        OutputDirectoryError: The filesystem is full, read-only or not writable (the block's error is its cause).
    """
    final = Path(final_dir)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    with output_errors(final.parent):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    with output_errors(final.parent, cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True)):
        yield tmp
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def file_lock(lock_path: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if missing) for the block.

    Works across processes on one machine and on NFS v4 mounts that support locks; it is how
    concurrent writers (several workers registering models) serialize their read-modify-write.
    """
    path = Path(lock_path)
    with output_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # closed by the with block below
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
