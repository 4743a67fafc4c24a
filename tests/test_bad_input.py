"""Bad input (RELIABILITY.md, "Bad input"): every case is refused with an error that names what is wrong (file, row
and column; YAML key path; manifest field) and how to fix it, and nothing is written.

Each parameter row is one case of the table. Data files and configs go through ``dialsum run`` (in process), sweep
configs through ``dialsum sweep`` (a subprocess) against a real, empty redis-server that must stay empty, and hostile
task messages through the broker to the real workers of the session's cluster (``tests/conftest.py``).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pipeline.cli import main as dialsum
from pipeline.config import ConfigManager
from pipeline.lifecycle import new_manifest
from tests.conftest import REPO, RedisServer, micro_config_dict

HEADER = "fname,dialogue,summary,topic\n"


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and directory or link (None) under ``directory``, by relative path."""
    return {
        str(path.relative_to(directory)): (path.read_bytes() if path.is_file() and not path.is_symlink() else None)
        for path in sorted(directory.rglob("*"))
    }


def set_key(config: dict, dotted: str, value) -> None:
    *sections, key = dotted.split(".")
    node = config
    for section in sections:
        node = node[section]
    node[key] = value


# ------------------------------------------------------------------------------------------------ data files

DATA_CASES = {
    "empty file": ("train.csv", "", r"train\.csv: the file is empty; expected a header line 'fname,dialogue,\.\.\.'"),
    "header only": ("dev.csv", HEADER, r"dev\.csv: the file has a header but no rows"),
    "no dialogue column": (
        "train.csv",
        "fname,text,summary\na,대화,요약\n",
        r"train\.csv: missing column\(s\) 'dialogue'; the header has \['fname', 'text', 'summary'\]\. "
        r"Rename the column or set data\.\*_column in the config",
    ),
    "no summary column in a labeled split": (
        "dev.csv",
        "fname,dialogue\na,대화\n",
        r"dev\.csv: missing column\(s\) 'summary'",
    ),
    "no id column": ("test.csv", "id,dialogue\nt0,대화\n", r"test\.csv: missing column\(s\) 'fname'"),
    "empty dialogue": (
        "train.csv",
        HEADER + "a,대화,요약,t\nb,  ,요약,t\n",
        r"train\.csv, row 2 \(fname 'b'\), column 'dialogue': empty dialogue; fill it or delete the row",
    ),
    "empty summary": (
        "dev.csv",
        HEADER + "a,대화,,t\n",
        r"dev\.csv, row 1 \(fname 'a'\), column 'summary': empty summary; fill it or delete the row",
    ),
    "empty fname": (
        "train.csv",
        HEADER + ",대화,요약,t\n",
        r"train\.csv, row 1, column 'fname': empty id; every row needs",
    ),
    "duplicate fname": (
        "test.csv",
        "fname,dialogue\na,대화\nb,대화\na,대화\n",
        r"test\.csv, row 3, column 'fname': duplicate fname 'a' \(first at row 1\); fnames must be unique",
    ),
    "CP949 instead of UTF-8": (
        "train.csv",
        (HEADER + "a,대화,요약,t\n").encode("cp949"),
        r"train\.csv: line 2 \(byte \d+\) is not valid UTF-8; re-save the file as UTF-8 .*iconv -f cp949",
    ),
    "binary file": (
        "dev.csv",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        r"dev\.csv: line 1 \(byte 0\) is not valid UTF-8",
    ),
    "unquoted comma": (
        "train.csv",
        HEADER + "a,대화,요약,t\nb,대화, 쉼표,요약,t\n",
        r"train\.csv, row 2: 5 fields but the header has 4; a dialogue with commas or newlines must be quoted",
    ),
    "unclosed quote": (
        "train.csv",
        HEADER + 'a,"대화,요약,t\nb,대화,요약,t\n',
        r"train\.csv, row 1: 2 fields but the header has 4; a quote opened in this row is never closed",
    ),
    "missing file": (
        "dev.csv",
        None,
        r"validation data file .*dev\.csv does not exist; fix data\.val_path in the config",
    ),
}


@pytest.fixture
def data_run(sample_dir, tmp_path):
    """A valid micro run config (artifact root ``tmp_path/artifacts``) over a private copy of the sample data."""
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    config = micro_config_dict(sample_dir, tmp_path / "artifacts")
    config["data"].update(
        train_path=str(data / "train.csv"), val_path=str(data / "dev.csv"), test_path=str(data / "test.csv")
    )
    path = ConfigManager().save_config(config, tmp_path / "run.yaml")
    return SimpleNamespace(config=path, data=data, root=tmp_path / "artifacts")


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data_file_is_refused_before_anything_is_written(data_run, capsys, case):
    name, content, expected = DATA_CASES[case]
    path = data_run.data / name
    if content is None:
        path.unlink()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")

    assert dialsum(["run", "--config", str(data_run.config)]) == 2

    error = capsys.readouterr().err
    assert re.search(expected, error), error
    assert str(path) in error  # the whole path, not only the file name
    assert "Traceback" not in error
    assert not data_run.root.exists()  # no tokenizer, no dataset cache, no run directory


# ------------------------------------------------------------------------------------------------ configs

# A case is raw YAML (str), or keys to set in the valid micro config (dict), plus --set overrides.
CONFIG_CASES = {
    "YAML syntax error": (
        "training:\n  learning_rate: 1.0e-5\n   bad: [unclosed\n",
        [],
        r"run\.yaml, line 3, column \d+: YAML syntax error",
    ),
    "duplicate key": (
        "training:\n  learning_rate: 1.0e-5\ngeneration:\n  num_beams: 2\ntraining:\n  fp16: true\n",
        [],
        r"training: duplicate key at line 5 \(first at line 1\); YAML keeps only the last one, so remove one",
    ),
    "top level is a list": ("- model\n- training\n", [], r"\(top level\): expected a mapping of sections"),
    "section is a number": ("training: 5\n", [], r"training: expected a mapping of training settings, got an int"),
    "misspelled section": (
        {"trainng": {"learning_rate": 1e-4}},
        [],
        r"trainng: unknown section; did you mean 'training'\?",
    ),
    "misspelled key": (
        {"training.learning_rat": 1e-4},
        [],
        r"training\.learning_rat: unknown key; did you mean 'learning_rate'\?",
    ),
    "key in the wrong section": (
        {"training.num_beams": 2},
        [],
        r"training\.num_beams: unknown key; did you mean 'generation\.num_beams'\?",
    ),
    "string for an int": (
        {"training.per_device_train_batch_size": "sixteen"},
        [],
        r"training\.per_device_train_batch_size: expected an int >= 1, got 'sixteen' \(a string\)",
    ),
    "bool for an int": (
        {"generation.num_beams": True},
        [],
        r"generation\.num_beams: expected an int >= 1, got true \(a bool\)",
    ),
    "batch size 0": (
        {"training.per_device_train_batch_size": 0},
        [],
        r"training\.per_device_train_batch_size: expected an int >= 1, got 0",
    ),
    "negative batch size": (
        {"training.per_device_eval_batch_size": -8},
        [],
        r"training\.per_device_eval_batch_size: expected an int >= 1, got -8",
    ),
    "batch size 10**9": (
        {"training.per_device_train_batch_size": 10**9},
        [],
        r"training\.per_device_train_batch_size: expected an int >= 1 and at most 65536, got 1000000000; "
        r"no run needs that much .* lower it",
    ),
    "max source length 10**9": (
        {"model.checkpoint": "gogamza/kobart-base-v2", "tokenizer.encoder_max_len": 10**9},
        [],
        r"tokenizer\.encoder_max_len: expected an int >= 1 and at most 131072, got 1000000000",
    ),
    "max target length 10**9": (
        {"generation.max_length": 10**9},
        [],
        r"generation\.max_length: expected an int >= 1 and at most 131072, got 1000000000",
    ),
    "NaN learning rate": (
        {"training.learning_rate": float("nan")},
        [],
        r"training\.learning_rate: expected a float >= 0, got nan",
    ),
    "missing training file key": (
        {"data.train_path": None},
        [],
        r"data\.train_path: expected a non-empty string, got null",
    ),
    "missing eval_steps": (
        {"training.eval_steps": None},
        [],
        r"training\.eval_steps: required \(an int >= 1\) when training\.eval_strategy is 'steps'; set it",
    ),
    "experiment name escapes the root": (
        {"experiment.name": "../../escape"},
        [],
        r"experiment\.name: expected a non-empty string usable as a directory name \(no '/'",
    ),
    "malformed --set": ({}, ["--set", "training.learning_rate"], r"'training\.learning_rate': malformed override; "),
    "--set of an unknown key": (
        {},
        ["--set", "training.lr=1e-4"],
        r"training\.lr: unknown key; valid keys here: num_train_epochs",
    ),
    "missing config file": (None, [], r"config file not found: '.*run\.yaml'.*Check the path"),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config_is_refused_before_anything_is_written(micro_config, tmp_path, monkeypatch, capsys, case):
    source, arguments, expected = CONFIG_CASES[case]
    monkeypatch.chdir(tmp_path)  # a config without artifact_root would write to ./artifacts
    path = tmp_path / "run.yaml"
    if isinstance(source, str):
        path.write_text(source, encoding="utf-8")
    elif isinstance(source, dict):
        config = copy.deepcopy(micro_config)
        for key, value in source.items():
            if "." in key:
                set_key(config, key, value)
            else:
                config[key] = value
        path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    before = snapshot(tmp_path)

    assert dialsum(["run", "--config", str(path), *arguments]) == 2

    error = capsys.readouterr().err
    assert re.search(expected, error), error
    assert "Traceback" not in error
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------------ sweep configs

METRIC = {"name": "eval/loss", "goal": "minimize"}
LR = {"learning_rate": {"values": [1e-3]}}
SWEEP_CASES = {
    "unknown method": (
        {"method": "grdi", "metric": METRIC, "parameters": LR},
        [],
        r"method: 'grdi' is not one of grid, random, bayes; did you mean 'grid'\?",
    ),
    "missing parameters": (
        {"method": "random", "metric": METRIC},
        [],
        r"parameters: required; a mapping of config keys",
    ),
    "parameters of the wrong type": (
        {"method": "random", "metric": METRIC, "parameters": ["learning_rate"]},
        [],
        r"parameters: expected a non-empty mapping of config keys to search, got \['learning_rate'\]",
    ),
    "misspelled parameter": (
        {"method": "random", "metric": METRIC, "parameters": {"lerning_rate": {"values": [1e-3]}}},
        [],
        r"parameters\.lerning_rate: unknown parameter; did you mean 'learning_rate'\?",
    ),
    "min above max": (
        {"method": "random", "metric": METRIC, "parameters": {"learning_rate": {"min": 1e-3, "max": 1e-4}}},
        [],
        r"parameters\.learning_rate\.min: 0\.001 is greater than max 0\.0001",
    ),
    "batch size 0 among the values": (
        {"method": "grid", "metric": METRIC, "parameters": {"per_device_train_batch_size": {"values": [16, 0]}}},
        [],
        r"parameters\.per_device_train_batch_size\.values\[1\]: 0 is rejected by the pipeline config: "
        r"training\.per_device_train_batch_size: expected an int >= 1, got 0",
    ),
    "absurd length range": (
        {"method": "random", "metric": METRIC, "parameters": {"encoder_max_len": {"min": 64, "max": 10**9}}},
        [],
        r"parameters\.encoder_max_len\.max: 1000000000 is rejected by the pipeline config: "
        r"tokenizer\.encoder_max_len: expected an int >= 1 and at most 131072",
    ),
    "run_cap 0": (
        {"method": "random", "metric": METRIC, "run_cap": 0, "parameters": LR},
        [],
        r"run_cap: expected an int >= 1, got 0",
    ),
    "misspelled goal": (
        {"method": "random", "metric": {"name": "eval/loss", "goal": "maximise"}, "parameters": LR},
        [],
        r"metric\.goal: 'maximise' is not one of minimize, maximize",
    ),
    "bayes without a metric": (
        {"method": "bayes", "parameters": {"learning_rate": {"min": 1e-4, "max": 1e-3}}},
        [],
        r"metric: required for method bayes; e\.g\. metric: \{name: eval/rouge_combined_f1, goal: maximize\}",
    ),
    "YAML syntax error": (
        "method: random\nparameters:\n  learning_rate: {values: [1, 2}\n",
        [],
        r"sweep\.yaml, line 3, column \d+: YAML syntax error",
    ),
    "parallel 0": (
        {"method": "random", "metric": METRIC, "parameters": LR},
        ["--parallel", "0"],
        r"parallel must be an integer >= 1 or None \(one trial per training worker\), got 0",
    ),
    "invalid base config": (
        {"method": "random", "metric": METRIC, "parameters": LR},
        ["--set", "training.per_device_train_batch_size=-1"],
        r"training\.per_device_train_batch_size: expected an int >= 1, got -1",
    ),
}


@pytest.fixture(scope="module")
def empty_broker(tmp_path_factory):
    """A real redis-server that nothing but refused commands talks to: it must stay empty."""
    server = RedisServer(tmp_path_factory.mktemp("empty-broker")).start()
    yield server
    server.stop()


@pytest.mark.parametrize("case", SWEEP_CASES)
def test_bad_sweep_is_refused_and_nothing_is_enqueued_or_written(empty_broker, micro_config, tmp_path, case):
    import redis

    sweep, arguments, expected = SWEEP_CASES[case]
    base = ConfigManager().save_config(micro_config, tmp_path / "base.yaml")
    sweep_path = tmp_path / "sweep.yaml"
    sweep_path.write_text(sweep if isinstance(sweep, str) else yaml.safe_dump(sweep), encoding="utf-8")
    env = {**os.environ, "DIALSUM_BROKER_URL": empty_broker.url}

    result = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "sweep", "--config", str(base), "--sweep", str(sweep_path), *arguments],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 2, result.stderr
    assert re.search(expected, result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    assert redis.Redis.from_url(empty_broker.url).dbsize() == 0  # no sweep stored, no trial enqueued
    assert not (tmp_path / "artifacts").exists()


# ------------------------------------------------------------------------------------------------ task messages

HOSTILE: dict[str, tuple[str, object, str]] = {}


def hostile(case: str, stage: str, expected: str):
    """Register ``mutate(manifest, root) -> message`` as the hostile message of ``case``, sent to ``stage``."""

    def register(mutate):
        HOSTILE[case] = (stage, mutate, expected)
        return mutate

    return register


@hostile(
    "path out of the root with ../",
    "train",
    r"manifest\.stages\.prepare_data\.dataset_dir: .* is outside the artifact root",
)
def _dot_dot(manifest, root):
    manifest["stages"]["prepare_data"] = {"dataset_dir": str(root / ".." / ".." / ".." / "etc")}
    return manifest


@hostile("absolute path", "evaluate", r"manifest\.stages\.train\.model_dir: '/etc' is outside the artifact root")
def _absolute(manifest, root):
    manifest["stages"]["prepare_data"] = {"dataset_dir": str(root / "datasets" / "x")}
    manifest["stages"]["train"] = {"model_dir": "/etc", "final_metrics": {}}
    return manifest


@hostile("symlink out of the root", "generate_predictions", r"manifest\.stages\.train\.model_dir: .*escape' is outside")
def _symlink(manifest, root):
    root.mkdir(parents=True)
    (root / "escape").symlink_to("/etc")
    manifest["stages"]["prepare_data"] = {"dataset_dir": str(root / "datasets" / "x")}
    manifest["stages"]["train"] = {"model_dir": str(root / "escape")}
    return manifest


@hostile("another run's model", "evaluate", r"manifest\.stages\.train\.model_dir: .* is not in this run's directory")
def _other_runs_model(manifest, root):
    manifest["stages"]["prepare_data"] = {"dataset_dir": str(root / "datasets" / "x")}
    # Inside the artifact root, but another run's directory beside this one.
    manifest["stages"]["train"] = {"model_dir": str(root / "runs" / "tiny" / "run-000000000000" / "model")}
    return manifest


@hostile("someone else's run id", "evaluate", r"manifest\.run_id 'run-0123456789ab' is not its config's run id 'run-")
def _other_run_id(manifest, root):
    manifest["run_id"] = "run-0123456789ab"
    return manifest


@hostile(
    "missing fields", "prepare_data", r"manifest\.run_id: missing or not a str; manifest\.stages: missing or not a dict"
)
def _missing_fields(manifest, root):
    del manifest["run_id"]
    del manifest["stages"]
    return manifest


@hostile("not an object", "prepare_data", r"the task argument must be a manifest \(a JSON object\), got str")
def _not_an_object(manifest, root):
    return manifest["run_id"]


@hostile(
    "wrong type in the config", "prepare_data", r"training\.per_device_train_batch_size: expected an int >= 1, got '16'"
)
def _string_batch(manifest, root):
    manifest["config"]["training"]["per_device_train_batch_size"] = "16"
    return manifest


@hostile("absurd batch size", "train", r"training\.per_device_train_batch_size: expected an int >= 1 and at most 65536")
def _absurd_batch(manifest, root):
    manifest["config"]["training"]["per_device_train_batch_size"] = 10**12
    return manifest


@hostile(
    "absurd sequence length", "prepare_data", r"tokenizer\.encoder_max_len: expected an int >= 1 and at most 131072"
)
def _absurd_length(manifest, root):
    manifest["config"]["tokenizer"]["encoder_max_len"] = 10**9
    manifest["config"]["model"]["scratch"]["max_position_embeddings"] = 10**9
    return manifest


@hostile("absurd message size", "prepare_data", r"refused manifest of [\d,]+ bytes, over the 1,048,576-byte limit")
def _absurd_size(manifest, root):
    manifest["experiment"] = "x" * (2 << 20)
    return manifest


@hostile(
    "stage record of the wrong type",
    "train",
    r"manifest\.stages\.prepare_data: expected the JSON object a stage records, got str",
)
def _record_type(manifest, root):
    manifest["stages"]["prepare_data"] = "done"
    return manifest


@hostile(
    "path of the wrong type",
    "train",
    r"manifest\.stages\.prepare_data\.dataset_dir: expected a path \(a string\), got int",
)
def _path_type(manifest, root):
    manifest["stages"]["prepare_data"] = {"dataset_dir": 42}
    return manifest


@hostile(
    "unknown stage record",
    "prepare_data",
    r"manifest\.stages\.exfiltrate: unknown stage; the stages are prepare_data, train",
)
def _unknown_stage(manifest, root):
    manifest["stages"]["exfiltrate"] = {"target_path": str(root)}
    return manifest


@hostile(
    "train before prepare_data",
    "train",
    r"manifest\.stages\.prepare_data\.dataset_dir is missing: prepare_data has not run",
)
def _train_first(manifest, root):
    return manifest


@hostile("evaluate before train", "evaluate", r"manifest\.stages\.train\.model_dir is missing: train has not run")
def _evaluate_first(manifest, root):
    manifest["stages"]["prepare_data"] = {"dataset_dir": str(root / "datasets" / "x")}
    return manifest


@pytest.mark.slow
@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_message_is_refused_by_a_real_worker_and_nothing_is_written(cluster, sample_dir, tmp_path, case):
    from tasks.app import app

    stage, mutate, expected = HOSTILE[case]
    root = tmp_path / "artifacts"
    message = mutate(new_manifest(micro_config_dict(sample_dir, root)), root)
    before = snapshot(tmp_path)

    result = app.send_task(f"dialsum.{stage}", args=[message])
    with pytest.raises(Exception) as caught:
        result.get(timeout=120)

    assert re.search(expected, str(caught.value)), caught.value
    assert snapshot(tmp_path) == before  # no tokenizer, dataset, run directory or manifest.json


def test_paths_outside_a_workers_allowed_roots_are_refused_before_the_stage_runs(sample_dir, tmp_path, monkeypatch):
    """DIALSUM_ALLOWED_ROOTS confines a worker: the stage task itself (run eagerly, as a worker would) refuses."""
    from tasks.stages import prepare_data

    root = tmp_path / "artifacts"
    config = micro_config_dict(sample_dir, root)
    config["data"]["train_path"] = "/etc/passwd"
    monkeypatch.setenv("DIALSUM_ALLOWED_ROOTS", f"{root}:{sample_dir}")

    result = prepare_data.apply(args=[new_manifest(config)])

    with pytest.raises(ValueError, match=r"config data\.train_path: '/etc/passwd' is outside this worker's allowed"):
        result.get()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_unknown_task_name_is_discarded_and_the_worker_takes_the_next_task(cluster, sample_dir, tmp_path):
    import redis
    from celery.exceptions import NotRegistered

    from tasks.app import app

    root = tmp_path / "artifacts"
    manifest = new_manifest(micro_config_dict(sample_dir, root))
    result = app.send_task("dialsum.exfiltrate", args=[manifest])

    with pytest.raises(NotRegistered, match="dialsum.exfiltrate"):
        result.get(timeout=60)
    log = cluster["dir"] / "workers.log"
    deadline = time.monotonic() + 60
    while "Received unregistered task of type 'dialsum.exfiltrate'" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "no worker logged the unregistered task"
        time.sleep(0.5)
    assert "The message has been ignored and discarded" in log.read_text(errors="replace")
    broker = redis.Redis.from_url(cluster["redis"].url)
    assert broker.llen("cpu") == 0 and broker.llen("gpu") == 0  # not requeued
    assert not any(result.id.encode() in value for value in broker.hvals("unacked"))  # nor held back unacknowledged

    follow = app.send_task("dialsum.prepare_data", args=["not a manifest"])  # the worker is still taking tasks
    with pytest.raises(ValueError, match="must be a manifest"):
        follow.get(timeout=60)
    assert not root.exists()
