"""The Celery app ``tasks.app:app`` and all its settings, in one place.

Training runs for hours on one GPU, so the defaults Celery ships for short web tasks are wrong here;
each setting below says why it is what it is. Environment variables (read when this module is
imported, so set them before starting a worker or client):

=============================== ===================================================== ==================
variable                        meaning                                               default
=============================== ===================================================== ==================
``DIALSUM_BROKER_URL``          broker and result backend (``redis://``/``rediss://``)  redis://127.0.0.1:6379/0
                                password: ``redis://:PASSWORD@host:6379/0``;
                                TLS: ``rediss://:PASSWORD@host:6380/0?``
                                ``ssl_cert_reqs=required&ssl_ca_certs=ca.pem``
                                (the CA file; see ``tasks/broker.py``)
``DIALSUM_RESULT_BACKEND``      result backend, when it differs from the broker       the broker URL
``DIALSUM_VISIBILITY_TIMEOUT``  seconds before Redis hands an unacknowledged task to   172800 (48 h)
                                another worker; must exceed the longest stage
``DIALSUM_MAX_DELIVERIES``      deliveries of one task before it is failed (a task     3
                                that kills its worker every time must not loop)
``DIALSUM_TIME_LIMIT_<STAGE>``  hard time limit of a stage in seconds                 see STAGE_TIME_LIMITS
``DIALSUM_LEASE_SECONDS``       TTL of a run's lease (tasks/lease.py): a dead worker's  30
                                run is re-enqueued this long after its last renewal
``DIALSUM_REAP_INTERVAL``       seconds between two scans for expired leases            5
=============================== ===================================================== ==================
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

from tasks.broker import celery_settings

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
STAGE_QUEUES = {
    "dialsum.prepare_data": "cpu",  # tokenizing does not need a GPU: keep GPUs free for training
    "dialsum.train": "gpu",
    "dialsum.evaluate": "cpu",  # ROUGE (Kiwi tokenization) is CPU work
    "dialsum.generate_predictions": "gpu",
    "dialsum.sweep_advance": "cpu",  # asks the search for the next trial: cheap bookkeeping
}
# Hard limits per stage (seconds); the soft limit is 60 s earlier so the stage can fail cleanly.
STAGE_TIME_LIMITS = {
    "prepare_data": 2 * 3600,
    "train": 47 * 3600,
    "evaluate": 4 * 3600,
    "generate_predictions": 8 * 3600,
}


def broker_url() -> str:
    """The broker URL every process of the cluster uses."""
    return os.environ.get("DIALSUM_BROKER_URL", DEFAULT_BROKER_URL)


def visibility_timeout() -> int:
    """Seconds an unacknowledged message stays invisible; longer than the longest stage (train)."""
    return int(os.environ.get("DIALSUM_VISIBILITY_TIMEOUT", 48 * 3600))


def max_deliveries() -> int:
    """How many times one task may be delivered before it is failed with that reason."""
    return int(os.environ.get("DIALSUM_MAX_DELIVERIES", 3))


def stage_time_limit(stage: str) -> int:
    """Hard time limit of ``stage`` in seconds (``DIALSUM_TIME_LIMIT_<STAGE>`` overrides)."""
    return int(os.environ.get(f"DIALSUM_TIME_LIMIT_{stage.upper()}", STAGE_TIME_LIMITS[stage]))


def stage_soft_time_limit(stage: str) -> int:
    """Soft time limit of ``stage``: 60 s before the hard one, so the stage can fail cleanly (at least 1 s)."""
    return max(stage_time_limit(stage) - 60, 1)


app = Celery("dialsum", include=["tasks.stages"])
app.conf.update(
    # broker_url and result_backend, plus broker_use_ssl / redis_backend_use_ssl derived from a rediss:// URL: kombu
    # would skip the certificate check of a bare rediss:// URL, and Flower's queue view reads only broker_use_ssl.
    **celery_settings(broker_url(), os.environ.get("DIALSUM_RESULT_BACKEND")),
    # JSON only: a pickle message from anyone who can reach the broker would be code execution.
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    # Acknowledge after the task ends, so a worker that dies mid-training leaves the message to be
    # redelivered; fetch one message at a time, so a busy worker does not sit on queued runs.
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_reject_on_worker_lost=True,  # requeue when the child dies; tasks/stages.py caps how often
    # kombu scans for expired unacknowledged messages only every 10th 10 s tick by default; scanning
    # every tick returns a dead worker's message visibility_timeout + ~10 s after it was fetched.
    broker_transport_options={"visibility_timeout": visibility_timeout(), "unacked_restore_throttle": 1},
    result_backend_transport_options={"visibility_timeout": visibility_timeout()},
    # A fresh child process per task: GPU memory and wandb-core helpers go away with it.
    worker_max_tasks_per_child=1,
    # Flower and the client see STARTED and progress events.
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_track_started=True,
    result_expires=30 * 24 * 3600,  # results outlive a long sweep
    result_extended=True,  # task name, args and queue stored with the result
    # A broker restart must not end hours of training: running tasks keep going while the worker
    # reconnects. Their run leases (tasks/lease.py), not this setting, keep two workers off one run.
    worker_cancel_long_running_tasks_on_connection_loss=False,
    broker_connection_retry_on_startup=True,
    task_queues=[Queue("gpu"), Queue("cpu")],
    task_default_queue="cpu",
    task_routes={name: {"queue": queue} for name, queue in STAGE_QUEUES.items()},
    # SIGTERM (remapped to a cold shutdown by `dialsum worker`) gives the running task this long to
    # reach a checkpoint, then requeues its unacknowledged message.
    worker_soft_shutdown_timeout=float(os.environ.get("DIALSUM_SOFT_SHUTDOWN_TIMEOUT", 30)),
    worker_enable_soft_shutdown_on_idle=False,  # an idle worker has nothing to save: stop at once
)
