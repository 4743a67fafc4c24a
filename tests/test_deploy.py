"""deploy/: the compose file, systemd units and Kubernetes manifests say what the cluster needs; the metrics exporter.

Every ``dialsum`` command line found in deploy/ goes through the real argument parser and, for workers, through the
real worker planner, so a renamed flag or a plan that would start two workers with one node name fails here. The
compose file is checked against the Compose specification's JSON schema (vendored, see deploy/README.md) and by
Debian's ``docker-compose config``. The exporter is scraped over HTTP against a real redis-server.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, free_port

DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
ENV_EXAMPLE = DEPLOY / "compose" / ".env.example"
SYSTEMD = DEPLOY / "systemd"
K8S = DEPLOY / "k8s"
SECRET_NAME = "dialsum-secrets"
DEFAULT_SOFT_SHUTDOWN = 30.0  # tasks/app.py's default for DIALSUM_SOFT_SHUTDOWN_TIMEOUT


# ------------------------------------------------------------------------------------------------- helpers
def _dialsum(argv: list[str]):
    """``argv`` (``dialsum ...`` or ``/path/to/dialsum ...``) parsed by the real ``dialsum`` parser."""
    from tasks.cli import build_parser

    assert Path(argv[0]).name == "dialsum", argv
    return build_parser().parse_args(argv[1:])


def _plan(argv: list[str]):
    """The worker processes ``dialsum worker ...`` would start (on an 8-core node)."""
    from tasks.worker import plan_workers

    args = _dialsum(argv)
    assert args.command == "worker", argv
    return plan_workers(args.gpus, args.queues, args.cpu_workers, cores=8)


def _seconds(value) -> float:
    """Compose durations (``90s``, ``1m30s``) and plain numbers as seconds."""
    if isinstance(value, (int, float)) or str(value).isdigit():
        return float(value)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert parts and "".join(number + unit for number, unit in parts) == value, value
    return sum(float(number) * units[unit] for number, unit in parts)


def _read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


def _interpolate(value, env: dict[str, str]):
    """Compose's variable substitution (``${X}``, ``${X:-default}``, ``${X:?error}``, ``$$``) on a loaded file."""
    if isinstance(value, dict):
        return {key: _interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name", "op", "arg")
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == ":-" else ""

    return _VARIABLE.sub(substitute, value)


# ------------------------------------------------------------------------------------------------- compose
@pytest.fixture(scope="module")
def compose_env() -> dict[str, str]:
    return _read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(compose_env) -> dict:
    """The compose file as Compose resolves it with .env.example (anchors merged, variables substituted)."""
    return _interpolate(yaml.safe_load(COMPOSE.read_text()), compose_env)


def _gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def _dialsum_services(compose: dict) -> dict[str, dict]:
    return {name: service for name, service in compose["services"].items() if name != "redis"}


def test_compose_file_matches_the_compose_specification_schema():
    from jsonschema import Draft201909Validator

    schema = json.loads((DEPLOY / "compose" / "compose-spec.schema.json").read_text())
    assert schema["$schema"].startswith("http://json-schema.org/draft/2019-09/")
    Draft201909Validator.check_schema(schema)
    validator = Draft201909Validator(schema)
    document = yaml.safe_load(COMPOSE.read_text())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
    assert not errors, "\n".join(errors)

    # The schema does look inside services: a misspelt key in a GPU reservation is an error.
    document["services"]["worker-gpu0"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilitiez"] = ["gpu"]
    assert any("capabilitiez" in error.message for error in validator.iter_errors(document))


def test_compose_config_validates_with_docker_compose(tmp_path):
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not installed: apt-get install docker-compose (.ci/run must install it)"
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}  # no stray REDIS_PASSWORD
    command = [binary, "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), "config"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    expected = _read_env_file(ENV_EXAMPLE)
    assert resolved["services"]["worker-gpu1"]["environment"]["DIALSUM_BROKER_URL"] == (
        f"redis://:{expected['REDIS_PASSWORD']}@redis:6379/0"
    )
    assert resolved["services"]["flower"]["environment"]["FLOWER_BASIC_AUTH"] == expected["FLOWER_BASIC_AUTH"]

    # Without the passwords Compose refuses to start anything, naming the variable.
    no_password = tmp_path / "no-password.env"
    no_password.write_text("\n".join(line for line in ENV_EXAMPLE.read_text().splitlines() if "PASSWORD" not in line))
    command = [binary, "-f", str(COMPOSE), "--env-file", str(no_password), "config"]
    refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode != 0 and "REDIS_PASSWORD" in refused.stderr, refused.stderr


def test_compose_runs_one_worker_per_gpu_with_its_own_device_and_name(compose):
    services = compose["services"]
    gpu_services = {name: service for name, service in services.items() if _gpu_devices(service)}
    assert len(gpu_services) >= 2
    device_ids = []
    for name, service in gpu_services.items():
        (device,) = _gpu_devices(service)
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        assert len(device["device_ids"]) == 1, name
        device_ids += device["device_ids"]
        # The container sees its one GPU as index 0; one worker, no CPU worker (its node name would repeat).
        (spec,) = _plan(service["command"])
        assert spec.name == "gpu0@%h" and spec.env["CUDA_VISIBLE_DEVICES"] == "0" and spec.queues == ("gpu",)
        assert _seconds(service["stop_grace_period"]) > DEFAULT_SOFT_SHUTDOWN, name
    assert len(set(device_ids)) == len(device_ids), device_ids

    (cpu,) = _plan(services["worker-cpu"]["command"])
    assert cpu.queues == ("cpu",) and cpu.env["CUDA_VISIBLE_DEVICES"] == ""
    workers = [service for service in services.values() if "worker" in service.get("command", [])]
    hostnames = [service["hostname"] for service in workers]
    assert len(set(hostnames)) == len(hostnames) == len(gpu_services) + 1, hostnames  # Celery node names differ


def test_compose_shares_the_artifact_root_and_the_secrets(compose, compose_env):
    root = compose_env["ARTIFACT_ROOT"]
    assert compose["volumes"]["artifacts"]["driver_opts"] == {"type": "none", "o": "bind", "device": root}
    broker = f"redis://:{compose_env['REDIS_PASSWORD']}@redis:6379/0"
    for name, service in _dialsum_services(compose).items():
        assert f"artifacts:{root}" in service["volumes"], name  # the same path inside as on the host
        assert service["environment"]["DIALSUM_BROKER_URL"] == broker, name
        assert service["depends_on"] == {"redis": {"condition": "service_healthy"}}, name
        _dialsum(service["command"])

    redis = compose["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "requirepass" in command and "noeviction" in command
    assert compose_env["REDIS_PASSWORD"] not in command  # from its environment, never on a command line
    assert redis["environment"]["REDIS_PASSWORD"] == compose_env["REDIS_PASSWORD"]
    assert "redis-data:/data" in redis["volumes"] and "redis-cli ping" in " ".join(redis["healthcheck"]["test"])

    flower = compose["services"]["flower"]
    args = _dialsum(flower["command"])
    assert args.command == "flower" and args.address == "0.0.0.0" and not args.no_auth_on_loopback
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == compose_env["FLOWER_BASIC_AUTH"]
    assert "/healthcheck" in " ".join(flower["healthcheck"]["test"])
    assert _dialsum(compose["services"]["metrics"]["command"]).command == "metrics"
    # Published ports stay on loopback unless the operator opens them.
    for service in compose["services"].values():
        assert all(port.startswith("127.0.0.1:") for port in service.get("ports", [])), service.get("ports")


def test_dockerfile_installs_torch_before_the_package():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, flags=re.MULTILINE)
    runs = re.findall(r"^RUN (.*)$", text, flags=re.MULTILINE)
    torch = next(k for k, run in enumerate(runs) if "$TORCH_SPEC" in run)
    package = next(k for k, run in enumerate(runs) if run.strip() == "pip install -c constraints.txt .")
    assert torch < package
    assert 'ENTRYPOINT ["/usr/bin/tini", "--"]' in text


# ------------------------------------------------------------------------------------------------- systemd
def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> values (systemd allows a key several times)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in (SYSTEMD / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _soft_shutdown_seconds(env: dict[str, str]) -> float:
    return float(env.get("DIALSUM_SOFT_SHUTDOWN_TIMEOUT", DEFAULT_SOFT_SHUTDOWN))


def test_systemd_worker_template_runs_one_gpu_worker_per_instance():
    unit = _unit("dialsum-worker@.service")
    service = unit["Service"]
    (exec_start,) = service["ExecStart"]
    # Instance 3 is GPU 3: one worker, pinned to it, named gpu3@<host>, on queue gpu only.
    (spec,) = _plan(shlex.split(exec_start.replace("%i", "3")))
    assert spec.name == "gpu3@%h" and spec.env["CUDA_VISIBLE_DEVICES"] == "3" and spec.queues == ("gpu",)
    assert service["KillMode"] == ["mixed"] and service["Restart"] == ["on-failure"]
    env = _read_env_file(SYSTEMD / "dialsum.env.example")
    assert _seconds(service["TimeoutStopSec"][0]) > _soft_shutdown_seconds(env)
    assert unit["Unit"]["RequiresMountsFor"] and unit["Install"]["WantedBy"] == ["multi-user.target"]

    (cpu,) = _plan(shlex.split(_unit("dialsum-cpu-worker.service")["Service"]["ExecStart"][0]))
    assert cpu.name == "cpu0@%h" and cpu.queues == ("cpu",)


def test_systemd_units_take_secrets_from_the_environment_file_only():
    env = _read_env_file(SYSTEMD / "dialsum.env.example")
    assert env["DIALSUM_BROKER_URL"].startswith("redis://:") and ":" in env["FLOWER_BASIC_AUTH"]
    units = sorted(path.name for path in SYSTEMD.glob("*.service"))
    assert units == [
        "dialsum-cpu-worker.service",
        "dialsum-flower.service",
        "dialsum-metrics.service",
        "dialsum-worker@.service",
    ]
    for name in units:
        unit = _unit(name)
        service = unit["Service"]
        assert service["EnvironmentFile"] == ["/etc/dialsum/dialsum.env"], name
        assert service["User"] == ["dialsum"] and service["Restart"] == ["on-failure"], name
        assert "redis://" not in (SYSTEMD / name).read_text() and "Environment" not in service, name
        _dialsum(shlex.split(service["ExecStart"][0].replace("%i", "0")))
    flower = _dialsum(shlex.split(_unit("dialsum-flower.service")["Service"]["ExecStart"][0]))
    assert flower.command == "flower" and not flower.no_auth_on_loopback
    assert _unit("dialsum-flower.service")["Service"]["KillMode"] == ["mixed"]


# ---------------------------------------------------------------------------------------------- kubernetes
@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict]:
    """Every document of deploy/k8s/*.yaml by (kind, name)."""
    documents = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is None:
                continue
            assert {"apiVersion", "kind"} <= document.keys(), path
            name = document.get("metadata", {}).get("name", path.stem)
            assert (document["kind"], name) not in documents, (path, name)
            documents[(document["kind"], name)] = {**document, "_file": path.name}
    return documents


def _workloads(manifests) -> dict[str, dict]:
    return {
        name: document
        for (kind, name), document in manifests.items()
        if kind in ("Deployment", "StatefulSet", "DaemonSet")
    }


def _container(workload: dict) -> dict:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env", [])}


def _secret_ref(container: dict, name: str) -> tuple[str, str]:
    reference = _env(container)[name]["valueFrom"]["secretKeyRef"]
    return reference["name"], reference["key"]


def _argv(container: dict) -> list[str]:
    # The image's ENTRYPOINT is tini; manifests set `args` so that it stays PID 1.
    assert "command" not in container or container["command"][0] != "dialsum", "use args: keep tini as PID 1"
    return container.get("args", [])


def _artifact_mount(workload: dict) -> str | None:
    spec = workload["spec"]["template"]["spec"]
    claims = {
        volume["name"]
        for volume in spec.get("volumes", [])
        if volume.get("persistentVolumeClaim", {}).get("claimName") == "dialsum-artifacts"
    }
    mounts = [mount["mountPath"] for mount in _container(workload).get("volumeMounts", []) if mount["name"] in claims]
    return mounts[0] if mounts else None


def test_k8s_manifests_are_complete_and_namespaced(manifests):
    kustomization = manifests[("Kustomization", "kustomization")]
    listed = set(kustomization["resources"])
    files = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == files  # the example Secret is not applied: it is created by hand with real values
    for (kind, name), document in manifests.items():
        if kind not in ("Namespace", "Kustomization"):
            assert document["metadata"]["namespace"] == "dialsum", (kind, name)
    for (kind, name), service in manifests.items():
        if kind != "Service":
            continue
        target = _workloads(manifests)[name]
        labels = target["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), name
        ports = {port["name"] for port in _container(target)["ports"]}
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= ports, name


def test_k8s_gpu_workers_take_one_gpu_each_and_share_the_artifact_root(manifests):
    pvc = manifests[("PersistentVolumeClaim", "dialsum-artifacts")]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    workloads = _workloads(manifests)
    gpu = workloads["dialsum-worker-gpu"]
    container = _container(gpu)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # The device plugin exposes the pod's one GPU as index 0: one worker on it, no CPU worker.
    (spec,) = _plan(_argv(container))
    assert spec.name == "gpu0@%h" and spec.env["CUDA_VISIBLE_DEVICES"] == "0"
    soft = float(_env(container).get("DIALSUM_SOFT_SHUTDOWN_TIMEOUT", {}).get("value", DEFAULT_SOFT_SHUTDOWN))
    assert gpu["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > soft
    assert gpu["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0

    cpu = workloads["dialsum-worker-cpu"]
    (cpu_spec,) = _plan(_argv(_container(cpu)))
    assert cpu_spec.queues == ("cpu",)
    assert "nvidia.com/gpu" not in _container(cpu)["resources"].get("limits", {})
    assert cpu["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > soft

    # Every worker mounts the RWX volume, and at the same path: stages hand each other absolute paths.
    mounts = {name: _artifact_mount(workload) for name, workload in workloads.items() if "worker" in name}
    assert set(mounts.values()) == {"/mnt/shared/dialsum"}, mounts
    for name in mounts:
        assert _secret_ref(_container(workloads[name]), "DIALSUM_BROKER_URL") == (SECRET_NAME, "broker-url")


def test_k8s_secrets_come_from_the_secret(manifests):
    secret = manifests[("Secret", SECRET_NAME)]
    keys = secret["stringData"]
    assert all("REPLACE" in value for value in keys.values()), "the example must hold placeholders only"
    workloads = _workloads(manifests)
    references = set()
    for name, workload in workloads.items():
        container = _container(workload)
        for variable, item in _env(container).items():
            if "valueFrom" in item:
                references.add(_secret_ref(container, variable))
            else:
                # No password or credentialed URL as a plain value anywhere.
                assert "redis://" not in str(item.get("value")) and "PASSWORD" not in variable, (name, variable)
        if name != "dialsum-redis":
            assert _secret_ref(container, "DIALSUM_BROKER_URL") == (SECRET_NAME, "broker-url"), name
    assert {key for secret_name, key in references if secret_name == SECRET_NAME} <= keys.keys()
    assert all(secret_name == SECRET_NAME for secret_name, _ in references)

    # The broker URL in the example points at the Redis Service, with the Redis password.
    service = manifests[("Service", "dialsum-redis")]
    url = keys["broker-url"]
    assert url == f"redis://:{keys['redis-password']}@dialsum-redis.dialsum.svc.cluster.local:6379/0"
    assert service["spec"]["ports"][0]["port"] == 6379

    redis = workloads["dialsum-redis"]
    container = _container(redis)
    assert _secret_ref(container, "REDIS_PASSWORD") == (SECRET_NAME, "redis-password")
    command = " ".join(container["command"])
    assert "--appendonly yes" in command and "requirepass" in command
    assert {"mountPath": "/data", "name": "data"} in container["volumeMounts"]
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert "readinessProbe" in container and "livenessProbe" in container

    flower = _container(workloads["dialsum-flower"])
    assert _secret_ref(flower, "FLOWER_BASIC_AUTH") == (SECRET_NAME, "flower-basic-auth")
    args = _dialsum(_argv(flower))
    assert args.command == "flower" and args.address == "0.0.0.0" and not args.no_auth_on_loopback
    for probe in ("readinessProbe", "livenessProbe"):
        assert flower[probe]["httpGet"]["path"] == "/healthcheck"  # answers without credentials
    metrics = _container(workloads["dialsum-metrics"])
    assert _dialsum(_argv(metrics)).command == "metrics"
    assert metrics["readinessProbe"]["httpGet"]["path"] == "/metrics"


# ---------------------------------------------------------------------------------------------- metrics
def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=15) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("dialsum_")
    }


def _value(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_exporter_reports_queues_runs_and_trials_at_scrape_time(redis_server, micro_config_file, tmp_path):
    import kombu
    import redis
    from celery import Celery

    url = redis_server.url
    env = {**os.environ, "DIALSUM_BROKER_URL": url}
    connection = redis.Redis.from_url(url, decode_responses=True)

    # A real submission with no worker running: its run record is queued and its first stage waits in queue cpu.
    submit = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "submit", "--config", str(micro_config_file)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submit.returncode == 0, submit.stderr[-2000:]
    # Three train messages on queue gpu, two with priorities: kombu keeps those in lists "gpu\x06\x16<priority>".
    sender = Celery(broker=url, set_as_current=False)
    sender.conf.task_serializer = "json"
    for priority in (None, 3, 9):
        sender.send_task("dialsum.train", args=[{}], queue="gpu", priority=priority)
    assert connection.llen("gpu\x06\x169") == 1 and connection.llen("gpu\x06\x163") == 1
    # One of them is taken by a "worker" and not acknowledged: in flight, no longer waiting.
    consumer = kombu.Connection(url)
    taken = consumer.default_channel.basic_get("gpu", no_ack=False)
    assert taken is not None

    # Run records and sweeps as tasks/state.py and tasks/sweeps.py store them; ids whose records expired stay in
    # the indexes and must not count.
    for run_id, status in (("run-a", "completed"), ("run-b", "failed"), ("run-c", "running")):
        connection.hset(f"dialsum:run:{run_id}", mapping={"status": status})
        connection.zadd("dialsum:runs", {run_id: time.time()})
    connection.zadd("dialsum:runs", {"run-expired": 0})
    sweeps = {
        "sweep-x": ("running", ["finished", "running", "queued"]),
        "sweep-y": ("finished", ["finished", "pruned"]),
    }
    for sweep_id, (status, trial_statuses) in sweeps.items():
        connection.hset(f"dialsum:sweep:{sweep_id}", mapping={"status": status})
        connection.zadd("dialsum:sweeps", {sweep_id: time.time()})
        for index, trial_status in enumerate(trial_statuses):
            trial = {"trial_id": f"{sweep_id}-t{index}", "index": index, "status": trial_status}
            connection.hset(f"dialsum:sweep:{sweep_id}:trials", trial["trial_id"], json.dumps(trial))
    connection.zadd("dialsum:sweeps", {"sweep-expired": 0})

    port = free_port()
    log = tmp_path / "metrics.log"
    with open(log, "w") as output:
        exporter = subprocess.Popen(
            [sys.executable, "-m", "tasks.cli", "metrics", "--port", str(port), "--address", "127.0.0.1"],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                samples = _scrape(endpoint)
                break
            except (urllib.error.URLError, ConnectionError):
                assert exporter.poll() is None, log.read_text()
                assert time.monotonic() < deadline, f"no /metrics after 60 s: {log.read_text()}"
                time.sleep(0.2)

        assert _value(samples, "dialsum_broker_up") == 1
        assert _value(samples, "dialsum_queue_depth", queue="gpu") == 2
        assert _value(samples, "dialsum_queue_depth", queue="cpu") == 1
        assert _value(samples, "dialsum_queue_unacked", queue="gpu") == 1
        assert _value(samples, "dialsum_queue_unacked", queue="cpu") == 0
        runs = {"queued": 1, "running": 1, "completed": 1, "failed": 1, "cancelled": 0, "pruned": 0}
        assert {status: _value(samples, "dialsum_runs", status=status) for status in runs} == runs
        trials = {"queued": 1, "running": 1, "finished": 2, "failed": 0, "pruned": 1, "cancelled": 0}
        assert {status: _value(samples, "dialsum_trials", status=status) for status in trials} == trials
        assert _value(samples, "dialsum_sweeps", status="running") == 1
        assert _value(samples, "dialsum_sweeps", status="finished") == 1

        # Values are read at scrape time: acknowledge the message, finish a run, queue another stage.
        taken.ack()
        connection.hset("dialsum:run:run-c", "status", "completed")
        sender.send_task("dialsum.evaluate", args=[{}], queue="cpu")
        samples = _scrape(endpoint)
        assert _value(samples, "dialsum_queue_unacked", queue="gpu") == 0
        assert _value(samples, "dialsum_queue_depth", queue="cpu") == 2
        assert _value(samples, "dialsum_runs", status="completed") == 2
        assert _value(samples, "dialsum_runs", status="running") == 0

        once = subprocess.run(
            [sys.executable, "-m", "tasks.cli", "metrics", "--once"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert once.returncode == 0 and 'dialsum_queue_depth{queue="cpu"} 2.0' in once.stdout, once.stderr

        # A broker that is down is a sample, not a failed scrape.
        consumer.release()
        redis_server.stop()
        samples = _scrape(endpoint)
        assert _value(samples, "dialsum_broker_up") == 0
        assert not any(name == "dialsum_queue_depth" for name, _ in samples)

        exporter.send_signal(signal.SIGTERM)
        assert exporter.wait(timeout=15) == 0
    finally:
        if exporter.poll() is None:
            exporter.kill()
            exporter.wait(timeout=10)
        consumer.release()
