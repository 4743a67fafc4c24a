"""Redis over TLS (``rediss://``) with a password: a real TLS-only redis-server, a real worker, Flower and the CLI.

One redis-server listens on a TLS port only (``port 0``), so anything that works here went over TLS. Its certificate is
signed by a throwaway CA that no system store trusts: a client that does not check it against ``ssl_ca_certs`` would
connect anyway, one that checks it without that CA must fail.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.broker import celery_settings, tls_options
from tests.conftest import free_port, micro_config_dict, wait_until
from tests.secure_redis import SecureRedisServer, make_certificates
from tests.test_worker_flower import cleanup, get, node, start, wait_for_ping

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "tls+Redis/pw@42%"  # characters that change when percent-encoded
FLOWER_AUTH = ("admin", "flower-tls-pw")


# --- the settings derived from the URL (no server) ------------------------------------------------------------------


def test_tls_options_come_from_the_rediss_url():
    url = "rediss://:pw@redis-host:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/dialsum/ca.pem"
    assert tls_options(url) == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/etc/dialsum/ca.pem"}
    # A bare rediss:// URL still checks the certificate (kombu alone would not check it at all).
    assert tls_options("rediss://redis-host:6380/0") == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    client = "rediss://h/0?ssl_cert_reqs=none&ssl_certfile=/c/client.crt&ssl_keyfile=/c/client.key"
    assert tls_options(client) == {
        "ssl_cert_reqs": ssl.CERT_NONE,
        "ssl_certfile": "/c/client.crt",
        "ssl_keyfile": "/c/client.key",
    }
    assert tls_options("redis://:pw@redis-host:6379/0") is None
    with pytest.raises(ValueError, match=r"ssl_cert_reqs='maybe' in the broker URL \(DIALSUM_BROKER_URL\)"):
        tls_options("rediss://redis-host/0?ssl_cert_reqs=maybe")


def test_celery_settings_cover_broker_and_result_backend():
    settings = celery_settings("rediss://h:6380/0?ssl_ca_certs=/ca.pem", "redis://other:6379/1")
    assert settings == {
        "broker_url": "rediss://h:6380/0?ssl_ca_certs=/ca.pem",
        "result_backend": "redis://other:6379/1",
        "broker_use_ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem"},
        "redis_backend_use_ssl": None,
    }
    assert celery_settings("rediss://h/0")["redis_backend_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


# --- a TLS-only redis-server, one worker and Flower for the module -------------------------------------------------


def dialsum(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tasks.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory, sample_dir):
    directory = tmp_path_factory.mktemp("tls")
    server = SecureRedisServer(directory, PASSWORD, tls=make_certificates(directory / "certs")).start()
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLOWER_")}
    env.update(
        DIALSUM_BROKER_URL=server.url,
        DIALSUM_SOFT_SHUTDOWN_TIMEOUT="2",
        FLOWER_BASIC_AUTH=":".join(FLOWER_AUTH),
    )
    marker = f"DIALSUM_BROKER_URL={server.url}"
    worker_log, flower_log = directory / "worker.log", directory / "flower.log"
    flower_port = free_port()
    processes = [
        start(["worker", "--gpus", "none", "--cpu-workers", "1"], env, worker_log),
        start(["flower", "--port", str(flower_port)], env, flower_log),
    ]
    try:
        wait_for_ping(node("cpu0"), env, processes[0], worker_log)  # `celery inspect ping`: a client over TLS too
        config_path = directory / "micro.yaml"
        from pipeline.config import ConfigManager

        ConfigManager().save_config(micro_config_dict(sample_dir, directory / "artifacts"), config_path)
        yield {
            "server": server,
            "env": env,
            "config": config_path,
            "flower": f"http://127.0.0.1:{flower_port}",
            "logs": (worker_log, flower_log),
        }
    finally:
        cleanup(processes, marker)
        server.stop()


def test_the_server_certificate_is_checked_against_the_ca(tls_cluster):
    from celery import Celery

    server = tls_cluster["server"]
    without_ca = server.url.split("?")[0]  # rediss://:PASSWORD@127.0.0.1:PORT/0

    result = dialsum("status", env={**tls_cluster["env"], "DIALSUM_BROKER_URL": without_ca})
    assert result.returncode == 2, result.stderr
    shown = f"rediss://:**@127.0.0.1:{server.port}/0"
    assert result.stderr.startswith(f"error: the broker {shown} failed the TLS handshake"), result.stderr
    assert "certificate verify failed" in result.stderr and "DIALSUM_BROKER_URL (ssl_ca_certs" in result.stderr
    assert "Traceback" not in result.stderr and PASSWORD not in result.stderr

    # Celery's broker connection and result backend under the settings tasks/app.py derives from the URL.
    untrusting = Celery(set_as_current=False)
    untrusting.conf.update(**celery_settings(without_ca))
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        with untrusting.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1)
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        untrusting.backend.client.ping()

    trusting = Celery(set_as_current=False)
    trusting.conf.update(**celery_settings(server.url))
    with trusting.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
        assert connection.default_channel.client.ping()
    assert trusting.backend.client.ping()


@pytest.mark.slow
def test_a_run_goes_through_worker_client_flower_and_exporter_over_tls(tls_cluster):
    env = tls_cluster["env"]
    submit = dialsum("submit", "--config", str(tls_cluster["config"]), "--wait", env=env, timeout=600)
    assert submit.returncode == 0, submit.stderr[-3000:] + tls_cluster["logs"][0].read_text()[-3000:]
    run_id = submit.stdout.splitlines()[0]
    stages = {line.split()[0]: line for line in submit.stdout.splitlines() if "queue=" in line}
    assert list(stages) == ["prepare_data", "train", "evaluate", "generate_predictions"], submit.stdout
    assert all(node("cpu0") in line for line in stages.values())
    run_dir = Path(submit.stdout.split("run directory: ")[1].split()[0])
    assert (run_dir / "predictions.csv").is_file()

    # Run record (redis-py) and every stage's result (Celery's result backend), read back over TLS.
    status = dialsum("status", run_id, env=env)
    assert status.returncode == 0, status.stderr
    record = json.loads(status.stdout)
    assert record["status"] == "completed"
    assert set(record["stage_states"].values()) == {"SUCCESS"}

    once = dialsum("metrics", "--once", env=env)
    assert once.returncode == 0, once.stderr
    assert "dialsum_broker_up 1.0" in once.stdout and 'dialsum_runs{status="completed"} 1.0' in once.stdout

    flower, log = tls_cluster["flower"], tls_cluster["logs"][1]
    # Flower's queue view opens its own Redis connection, from Celery's broker_use_ssl only.
    code, body = get(f"{flower}/api/queues/length", FLOWER_AUTH)
    assert code == 200, body
    assert {queue["name"]: queue["messages"] for queue in json.loads(body)["active_queues"]} == {"cpu": 0, "gpu": 0}

    def succeeded() -> list[str]:
        code, body = get(f"{flower}/api/tasks", FLOWER_AUTH)
        tasks = json.loads(body).values() if code == 200 else []
        return [task["name"] for task in tasks if task["state"] == "SUCCESS" and run_id in (task.get("args") or "")]

    names = wait_until(
        lambda: len(succeeded()) == 4 and succeeded(),
        40,
        "Flower seeing the four stages succeed",
        log.read_text,
        interval=0.5,
    )
    assert sorted(names) == sorted(f"dialsum.{stage}" for stage in stages)
