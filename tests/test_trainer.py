"""Trainer behaviour beyond the spec's examples: resume, out-of-memory backoff, outputs, bad calls."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, TrainerCallback

from pipeline.artifacts import latest_checkpoint
from pipeline.trainer import DialogueSummarizationTrainer, write_predictions

pytestmark = pytest.mark.slow


class StopAfterFirstSave(TrainerCallback):
    """Simulates an interrupted run: training stops right after the first checkpoint is written."""

    def on_save(self, args, state, control, **kwargs):
        control.should_training_stop = True


class CountSteps(TrainerCallback):
    """Records the global step after every optimizer step actually taken."""

    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


class InjectOOM(TrainerCallback):
    """Raises torch's out-of-memory error while the per-device batch is larger than ``fits``.

    There is no GPU here to run out of memory for real; the error type is the one CUDA raises.
    """

    def __init__(self, fits: int):
        self.fits = fits
        self.raised = 0

    def on_step_begin(self, args, state, control, **kwargs):
        if args.per_device_train_batch_size > self.fits:
            self.raised += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


def test_resume_continues_the_step_count(micro_config):
    trainer = DialogueSummarizationTrainer(micro_config)
    trainer.initialize_components()
    trainer.trainer.add_callback(StopAfterFirstSave())
    datasets = trainer.prepare_data()
    trainer.train(datasets)
    assert trainer.trainer.state.global_step == 4
    assert latest_checkpoint(trainer.checkpoints_dir).name == "checkpoint-4"

    trainer.trainer.pop_callback(StopAfterFirstSave)
    counter = CountSteps()
    trainer.trainer.add_callback(counter)
    result = trainer.train(datasets, resume_from_checkpoint="auto")
    assert trainer.trainer.state.global_step == 8
    assert counter.steps == [5, 6, 7, 8]  # steps 1-4 were not trained again
    steps_logged = [record["step"] for record in result.training_history if "loss" in record]
    assert steps_logged == [2, 4, 6, 8]  # the restored history plus the new steps, none twice
    assert result.training_history[0] == {
        "event": "resume",
        "checkpoint": str(trainer.checkpoints_dir / "checkpoint-4"),
    }
    assert (trainer.checkpoints_dir / "checkpoint-8" / "trainer_state.json").is_file()


def test_resume_auto_without_checkpoint_starts_fresh_and_bad_path_lists_checkpoints(micro_config):
    trainer = DialogueSummarizationTrainer(micro_config)
    datasets = trainer.prepare_data()
    result = trainer.train(datasets, resume_from_checkpoint="auto")
    assert not any(record.get("event") == "resume" for record in result.training_history)
    with pytest.raises(FileNotFoundError, match=r"checkpoint-99.*available: \['checkpoint-4', 'checkpoint-8'\]"):
        trainer.train(datasets, resume_from_checkpoint="checkpoints/checkpoint-99")


def test_out_of_memory_halves_batch_and_keeps_effective_batch(micro_config):
    trainer = DialogueSummarizationTrainer(micro_config)
    trainer.initialize_components()
    oom = InjectOOM(fits=4)
    trainer.trainer.add_callback(oom)
    result = trainer.train(trainer.prepare_data())
    backoffs = [event for event in result.training_history if event.get("event") == "oom_backoff"]
    assert [(e["per_device_train_batch_size"], e["gradient_accumulation_steps"]) for e in backoffs] == [(8, 2), (4, 4)]
    assert oom.raised == 2
    training = trainer.config["training"]
    assert training["per_device_train_batch_size"] * training["gradient_accumulation_steps"] == 16
    assert trainer.trainer.state.global_step == 8


def test_out_of_memory_below_the_floor_is_a_clear_runtime_error(micro_config):
    micro_config["training"]["max_oom_retries"] = 1
    trainer = DialogueSummarizationTrainer(micro_config)
    trainer.initialize_components()
    trainer.trainer.add_callback(InjectOOM(fits=0))
    with pytest.raises(RuntimeError, match=r"out of memory with per_device_train_batch_size=8 after 1 backoff"):
        trainer.train(trainer.prepare_data())
    record = trainer.experiment_tracker.list()[-1]
    assert record["status"] == "failed" and "out of memory" in record["notes"]


def test_outputs_are_save_pretrained_and_submission_format(micro_config, tmp_path):
    trainer = DialogueSummarizationTrainer(micro_config)
    datasets = trainer.prepare_data()
    result = trainer.train(datasets)
    model = AutoModelForSeq2SeqLM.from_pretrained(result.model_path)
    tokenizer = AutoTokenizer.from_pretrained(result.model_path)
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.tokenize("#PhoneNumber#") == ["#PhoneNumber#"]

    predictions = trainer.generate_predictions(datasets["test"])
    csv_path = write_predictions(predictions, tmp_path / "out" / "predictions.csv")
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "fname,summary" and len(predictions) == 15
    assert [json.loads(line)["fname"] for line in csv_path.with_suffix(".jsonl").read_text().splitlines()] == [
        p["fname"] for p in predictions
    ]
    history = (trainer.output_dir / "history.jsonl").read_text().splitlines()
    assert any("eval_rouge_combined_f1" in json.loads(line) for line in history)


def test_train_rejects_unlabeled_or_wrong_dataset(micro_config):
    trainer = DialogueSummarizationTrainer(micro_config)
    datasets = trainer.prepare_data()
    with pytest.raises(ValueError, match="DatasetDict with a 'train' split"):
        trainer.train(datasets["train"])
    with pytest.raises(ValueError, match="no 'validation' split"):
        trainer.train({"train": datasets["train"]})
    with pytest.raises(ValueError, match="needs a split with summaries"):
        trainer.evaluate(datasets["test"])


def test_edited_config_is_validated_before_training(micro_config):
    trainer = DialogueSummarizationTrainer(micro_config)
    datasets = trainer.prepare_data()
    trainer.config["training"]["learning_rate"] = -1
    with pytest.raises(ValueError, match="training.learning_rate"):
        trainer.train(datasets)


def test_wandb_callback_logs_spec_keys_to_the_local_record(micro_config):
    trainer = DialogueSummarizationTrainer(micro_config)
    result = trainer.train(trainer.prepare_data())
    logged = [row["metrics"] for row in trainer.experiment_tracker.get_metrics(result.experiment_id)]
    evaluations = [row for row in logged if "eval/rouge_combined_f1" in row]
    assert len(evaluations) >= 2
    expected = {
        "eval/rouge1_f1",
        "eval/rouge2_f1",
        "eval/rougeL_f1",
        "eval/loss",
        "best/rouge_combined_f1",
        "epoch",
        "step",
    }
    assert expected <= set(evaluations[0])
    best = [row["best/rouge_combined_f1"] for row in evaluations]
    assert best == sorted(best)  # a running maximum
    assert result.best_metrics["rouge_combined_f1"] == pytest.approx(
        max(r["eval/rouge_combined_f1"] for r in evaluations)
    )
