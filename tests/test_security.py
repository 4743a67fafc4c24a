"""Hostile task messages: manifests are validated before any stage acts, and only JSON is accepted."""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import pytest

from pipeline.config import ConfigError
from pipeline.lifecycle import new_manifest, validate_manifest


@pytest.fixture
def manifest(micro_config) -> dict:
    return new_manifest(micro_config)


def test_a_manifest_from_new_manifest_is_valid(manifest):
    assert validate_manifest(manifest, "train") is manifest


@pytest.mark.parametrize("bad", [None, "run-123", ["run-123"], 42])
def test_non_object_argument_is_refused(bad):
    with pytest.raises(ValueError, match="must be a manifest"):
        validate_manifest(bad, "train")


def test_missing_and_mistyped_fields_are_named(manifest):
    del manifest["run_id"]
    manifest["stages"] = []
    with pytest.raises(ValueError, match=r"manifest\.run_id: missing.*manifest\.stages: missing or not a dict"):
        validate_manifest(manifest, "train")


def test_manifest_naming_someone_elses_run_is_refused(manifest):
    manifest["run_id"] = "run-000000000000"
    with pytest.raises(ValueError, match=r"manifest\.run_id 'run-000000000000' is not its config's run id"):
        validate_manifest(manifest, "evaluate")


def test_run_dir_redirected_elsewhere_is_refused(manifest, tmp_path):
    manifest["run_dir"] = str(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match=r"manifest\.run_dir .* is not config general\.output_dir"):
        validate_manifest(manifest, "train")


@pytest.mark.parametrize("path", ["../../etc", "/etc/passwd"])
def test_stage_paths_outside_the_artifact_root_are_refused(manifest, path):
    root = Path(manifest["config"]["general"]["artifact_root"])
    manifest["stages"]["prepare_data"] = {"dataset_dir": str(root / path) if path.startswith("..") else path}
    with pytest.raises(ValueError, match=r"stages\.prepare_data\.dataset_dir: .* is outside the artifact root"):
        validate_manifest(manifest, "train")


def test_symlink_out_of_the_artifact_root_is_refused(manifest, tmp_path):
    root = Path(manifest["config"]["general"]["artifact_root"])
    root.mkdir(parents=True, exist_ok=True)
    (root / "escape").symlink_to("/etc")
    manifest["stages"]["train"] = {"model_dir": str(root / "escape")}
    with pytest.raises(ValueError, match="outside the artifact root"):
        validate_manifest(manifest, "evaluate")


def test_invalid_config_inside_a_manifest_names_the_key(manifest):
    manifest["config"]["training"]["per_device_train_batch_size"] = 10**12 * -1
    with pytest.raises(ConfigError, match=r"training\.per_device_train_batch_size"):
        validate_manifest(manifest, "train")


def test_paths_outside_the_workers_allowed_roots_are_refused(manifest, sample_dir, tmp_path):
    root = manifest["config"]["general"]["artifact_root"]
    assert validate_manifest(manifest, "train", [root, str(sample_dir)]) is manifest
    with pytest.raises(ValueError, match=r"config data\.train_path: .* outside this worker's allowed roots"):
        validate_manifest(manifest, "train", [root])


@pytest.mark.slow
def test_hostile_message_fails_on_a_real_worker_and_writes_nothing(cluster, tmp_path):
    from tasks.app import app

    hostile = new_manifest(copy.deepcopy(cluster["config"]))
    target = tmp_path / "victim"
    hostile["run_dir"] = str(target)
    result = app.send_task("dialsum.prepare_data", args=[hostile])
    with pytest.raises(ValueError, match="is not config general.output_dir"):
        result.get(timeout=60, propagate=True)
    assert not target.exists()


@pytest.mark.slow
def test_pickle_messages_are_refused_by_workers(cluster, tmp_path):
    from tasks.app import app

    marker = tmp_path / "pickle-ran"
    manifest = new_manifest(copy.deepcopy(cluster["config"]))
    manifest["run_dir"] = str(marker)
    result = app.send_task("dialsum.prepare_data", args=[manifest], serializer="pickle")
    log = cluster["dir"] / "workers.log"
    deadline = time.monotonic() + 60
    while "untrusted content of type pickle" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "no worker logged the refusal of the pickle message"
        time.sleep(0.5)
    assert result.state == "PENDING"  # never executed
    assert not marker.exists()
    assert os.environ.get("DIALSUM_BROKER_URL")  # the message really went through the cluster's broker
