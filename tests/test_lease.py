"""Run leases (tasks/lease.py) against a real redis-server: taking, renewing, losing, taking over, reaping."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import redis

from tasks.lease import (
    ACTIVE_INDEX,
    Lease,
    clear_active,
    end_lease,
    lease_holder,
    lease_log,
    reap_orphans,
    register_active,
    restore_abandoned,
)
from tests.conftest import wait_until


@pytest.fixture
def client(redis_server, monkeypatch):
    # A short lease (renewed every 0.1 s) keeps these tests fast; production uses 30 s.
    monkeypatch.setenv("DIALSUM_LEASE_SECONDS", "0.6")
    return redis.Redis.from_url(redis_server.url, decode_responses=True)


def message(task_id: str = "task-1") -> dict:
    return {"task": "dialsum.train", "task_id": task_id, "manifest": {"run_id": "run-1"}, "chain": [], "queue": "gpu"}


def test_one_holder_at_a_time_and_release_frees_the_run(client):
    first = Lease(client, "run-1", "train", "task-1", "cpu0@a")
    assert first.acquire() is None
    holder = Lease(client, "run-1", "train", "task-1", "cpu0@b").acquire()
    assert holder["node"] == "cpu0@a" and holder["stage"] == "train"
    first.release()
    assert lease_holder(client, "run-1") is None
    assert Lease(client, "run-1", "evaluate", "task-2", "cpu0@b").acquire() is None
    assert [event["event"] for event in lease_log(client, "run-1")] == ["acquired", "released", "acquired"]


def test_an_ended_lease_stops_its_holder_and_is_taken_over_at_once(client):
    # What the worker's parent does for a pool child it is about to kill at the hard time limit.
    stuck = Lease(client, "run-1", "train", "task-1", "cpu0@a")
    assert stuck.acquire() is None
    stuck.start_renewing()
    assert not end_lease(client, "run-1", "task-0", "time limit")  # not that task's lease: untouched
    assert end_lease(client, "run-1", "task-1", "time limit")
    # Its renewal finds a changed value and gives up, never re-taking it.
    wait_until(stuck.lost.is_set, 10, "lost lease noticed")
    assert lease_holder(client, "run-1")["ended"] == "time limit"
    # A resubmission, from another node, long before the TTL: no wait for the ended lease to expire.
    client.pexpire("dialsum:lease:run-1", 60_000)
    assert Lease(client, "run-1", "train", "task-5", "cpu0@b").acquire() is None
    assert lease_holder(client, "run-1")["node"] == "cpu0@b"
    assert [event["event"] for event in lease_log(client, "run-1")] == ["acquired", "ended", "taken over"]
    assert lease_log(client, "run-1")[1]["reason"] == "time limit"
    stuck.release()  # the old holder's release does not touch the new lease
    assert lease_holder(client, "run-1")["node"] == "cpu0@b"


def test_renewal_keeps_the_lease_past_its_ttl(client):
    lease = Lease(client, "run-1", "train", "task-1", "cpu0@a")
    assert lease.acquire() is None
    lease.start_renewing()
    time.sleep(1.5)  # 2.5 TTLs
    assert lease_holder(client, "run-1")["pid"] == lease.holder["pid"] and not lease.lost.is_set()
    lease.release()


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(client):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = Lease(client, "run-1", "train", "task-1", "cpu0@a")
    stale.holder["pid"] = int(dead.stdout)  # the pool child that ran the stage was killed
    stale.payload = json.dumps(stale.holder)
    assert stale.acquire() is None
    assert Lease(client, "run-1", "train", "task-1", "cpu0@a").acquire() is None
    events = lease_log(client, "run-1")
    assert events[-1]["event"] == "taken over" and events[-1]["previous"]["pid"] == int(dead.stdout)


def test_a_lease_someone_else_took_is_lost_and_the_holder_stops(client):
    lease = Lease(client, "run-1", "train", "task-1", "cpu0@a")
    assert lease.acquire() is None
    lease.start_renewing()
    client.set("dialsum:lease:run-1", '{"node": "cpu0@b"}', px=60_000)
    wait_until(lease.lost.is_set, 10, "lost lease noticed")
    lease.release()  # never deletes the other holder's lease
    assert lease_holder(client, "run-1") == {"node": "cpu0@b"}


def test_a_lease_redis_forgot_is_taken_again_with_its_stage_message(client):
    lease = Lease(client, "run-1", "train", "task-1", "cpu0@a")
    assert lease.acquire() is None
    lease.record_message(message())
    lease.start_renewing()
    client.flushdb()  # a Redis restarted without persistence
    wait_until(lambda: lease_holder(client, "run-1") is not None, 10, "lease taken again")
    assert not lease.lost.is_set()
    assert client.sismember(ACTIVE_INDEX, "run-1")
    assert "retaken" in [event["event"] for event in lease_log(client, "run-1")]
    lease.release()


def test_reaper_republishes_only_runs_whose_lease_expired_and_only_once(client):
    register_active(client, "run-1", message("task-1"))  # its worker died: no lease
    register_active(client, "run-2", message("task-2"))
    alive = Lease(client, "run-2", "train", "task-2", "cpu0@b")
    assert alive.acquire() is None
    alive.start_renewing()
    sent: list[dict] = []
    assert reap_orphans(client, sent.append) == ["run-1"]
    assert [m["task_id"] for m in sent] == ["task-1"] and sent[0]["chain"] == [] and sent[0]["queue"] == "gpu"
    assert reap_orphans(client, sent.append) == []  # waiting in the queue now; not sent twice
    alive.release()
    clear_active(client, "run-2", "task-2")
    assert not client.sismember(ACTIVE_INDEX, "run-2")


def test_clear_active_leaves_a_later_stage_alone(client):
    register_active(client, "run-1", message("task-evaluate"))
    clear_active(client, "run-1", "task-train")
    assert client.sismember(ACTIVE_INDEX, "run-1")


def test_messages_fetched_long_ago_and_never_started_go_back_to_their_queue(client, redis_server):
    from kombu import Connection

    with Connection(redis_server.url) as connection:
        queue = connection.SimpleQueue("gpu", serializer="json")
        for run_id in ("run-lost", "run-leased", "run-active"):
            queue.put([[{"run_id": run_id}], {}, {}])  # a stage message's body: [args, kwargs, embed]
        fetched = [queue.get(timeout=5) for _ in range(3)]  # fetched by a worker that never acknowledges them
        assert client.hlen("unacked") == 3 and client.llen("gpu") == 0
        assert Lease(client, "run-leased", "train", "t", "cpu0@a").acquire() is None
        register_active(client, "run-active", message())

        def restore(tag: str) -> None:
            connection.default_channel.qos.restore_by_tag(tag)

        assert restore_abandoned(client, restore, older_than=60) == []  # fetched just now: maybe about to run
        restored = restore_abandoned(client, restore, older_than=0)
        assert restored == [next(m.delivery_tag for m in fetched if m.payload[0][0]["run_id"] == "run-lost")]
        assert client.hlen("unacked") == 2
        again = queue.get(timeout=5)
        assert again.payload[0][0]["run_id"] == "run-lost" and again.headers.get("redelivered") is True
        queue.close()
