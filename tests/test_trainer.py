"""Trainer behaviour beyond the spec's examples: resume, out-of-memory backoff, outputs, bad calls."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, TrainerCallback, TrainerState

from pipeline.artifacts import latest_checkpoint
from pipeline.baselines import _cached_lead_rouge, lead_rouge
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


def test_evaluations_report_lead3_once_per_split_and_flag_collapse(micro_config, tmp_path):
    # Eight steps teach the micro model nothing: it writes one (empty) summary for every dialogue.
    trainer = DialogueSummarizationTrainer(micro_config)
    datasets = trainer.prepare_data()
    before = _cached_lead_rouge.cache_info()
    result = trainer.train(datasets)
    after = _cached_lead_rouge.cache_info()

    validation = datasets["validation"]
    lead = lead_rouge(validation["input"], validation["references"], "kiwi", "mean")
    evaluations = [record for record in result.training_history if "eval_lead3_rouge2" in record]
    assert len(evaluations) == 3  # steps 4 and 8, and the saved model
    for record in evaluations:
        assert record["eval_lead3_rouge2"] == lead["rouge2"] and record["eval_lead3_rouge1"] == lead["rouge1"]
        assert record["eval_rouge2_margin_over_lead3"] == pytest.approx(record["eval_rouge2"] - lead["rouge2"])
        assert record["eval_collapsed"] == 1.0
        assert "eval_rouge1_max" not in record  # one reference per dialogue: one rule
    # Scored at most once (an earlier test in this process may have scored this very split), then reused.
    assert after.misses - before.misses <= 1 and after.hits - before.hits >= 2
    assert result.final_metrics["collapsed"] == 1.0 and result.best_metrics["collapsed"] == 1.0
    history = [json.loads(line) for line in (trainer.output_dir / "history.jsonl").read_text().splitlines()]
    events = [record for record in history if record.get("event") == "collapse"]
    assert [event["step"] for event in events] == [4, 8, 8]
    assert "of the predictions are distinct" in events[0]["reason"] and "prediction" in events[0]

    # A split with two references per dialogue reports both rules beside the configured one (mean).
    with open(micro_config["data"]["val_path"], encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    multi = tmp_path / "multi.csv"
    with open(multi, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fname", "dialogue", "summary1", "summary2"])
        writer.writerows([row["fname"], row["dialogue"], row["summary"], row["dialogue"][:40]] for row in rows)
    split = trainer.prepare_data(val_path=str(multi))["validation"]
    metrics = trainer.evaluate(split, metric_key_prefix="multi")
    for key in ("rouge1", "rouge2", "rougeL", "rouge_combined_f1"):
        assert metrics[f"multi_{key}"] == metrics[f"multi_{key}_mean"]
        assert metrics[f"multi_{key}_max"] >= metrics[f"multi_{key}_mean"]
    multi_lead = lead_rouge(split["input"], split["references"], "kiwi", "mean")
    assert metrics["multi_lead3_rouge2"] == multi_lead["rouge2"] and metrics["multi_collapsed"] == 1.0
    assert "eval_rouge_combined_f1" not in metrics  # the validation callback leaves other splits alone


def test_input_loss_gain_is_zero_exactly_when_the_decoder_cannot_see_the_dialogue(micro_config):
    """``eval_input_loss_gain``: the loss increase when each dialogue is swapped for another of its batch."""
    micro_config["training"].update(max_steps=4, eval_steps=4, save_steps=4)
    trainer = DialogueSummarizationTrainer(micro_config)
    datasets = trainer.prepare_data()
    trainer.train(datasets)
    seeing = trainer.evaluate(datasets["validation"])["eval_input_loss_gain"]
    assert abs(seeing) > 1e-6  # a (barely) trained model: another dialogue changes the loss
    with torch.no_grad():  # cut every cross-attention: the decoder becomes a language model of summaries
        for layer in trainer._model.get_decoder().layers:
            layer.encoder_attn.out_proj.weight.zero_()
            layer.encoder_attn.out_proj.bias.zero_()
    blind = trainer.evaluate(datasets["validation"])["eval_input_loss_gain"]
    assert blind == pytest.approx(0.0, abs=1e-6)


def test_best_checkpoint_prefers_any_healthy_evaluation_also_after_resume(micro_config, tmp_path):
    """HF's best-metric choice on the real trainer and state, fed evaluations as HF logs them."""
    trainer = DialogueSummarizationTrainer(micro_config)
    trainer.initialize_components()
    hf = trainer.trainer

    def evaluation(step: int, combined: float, collapsed: bool) -> bool:
        hf.state.global_step = step
        metrics = {"eval_rouge_combined_f1": combined, "eval_collapsed": float(collapsed), "eval_loss": 1.0}
        hf.state.log_history.append({**metrics, "step": step})  # HF logs an evaluation before choosing the best
        return hf._determine_best_metric(metrics=metrics, trial=None)

    assert evaluation(4, 0.40, collapsed=True)  # the first is the best so far, collapsed or not
    assert evaluation(8, 0.20, collapsed=False)  # healthy beats collapsed whatever the scores
    assert not evaluation(12, 0.60, collapsed=True)  # and a collapsed one never beats a healthy one
    assert evaluation(16, 0.30, collapsed=False)  # between healthy ones the metric decides
    assert not evaluation(20, 0.25, collapsed=False)
    assert (hf.state.best_metric, hf.state.best_global_step) == (0.30, 16)

    # Resume: the state comes back from trainer_state.json, the collapse flags from its log history.
    hf.state.save_to_json(str(tmp_path / "trainer_state.json"))
    hf.state = TrainerState.load_from_json(str(tmp_path / "trainer_state.json"))
    assert not evaluation(24, 0.90, collapsed=True)
    assert evaluation(28, 0.31, collapsed=False)
    assert hf.state.best_global_step == 28

    # W&B's best tracking follows the same rule, rebuilt from the restored history at train begin.
    callback = trainer._wandb_callback
    callback.on_train_begin(hf.args, hf.state, hf.control)
    assert (callback.best_combined, callback.best_collapsed, callback.best_metrics["step"]) == (0.31, False, 28)
