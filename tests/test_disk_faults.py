"""Faults 5 and 6 of RELIABILITY.md: out of memory at the batch floor, and a full or read-only output directory.

The full disk is real: a tmpfs of a few MiB mounted under the test's directory and filled up; the read-only
directory is that tmpfs remounted read-only. Every write must fail with an error naming the directory and what to
do, leave no temporary or half-written file or directory, and leave the previous model (or predictions) byte for
byte as it was.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from pipeline.artifacts import OutputDirectoryError
from pipeline.trainer import DialogueSummarizationTrainer, write_predictions
from tests.conftest import micro_config_dict
from tests.test_trainer import InjectOOM

pytestmark = pytest.mark.slow


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and directory (None) under ``directory``, by relative path."""
    return {
        str(path.relative_to(directory)): (path.read_bytes() if path.is_file() else None)
        for path in sorted(directory.rglob("*"))
    }


def leftovers(directory: Path) -> list[str]:
    """Temporary files and directories the atomic writers use (``.name.*.tmp``, ``.name.tmp-*``, ``.name.old-*``)."""
    return [str(path) for path in directory.rglob(".*") if ".tmp" in path.name or ".old-" in path.name]


def free_bytes(directory: Path) -> int:
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def fill(directory: Path, leave: int = 0) -> None:
    """Fill the filesystem of ``directory`` with a filler file until at most ``leave`` bytes are free."""
    with open(directory / "filler", "wb", buffering=0) as handle:
        try:
            while free_bytes(directory) > leave:
                handle.write(b"\0" * min(1 << 16, max(free_bytes(directory) - leave, 4096)))
        except OSError as error:
            assert error.errno == errno.ENOSPC
    assert free_bytes(directory) <= max(leave, 4096) * 2


@pytest.fixture
def small_fs(tmp_path):
    """``mount(name, size_bytes)``: a real tmpfs of that size at ``tmp_path / name``; all unmounted at the end."""
    mounted: list[Path] = []

    def mount(name: str, size: int) -> Path:
        directory = tmp_path / name
        directory.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], capture_output=True, text=True
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs (needs root): {result.stderr.strip()}")
        mounted.append(directory)
        return directory

    yield mount
    for directory in reversed(mounted):
        subprocess.run(["umount", str(directory)], check=True)


def read_only(directory: Path) -> None:
    result = subprocess.run(["mount", "-o", "remount,ro", str(directory)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot remount {directory} read-only: {result.stderr.strip()}")


def directory_size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def assert_loads(model_dir: Path) -> None:
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.vocab_size == len(tokenizer)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sample_dir):
    """The micro config trained once into an ordinary directory: trainer, datasets, model and predictions."""
    root = tmp_path_factory.mktemp("trained") / "artifacts"
    trainer = DialogueSummarizationTrainer(micro_config_dict(sample_dir, root))
    datasets = trainer.prepare_data()
    result = trainer.train(datasets)
    return SimpleNamespace(
        trainer=trainer,
        datasets=datasets,
        model_dir=Path(result.model_path),
        predictions=trainer.generate_predictions(datasets["test"]),
        root=root,
        sample_dir=sample_dir,
    )


@pytest.fixture
def perturbed(trained):
    """The trained model with changed weights, so that a save that went through would change the bytes on disk."""
    with torch.no_grad():
        for parameter in trained.trainer.model.parameters():
            parameter.add_(0.5)
    yield trained.trainer
    with torch.no_grad():
        for parameter in trained.trainer.model.parameters():
            parameter.sub_(0.5)


def assert_clear(error: OutputDirectoryError, directory: Path, code: int, words: str) -> None:
    message = str(error)
    assert error.errno == code
    assert f"cannot write to {directory}" in message and words in message
    assert "general.output_dir" in message  # says what to change
    assert error.__cause__ is not None  # the OS (or torch/safetensors) error is kept


# ------------------------------------------------------------------------------------------------ full disk


def test_model_save_on_a_full_disk_keeps_the_previous_model(trained, perturbed, small_fs):
    disk = small_fs("disk", directory_size(trained.model_dir) * 2 + (512 << 10))  # room for old and new
    shutil.copytree(trained.model_dir, disk / "model")
    fill(disk)
    before = snapshot(disk / "model")

    with pytest.raises(OutputDirectoryError) as caught:
        perturbed.save_model(disk / "model")

    assert_clear(caught.value, disk, errno.ENOSPC, "no space is left on its filesystem")
    assert snapshot(disk / "model") == before
    assert sorted(path.name for path in disk.iterdir()) == ["filler", "model"]  # no .model.tmp-* left
    assert_loads(disk / "model")
    (disk / "filler").unlink()
    perturbed.save_model(disk / "model")  # with room again the same save goes through and changes the files
    assert snapshot(disk / "model") != before


def test_predictions_on_a_full_disk_keep_the_previous_files(trained, small_fs):
    disk = small_fs("disk", 256 << 10)
    old = [{**row, "prediction": "이전 요약"} for row in trained.predictions]
    csv_path = write_predictions(old, disk / "predictions.csv")
    fill(disk)
    before = snapshot(disk)

    with pytest.raises(OutputDirectoryError) as caught:
        write_predictions(trained.predictions, csv_path)

    assert_clear(caught.value, disk, errno.ENOSPC, "no space is left")
    assert snapshot(disk) == before  # the CSV and the .jsonl as they were, no .predictions.*.tmp
    assert csv_path.read_text(encoding="utf-8").splitlines()[1].endswith(",이전 요약")


def test_training_into_a_full_disk_leaves_no_half_checkpoint_and_keeps_the_model(trained, small_fs):
    disk = small_fs("disk", directory_size(trained.model_dir) * 2 + (512 << 10))
    run = disk / "run"
    shutil.copytree(trained.model_dir, run / "model")
    fill(disk, leave=96 << 10)  # room for config.yaml, not for a checkpoint (the model alone is larger)
    before = snapshot(run / "model")
    config = micro_config_dict(trained.sample_dir, trained.root)
    config["general"]["output_dir"] = str(run)
    config["training"]["learning_rate"] = 2e-3  # another run than the one that trained the previous model
    trainer = DialogueSummarizationTrainer(config)

    with pytest.raises(OutputDirectoryError) as caught:
        trainer.train(trainer.prepare_data())

    assert_clear(caught.value, run / "checkpoints", errno.ENOSPC, "no space is left")
    assert not list((run / "checkpoints").glob("checkpoint-*"))  # the half-written checkpoint-4 was removed
    assert leftovers(disk) == []
    assert snapshot(run / "model") == before
    assert_loads(run / "model")
    record = trainer.experiment_tracker.list()[-1]
    assert record["status"] == "failed" and "no space is left" in record["notes"]


# ------------------------------------------------------------------------------------------------ read-only


def test_read_only_output_directory_is_a_clear_error_and_changes_nothing(trained, perturbed, small_fs):
    disk = small_fs("disk", directory_size(trained.model_dir) * 2 + (512 << 10))
    shutil.copytree(trained.model_dir, disk / "run" / "model")
    csv_path = write_predictions(trained.predictions, disk / "run" / "predictions.csv")
    read_only(disk)
    before = snapshot(disk)

    with pytest.raises(OutputDirectoryError) as caught:
        perturbed.save_model(disk / "run" / "model")
    assert_clear(caught.value, disk / "run", errno.EROFS, "mounted read-only; remount it read-write")

    with pytest.raises(OutputDirectoryError) as caught:
        write_predictions([{**row, "prediction": "새 요약"} for row in trained.predictions], csv_path)
    assert_clear(caught.value, disk / "run", errno.EROFS, "read-only")

    config = micro_config_dict(trained.sample_dir, trained.root)
    config["general"]["output_dir"] = str(disk / "run")
    trainer = DialogueSummarizationTrainer(config)
    with pytest.raises(OutputDirectoryError) as caught:
        trainer.train(trainer.prepare_data())
    assert_clear(caught.value, disk / "run", errno.EROFS, "read-only")

    assert snapshot(disk) == before
    assert_loads(disk / "run" / "model")


def test_dialsum_run_into_a_read_only_directory_exits_2_naming_it(trained, small_fs, tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.config import ConfigManager

    disk = small_fs("disk", 64 << 10)
    read_only(disk)
    config = micro_config_dict(trained.sample_dir, trained.root)
    config["general"]["output_dir"] = str(disk / "run")
    config_path = ConfigManager().save_config(config, tmp_path / "run.yaml")

    assert main(["run", "--config", str(config_path)]) == 2

    error = capsys.readouterr().err
    assert f"cannot write to {disk / 'run'}" in error and "read-only" in error and "general.output_dir" in error
    assert "Traceback" not in error
    assert list(disk.iterdir()) == []


# ------------------------------------------------------------------------------------------------ out of memory


def test_out_of_memory_down_to_batch_one_keeps_the_effective_batch_then_names_the_fix(micro_config):
    micro_config["training"].update(per_device_train_batch_size=4, max_oom_retries=5)
    trainer = DialogueSummarizationTrainer(micro_config)
    trainer.initialize_components()
    trainer.trainer.add_callback(InjectOOM(fits=0))

    with pytest.raises(RuntimeError) as caught:
        trainer.train(trainer.prepare_data())

    message = str(caught.value)
    assert "out of memory with per_device_train_batch_size=1 after 2 backoff(s)" in message
    assert "lower tokenizer.encoder_max_len" in message and "training.gradient_checkpointing" in message
    backoffs = [event for event in trainer.history if event.get("event") == "oom_backoff"]
    assert [(e["per_device_train_batch_size"], e["gradient_accumulation_steps"]) for e in backoffs] == [(2, 2), (1, 4)]
    assert not (trainer.output_dir / "model").exists()  # nothing pretends to be a trained model
