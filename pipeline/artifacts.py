"""The artifact root: its layout, content hashes, atomic writes and a file lock.

Everything a run leaves behind lives under one root (a local path or a filesystem every node
mounts), laid out as in DESIGN.md::

    <root>/datasets/<fingerprint>/      prepared (tokenized) data
    <root>/runs/<experiment>/<run_id>/  config.yaml, checkpoints/, model/, metrics.json, predictions.csv, ...
    <root>/sweeps/<sweep_id>/           sweep state and reports
    <root>/registry/                    the model registry

Writers never leave a half-written file or directory where a reader could see it: they write
under a temporary name in the same directory and rename, which is atomic on POSIX filesystems.
"""

from __future__ import annotations

import contextlib
import copy
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
    """Write ``data`` to ``path`` atomically; on any error the old file (if any) is untouched."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; workers of other users on a shared artifact root must read the file.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return target


@contextlib.contextmanager
def atomic_directory(final_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``final_dir`` only if the block succeeds.

    On success an existing ``final_dir`` is moved aside, the new one renamed into place and the
    old one deleted; a failure inside the block (disk full, a crash in ``save_pretrained``)
    removes the temporary directory and leaves ``final_dir`` as it was.
    """
    final = Path(final_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
