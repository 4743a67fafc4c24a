"""DialogueSummarizationTrainer: the documented API for training, evaluating and predicting.

The public names, signatures and metric keys follow ``spec/trainer_api.ko.md``, which users
already know. Underneath it is a plain HF ``Seq2SeqTrainer``; this module adds what the spec
promises on top: Korean-aware ROUGE during evaluation, best-metric tracking and W&B logging
(:class:`WandbCallback`), resume from the latest checkpoint, out-of-memory batch backoff, the run
directory with ``model/``, and registration in the model registry. Every evaluation also reports
LEAD-3 on the same split and flags a collapsed model (one summary for many dialogues), which
best-checkpoint selection never prefers to a healthy evaluation.

Where the spec is vague:

* ``best_metrics`` and ``final_metrics`` use un-prefixed keys (``rouge_combined_f1``, ``loss``),
  as the spec's example indexes ``result.best_metrics['rouge_combined_f1']``.
* ``resume_from_checkpoint`` may be a path (absolute, or relative to ``output_dir``) or ``"auto"``
  for the latest checkpoint of this run; None starts fresh.
* ``create_trainer`` returns an initialized trainer (``initialize_components`` already called);
  calling ``initialize_components`` again is a no-op.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    DataCollatorForSeq2Seq,
    EarlyStoppingCallback,
    GenerationConfig,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    set_seed,
)
from transformers.trainer_callback import DefaultFlowCallback, PrinterCallback, ProgressCallback
from transformers.trainer_utils import SaveStrategy

from pipeline.artifacts import (
    OutputDirectoryError,
    atomic_directory,
    atomic_write_bytes,
    atomic_write_text,
    latest_checkpoint,
    output_errors,
    run_dir,
    run_id_for,
)
from pipeline.baselines import baseline_metrics, lead_rouge
from pipeline.config import ConfigManager, PipelineConfig, merge_sweep_params
from pipeline.data import Columns, check_data_files, prepare_datasets
from pipeline.metrics import (
    MULTI_REFERENCE_RULES,
    collapse_reason,
    combined_f1,
    compute_rouge_by_rule,
    prediction_diversity,
)
from pipeline.modeling import load_model_and_tokenizer, resolve_device
from pipeline.registry import ModelRegistry
from pipeline.sample_data import write_sample_data
from pipeline.tracking import ExperimentTracker

logger = logging.getLogger(__name__)

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rouge_combined_f1")
# Callbacks every HF Trainer adds by itself; the rest were added by the user and must survive a rebuild.
_HF_DEFAULT_CALLBACKS = (DefaultFlowCallback, ProgressCallback, PrinterCallback)


@dataclass
class TrainingResult:
    """학습 결과 데이터 클래스 (the result of :meth:`DialogueSummarizationTrainer.train`).

    Attributes:
        best_metrics: Metrics of the best evaluation (un-prefixed keys: ``rouge_combined_f1``, ...).
        final_metrics: Validation metrics of the saved (best) model after training.
        model_path: The ``save_pretrained`` directory of the saved model.
        config_used: The resolved config the run used.
        training_history: Log records (losses, evaluations) and events such as OOM backoffs.
        wandb_run_id: The W&B run id, when W&B was on.
        experiment_id: The experiment tracker's id of this training.
    """

    best_metrics: dict[str, float]
    final_metrics: dict[str, float]
    model_path: str
    config_used: dict[str, Any]
    training_history: list[dict[str, Any]] = field(default_factory=list)
    wandb_run_id: str | None = None
    experiment_id: str | None = None


def strip_prefix(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """``{"eval_rouge1": x}`` -> ``{"rouge1": x}``; non-numeric values are dropped."""
    head = f"{prefix}_"
    return {
        (key[len(head) :] if key.startswith(head) else key): float(value)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def evaluation_rank(value: float, collapsed: bool, greater_is_better: bool = True) -> tuple[bool, float]:
    """Where an evaluation stands in best-checkpoint selection: any healthy one above any collapsed one, then the
    metric (negated when lower is better). Compare ranks with ``>``: on a tie the earlier evaluation stays best,
    as in HF's own selection."""
    return (not collapsed, value if greater_is_better else -value)


def is_collapsed(metrics: dict[str, Any], prefix: str = "eval") -> bool:
    """Whether an evaluation's metrics (or a ``log_history`` record) flag it collapsed (``<prefix>_collapsed``)."""
    return bool(metrics.get(f"{prefix}_collapsed", 0.0))


class WandbCallback(TrainerCallback):
    """WandB 로깅을 위한 커스텀 콜백: logs every evaluation and tracks the best combined ROUGE.

    Logged keys (spec): ``eval/rouge1_f1``, ``eval/rouge2_f1``, ``eval/rougeL_f1``,
    ``eval/rouge_combined_f1``, ``eval/loss``, ``best/rouge_combined_f1``, ``epoch``, ``step``.
    They go through the trainer's :class:`ExperimentTracker`, so they reach W&B when it is on and
    the local record always.

    "Best" follows best-checkpoint selection (:func:`evaluation_rank`): a healthy evaluation beats a
    collapsed one (``eval_collapsed``) whatever their scores, so ``best/rouge_combined_f1`` can go down
    when the first healthy evaluation follows a collapsed one. Only ``eval``-prefixed evaluations (the
    validation split) count; ``evaluate(..., metric_key_prefix="test")`` is not logged here.
    """

    def __init__(self, trainer_instance: DialogueSummarizationTrainer):
        self.trainer_instance = trainer_instance
        self.best_combined: float | None = None
        self.best_collapsed = False
        self.best_metrics: dict[str, float] = {}

    def on_train_begin(self, args, state: TrainerState, control: TrainerControl, **kwargs):
        # A resumed run replays the evaluations restored with its log history; a fresh one has none.
        self.best_combined, self.best_collapsed, self.best_metrics = None, False, {}
        for record in state.log_history:
            if "eval_rouge_combined_f1" in record:
                self._consider(record, record.get("step", 0), record.get("epoch"))

    def _consider(self, metrics: dict[str, Any], step: int, epoch: float | None) -> None:
        combined, collapsed = metrics["eval_rouge_combined_f1"], is_collapsed(metrics)
        if self.best_combined is None or evaluation_rank(combined, collapsed) > evaluation_rank(
            self.best_combined, self.best_collapsed
        ):
            self.best_combined, self.best_collapsed = combined, collapsed
            self.best_metrics = {**strip_prefix(metrics, "eval"), "step": step, "epoch": epoch}

    def on_evaluate(self, args, state: TrainerState, control: TrainerControl, metrics: dict[str, float], **kwargs):
        if not any(key.startswith("eval_") for key in metrics):
            return  # another split (metric_key_prefix="test"): neither validation nor a candidate for best
        rouge = {key: metrics.get(f"eval_{key}", 0.0) for key in ("rouge1", "rouge2", "rougeL")}
        combined = combined_f1(rouge["rouge1"], rouge["rouge2"], rouge["rougeL"])
        metrics.setdefault("eval_rouge_combined_f1", combined)
        self._consider(metrics, state.global_step, state.epoch)
        logged = {
            "eval/rouge1_f1": rouge["rouge1"],
            "eval/rouge2_f1": rouge["rouge2"],
            "eval/rougeL_f1": rouge["rougeL"],
            "eval/rouge_combined_f1": combined,
            "eval/loss": metrics.get("eval_loss"),
            "best/rouge_combined_f1": self.best_combined,
            "epoch": state.epoch,
            "step": state.global_step,
        }
        self.trainer_instance._log(
            {key: value for key, value in logged.items() if value is not None}, state.global_step
        )

    def on_log(
        self, args, state: TrainerState, control: TrainerControl, logs: dict[str, float] | None = None, **kwargs
    ):
        # Training loss and learning rate; evaluation metrics are logged by on_evaluate.
        if logs and "loss" in logs:
            train_logs = {f"train/{key}": value for key, value in logs.items() if isinstance(value, (int, float))}
            self.trainer_instance._log({**train_logs, "step": state.global_step}, state.global_step)


class RunCancelled(Exception):
    """Training stopped because a cancel was requested; the checkpoint of the stopping step is kept."""


class StageControlCallback(TrainerCallback):
    """Reports progress and stops training cooperatively, at a step boundary, when asked to.

    Used by the Celery train stage (``report`` sends task state and events; ``should_cancel``
    reads the run's cancel flag) but free of any Celery import.

    Args:
        report: Called with ``{"step", "total", "epoch", "loss"}`` on every log and with
            ``{"step", "total", "eval": {...}}`` on every evaluation.
        should_cancel: Polled after optimizer steps (at most once per ``poll_seconds``).
        poll_seconds: Minimum time between two ``should_cancel`` calls (they may hit the network).
    """

    def __init__(self, report=None, should_cancel=None, poll_seconds: float = 0.5):
        self.report = report
        self.should_cancel = should_cancel
        self.poll_seconds = poll_seconds
        self._last_poll = 0.0
        self.cancel_requested = False

    def on_step_end(self, args, state: TrainerState, control: TrainerControl, **kwargs):
        now = time.monotonic()
        if self.should_cancel is None or now - self._last_poll < self.poll_seconds:
            return
        self._last_poll = now
        if self.should_cancel():
            # Save first, then stop: on_save below raises once the checkpoint is on disk.
            self.cancel_requested = True
            control.should_save = True
            control.should_training_stop = True

    def on_save(self, args, state: TrainerState, control: TrainerControl, **kwargs):
        if self.cancel_requested:
            raise RunCancelled(f"cancelled at step {state.global_step}; checkpoint-{state.global_step} kept")

    def on_log(self, args, state: TrainerState, control: TrainerControl, logs=None, **kwargs):
        if self.report and logs and "loss" in logs:
            self.report(
                {"step": state.global_step, "total": state.max_steps, "epoch": state.epoch, "loss": logs["loss"]}
            )

    def on_evaluate(self, args, state: TrainerState, control: TrainerControl, metrics=None, **kwargs):
        if self.report and metrics:
            evaluation = {key: value for key, value in metrics.items() if isinstance(value, (int, float))}
            self.report({"step": state.global_step, "total": state.max_steps, "eval": evaluation})


class CheckpointSavingTrainer(Seq2SeqTrainer):
    """``Seq2SeqTrainer`` whose failed checkpoint saves leave no half-written ``checkpoint-N`` behind, and whose
    best checkpoint is never a collapsed evaluation while a healthy one exists.

    HF writes a checkpoint in place, file by file; when a save fails (disk full, read-only) the new
    directory is removed, and a full or unwritable disk is raised as ``OutputDirectoryError``.
    """

    def _determine_best_metric(self, metrics: dict[str, float], trial: Any) -> bool:
        """HF's choice of the best evaluation (``metric_for_best_model``) with collapse ranked first.

        A healthy evaluation beats a collapsed one whatever their metrics; between two healthy (or two collapsed)
        ones the metric decides, as in HF. ``state.best_metric`` and ``state.best_global_step`` keep HF's meaning;
        whether the best was collapsed is read back from ``state.log_history``, so a resumed run, whose state
        comes from ``trainer_state.json``, ranks the same way.
        """
        key = self.args.metric_for_best_model
        if key is None:
            return False
        key = key if key.startswith("eval_") else f"eval_{key}"
        if key not in metrics:
            return super()._determine_best_metric(metrics, trial)  # raises HF's KeyError listing the metrics
        value, greater = float(metrics[key]), self.args.greater_is_better
        best = self.state.best_metric
        if best is not None and not (
            evaluation_rank(value, is_collapsed(metrics), greater)
            > evaluation_rank(best, self._best_was_collapsed(key), greater)
        ):
            return False
        self.state.best_metric = value
        if self.args.save_strategy in (SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST):
            self.state.best_global_step = self.state.global_step
        return True

    def _best_was_collapsed(self, key: str) -> bool:
        """Whether the evaluation behind ``state.best_metric`` was collapsed, from its ``log_history`` record.

        HF logs an evaluation before choosing the best, so the current one is in the history too: without a best
        step (``save_strategy: no``) the best is the latest earlier record with that value.
        """
        state = self.state
        for record in reversed(state.log_history):
            if key not in record:
                continue
            step = record.get("step")
            if state.best_global_step:
                found = step == state.best_global_step
            else:
                found = step != state.global_step and record[key] == state.best_metric
            if found:
                return is_collapsed(record)
        return False

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        checkpoints = Path(self._get_output_dir(trial=trial))
        folder = checkpoints / f"checkpoint-{self.state.global_step}"
        new = not folder.exists()

        def discard() -> None:
            if new:
                shutil.rmtree(folder, ignore_errors=True)

        with output_errors(checkpoints, cleanup=discard):
            super()._save_checkpoint(model, trial)


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA/MPS/CPU allocator failures, which torch reports in several ways."""
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


class DialogueSummarizationTrainer:
    """대화 요약 모델 학습 트레이너: the whole lifecycle of one dialogue summarization run.

    Args:
        config: The config dictionary (from ``ConfigManager``); a partial dict is completed with defaults.
        sweep_mode: When True, parameters of the current sweep trial (a W&B run's config) override
            the config.
        experiment_name: Experiment name; the config's ``experiment.name`` when None. Runs are
            stored under ``<artifact_root>/runs/<experiment_name>/<run_id>``.

    Example:
        >>> trainer = DialogueSummarizationTrainer(config, experiment_name="kobart_baseline_v1")
        >>> trainer.initialize_components()
        >>> datasets = trainer.prepare_data()
        >>> result = trainer.train(datasets)
    """

    def __init__(self, config: dict[str, Any], sweep_mode: bool = False, experiment_name: str | None = None):
        self._config_manager = ConfigManager()
        self._config = self._config_manager.validate(config)
        self.sweep_mode = sweep_mode
        if sweep_mode:
            self._config = merge_sweep_params(self._config, _current_sweep_parameters())
        self.experiment_name = experiment_name or self._config["experiment"]["name"]
        self.run_id = run_id_for(self._config)
        output_dir = self._config["general"]["output_dir"]
        self._output_dir = (
            Path(output_dir) if output_dir else run_dir(self.artifact_root, self.experiment_name, self.run_id)
        )
        self._device: torch.device | None = None
        self._model = None
        self._tokenizer = None
        self._trainer: Seq2SeqTrainer | None = None
        self._tracker: ExperimentTracker | None = None
        self._registry: ModelRegistry | None = None
        self._wandb_callback = WandbCallback(self)
        self._eval_references: list[list[str]] | None = None
        self._eval_inputs: list[str] | None = None
        self._eval_dataset: Any = None
        # The predictions of the latest evaluation, in the split's order (run summaries show a few).
        self.last_eval_predictions: list[str] = []
        self._experiment_id: str | None = None
        self.history: list[dict[str, Any]] = []
        self.prepared_dataset_dir: Path | None = None
        self.dataset_fingerprint: str | None = None
        self.data_stats: dict[str, dict[str, int]] = {}
        self.dataset_cache_hit: bool | None = None
        # Set for sweep trials: W&B groups the trial's run by sweep and records its parameters.
        self.sweep_info: dict[str, Any] | None = None

    # ----------------------------------------------------------------- properties
    @property
    def config(self) -> dict[str, Any]:
        """설정 딕셔너리: the resolved config; mutate it and the next ``train`` uses the new values."""
        return self._config

    @property
    def device(self) -> torch.device:
        """연산 디바이스: the torch device of ``general.device`` (auto picks CUDA, then MPS, then CPU)."""
        if self._device is None:
            self._device = resolve_device(self._config["general"]["device"])
        return self._device

    @property
    def model(self):
        """학습 모델 (PreTrainedModel); None before ``initialize_components``."""
        return self._model

    @property
    def tokenizer(self):
        """토크나이저; None before ``initialize_components``."""
        return self._tokenizer

    @property
    def experiment_tracker(self) -> ExperimentTracker | None:
        """실험 추적기 (local record, plus W&B per ``wandb.mode``)."""
        return self._tracker

    @property
    def model_registry(self) -> ModelRegistry | None:
        """모델 등록소 under the artifact root."""
        return self._registry

    @property
    def trainer(self) -> Seq2SeqTrainer | None:
        """The underlying HF ``Seq2SeqTrainer`` (``trainer.trainer.add_callback(...)`` works)."""
        return self._trainer

    @property
    def output_dir(self) -> Path:
        """The run directory: checkpoints, model, metrics and predictions go here."""
        return self._output_dir

    @property
    def artifact_root(self) -> Path:
        """The artifact root of ``general.artifact_root``."""
        return Path(self._config["general"]["artifact_root"])

    @property
    def checkpoints_dir(self) -> Path:
        """``output_dir / "checkpoints"``, holding ``checkpoint-N`` directories."""
        return self._output_dir / "checkpoints"

    # ------------------------------------------------------------ initialization
    def initialize_components(self) -> None:
        """모든 컴포넌트 초기화: device, tokenizer, model, tracker, registry and the HF trainer.

        Idempotent: a second call does nothing.

        Raises:
            RuntimeError: A component could not be built (for example an unreachable model hub).
            FileNotFoundError: The training file a scratch tokenizer is trained on is missing.
            OutputDirectoryError: The run directory cannot be created (read-only or full filesystem).
        """
        if self._trainer is not None:
            return
        try:
            set_seed(self._config["general"]["seed"])
            ensure_sample_data(self._config)
            self._tokenizer, self._model = load_model_and_tokenizer(
                self._config, self.artifact_root, self._config["data"]["train_path"]
            )
            self._model.generation_config = self._generation_config()
            self._model.to(self.device)
            self._tracker = ExperimentTracker(self.artifact_root, self._config["wandb"])
            self._registry = ModelRegistry(self.artifact_root)
            self._trainer = self._build_hf_trainer(self._get_training_arguments(), [])
        except (FileNotFoundError, RuntimeError, ValueError, OutputDirectoryError):
            raise
        except Exception as error:  # anything else is a component failure, as the spec documents
            raise RuntimeError(f"component initialization failed: {type(error).__name__}: {error}") from error

    def _generation_config(self) -> GenerationConfig:
        generation = self._config["generation"]
        base = self._model.generation_config.to_dict() if self._model is not None else {}
        base.update(
            num_beams=generation["num_beams"],
            max_length=generation["max_length"],
            min_length=generation["min_length"],
            no_repeat_ngram_size=generation["no_repeat_ngram_size"],
            length_penalty=generation["length_penalty"],
            # transformers refuses to save early_stopping=True with greedy search (it only applies to beams).
            early_stopping=generation["early_stopping"] and generation["num_beams"] > 1,
        )
        return GenerationConfig(**{key: value for key, value in base.items() if not key.startswith("_")})

    def _get_training_arguments(self) -> Seq2SeqTrainingArguments:
        """Seq2SeqTrainingArguments built from the current ``config['training']`` (and generation).

        ``warmup_ratio`` is passed as a float ``warmup_steps`` below 1, which transformers 5 reads as a ratio.
        """
        training = self._config["training"]
        generation = self._config["generation"]
        eval_beams = training["generation_num_beams_during_eval"] or generation["num_beams"]
        return Seq2SeqTrainingArguments(
            output_dir=str(self.checkpoints_dir),
            num_train_epochs=training["num_train_epochs"],
            max_steps=training["max_steps"],
            learning_rate=training["learning_rate"],
            per_device_train_batch_size=training["per_device_train_batch_size"],
            per_device_eval_batch_size=training["per_device_eval_batch_size"],
            gradient_accumulation_steps=training["gradient_accumulation_steps"],
            warmup_steps=float(training["warmup_ratio"]) if training["warmup_ratio"] < 1 else 0,
            weight_decay=training["weight_decay"],
            lr_scheduler_type=training["lr_scheduler_type"],
            optim=training["optim"],
            max_grad_norm=training["max_grad_norm"],
            label_smoothing_factor=training["label_smoothing"],
            eval_strategy=training["eval_strategy"],
            eval_steps=training["eval_steps"],
            save_strategy=training["save_strategy"],
            save_steps=training["save_steps"] or 500,
            save_total_limit=training["save_total_limit"],
            logging_steps=training["logging_steps"],
            load_best_model_at_end=training["load_best_model_at_end"] and training["eval_strategy"] != "no",
            metric_for_best_model=training["metric_for_best_model"],
            greater_is_better=training["greater_is_better"],
            fp16=training["fp16"],
            bf16=training["bf16"],
            activation_checkpointing=training["gradient_checkpointing"],
            train_sampling_strategy="group_by_length" if training["group_by_length"] else "random",
            dataloader_num_workers=training["dataloader_num_workers"],
            predict_with_generate=True,
            generation_max_length=generation["max_length"],
            generation_num_beams=eval_beams,
            seed=self._config["general"]["seed"],
            use_cpu=self.device.type == "cpu",
            report_to="none",  # W&B goes through ExperimentTracker, so runs are never logged twice
        )

    def _build_hf_trainer(
        self, args: Seq2SeqTrainingArguments, user_callbacks: list[TrainerCallback]
    ) -> Seq2SeqTrainer:
        callbacks: list[TrainerCallback] = [self._wandb_callback, *user_callbacks]
        training = self._config["training"]
        if training["early_stopping_patience"] and args.eval_strategy != "no":
            callbacks.append(
                EarlyStoppingCallback(training["early_stopping_patience"], training["early_stopping_threshold"])
            )
        collator = DataCollatorForSeq2Seq(self._tokenizer, model=self._model, label_pad_token_id=-100)
        # HF refuses an evaluating trainer without eval_dataset; the spec builds the trainer before any
        # data exists (initialize_components, then add_callback), so an empty split stands in until train().
        from datasets import Dataset

        with output_errors(args.output_dir):  # HF creates the checkpoints directory here
            return CheckpointSavingTrainer(
                model=self._model,
                args=args,
                eval_dataset=Dataset.from_dict({"input_ids": [], "attention_mask": [], "labels": []}),
                data_collator=collator,
                processing_class=self._tokenizer,
                compute_metrics=self._compute_metrics,
                callbacks=callbacks,
            )

    def _user_callbacks(self) -> list[TrainerCallback]:
        """Callbacks added to the HF trainer by the user, kept when it is rebuilt."""
        if self._trainer is None:
            return []
        return [
            callback
            for callback in self._trainer.callback_handler.callbacks
            if not isinstance(callback, (*_HF_DEFAULT_CALLBACKS, WandbCallback, EarlyStoppingCallback))
        ]

    # ---------------------------------------------------------------------- data
    def prepare_data(
        self, train_path: str | None = None, val_path: str | None = None, test_path: str | None = None
    ) -> Any:
        """데이터 로딩 및 전처리: load, validate, tokenize (or load from the cache) the splits.

        Args:
            train_path: Training CSV; ``data.train_path`` when None.
            val_path: Validation CSV; ``data.val_path`` when None.
            test_path: Test CSV (may lack summaries); ``data.test_path`` when None.

        Returns:
            A ``DatasetDict`` with ``train``, ``validation`` and (if given) ``test``.

        Raises:
            FileNotFoundError: A data file is missing (named with its config key).
            DataError: A data file is malformed (named with its row and column). Files are checked
                before anything is written: a bad file leaves the artifact root as it was.
        """
        data = self._config["data"]
        files = {
            "train": train_path or data["train_path"],
            "validation": val_path or data["val_path"],
            "test": test_path or data["test_path"],
        }
        files = {split: path for split, path in files.items() if path}
        ensure_sample_data(self._config)
        check_data_files(files, Columns.from_config(data))
        self.initialize_components()
        prepared = prepare_datasets(
            files,
            self._tokenizer,
            artifact_root=self.artifact_root,
            prefix=PipelineConfig.from_dict(self._config).prefix(),
            encoder_max_len=self._config["tokenizer"]["encoder_max_len"],
            decoder_max_len=self._config["tokenizer"]["decoder_max_len"],
            columns=Columns.from_config(data),
            max_samples={"train": data["max_train_samples"], "validation": data["max_val_samples"]},
            denoising=self._config["denoising"],
            seed=self._config["general"]["seed"],
        )
        self.prepared_dataset_dir = prepared.directory
        self.dataset_fingerprint = prepared.fingerprint
        self.data_stats = prepared.stats
        self.dataset_cache_hit = prepared.cache_hit
        logger.info("prepared data %s (%s)", prepared.directory, "cache hit" if prepared.cache_hit else "tokenized")
        return prepared.datasets

    # ------------------------------------------------------------------ training
    def train(self, dataset: Any, resume_from_checkpoint: str | None = None) -> TrainingResult:
        """모델 학습: fine-tune on ``dataset['train']``, evaluating on ``dataset['validation']``.

        Out of memory during training is retried with the per-device batch halved and gradient
        accumulation doubled (the effective batch stays the same), at most
        ``training.max_oom_retries`` times, resuming from the latest checkpoint.

        Args:
            dataset: A ``DatasetDict`` from :meth:`prepare_data`.
            resume_from_checkpoint: A checkpoint directory (absolute or relative to ``output_dir``),
                ``"auto"`` for this run's latest checkpoint, or None to start fresh.

        Returns:
            The :class:`TrainingResult`.

        Raises:
            ValueError: The dataset lacks a labeled ``train`` split (or ``validation`` when evaluating).
            RuntimeError: Training failed, including out of memory at the smallest batch.
            OutputDirectoryError: A checkpoint, the model or a run file could not be written (disk full,
                read-only, not writable); no half-written checkpoint or model is left, a previous model stays.
        """
        self.initialize_components()
        self._check_train_dataset(dataset)
        self._config = self._config_manager.validate(self._config)  # the user may have edited it
        checkpoint = self._resolve_checkpoint(resume_from_checkpoint)
        self._write_run_config()
        tracked_config = {**self._config, "sweep": self.sweep_info} if self.sweep_info else self._config
        group = self.sweep_info["sweep_id"] if self.sweep_info else None
        self._experiment_id = self._tracker.start_experiment(
            self.experiment_name, tracked_config, run_id=self.run_id, group=group
        )
        self.history = []
        if checkpoint:
            self.history.append({"event": "resume", "checkpoint": str(checkpoint)})
        try:
            self._train_with_oom_backoff(dataset, checkpoint)
            final_metrics = (
                strip_prefix(self.evaluate(dataset["validation"]), "eval") if "validation" in dataset else {}
            )
            model_path = self.save_model()
        except RunCancelled as error:
            self._tracker.end_experiment(self._experiment_id, status="cancelled", notes=str(error))
            raise
        except Exception as error:
            self._tracker.end_experiment(self._experiment_id, status="failed", notes=str(error))
            if isinstance(error, (ValueError, RuntimeError, OutputDirectoryError)):
                raise
            raise RuntimeError(f"training failed: {type(error).__name__}: {error}") from error

        best_metrics = dict(self._wandb_callback.best_metrics) or dict(final_metrics)
        self.history = [*self.history, *self._trainer.state.log_history]
        atomic_write_text(self._output_dir / "history.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))
        self._tracker.end_experiment(self._experiment_id, status="completed", notes="")
        lineage = {
            "run_id": self.run_id,
            "dataset_fingerprint": self.dataset_fingerprint,
            "resumed_from": str(checkpoint or ""),
        }
        self._registry.register(model_path, final_metrics, self._config, lineage=lineage, name=self.experiment_name)
        return TrainingResult(
            best_metrics=best_metrics,
            final_metrics=final_metrics,
            model_path=str(model_path),
            config_used=copy.deepcopy(self._config),
            training_history=list(self.history),
            wandb_run_id=self._tracker.wandb_run_id(self._experiment_id),
            experiment_id=self._experiment_id,
        )

    def _check_train_dataset(self, dataset: Any) -> None:
        if not hasattr(dataset, "keys") or "train" not in dataset:
            raise ValueError("train() needs a DatasetDict with a 'train' split, as returned by prepare_data()")
        if "labels" not in dataset["train"].column_names:
            raise ValueError("dataset['train'] has no labels: the training file needs a summary column")
        if self._config["training"]["eval_strategy"] != "no" and "validation" not in dataset:
            raise ValueError(
                "training.eval_strategy is not 'no' but the dataset has no 'validation' split; "
                "pass val_path to prepare_data() or set training.eval_strategy: 'no'"
            )

    def _resolve_checkpoint(self, resume_from_checkpoint: str | None) -> Path | None:
        """Resume order: an explicit path, then ``"auto"`` (the latest checkpoint), else fresh."""
        if resume_from_checkpoint is None:
            return None
        if str(resume_from_checkpoint) == "auto":
            found = latest_checkpoint(self.checkpoints_dir)
            logger.info("resume 'auto': %s", found or "no checkpoint yet, starting fresh")
            return found
        for candidate in (Path(resume_from_checkpoint), self._output_dir / resume_from_checkpoint):
            if (candidate / "trainer_state.json").is_file():
                return candidate
        available = (
            sorted(p.name for p in self.checkpoints_dir.glob("checkpoint-*")) if self.checkpoints_dir.is_dir() else []
        )
        raise FileNotFoundError(
            f"resume_from_checkpoint {resume_from_checkpoint!r} is not a checkpoint directory "
            f"(looked in the current directory and {self._output_dir}); available: {available or 'none'}; "
            f"pass 'auto' to take the latest"
        )

    def _train_with_oom_backoff(self, dataset: Any, checkpoint: Path | None) -> None:
        training = self._config["training"]
        for attempt in range(training["max_oom_retries"] + 1):
            self._trainer = self._build_hf_trainer(self._get_training_arguments(), self._user_callbacks())
            self._trainer.train_dataset = dataset["train"]
            self._trainer.eval_dataset = dataset["validation"] if "validation" in dataset else None
            self._set_eval_split(dataset["validation"] if "validation" in dataset else None)
            try:
                self._trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
                return
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                batch = training["per_device_train_batch_size"]
                if attempt == training["max_oom_retries"] or batch == 1:
                    raise RuntimeError(
                        f"out of memory with per_device_train_batch_size={batch} after {attempt} backoff(s); "
                        f"lower tokenizer.encoder_max_len, enable training.gradient_checkpointing, or use a "
                        f"smaller model"
                    ) from error
                _release_memory()
                training["per_device_train_batch_size"] = batch // 2
                training["gradient_accumulation_steps"] *= 2
                checkpoint = latest_checkpoint(self.checkpoints_dir) or checkpoint
                event = {
                    "event": "oom_backoff",
                    "attempt": attempt + 1,
                    "per_device_train_batch_size": batch // 2,
                    "gradient_accumulation_steps": training["gradient_accumulation_steps"],
                    "resume_from": str(checkpoint) if checkpoint else None,
                }
                logger.warning("out of memory: retrying with %s", event)
                self.history.append(event)

    # ---------------------------------------------------------------- evaluation
    def _set_eval_split(self, dataset: Any) -> None:
        """Remember the split being evaluated, its reference texts and dialogues (None: no split)."""
        self._eval_dataset = dataset
        self._eval_references = dataset["references"] if dataset is not None else None
        self._eval_inputs = dataset["input"] if dataset is not None and "input" in dataset.column_names else None

    def _input_loss_gain(self) -> float | None:
        """How much worse the model predicts each reference when given another dialogue of its batch (nats/token).

        Near 0 means the decoder ignores the encoder: the summaries cannot depend on the dialogue, whatever the
        distinct share says. Two runs here wrote one sentence for every dialogue while this was 0.000 (RESULTS.md).
        One extra pair of forward passes over the split, no generation. None when no batch has two dialogues.
        """
        if self._eval_dataset is None or self._trainer is None:
            return None
        model = self._trainer.model
        was_training = model.training
        model.eval()
        right = wrong = 0.0
        tokens = 0
        try:
            with torch.no_grad():
                for batch in self._trainer.get_eval_dataloader(self._eval_dataset):
                    batch = {key: value.to(model.device) for key, value in batch.items() if torch.is_tensor(value)}
                    if batch["input_ids"].shape[0] < 2 or "labels" not in batch:
                        continue
                    count = int((batch["labels"] != -100).sum())
                    right += float(model(**batch).loss) * count
                    swapped = {key: batch[key].roll(1, 0) for key in ("input_ids", "attention_mask")}
                    wrong += float(model(**{**batch, **swapped}).loss) * count
                    tokens += count
        finally:
            model.train(was_training)
        return (wrong - right) / tokens if tokens else None

    def _compute_metrics(self, eval_prediction: Any) -> dict[str, float]:
        """ROUGE of generated summaries against the original reference texts (not decoded labels,
        which are truncated to ``decoder_max_len`` and would flatter long summaries), LEAD-3 on the
        same split with the model's margins over it, and the collapse check."""
        predictions = self._decode(eval_prediction.predictions)
        references = self._eval_references or [[text] for text in self._decode(eval_prediction.label_ids)]
        references = references[: len(predictions)]
        evaluation = self._config["evaluation"]
        tokenizer, rule = evaluation["rouge_tokenizer"], evaluation["multi_reference"]
        multi = any(not isinstance(refs, str) and len(refs) > 1 for refs in references)
        by_rule = compute_rouge_by_rule(predictions, references, tokenizer, MULTI_REFERENCE_RULES if multi else (rule,))
        scores = dict(by_rule[rule])
        if multi:  # both rules side by side (rouge1_max, rouge1_mean, ...): max flatters generic summaries
            scores.update({f"{key}_{name}": value for name, values in by_rule.items() for key, value in values.items()})
        if self._eval_inputs is not None:
            # Cached per split inside lead_rouge: evaluations during training do not score LEAD-3 again.
            lead = lead_rouge(self._eval_inputs[: len(predictions)], references, tokenizer, rule)
            scores.update(baseline_metrics(by_rule[rule], lead))
        # Distinct share and the most common prediction's share expose a collapsed model that ROUGE can hide.
        diversity = prediction_diversity(predictions)
        reason = collapse_reason(diversity, evaluation)
        self.last_eval_predictions = predictions
        if reason is not None:
            self._record_collapse(reason, predictions)
        gain = self._input_loss_gain()
        if gain is not None:
            diversity["input_loss_gain"] = gain
        # HF wants numbers: the flag is 1.0/0.0 and the reason is rebuilt from the numbers (collapse_reason).
        return {**scores, **diversity, "collapsed": float(reason is not None)}

    def _record_collapse(self, reason: str, predictions: list[str]) -> None:
        step = self._trainer.state.global_step if self._trainer is not None else 0
        top = Counter(predictions).most_common(1)[0][0]
        logger.warning("evaluation at step %d is collapsed: %s; most common prediction: %r", step, reason, top)
        self.history.append({"event": "collapse", "step": step, "reason": reason, "prediction": top})

    def _decode(self, token_ids: Any) -> list[str]:
        if isinstance(token_ids, tuple):
            token_ids = token_ids[0]
        token_ids = torch.as_tensor(token_ids)
        token_ids = torch.where(token_ids == -100, self._tokenizer.pad_token_id, token_ids)  # -100 cannot be decoded
        return [text.strip() for text in self._tokenizer.batch_decode(token_ids.tolist(), skip_special_tokens=True)]

    def evaluate(self, dataset: Any, metric_key_prefix: str = "eval") -> dict[str, float]:
        """모델 평가: loss and ROUGE of generated summaries on a labeled dataset.

        Args:
            dataset: A prepared split with summaries (``datasets['validation']``).
            metric_key_prefix: Prefix of the keys: ``eval`` gives ``eval_rouge1``, ``eval_rouge2``,
                ``eval_rougeL``, ``eval_rouge_combined_f1``, ``eval_loss``.

        Returns:
            The metrics, all numbers. Beside ROUGE (under ``evaluation.multi_reference``): LEAD-3 on the
            same split and references (``eval_lead3_rouge1`` ... ``eval_lead3_rouge_combined_f1``) and the
            model's margins over it (``eval_rouge2_margin_over_lead3``, ...); ``eval_distinct_predictions``,
            ``eval_top_prediction_share``, ``eval_input_loss_gain`` (the loss increase when each dialogue is swapped
            for another of its batch: about 0 for a model that ignores its input) and ``eval_collapsed`` (1.0 when
            collapsed, see
            :func:`pipeline.metrics.collapse_reason`; a warning and a ``collapse`` history event say why);
            on a split where some example has several references, both rules as ``eval_rouge1_max``,
            ``eval_rouge1_mean``, ...

        Raises:
            ValueError: The dataset has no summaries to score against.
        """
        self.initialize_components()
        if "references" not in dataset.column_names:
            raise ValueError(
                "evaluate() needs a split with summaries; this one has none (a test file?). "
                "Use generate_predictions() for unlabeled data"
            )
        previous = self._eval_references, self._eval_inputs, self._eval_dataset
        self._set_eval_split(dataset)
        try:
            return self._trainer.evaluate(eval_dataset=dataset, metric_key_prefix=metric_key_prefix)
        finally:
            self._eval_references, self._eval_inputs, self._eval_dataset = previous

    # ---------------------------------------------------------------- prediction
    def generate_predictions(self, dataset: Any, max_samples: int | None = None) -> list[dict[str, str]]:
        """예측 생성: summaries for a prepared split, labeled or not, in the split's order.

        Batches are formed from length-sorted dialogues (little padding), then put back in order.

        Args:
            dataset: A prepared split.
            max_samples: Only the first N rows; all when None.

        Returns:
            One dict per row: ``fname``, ``input``, ``prediction`` and ``reference`` ("" when unlabeled).
        """
        from tqdm.auto import tqdm

        self.initialize_components()
        count = len(dataset) if max_samples is None else min(max_samples, len(dataset))
        rows = dataset.select(range(count))
        lengths = rows["length"] if "length" in rows.column_names else [len(ids) for ids in rows["input_ids"]]
        order = sorted(range(count), key=lambda index: -lengths[index])
        batch_size = self._config["inference"]["batch_size"]
        predictions: list[str] = [""] * count
        input_ids = rows["input_ids"]
        self._model.eval()
        with torch.inference_mode():
            for start in tqdm(range(0, count, batch_size), desc="generate", unit="batch", disable=count <= batch_size):
                indices = order[start : start + batch_size]
                batch = self._tokenizer.pad({"input_ids": [input_ids[i] for i in indices]}, return_tensors="pt")
                batch = {key: value.to(self.device) for key, value in batch.items()}
                output = self._model.generate(**batch, generation_config=self._model.generation_config)
                for index, text in zip(indices, self._decode(output), strict=True):
                    predictions[index] = text
        references = rows["references"] if "references" in rows.column_names else [[""]] * count
        return [
            {"fname": fname, "input": text, "prediction": prediction, "reference": refs[0] if refs else ""}
            for fname, text, prediction, refs in zip(rows["fname"], rows["input"], predictions, references, strict=True)
        ]

    # ------------------------------------------------------------------ outputs
    def save_model(self, directory: str | Path | None = None) -> Path:
        """Write model, tokenizer and generation config with ``save_pretrained``, atomically.

        Returns:
            The directory (``output_dir / "model"`` by default).

        Raises:
            OutputDirectoryError: Its filesystem is full, read-only or not writable; the model that was
                there before is left as it was.
        """
        target = Path(directory) if directory else self._output_dir / "model"
        with atomic_directory(target) as tmp:
            self._model.save_pretrained(tmp)
            self._tokenizer.save_pretrained(tmp)
        return target

    def _write_run_config(self) -> None:
        self._config_manager.save_config(self._config, self._output_dir / "config.yaml")

    def _log(self, metrics: dict[str, Any], step: int | None) -> None:
        """Send metrics to the experiment tracker (local record, plus W&B when on)."""
        if self._tracker is not None and self._experiment_id is not None:
            self._tracker.log_metrics(metrics, step=step, experiment_id=self._experiment_id)


def write_predictions(predictions: list[dict[str, str]], csv_path: str | Path) -> Path:
    """Write the submission CSV (``fname,summary``, no index column) and a ``.jsonl`` with all fields beside it.

    Both are written atomically, the larger ``.jsonl`` (it holds the dialogues) first: a disk too full
    for it leaves the previous pair as it was.

    Raises:
        OutputDirectoryError: The directory's filesystem is full, read-only or not writable.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["fname", "summary"])
    writer.writerows([row["fname"], row["prediction"]] for row in predictions)
    csv_path = Path(csv_path)
    atomic_write_text(
        csv_path.with_suffix(".jsonl"), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in predictions)
    )
    atomic_write_text(csv_path, buffer.getvalue())
    return csv_path


def ensure_sample_data(config: dict[str, Any]) -> None:
    """Write the built-in Korean sample data where ``data.*_path`` point, if the config asks for it.

    Only with ``data.sample_data: true`` and only for missing files: a real config with a missing
    file gets a FileNotFoundError from the data loader instead of invented data.
    """
    data = config["data"]
    if not data["sample_data"]:
        return
    paths = {"train": data["train_path"], "dev": data["val_path"], "test": data["test_path"]}
    if all(path is None or Path(path).is_file() for path in paths.values()):
        return
    directory = Path(data["train_path"]).parent
    sizes = {
        "n_train": data["sample_size"],
        "n_dev": max(data["sample_size"] // 10, 10),
        "n_test": max(data["sample_size"] // 20, 10),
    }
    written = write_sample_data(directory, seed=config["general"]["seed"], **sizes)
    for split, path in paths.items():
        if path is not None and Path(path) != written[split]:
            atomic_write_bytes(path, written[split].read_bytes())


def _current_sweep_parameters() -> dict[str, Any]:
    """Parameters of the running sweep trial: the active W&B run's config (as a W&B agent sets it)."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb else None
    return dict(run.config) if run is not None else {}


def _release_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def create_trainer(config: str | dict[str, Any], sweep_mode: bool = False) -> DialogueSummarizationTrainer:
    """트레이너 생성 편의 함수: build and initialize a trainer from a YAML path or a config dict.

    Args:
        config: Path of a config YAML, or a (possibly partial) config dict.
        sweep_mode: Take parameters from the current sweep trial.

    Returns:
        An initialized :class:`DialogueSummarizationTrainer`.
    """
    config_dict = ConfigManager().load_config(config) if isinstance(config, (str, Path)) else config
    trainer = DialogueSummarizationTrainer(config_dict, sweep_mode=sweep_mode)
    trainer.initialize_components()
    return trainer
