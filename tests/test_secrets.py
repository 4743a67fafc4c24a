"""Secrets stay secret: a real run through a password-protected redis-server, real workers, Flower and W&B (offline).

The Redis password, the W&B API key and Flower's password are recognisable strings. After the run, everything the
processes wrote or serve is searched for them, as typed and percent-encoded: worker, Flower and client output, every
file under the test's directory (artifact root with manifests, run records, checkpoints and the W&B offline run; W&B's
cache, config and data dirs; HOME and TMPDIR of the processes), Flower's API answers, and every key and value in Redis
(result backend, run records, leases, kombu bindings). The only file allowed to hold the Redis password is the
redis-server's own config. A missing or wrong password is an error that says what to set, not a traceback.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from tests.conftest import free_port, micro_config_dict, wait_until
from tests.secure_redis import SecureRedisServer
from tests.test_worker_flower import cleanup, get, node, processes_with, start, wait_for_ping

REPO = Path(__file__).resolve().parents[1]
# '+', '/', '@' and '%' change when percent-encoded, so the encoded forms are searched for as well.
REDIS_PASSWORD = "Redis+Pw/leak@Marker%7"
WANDB_API_KEY = "fakewandbkey0leakmarker0123456789abcdef0"  # 40 characters, like a real key
FLOWER_PASSWORD = "Flower-Pw-leak-Marker-5"
SECRETS = {"Redis password": REDIS_PASSWORD, "W&B API key": WANDB_API_KEY, "Flower password": FLOWER_PASSWORD}


def forms(secret: str) -> set[bytes]:
    """The secret as typed and as URL encoders write it."""
    return {text.encode() for text in (secret, quote(secret, safe=""), quote(secret), quote_plus(secret))}


def dialsum(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tasks.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_broker_urls_and_errors_are_shown_without_the_password():
    import redis

    from tasks.broker import broker_error_message, shown_url

    encoded = quote(REDIS_PASSWORD, safe="")
    url = f"rediss://:{encoded}@redis-host:6380/0?ssl_ca_certs=/etc/ca.pem&password={encoded}"
    assert shown_url(url) == "rediss://:**@redis-host:6380/0?ssl_ca_certs=/etc/ca.pem&password=**"
    message = broker_error_message(redis.ConnectionError(f"refused {REDIS_PASSWORD} / {encoded}"), url)
    assert message.startswith("cannot reach the broker rediss://:**@redis-host:6380/0?ssl_ca_certs=/etc/ca.pem&")
    assert "refused ** / **" in message and not any(form.decode() in message for form in forms(REDIS_PASSWORD))


@pytest.fixture(scope="module")
def secured(tmp_path_factory, sample_dir):
    """redis-server with requirepass, `dialsum worker` and `dialsum flower` on it, W&B offline with an API key set."""
    directory = tmp_path_factory.mktemp("secrets")
    server = SecureRedisServer(directory / "redis", REDIS_PASSWORD)
    server.directory.mkdir()
    server.start()
    private = {name: directory / name for name in ("home", "tmp", "wandb-cache", "wandb-config", "wandb-data")}
    for path in private.values():
        path.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("FLOWER_", "WANDB_"))}
    env.update(
        DIALSUM_BROKER_URL=server.url,
        DIALSUM_SOFT_SHUTDOWN_TIMEOUT="2",
        FLOWER_BASIC_AUTH=f"admin:{FLOWER_PASSWORD}",
        WANDB_API_KEY=WANDB_API_KEY,
        WANDB_MODE="offline",  # W&B never tries the network
        WANDB_SILENT="true",
        WANDB_CACHE_DIR=str(private["wandb-cache"]),
        WANDB_CONFIG_DIR=str(private["wandb-config"]),
        WANDB_DATA_DIR=str(private["wandb-data"]),
        HOME=str(private["home"]),
        TMPDIR=str(private["tmp"]),
    )
    marker = f"DIALSUM_BROKER_URL={server.url}"
    logs = {"worker": directory / "worker.log", "flower": directory / "flower.log"}
    flower_port = free_port()
    processes = [
        start(["worker", "--gpus", "none", "--cpu-workers", "1"], env, logs["worker"]),
        start(["flower", "--port", str(flower_port)], env, logs["flower"]),
    ]
    try:
        wait_for_ping(node("cpu0"), env, processes[0], logs["worker"])
        config = micro_config_dict(sample_dir, directory / "artifacts")
        config["wandb"].update(mode="offline", project="dialsum-secrets")
        config_path = directory / "micro.yaml"
        from pipeline.config import ConfigManager

        ConfigManager().save_config(config, config_path)
        yield {
            "server": server,
            "env": env,
            "dir": directory,
            "config": config_path,
            "flower": f"http://127.0.0.1:{flower_port}",
            "logs": logs,
            "marker": marker,
        }
    finally:
        cleanup(processes, marker)
        server.stop()


@pytest.fixture(scope="module")
def finished_run(secured):
    """One real run submitted with `dialsum submit --wait`, then again with `dialsum run --broker` (stored results)."""
    env = secured["env"]
    submit = dialsum("submit", "--config", str(secured["config"]), "--wait", env=env, timeout=600)
    assert submit.returncode == 0, submit.stderr[-3000:] + secured["logs"]["worker"].read_text()[-3000:]
    again = dialsum("run", "--config", str(secured["config"]), "--broker", secured["server"].url, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    run_id = submit.stdout.splitlines()[0]
    outputs = {"submit": submit, "run --broker": again}
    outputs["status"] = dialsum("status", run_id, env=env)
    outputs["status all"] = dialsum("status", env=env)
    outputs["metrics"] = dialsum("metrics", "--once", env=env)
    return {"run_id": run_id, "outputs": outputs}


def test_missing_or_wrong_password_is_an_error_naming_the_broker_url(secured):
    server, env = secured["server"], secured["env"]
    missing = dialsum("status", env={**env, "DIALSUM_BROKER_URL": server.url_with(None)})
    assert missing.returncode == 2, missing.stderr
    assert missing.stderr.startswith(
        f"error: the broker redis://127.0.0.1:{server.port}/0 requires a password and DIALSUM_BROKER_URL has none"
    )
    assert "Set DIALSUM_BROKER_URL (or --broker) to redis://:PASSWORD@HOST:PORT/0" in missing.stderr

    wrong_url = server.url_with("not-the-password")
    for args in (["status"], ["submit", "--config", str(secured["config"])]):
        wrong = dialsum(*args, env={**env, "DIALSUM_BROKER_URL": wrong_url})
        assert wrong.returncode == 2, wrong.stderr
        assert wrong.stderr.startswith(
            f"error: the broker redis://:**@127.0.0.1:{server.port}/0 refused the password in DIALSUM_BROKER_URL"
        )
        assert "not-the-password" not in wrong.stdout + wrong.stderr
    for result in (missing, wrong):
        assert "Traceback" not in result.stderr and REDIS_PASSWORD not in result.stderr

    # The exporter reports the broker down and says why, without the password it was given.
    once = dialsum("metrics", "--once", env={**env, "DIALSUM_BROKER_URL": wrong_url})
    assert once.returncode == 0 and "dialsum_broker_up 0.0" in once.stdout, once.stderr
    assert "refused the password in DIALSUM_BROKER_URL" in once.stderr and "not-the-password" not in once.stderr


@pytest.mark.slow
def test_a_run_works_through_a_password_protected_redis(secured, finished_run):
    outputs, port = finished_run["outputs"], secured["server"].port
    stages = [line.split()[0] for line in outputs["submit"].stdout.splitlines() if "queue=" in line]
    assert stages == ["prepare_data", "train", "evaluate", "generate_predictions"], outputs["submit"].stdout
    assert f"submitted to redis://:**@127.0.0.1:{port}/0" in outputs["run --broker"].stdout
    record = json.loads(outputs["status"].stdout)
    assert record["status"] == "completed" and set(record["stage_states"].values()) == {"SUCCESS"}
    assert finished_run["run_id"] in outputs["status all"].stdout
    assert "dialsum_broker_up 1.0" in outputs["metrics"].stdout
    assert 'dialsum_runs{status="completed"} 1.0' in outputs["metrics"].stdout
    # The W&B run was real (offline): its run file holds the run's config (offline, W&B writes no config.yaml).
    runs = list((secured["dir"] / "artifacts" / "wandb").rglob(f"offline-run-*/run-{finished_run['run_id']}.wandb"))
    assert len(runs) == 1 and b"learning_rate" in runs[0].read_bytes()


def _redis_dump(server: SecureRedisServer) -> list[tuple[str, bytes]]:
    """Every key and value in Redis, plus the base64 bodies of any kombu message in them, decoded."""
    import redis

    client = redis.Redis.from_url(server.url)
    found = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key)]
        elif kind == "hash":
            values = [part for item in client.hgetall(key).items() for part in item]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
        else:
            values = [repr(client.dump(key)).encode()]
        for value in [key, *values]:
            found.append((f"redis {key!r}", value or b""))
            found += [(f"redis {key!r} (message body)", body) for body in _message_bodies(value or b"")]
    return found


def _message_bodies(value: bytes) -> list[bytes]:
    try:
        document = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return []
    bodies, stack = [], [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("body"), str):
                try:
                    bodies.append(base64.b64decode(item["body"], validate=True))
                except (binascii.Error, ValueError):
                    pass
            stack += item.values()
        elif isinstance(item, list):
            stack += item
    return bodies


@pytest.mark.slow
def test_no_secret_in_logs_files_flower_or_redis(secured, finished_run):
    server, directory = secured["server"], secured["dir"]
    run_id = finished_run["run_id"]
    haystack: list[tuple[str, bytes]] = []
    for name, result in finished_run["outputs"].items():
        haystack.append((f"dialsum {name} stdout", result.stdout.encode()))
        haystack.append((f"dialsum {name} stderr", result.stderr.encode()))

    # Every file the processes wrote: logs, artifact root, W&B dirs, HOME, TMPDIR. Only redis-server's config may hold
    # the Redis password (it is where the password is set).
    files = [path for path in directory.rglob("*") if path.is_file() and not path.is_symlink()]
    server_config = server.directory / "redis.conf"
    assert REDIS_PASSWORD.encode() in server_config.read_bytes()  # the search below would find it
    haystack += [(str(path), path.read_bytes()) for path in files if path != server_config]
    names = {path.name for path in files}
    expected = {"worker.log", "flower.log", "manifest.json", "experiment.json", "trainer_state.json", "config.yaml"}
    assert expected | {"debug.log", "debug-internal.log", "output.log"} <= names, sorted(names)  # W&B's own logs too
    assert any(path.suffix == ".wandb" for path in files)

    # Flower's API: the task list, each task's details (args, kwargs, result), the workers (with their Celery conf).
    flower, auth = secured["flower"], ("admin", FLOWER_PASSWORD)
    task_ids = json.loads(finished_run["outputs"]["status"].stdout)["task_ids"]

    def tasks_seen() -> bytes:
        code, body = get(f"{flower}/api/tasks", auth)
        return body if code == 200 and all(task_id.encode() in body for task_id in task_ids) else b""

    tasks = wait_until(
        tasks_seen, 40, "Flower listing the run's tasks", secured["logs"]["flower"].read_text, interval=0.5
    )
    haystack.append(("Flower /api/tasks", tasks))
    for task_id in task_ids:
        code, body = get(f"{flower}/api/task/info/{task_id}", auth)
        assert code == 200 and run_id.encode() in body, body[:500]
        haystack.append((f"Flower /api/task/info/{task_id}", body))
    for path in ("/api/workers?refresh=true", "/api/queues/length", "/broker", "/workers", "/metrics"):
        code, body = get(flower + path, auth)
        assert code == 200, (path, body[:500])
        haystack.append((f"Flower {path}", body))
    assert b"redis://:********@127.0.0.1" in dict(haystack)["Flower /api/workers?refresh=true"]  # conf, masked

    redis_items = _redis_dump(server)
    assert any(f"dialsum:run:{run_id}".encode() == value for _, value in redis_items)
    haystack += redis_items

    # The processes' command lines (what `ps` shows every user).
    for pid in processes_with(secured["marker"]):
        try:
            haystack.append((f"/proc/{pid}/cmdline", (Path("/proc") / str(pid) / "cmdline").read_bytes()))
        except OSError:
            continue

    worker_log = secured["logs"]["worker"].read_bytes()
    assert f"redis://:**@127.0.0.1:{server.port}/0".encode() in worker_log  # Celery's banner, masked
    leaks = [
        f"{label} in {where}"
        for label, secret in SECRETS.items()
        for where, text in haystack
        if any(form in text for form in forms(secret))
    ]
    assert not leaks, leaks
