"""When Redis forgets: what the artifact root still knows, and putting it back on the broker.

Redis holds the queues, the run records and the sweeps; a Redis without persistence (no AOF, no RDB snapshots) that
restarts comes back empty. The run directories on the shared artifact root do not forget: each has a
``manifest.json`` with the run's config and the stages it finished, and its checkpoints. So:

* :func:`persistence_warning` tells workers and ``dialsum submit/sweep`` that this Redis would lose everything;
* :func:`runs_on_disk` lists the runs under a root and what the broker knows of each (``dialsum status --root``);
* :func:`recover` re-enqueues every unfinished run that the broker does not know (``dialsum recover --root``): the
  same config is the same run id, finished stages are skipped, training resumes from its latest checkpoint. A run
  that a worker still works on (a live lease: it trained on through the restart; or its next stage already queued
  again) is left to that worker: its record is written again so clients can follow it. Running it twice changes
  nothing the second time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import redis

from tasks.state import ACTIVE_STATUSES, read_run, redis_client, write_run


def persistence_warning(client: redis.Redis | None = None) -> str | None:
    """A warning when the broker's Redis keeps everything in memory only; None when it persists (or cannot tell).

    A managed Redis that refuses ``CONFIG GET`` gets one line saying so instead of an error.
    """
    client = client or redis_client()
    try:
        save = client.config_get("save").get("save", "")
        appendonly = client.config_get("appendonly").get("appendonly", "no")
    except redis.ResponseError as error:
        return (
            f"could not check whether this Redis persists its data (CONFIG GET refused: {error}); make sure it "
            f"has AOF or RDB snapshots on, or a restart loses every queued run (dialsum recover --root brings "
            f"them back)"
        )
    if str(appendonly).lower() == "yes" or str(save).strip():
        return None
    return (
        "this Redis has neither an append-only file nor RDB snapshots: if it restarts, every queued run, run "
        "record and sweep is lost (the run directories stay). Start it with --appendonly yes (or appendonly yes in "
        "redis.conf); after a loss, dialsum recover --root ARTIFACT_ROOT re-enqueues the unfinished runs"
    )


def checkpoint_step(run_dir: Path) -> int | None:
    """The step of the latest complete checkpoint in ``run_dir/checkpoints``, or None."""
    from pipeline.artifacts import latest_checkpoint

    latest = latest_checkpoint(run_dir / "checkpoints")
    return int(latest.name.rsplit("-", 1)[1]) if latest is not None else None


def _manifests(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted((root / "runs").glob("*/*/manifest.json")):
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a manifest being replaced, or not ours: nothing to recover from it
        if isinstance(manifest, dict) and manifest.get("run_id") and isinstance(manifest.get("config"), dict):
            found.append((path.parent, manifest))
    return found


def _known(record: dict[str, Any] | None) -> bool:
    """Whether the broker knows the run: a full record (progress writes after a restart leave partial ones)."""
    return bool(record and record.get("status") and record.get("task_ids"))


def runs_on_disk(root: str | Path) -> list[dict[str, Any]]:
    """Every run under ``root/runs``: id, directory, status on disk, stages done, latest checkpoint, broker status.

    ``broker`` is the broker's status for the run, or None when the broker does not know it.
    """
    rows = []
    for run_dir, manifest in _manifests(Path(root)):
        record = read_run(manifest["run_id"])
        rows.append(
            {
                "run_id": manifest["run_id"],
                "experiment": manifest.get("experiment", ""),
                "run_dir": str(run_dir),
                "status": manifest.get("status", ""),
                "stages_done": [stage for stage, info in manifest.get("stages", {}).items() if info.get("finished_at")],
                "checkpoint": checkpoint_step(run_dir),
                "broker": record.get("status") if _known(record) else None,
            }
        )
    return rows


def describe_unknown(row: dict[str, Any], root: str | Path) -> str:
    """One line for a run on disk that the broker does not know, with how to bring it back."""
    where = f"checkpoint-{row['checkpoint']}" if row["checkpoint"] is not None else "the start"
    done = ", ".join(row["stages_done"]) or "no stage"
    return (
        f"{row['run_id']}: known on disk ({row['run_dir']}; {done} done), unknown to the broker: "
        f"dialsum recover --root {root} resubmits it, resuming from {where}"
    )


def recover(root: str | Path) -> list[dict[str, Any]]:
    """Re-enqueue every unfinished run under ``root`` that the broker does not know; idempotent.

    Returns:
        One ``{"run_id", "action", "detail"}`` per run: ``resubmitted``, ``running`` (a live lease: the worker that
        holds it goes on; its record was written again), ``known`` (the broker has it) or ``completed``.
    """
    from pipeline.config import ConfigManager
    from tasks.app import STAGE_QUEUES
    from tasks.enqueue import enqueue_run
    from tasks.lease import lease_holder, lease_seconds, runs_in_flight

    client = redis_client()
    actions = []
    candidates = []
    for run_dir, manifest in _manifests(Path(root)):
        run_id = manifest["run_id"]
        record = read_run(run_id)
        if manifest.get("status") == "completed" or (record or {}).get("status") == "completed":
            actions.append({"run_id": run_id, "action": "completed", "detail": str(run_dir)})
        elif _known(record) and record["status"] in ACTIVE_STATUSES:
            actions.append({"run_id": run_id, "action": "known", "detail": f"{record['status']} on the broker"})
        else:
            candidates.append((run_dir, manifest))
    if candidates:
        # A worker that trained on through the restart takes its lease again at its next renewal (every TTL/6): wait
        # that long before deciding a run has no worker, or the run would be resubmitted under a live training
        # and the two chains would drop each other's later stages.
        time.sleep(lease_seconds() / 6 + 1)
    in_flight = runs_in_flight(client, sorted(set(STAGE_QUEUES.values()))) if candidates else set()
    for run_dir, manifest in candidates:
        run_id = manifest["run_id"]
        holder = lease_holder(client, run_id)
        if run_id in in_flight and not (holder and not holder.get("ended")):
            # Its worker is between two stages (the next one queued since the restart): its chain goes on.
            write_run(run_id, status="running", run_dir=str(run_dir), experiment=manifest.get("experiment", ""))
            actions.append({"run_id": run_id, "action": "running", "detail": "its next stage is queued"})
            continue
        if holder and not holder.get("ended"):
            write_run(
                run_id,
                status="running",
                stage=holder.get("stage", ""),
                worker=holder.get("node", ""),
                run_dir=str(run_dir),
                experiment=manifest.get("experiment", ""),
                error="",
            )
            actions.append(
                {"run_id": run_id, "action": "running", "detail": f"{holder.get('stage')} on {holder.get('node')}"}
            )
            continue
        config = ConfigManager().validate(manifest["config"])
        enqueue_run(config, manifest.get("experiment"))
        checkpoint = checkpoint_step(run_dir)
        where = f"from checkpoint-{checkpoint}" if checkpoint is not None else "from the start"
        actions.append({"run_id": run_id, "action": "resubmitted", "detail": where})
    return actions
