"""Run leases: one worker at a time works on a run, and a run whose worker died is re-enqueued within a minute.

Why this exists: a late-acknowledged message whose worker dies stays in Redis's ``unacked`` set until the visibility
timeout (48 h here, because a training may run that long) brings it back. Waiting that long is not acceptable, and
shortening the timeout would hand every long training to a second worker while the first is still at it. So a stage
holds a lease on its run id instead:

* ``dialsum:lease:<run_id>``: who works on the run (node, pid, task id, stage), with a TTL of
  ``DIALSUM_LEASE_SECONDS`` (30 s). A thread in the pool child renews it every ``DIALSUM_LEASE_SECONDS / 6`` seconds
  while the stage runs. A delivery of a stage whose run is leased by a live holder does nothing; a holder on the
  same node whose process is gone is taken over at once.
* ``dialsum:active:<run_id>``: the message of the stage in flight (task name, id, manifest, the rest of the chain,
  queue), written when the lease is taken. Every worker's parent process runs a reaper thread
  (:func:`start_reaper`) that, every ``DIALSUM_REAP_INTERVAL`` seconds (5 s), re-publishes the message of each
  active run whose lease has expired: same task id, same chain, so the client's handles and the redelivery count
  stay what they were. The old message, when Redis finally restores it, finds the run leased, moved on or ended,
  and is dropped (``tasks/stages.py``).
* Messages that a worker fetched but never started (it died before its pool child began, or a broker restart broke
  its connection first, after which Celery drops the reserved request) hold no lease and no stage record. The same
  reaper puts back on its queue any message unacknowledged for ``2 x DIALSUM_LEASE_SECONDS`` whose run is neither
  leased nor recorded as in flight (:func:`restore_abandoned`, with kombu's own restore).
* ``dialsum:leases:<run_id>``: a log of every lease taken and given back (node, pid, stage, times). It is how
  ``dialsum status`` and the tests show that no two workers ever trained a run at the same time.

A holder that cannot renew for ``0.6 x DIALSUM_LEASE_SECONDS`` (broker gone, network partition) counts its lease as
lost: training stops at the next step boundary, before any other worker can take the run over (that takes the whole
TTL plus a reaper tick), and the stage ends without touching the run's record.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import redis

from tasks.host import pid_alive

logger = logging.getLogger(__name__)

LEASE_KEY = "dialsum:lease:{}"
ACTIVE_KEY = "dialsum:active:{}"
ACTIVE_INDEX = "dialsum:active"
LEASE_LOG_KEY = "dialsum:leases:{}"
REAP_LOCK_KEY = "dialsum:reap:{}"
# kombu's Redis transport keeps fetched, unacknowledged messages here (its defaults, which tasks/app.py keeps).
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"
_LOG_TTL = 30 * 24 * 3600

# Compare-and-set on the lease's value (it holds a random token), so a holder never renews or deletes a lease that is
# no longer its own.
# Renewal returns 1 (renewed), 2 (the key was gone, e.g. Redis restarted without persistence, and is ours again) or 0
# (someone else holds it).
_RENEW = """
local current = redis.call('get', KEYS[1])
if current == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
if not current then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0
"""
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def lease_seconds() -> float:
    """TTL of a run lease: how long a dead worker's run waits before it is re-enqueued (plus a reaper tick)."""
    return float(os.environ.get("DIALSUM_LEASE_SECONDS", 30))


def reap_interval() -> float:
    """Seconds between two scans of the reaper for runs whose lease expired."""
    return float(os.environ.get("DIALSUM_REAP_INTERVAL", 5))


def _value(text: str | None) -> dict[str, Any] | None:
    return json.loads(text) if text else None


class Lease:
    """The lease of one stage of one run, held by this process.

    Args:
        client: Redis client on the broker.
        run_id: The run.
        stage: The stage about to run.
        task_id: The stage task's id.
        node: The Celery node name of this worker (``cpu0@host``).
    """

    def __init__(self, client: redis.Redis, run_id: str, stage: str, task_id: str, node: str):
        self.client = client
        self.run_id = run_id
        self.key = LEASE_KEY.format(run_id)
        self.token = uuid.uuid4().hex
        self.holder = {
            "token": self.token,
            "node": node,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "stage": stage,
            "task_id": task_id,
            "since": time.time(),
        }
        # The lease's value; renewals and the release compare it whole, so they only ever touch our own lease.
        self.payload = json.dumps(self.holder)
        self.message: dict[str, Any] | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> dict[str, Any] | None:
        """Take the lease; None on success, else the live holder's record (then this process must not run the stage).

        A holder on this host whose process no longer exists (its pool child was killed and Celery requeued the
        message), and a lease ended by :func:`end_lease`, are taken over without waiting for the TTL.
        """
        ttl_ms = int(lease_seconds() * 1000)
        payload = self.payload
        if self.client.set(self.key, payload, nx=True, px=ttl_ms):
            self._log("acquired")
            return None
        current_text = self.client.get(self.key)
        current = _value(current_text)
        if current is None:  # expired between the two calls
            return self.acquire()
        dead_here = current.get("host") == self.holder["host"] and not pid_alive(int(current.get("pid", 0)))
        if current.get("ended") or dead_here:
            # Take over only the lease we saw, in one step: a third process may be racing for it too.
            with self.client.pipeline() as pipe:
                try:
                    pipe.watch(self.key)
                    if pipe.get(self.key) != current_text:
                        return _value(pipe.get(self.key)) or current
                    pipe.multi()
                    pipe.set(self.key, payload, px=ttl_ms)
                    pipe.execute()
                except redis.WatchError:
                    return current
            self._log("taken over", previous=current)
            return None
        return current

    def record_message(self, message: dict[str, Any]) -> None:
        """Record the stage's message for the reaper (:func:`register_active`), while this lease is held."""
        self.message = message
        register_active(self.client, self.run_id, message)

    def start_renewing(self) -> None:
        """Renew the lease in a daemon thread until :meth:`release`; sets :attr:`lost` when it cannot."""
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{self.run_id}", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        ttl = lease_seconds()
        last_renewed = time.monotonic()
        while not self._stop.wait(ttl / 6):
            try:
                renewed = self.client.eval(_RENEW, 1, self.key, self.payload, int(ttl * 1000))
            except redis.RedisError as error:
                logger.warning("lease of run %s not renewed: %s", self.run_id, error)
                renewed = None
            if renewed == 2 and self.message is not None:
                # Redis forgot the run's state: record the stage again, so the reaper can still recover it.
                register_active(self.client, self.run_id, self.message)
                self._log("retaken")
            if renewed:
                last_renewed = time.monotonic()
            elif renewed == 0 or time.monotonic() - last_renewed > 0.6 * ttl:
                # Someone else holds it now, or it may expire before we can tell: stop before a taker starts.
                logger.error("lease of run %s lost; stopping this stage at the next step", self.run_id)
                self.lost.set()
                return

    def release(self) -> None:
        """Stop renewing and give the lease back (if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if self.client.eval(_RELEASE, 1, self.key, self.payload):
                self._log("released")
        except redis.RedisError as error:  # it expires on its own
            logger.warning("lease of run %s not released: %s", self.run_id, error)

    def _log(self, event: str, **extra: Any) -> None:
        _append_log(self.client, self.run_id, self.holder, event, **extra)


def _append_log(client: redis.Redis, run_id: str, holder: dict[str, Any], event: str, **extra: Any) -> None:
    """One entry of the run's lease log: the holder (without its token), the event, when, and ``extra``."""
    entry = {**{k: v for k, v in holder.items() if k != "token"}, "event": event, "at": time.time(), **extra}
    if "previous" in entry:
        entry["previous"] = {k: v for k, v in entry["previous"].items() if k != "token"}
    key = LEASE_LOG_KEY.format(run_id)
    with client.pipeline() as pipe:
        pipe.rpush(key, json.dumps(entry))
        pipe.expire(key, _LOG_TTL)
        pipe.execute()


def end_lease(client: redis.Redis, run_id: str, task_id: str, reason: str) -> bool:
    """End the lease of task ``task_id`` on behalf of its process, which Celery is about to kill (hard time limit).

    The lease is not deleted but marked ended until its TTL runs out: a deleted one could be taken again by the
    holder's renewal thread in the moment before the kill, whereas a changed value makes that renewal fail. A new
    delivery of the run takes an ended lease over at once (:meth:`Lease.acquire`).

    Returns:
        Whether the lease was task ``task_id``'s and is now ended.
    """
    key = LEASE_KEY.format(run_id)
    with client.pipeline() as pipe:
        try:
            pipe.watch(key)
            current = _value(pipe.get(key))
            if current is None or current.get("task_id") != task_id:
                return False
            pipe.multi()
            pipe.set(key, json.dumps({**current, "ended": reason}), keepttl=True)
            pipe.execute()
        except redis.WatchError:
            return False
    _append_log(client, run_id, current, "ended", reason=reason)
    return True


def lease_log(client: redis.Redis, run_id: str) -> list[dict[str, Any]]:
    """Every lease event of a run, oldest first: ``{"event", "node", "pid", "stage", "task_id", "at", ...}``."""
    return [json.loads(entry) for entry in client.lrange(LEASE_LOG_KEY.format(run_id), 0, -1)]


def lease_holder(client: redis.Redis, run_id: str) -> dict[str, Any] | None:
    """Who holds the run's lease now (None: nobody)."""
    return _value(client.get(LEASE_KEY.format(run_id)))


def register_active(client: redis.Redis, run_id: str, message: dict[str, Any]) -> None:
    """Record the message of the stage now running, so the reaper can re-publish it if its worker dies.

    ``message``: ``{"task", "task_id", "manifest", "chain", "queue"}`` (JSON-safe).
    """
    with client.pipeline() as pipe:
        pipe.set(ACTIVE_KEY.format(run_id), json.dumps({**message, "state": "running", "at": time.time()}))
        pipe.sadd(ACTIVE_INDEX, run_id)
        pipe.execute()


def clear_active(client: redis.Redis, run_id: str, task_id: str) -> None:
    """Forget the run's stage in flight, if it is still ``task_id`` (a later stage may have registered already)."""
    key = ACTIVE_KEY.format(run_id)
    with client.pipeline() as pipe:
        try:
            pipe.watch(key)
            record = _value(pipe.get(key))
            pipe.multi()
            if record is None or record.get("task_id") == task_id:
                pipe.delete(key)
                pipe.srem(ACTIVE_INDEX, run_id)
            pipe.execute()
        except redis.WatchError:
            pass  # a new stage registered meanwhile: its record stays


def reap_orphans(client: redis.Redis, republish) -> list[str]:
    """Re-publish the stage message of every active run whose lease expired; returns their run ids.

    Args:
        client: Redis client on the broker.
        republish: ``republish(message)`` sends the stored message again (the Celery app does it).
    """
    reaped = []
    for run_id in client.smembers(ACTIVE_INDEX):
        if client.exists(LEASE_KEY.format(run_id)):
            continue
        record = _value(client.get(ACTIVE_KEY.format(run_id)))
        if record is None:
            client.srem(ACTIVE_INDEX, run_id)
            continue
        if record.get("state") != "running":
            continue  # already re-published; waiting in the queue for a free worker
        # One reaper per orphan, whichever worker's thread gets here first.
        if not client.set(REAP_LOCK_KEY.format(run_id), "1", nx=True, px=int(lease_seconds() * 1000)):
            continue
        if client.exists(LEASE_KEY.format(run_id)):
            continue
        record.update(state="requeued", at=time.time())
        client.set(ACTIVE_KEY.format(run_id), json.dumps(record))
        republish(record)
        logger.warning(
            "run %s: the worker running %s stopped renewing its lease; re-enqueued %s",
            run_id,
            record["task"],
            record["task_id"],
        )
        reaped.append(run_id)
    return reaped


def run_id_of(payload: dict[str, Any]) -> str | None:
    """The run id in a stage message's manifest (kombu payload, body ``[args, kwargs, embed]``), if any."""
    try:
        body = payload["body"]
        if payload.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return args[0].get("run_id") if args and isinstance(args[0], dict) else None
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def runs_in_flight(client: redis.Redis, queues: list[str]) -> set[str]:
    """Runs something is doing or about to do: a lease, a stage record, or a message waiting in ``queues`` or
    fetched and not yet acknowledged."""
    runs = {key.split(":", 2)[2] for key in client.scan_iter(LEASE_KEY.format("*"))}
    runs |= set(client.smembers(ACTIVE_INDEX))
    raws = [raw for queue in queues for raw in client.lrange(queue, 0, -1)]
    raws += [json.dumps([json.loads(raw)[0]]) for raw in client.hvals(UNACKED_KEY)]
    for raw in raws:
        with contextlib.suppress(ValueError, TypeError, IndexError, KeyError):
            value = json.loads(raw)
            run_id = run_id_of(value[0] if isinstance(value, list) else value)
            if run_id:
                runs.add(run_id)
    return runs


def restore_abandoned(client: redis.Redis, restore, older_than: float) -> list[str]:
    """Put back on their queues the messages fetched over ``older_than`` seconds ago that nothing is running.

    With prefetch 1 a worker fetches a message only to run it at once, and a running stage holds its run's lease
    within a second. A message still unacknowledged long after its fetch, whose run has no lease and no stage in
    flight, was fetched by a worker that lost it: the worker died before its pool child started, or its broker
    connection broke (a Redis restart) before the task began, after which Celery drops the reserved request and
    kombu cannot return it. Redis alone would return it only after the visibility timeout (48 h).

    Args:
        client: Redis client on the broker.
        restore: ``restore(delivery_tag)`` returns one message to its queue (kombu's own restore).
        older_than: Seconds since the fetch after which a message counts as abandoned.

    Returns:
        The delivery tags restored.
    """
    restored = []
    ceiling = time.time() - older_than
    for tag in client.zrangebyscore(UNACKED_INDEX_KEY, 0, ceiling):
        raw = client.hget(UNACKED_KEY, tag)
        if raw is None:
            continue
        run_id = run_id_of(json.loads(raw)[0])
        if run_id and (client.exists(LEASE_KEY.format(run_id)) or client.sismember(ACTIVE_INDEX, run_id)):
            continue  # running, or the reaper re-publishes it from its stage record
        restore(tag)
        logger.warning(
            "message %s (run %s) was fetched %.0f s ago and never started; put back on its queue",
            tag,
            run_id or "-",
            time.time() - float(client.zscore(UNACKED_INDEX_KEY, tag) or time.time()),
        )
        restored.append(tag)
    return restored


def start_reaper(client_factory, republish, restore) -> threading.Thread:
    """Every ``DIALSUM_REAP_INTERVAL`` seconds, in a daemon thread of the worker's parent process: re-publish the
    stages whose lease expired (:func:`reap_orphans`) and return abandoned messages (:func:`restore_abandoned`)."""

    def loop() -> None:
        while True:
            time.sleep(reap_interval())
            try:
                client = client_factory()
                reap_orphans(client, republish)
                restore_abandoned(client, restore, older_than=2 * lease_seconds())
            except redis.RedisError as error:  # broker away: try again next tick
                logger.warning("lease reaper: %s", error)
            except Exception:  # never let the thread die: a dead reaper means slow recovery for every run
                logger.exception("lease reaper failed; retrying")

    thread = threading.Thread(target=loop, name="dialsum-lease-reaper", daemon=True)
    thread.start()
    return thread
