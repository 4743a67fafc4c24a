"""Run records in Redis: what the client and the stage tasks both read and write.

One hash per run, ``dialsum:run:<run_id>``, with its status, current stage, the ids of its stage
tasks, its latest progress and error; plus ``dialsum:cancel:<run_id>`` (a cancel request) and
``dialsum:deliveries:<task_id>`` (how often a task was delivered, for the redelivery cap).
Everything is JSON-safe strings, so any process on any node can read it.
"""

from __future__ import annotations

import json
import time
from functools import cache
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from tasks.app import app, visibility_timeout

RUN_KEY = "dialsum:run:{}"
CANCEL_KEY = "dialsum:cancel:{}"
DELIVERIES_KEY = "dialsum:deliveries:{}"
PRUNE_KEY = "dialsum:prune:{}"  # set by hyperband (tasks/sweeps.py)
RUNS_INDEX = "dialsum:runs"
ACTIVE_STATUSES = ("queued", "running")
FINAL_STATUSES = ("completed", "failed", "cancelled", "pruned")
BROKER_RETRIES = 15
# Records outlive a sweep, like the task results.
_RECORD_TTL = 30 * 24 * 3600


class _RetryWhileAway(Retry):
    """Retry connection errors, except a refused password: that one will not heal by waiting."""

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):
        def retryable(error: Exception) -> bool:
            return not isinstance(error, redis.AuthenticationError) and (is_retryable is None or is_retryable(error))

        return super().call_with_retry(do, fail, retryable, with_failure_count)


@cache
def _client_for(url: str) -> redis.Redis:
    # Ride out a broker restart (seconds) instead of failing a stage or a client's wait: connection errors are
    # retried with backoff for ~20 s in all before they surface.
    retry = _RetryWhileAway(ExponentialBackoff(cap=2.0, base=0.1), BROKER_RETRIES)
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30, retry=retry)


def redis_client() -> redis.Redis:
    """A Redis client on the broker (``redis://`` or ``rediss://``), one per process and URL."""
    return _client_for(app.conf.broker_url)


def write_run(run_id: str, **fields: Any) -> None:
    """Create or update a run's record; dicts and lists are stored as JSON."""
    values = {
        key: json.dumps(value) if isinstance(value, (dict, list)) else str(value) for key, value in fields.items()
    }
    values["updated_at"] = str(time.time())
    client = redis_client()
    with client.pipeline() as pipe:
        pipe.hset(RUN_KEY.format(run_id), mapping=values)
        pipe.expire(RUN_KEY.format(run_id), _RECORD_TTL)
        pipe.zadd(RUNS_INDEX, {run_id: float(fields.get("submitted_at", time.time()))}, nx=True)
        pipe.execute()


def read_run(run_id: str) -> dict[str, Any] | None:
    """A run's record with JSON fields decoded, or None when there is none."""
    raw = redis_client().hgetall(RUN_KEY.format(run_id))
    if not raw:
        return None
    record: dict[str, Any] = {}
    for key, value in raw.items():
        record[key] = json.loads(value) if key in ("task_ids", "progress", "stage_states") else value
    return record


def list_run_ids() -> list[str]:
    """All run ids, oldest submission first."""
    return list(redis_client().zrange(RUNS_INDEX, 0, -1))


def request_cancel(run_id: str) -> None:
    """Ask the run's stages to stop; train polls this at step boundaries."""
    redis_client().set(CANCEL_KEY.format(run_id), "1", ex=_RECORD_TTL)


def cancel_requested(run_id: str) -> bool:
    """Whether a cancel was requested for ``run_id``."""
    return redis_client().exists(CANCEL_KEY.format(run_id)) == 1


def clear_cancel(run_id: str) -> None:
    """Forget earlier cancel and prune requests (a resubmitted run starts clean)."""
    redis_client().delete(CANCEL_KEY.format(run_id), PRUNE_KEY.format(run_id))


def count_delivery(task_id: str) -> int:
    """Count one more delivery of ``task_id`` and return the total.

    Celery requeues a task whose worker died but never stops doing so; this counter is how a task
    that kills its worker every time ends as FAILURE instead of looping.
    """
    key = DELIVERIES_KEY.format(task_id)
    client = redis_client()
    with client.pipeline() as pipe:
        pipe.incr(key)
        # Outlive the redelivery: it comes visibility_timeout after the fetch, plus kombu's scan delay.
        pipe.expire(key, 2 * visibility_timeout() + 600)
        count, _ = pipe.execute()
    return int(count)
