"""``dialsum metrics``: queue depth, runs and sweep trials as Prometheus metrics, read from Redis at every scrape.

Flower's ``/metrics`` covers workers and task events but has no queue depth, and it knows nothing of run records
or sweeps. This exporter reads the broker directly when Prometheus scrapes it (a custom collector, no background
polling), so every sample is as fresh as the scrape:

======================================== ===================================================================
metric                                   meaning
======================================== ===================================================================
``dialsum_broker_up``                    1 when Redis answered this scrape; 0 and no other ``dialsum_*``
                                         sample when it did not
``dialsum_queue_depth{queue}``           messages waiting in queue ``gpu`` / ``cpu`` (``LLEN`` of the queue's
                                         list plus kombu's priority lists ``<queue>\\x06\\x16{3,6,9}``)
``dialsum_queue_unacked{queue}``         messages delivered to a worker and not yet acknowledged: with late
                                         acknowledgement, the stages running right now (plus any held by a
                                         worker that died, until the visibility timeout returns them)
``dialsum_runs{status}``                 run records by status: queued, running, completed, failed,
                                         cancelled, pruned (records expire 30 days after their last update)
``dialsum_trials{status}``               trials of all stored sweeps by status: queued, running, finished,
                                         failed, pruned, cancelled
``dialsum_sweeps{status}``               sweeps by status: running, cancelling, finished, cancelled
``dialsum_scrape_duration_seconds``      how long reading Redis took for this scrape
======================================== ===================================================================

Known statuses are always exported (0 when none), so a rate or an alert never sees a series vanish; a status this
module does not know (a newer writer) is exported too rather than dropped.

The keys read are the ones ``tasks.state``, ``tasks.sweeps`` and kombu's Redis transport write (their constants
are imported, not copied). The readers of those modules are not called: a scrape must not hang on a broker that
stopped answering, so this module uses its own client with socket timeouts, and it fetches every run's status in
one pipeline instead of one ``HGETALL`` per run. Nothing is ever written.

Serve it with ``dialsum metrics --port 9808 [--address 127.0.0.1]`` (broker from ``DIALSUM_BROKER_URL``), or print
one exposition with ``--once`` (for node_exporter's textfile collector, or a look by hand). Why the broker is down
(refused password, untrusted certificate, no answer) goes to stderr once per distinct error, never the password.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tasks.app import app
from tasks.broker import broker_error_message, shown_url
from tasks.state import ACTIVE_STATUSES, FINAL_STATUSES, RUN_KEY, RUNS_INDEX
from tasks.sweeps import SWEEP_KEY, SWEEPS_INDEX, TRIALS_KEY

DEFAULT_PORT = 9808
RUN_STATUSES = (*ACTIVE_STATUSES, *FINAL_STATUSES)
# Written by tasks/sweeps.py: "queued"/"running" while active, then the run's outcome ("finished" on success).
TRIAL_STATUSES = ("queued", "running", "finished", "failed", "pruned", "cancelled")
SWEEP_STATUSES = ("running", "cancelling", "finished", "cancelled")
SOCKET_TIMEOUT = 5.0  # below Prometheus' default scrape timeout (10 s), so a stuck broker reads as broker_up 0
_BATCH = 1000  # run statuses fetched per pipeline round trip


class DialsumCollector(Collector):
    """Reads the broker at every ``collect()`` and yields the ``dialsum_*`` gauge families.

    Args:
        broker_url: The Redis broker (``redis://`` or ``rediss://``), as the workers use it.
        queues: Queue names to report (default: the queues ``tasks/app.py`` declares).
        transport_options: kombu Redis transport options (default: the app's ``broker_transport_options``); only
            the key names are used (``global_keyprefix``, ``sep``, ``priority_steps``, ``unacked_key``).
        socket_timeout: Seconds a Redis call may take before the scrape reports the broker down.
    """

    def __init__(
        self,
        broker_url: str,
        queues: Iterable[str] | None = None,
        transport_options: dict | None = None,
        socket_timeout: float = SOCKET_TIMEOUT,
    ) -> None:
        options = dict(app.conf.broker_transport_options or {}) if transport_options is None else transport_options
        self.queues = tuple(queues) if queues is not None else tuple(queue.name for queue in app.conf.task_queues)
        # kombu prefixes every key it writes (queues, the unacked hash) with global_keyprefix when one is set.
        self._prefix = options.get("global_keyprefix", "")
        self._sep = options.get("sep", Channel.sep)
        self._steps = tuple(options.get("priority_steps", PRIORITY_STEPS))
        self._unacked_key = self._prefix + options.get("unacked_key", Channel.unacked_key)
        self._client = redis.Redis.from_url(
            broker_url, decode_responses=True, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
        )
        self._broker_url = broker_url
        self._failure: str | None = None  # the last broker error reported on stderr

    def queue_keys(self, queue: str) -> list[str]:
        """The Redis lists that hold ``queue``'s waiting messages, one per kombu priority step."""
        # kombu.transport.redis.Channel._q_for_pri: priority 0 is the bare name, others get "<sep><priority>".
        return [self._prefix + (queue if step == 0 else f"{queue}{self._sep}{step}") for step in self._steps]

    def describe(self) -> list:
        """Nothing: describing would read Redis when the collector is registered."""
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One scrape: read Redis, yield the families (only ``dialsum_broker_up`` 0 when Redis fails)."""
        started = time.perf_counter()
        up = GaugeMetricFamily("dialsum_broker_up", "1 when the broker (Redis) answered this scrape, else 0")
        try:
            families = self._read()
        except (redis.RedisError, OSError) as error:
            self._report_failure(error)
            up.add_metric([], 0)
            yield up
            return
        self._failure = None
        up.add_metric([], 1)
        yield up
        yield from families
        duration = GaugeMetricFamily("dialsum_scrape_duration_seconds", "Seconds spent reading Redis for this scrape")
        duration.add_metric([], time.perf_counter() - started)
        yield duration

    def _report_failure(self, error: BaseException) -> None:
        # Why the broker is down for us (a wrong password reads as broker_up 0 too), once per distinct error.
        message = broker_error_message(error, self._broker_url)
        if message != self._failure:
            print(f"dialsum metrics: {message}", file=sys.stderr, flush=True)
        self._failure = message

    def _read(self) -> list[GaugeMetricFamily]:
        client = self._client
        with client.pipeline(transaction=False) as pipe:
            for queue in self.queues:
                for key in self.queue_keys(queue):
                    pipe.llen(key)
            lengths = pipe.execute()
        depth = GaugeMetricFamily(
            "dialsum_queue_depth", "Messages waiting in the queue (all priority lists)", labels=["queue"]
        )
        width = len(self._steps)
        for index, queue in enumerate(self.queues):
            depth.add_metric([queue], sum(lengths[index * width : (index + 1) * width]))

        unacked = GaugeMetricFamily(
            "dialsum_queue_unacked",
            "Messages delivered to a worker and not yet acknowledged (running stages, with late ack)",
            labels=["queue"],
        )
        for queue, count in _count(self._unacked_queues(), self.queues).items():
            unacked.add_metric([queue], count)

        runs = GaugeMetricFamily("dialsum_runs", "Run records by status", labels=["status"])
        for status, count in _count(self._run_statuses(), RUN_STATUSES).items():
            runs.add_metric([status], count)

        sweep_statuses, trial_statuses = self._sweep_statuses()
        trials = GaugeMetricFamily("dialsum_trials", "Trials of all stored sweeps by status", labels=["status"])
        for status, count in _count(trial_statuses, TRIAL_STATUSES).items():
            trials.add_metric([status], count)
        sweeps = GaugeMetricFamily("dialsum_sweeps", "Sweeps by status", labels=["status"])
        for status, count in _count(sweep_statuses, SWEEP_STATUSES).items():
            sweeps.add_metric([status], count)
        return [depth, unacked, runs, trials, sweeps]

    def _unacked_queues(self) -> list[str]:
        # kombu's ack emulation keeps each delivered message as JSON [message, exchange, routing_key]; Celery routes
        # with routing key == queue name (tasks/app.py declares plain Queue("gpu"), Queue("cpu")).
        queues = []
        for raw in self._client.hvals(self._unacked_key):
            try:
                queues.append(str(json.loads(raw)[2]))
            except (ValueError, IndexError, TypeError):
                queues.append("unknown")
        return queues

    def _run_statuses(self) -> list[str]:
        run_ids = self._client.zrange(RUNS_INDEX, 0, -1)
        statuses = []
        for start in range(0, len(run_ids), _BATCH):
            with self._client.pipeline(transaction=False) as pipe:
                for run_id in run_ids[start : start + _BATCH]:
                    pipe.hget(RUN_KEY.format(run_id), "status")
                # A record past its TTL leaves its id in the index: it no longer counts.
                statuses += [status for status in pipe.execute() if status is not None]
        return statuses

    def _sweep_statuses(self) -> tuple[list[str], list[str]]:
        sweep_ids = self._client.zrange(SWEEPS_INDEX, 0, -1)
        with self._client.pipeline(transaction=False) as pipe:
            for sweep_id in sweep_ids:
                pipe.hget(SWEEP_KEY.format(sweep_id), "status")
                pipe.hvals(TRIALS_KEY.format(sweep_id))
            replies = pipe.execute()
        sweeps, trials = [], []
        for status, values in zip(replies[::2], replies[1::2], strict=True):
            if status is None:
                continue  # expired
            sweeps.append(status)
            for value in values:
                try:
                    trials.append(str(json.loads(value).get("status", "unknown")))
                except (ValueError, AttributeError):
                    trials.append("unknown")
        return sweeps, trials


def _count(values: Iterable[str], known: Iterable[str]) -> dict[str, int]:
    """Occurrences of each value: every ``known`` one (0 when absent) first, then any other seen."""
    counts = dict.fromkeys(known, 0)
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def build_registry(broker_url: str | None = None) -> CollectorRegistry:
    """A registry holding only the dialsum collector (no process or Python runtime metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DialsumCollector(broker_url or app.conf.broker_url))
    return registry


def serve(address: str, port: int, broker_url: str | None = None) -> int:
    """Serve ``/metrics`` on ``address:port`` until SIGTERM or SIGINT; returns 0.

    Raises:
        ValueError: A port out of range, or one that cannot be bound (in use, or not allowed).
    """
    if not 1 <= port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535, got {port}")
    url = broker_url or app.conf.broker_url
    try:
        server, thread = start_http_server(port, addr=address, registry=build_registry(url))
    except OSError as error:
        raise ValueError(f"cannot listen on {address}:{port}: {error.strerror or error}") from error
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGTERM, signal.SIGINT)}
    host = f"[{address}]" if ":" in address else address
    print(f"dialsum metrics: http://{host}:{port}/metrics for broker {shown_url(url)}", flush=True)
    try:
        stop.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    return 0


def main(args) -> int:
    """``dialsum metrics`` with parsed arguments (see tasks/cli.py)."""
    if args.broker:
        app.conf.update(broker_url=args.broker)
    if args.once:
        print(generate_latest(build_registry()).decode(), end="")
        return 0
    return serve(args.address, args.port)
