"""Configuration: YAML -> one typed, validated config; CLI overrides; sweep parameters -> nested keys.

The config that users pass around is a plain nested dict (``config['model']['architecture']``), as the
trainer API documents, so it can be mutated at runtime and shipped through a JSON broker. The typed view
is :class:`PipelineConfig`: every section is a dataclass whose fields carry their help text in
``field(metadata={"help": ...})`` and their constraints next to it, so one walk over the dataclasses
validates a dict, fills defaults, and reports every problem at once.

Typical use::

    manager = ConfigManager()
    config = manager.load_config("config/base_config.yaml", overrides=["training.learning_rate=3e-5"])
    typed = PipelineConfig.from_dict(config)
    typed.prefix(), typed.effective_train_batch_size()

This module imports only the standard library and PyYAML: it must stay cheap to import (the CLI and the
Celery client validate configs without loading torch or transformers).
"""

from __future__ import annotations

import copy
import difflib
import functools
import operator
import os
import re
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from types import NoneType, UnionType
from typing import Any

import yaml

from pipeline.artifacts import atomic_write_text

__all__ = [
    "ARCHITECTURES",
    "ConfigError",
    "ConfigManager",
    "DataConfig",
    "DenoisingConfig",
    "EvaluationConfig",
    "ExperimentConfig",
    "GeneralConfig",
    "GenerationConfig",
    "InferenceConfig",
    "ModelConfig",
    "PipelineConfig",
    "ScratchModelConfig",
    "TokenizerConfig",
    "TrainingConfig",
    "WandbConfig",
    "Overrides",
    "apply_overrides",
    "flat_parameter_names",
    "load_config",
    "merge_sweep_params",
    "save_config",
    "validate_config",
]

ARCHITECTURES = ("bart", "kobart", "t5", "mt5")
SCRATCH_CHECKPOINT = "scratch"
_T5_FAMILY = ("t5", "mt5")
_T5_PREFIX = "summarize: "

DEFAULT_SPECIAL_TOKENS = [f"#Person{i}#" for i in range(1, 8)] + [
    "#PhoneNumber#",
    "#Address#",
    "#DateOfBirth#",
    "#PassportNumber#",
    "#SSN#",
    "#CardNumber#",
    "#CarNumber#",
    "#Email#",
]


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class ConfigError(ValueError):
    """An invalid configuration: every problem found, reported together.

    Attributes:
        problems: One line per problem, each starting with the dotted YAML key path it concerns
            (``training.learning_rate: expected a float >= 0, got -1``).
        source: Where the config came from (a file path, ``"overrides"``, ...), or None.
    """

    def __init__(self, problems: list[str] | str, source: str | os.PathLike[str] | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = None if source is None else str(source)
        where = f" in {self.source}" if self.source else ""
        count = len(self.problems)
        header = f"Invalid configuration{where} ({count} problem{'s' if count != 1 else ''}):"
        super().__init__("\n".join([header, *self.problems]))

    def __reduce__(self) -> tuple[Any, ...]:
        # The default reduce would call ConfigError(message) and lose the problem list when the
        # exception crosses a process boundary (multiprocessing, Celery result backends).
        return (type(self), (self.problems, self.source))


# --------------------------------------------------------------------------------------------------
# Field declaration helper
# --------------------------------------------------------------------------------------------------


def _opt(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    most: int | None = None,
    nonempty: bool = False,
    pattern: str | None = None,
    item_pattern: str | None = None,
    check: Callable[[Any], bool] | None = None,
    expect: str | None = None,
) -> Any:
    """Declare a config field with its help text and constraints.

    Args:
        default: Default value; lists are copied per instance.
        help: One-line description, introspectable via ``dataclasses.fields(cls)[i].metadata["help"]``.
        choices: Allowed string values.
        ge, gt, le, lt: Numeric bounds.
        most: Sanity limit of a size: no real run needs more, and a value above it (``10**9`` tokens,
            a batch of a million) would only fail later, out of memory or after hours; refused with its own message.
        nonempty: Reject the empty string.
        pattern: Regex a string value must fully match.
        item_pattern: Regex every item of a list must fully match.
        check: Extra predicate on the (type-checked) value.
        expect: Human description of what is expected, replacing the generated one.
    """
    metadata = {
        "help": help,
        "choices": choices,
        "ge": ge,
        "gt": gt,
        "le": le,
        "lt": lt,
        "most": most,
        "nonempty": nonempty,
        "pattern": pattern,
        "item_pattern": item_pattern,
        "check": check,
        "expect": expect,
    }
    if isinstance(default, list):
        return field(default_factory=functools.partial(list, default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _section(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help})


_STRATEGIES = ("no", "steps", "epoch")
# Sanity limits of sizes (see ``most`` in _opt): far above what any real run uses, far below what breaks a machine.
_MOST_TOKENS = 131_072  # sequence lengths: 128 Ki tokens, beyond every seq2seq model's context
_MOST_BATCH = 65_536  # dialogues per batch
_MOST_WIDTH = 65_536  # hidden and feed-forward sizes of a scratch model
_MOST_COUNT = 1_024  # layers, heads, beams, DataLoader processes


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


def _safe_dir_name(value: str) -> bool:
    # The name becomes a directory under <artifact_root>/runs/: a separator or '..' would escape it.
    return value not in (".", "..") and "/" not in value and "\\" not in value


@dataclass
class ExperimentConfig:
    """What this run is called and how it is labelled."""

    name: str = _opt(
        "dialsum",
        "Experiment name; runs are stored under <artifact_root>/runs/<name>/<run_id>.",
        nonempty=True,
        check=_safe_dir_name,
        expect="a non-empty string usable as a directory name (no '/', '\\', '.' or '..')",
    )
    description: str = _opt("", "Free-text description, recorded with the run.")
    tags: list[str] = _opt([], "Labels recorded with the run and in the model registry.")


@dataclass
class GeneralConfig:
    """Process-wide settings: seed, where artifacts go, which device to use."""

    seed: int = _opt(42, "Random seed for Python, NumPy and torch.", ge=0)
    artifact_root: str = _opt(
        "artifacts",
        "Root of all runs, prepared datasets, sweeps and the registry; relative paths are relative to the CWD.",
        nonempty=True,
    )
    output_dir: str | None = _opt(
        None,
        "Explicit run directory; null means <artifact_root>/runs/<experiment.name>/<run_id>.",
        nonempty=True,
    )
    device: str = _opt(
        "auto",
        "Compute device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.",
        pattern=r"auto|cpu|mps|cuda(:\d+)?",
        expect="one of auto, cpu, cuda, cuda:N, mps",
    )


@dataclass
class DataConfig:
    """Where the competition CSVs are and which columns hold what."""

    train_path: str = _opt("data/train.csv", "Training CSV (fname, dialogue, summary, topic).", nonempty=True)
    val_path: str = _opt("data/dev.csv", "Validation CSV, same columns as the training CSV.", nonempty=True)
    test_path: str | None = _opt(
        "data/test.csv", "Test CSV (fname, dialogue; summary optional); null skips the test split.", nonempty=True
    )
    sample_data: bool = _opt(
        False, "Generate built-in Korean sample data into the directory of train_path when the files are missing."
    )
    sample_size: int = _opt(2000, "Number of dialogues generated when sample_data is on.", ge=10, most=1_000_000)
    id_column: str = _opt("fname", "Column holding the dialogue id.", nonempty=True)
    dialogue_column: str = _opt("dialogue", "Column holding the dialogue text.", nonempty=True)
    summary_column: str = _opt("summary", "Column holding the reference summary.", nonempty=True)
    topic_column: str = _opt("topic", "Column holding the topic (optional in the files).", nonempty=True)
    max_train_samples: int | None = _opt(None, "Use only the first N training rows (debugging); null = all.", ge=1)
    max_val_samples: int | None = _opt(None, "Use only the first N validation rows; null = all.", ge=1)


@dataclass
class ScratchModelConfig:
    """Shape of the small BART built when ``model.checkpoint`` is ``scratch`` (offline, no hub)."""

    d_model: int = _opt(128, "Hidden size; must be divisible by attention_heads.", ge=1, most=_MOST_WIDTH)
    encoder_layers: int = _opt(2, "Number of encoder layers.", ge=1, most=_MOST_COUNT)
    decoder_layers: int = _opt(2, "Number of decoder layers.", ge=1, most=_MOST_COUNT)
    attention_heads: int = _opt(4, "Attention heads in encoder and decoder.", ge=1, most=_MOST_COUNT)
    ffn_dim: int = _opt(512, "Feed-forward inner size.", ge=1, most=_MOST_WIDTH)
    vocab_size: int = _opt(4000, "Size of the tokenizer trained on the training split.", ge=100, most=1_048_576)
    max_position_embeddings: int = _opt(
        1024,
        "Longest sequence the model can encode or decode; must cover the tokenizer and generation lengths.",
        ge=1,
        most=_MOST_TOKENS,
    )
    dropout: float = _opt(0.1, "Dropout probability.", ge=0, lt=1)
    pre_layer_norm: bool = _opt(
        False,
        "Layer norm before each sublayer (mBART's layout) instead of after it (BART's). A post-norm encoder trained "
        "from scratch at learning rate 1e-3 collapsed here: every position ended up the same vector (RESULTS.md).",
    )
    init_std: float = _opt(
        0.02,
        "Standard deviation of the initial weights. BART's 0.02 suits d_model 1024; for small models use about "
        "1/sqrt(d_model) (0.0625 at 256): with 0.02 attention starts nearly uniform and a d_model-256 model had not "
        "learned to copy its input after 300 steps, with 0.0625 it did in 150 (RESULTS.md).",
        gt=0,
        lt=1,
    )


@dataclass
class ModelConfig:
    """Which model family and weights to fine-tune."""

    architecture: str = _opt("kobart", "Model family: bart, kobart, t5 or mt5.", choices=ARCHITECTURES)
    checkpoint: str = _opt(
        "gogamza/kobart-base-v2",
        "Hub id, local directory, or 'scratch' to build a small BART from model.scratch "
        "(write './scratch' for a directory of that name).",
        nonempty=True,
    )
    scratch: ScratchModelConfig = _section(ScratchModelConfig, "Model shape used when checkpoint is 'scratch'.")


@dataclass
class TokenizerConfig:
    """Tokenization lengths, input prefix and never-split tokens."""

    encoder_max_len: int = _opt(512, "Dialogue tokens kept (longer dialogues are truncated).", ge=1, most=_MOST_TOKENS)
    decoder_max_len: int = _opt(100, "Summary tokens kept as training labels.", ge=1, most=_MOST_TOKENS)
    prefix: str | None = _opt(
        None, "Text prepended to every dialogue; null derives it: 'summarize: ' for t5/mt5, '' otherwise."
    )
    special_tokens: list[str] = _opt(
        DEFAULT_SPECIAL_TOKENS,
        "Dialogue markers and PII masks added as never-split tokens that survive decoding.",
        item_pattern=r"#\w+#",
    )

    def prefix_for(self, architecture: str) -> str:
        """Return the input prefix: the configured one, else the architecture's conventional one."""
        if self.prefix is not None:
            return self.prefix
        return _T5_PREFIX if architecture in _T5_FAMILY else ""


@dataclass
class DenoisingConfig:
    """Denoising examples mixed into the training split: corrupted dialogue in, the dialogue's start out.

    A small model trained from scratch on a few thousand summaries learns the summaries' generic phrasing long
    before it learns to read the dialogue, and ends up writing one sentence for every input. Reconstructing a
    corrupted dialogue (BART's text infilling, optionally with the turns shuffled) can only be done by attending
    to the encoder, so mixing such examples in teaches the cross-attention, and the copying of names and topics,
    that the summaries then use. They need no pretrained weights: only the training dialogues themselves.
    """

    copies: float = _opt(
        0.0,
        "Denoising examples added per training dialogue: 0 = off, 0.5 = every other dialogue, 2 = two each.",
        ge=0,
        most=16,
    )
    mask_ratio: float = _opt(0.3, "Share of the dialogue's tokens hidden under <mask> spans.", ge=0, lt=1)
    mean_span: float = _opt(3.0, "Mean length of a masked span (Poisson), in tokens; one <mask> per span.", gt=0)
    shuffle_turns: bool = _opt(False, "Shuffle the order of the turns in the corrupted input.")
    target_max_len: int = _opt(
        128, "Tokens of the original dialogue to reconstruct (its beginning).", ge=8, most=_MOST_TOKENS
    )


@dataclass
class TrainingConfig:
    """Optimization, evaluation/checkpoint schedule, early stopping and memory settings."""

    num_train_epochs: float = _opt(20.0, "Epochs to train (ignored when max_steps >= 1).", gt=0)
    max_steps: int = _opt(
        -1,
        "Total optimizer steps; -1 trains for num_train_epochs.",
        check=lambda v: v == -1 or v >= 1,
        expect="an int: -1 (use num_train_epochs) or >= 1",
    )
    learning_rate: float = _opt(1e-5, "Peak learning rate.", ge=0)
    per_device_train_batch_size: int = _opt(16, "Training batch per device.", ge=1, most=_MOST_BATCH)
    per_device_eval_batch_size: int = _opt(32, "Evaluation/generation batch per device.", ge=1, most=_MOST_BATCH)
    gradient_accumulation_steps: int = _opt(1, "Batches accumulated per optimizer step.", ge=1)
    warmup_ratio: float = _opt(0.1, "Fraction of the steps spent warming up the learning rate.", ge=0, le=1)
    weight_decay: float = _opt(0.01, "AdamW weight decay.", ge=0)
    lr_scheduler_type: str = _opt(
        "cosine",
        "Learning-rate schedule after warmup.",
        choices=(
            "linear",
            "cosine",
            "cosine_with_restarts",
            "polynomial",
            "constant",
            "constant_with_warmup",
            "inverse_sqrt",
        ),
    )
    # Not checked against a list: transformers owns the optimizer names and this module must not import it.
    optim: str = _opt(
        "adamw_torch", "Optimizer name as transformers' TrainingArguments.optim spells it.", nonempty=True
    )
    max_grad_norm: float = _opt(1.0, "Gradient clipping norm (0 disables clipping).", ge=0)
    label_smoothing: float = _opt(
        0.0, "Label smoothing of the training loss (0.1 is usual for models trained from scratch).", ge=0, lt=1
    )
    eval_strategy: str = _opt("epoch", "When to evaluate: no, steps or epoch.", choices=_STRATEGIES)
    eval_steps: int | None = _opt(None, "Evaluate every N steps; required when eval_strategy is 'steps'.", ge=1)
    save_strategy: str = _opt(
        "epoch",
        "When to checkpoint: no, steps or epoch (must equal eval_strategy with load_best_model_at_end).",
        choices=_STRATEGIES,
    )
    save_steps: int | None = _opt(None, "Checkpoint every N steps; required when save_strategy is 'steps'.", ge=1)
    save_total_limit: int | None = _opt(3, "Checkpoints kept on disk (the best is always kept); null = all.", ge=1)
    logging_steps: int = _opt(10, "Log the training loss every N steps.", ge=1)
    load_best_model_at_end: bool = _opt(True, "Reload the best checkpoint (by metric_for_best_model) at the end.")
    metric_for_best_model: str = _opt(
        "rouge_combined_f1", "Evaluation metric that picks the best checkpoint.", nonempty=True
    )
    greater_is_better: bool = _opt(True, "Whether a higher metric_for_best_model is better.")
    early_stopping_patience: int | None = _opt(
        3, "Stop after N evaluations without improvement; null disables early stopping.", ge=1
    )
    early_stopping_threshold: float = _opt(0.0, "Minimum improvement that resets the patience counter.", ge=0)
    fp16: bool = _opt(False, "Mixed precision with float16 (CUDA; T5 models tend to overflow in fp16).")
    bf16: bool = _opt(False, "Mixed precision with bfloat16 (Ampere or newer GPUs, some CPUs).")
    gradient_checkpointing: bool = _opt(False, "Recompute activations in the backward pass to save memory.")
    group_by_length: bool = _opt(True, "Batch dialogues of similar length together (far less padding).")
    # Celery prefork children are daemonic and cannot start DataLoader workers: keep 0 there.
    dataloader_num_workers: int = _opt(
        0, "DataLoader worker processes (0 loads in the main process).", ge=0, most=_MOST_COUNT
    )
    max_oom_retries: int = _opt(
        3,
        "On out-of-memory, halve the per-device batch and double gradient accumulation up to this many times.",
        ge=0,
    )
    generation_num_beams_during_eval: int | None = _opt(
        None, "Beams for generation during evaluation; null uses generation.num_beams.", ge=1, most=_MOST_COUNT
    )


@dataclass
class GenerationConfig:
    """How summaries are decoded (evaluation and inference)."""

    num_beams: int = _opt(4, "Beam width (1 = greedy).", ge=1, most=_MOST_COUNT)
    max_length: int = _opt(100, "Maximum generated tokens.", ge=1, most=_MOST_TOKENS)
    min_length: int = _opt(1, "Minimum generated tokens (at most max_length).", ge=0)
    no_repeat_ngram_size: int = _opt(2, "Never repeat an n-gram of this size (0 disables).", ge=0)
    length_penalty: float = _opt(1.0, "Beam score length exponent (> 1 favours longer summaries).")
    early_stopping: bool = _opt(True, "Stop beam search when num_beams candidates are finished.")


@dataclass
class EvaluationConfig:
    """How ROUGE is computed."""

    rouge_tokenizer: str = _opt(
        "kiwi",
        "Tokenizer for ROUGE: kiwi (Korean morphemes), whitespace, default (rouge_score's; drops non-Latin text) "
        "or english (rouge_score's with the Porter stemmer, as the DialogSum papers score; drops non-Latin text).",
        choices=("kiwi", "whitespace", "default", "english"),
    )
    multi_reference: str = _opt(
        "mean",
        "How to combine each ROUGE F1 over an example's references: mean (the Korean competition's rule) or max "
        "(the best reference per metric; rewards generic summaries most).",
        choices=("mean", "max"),
    )
    collapse_min_distinct: float = _opt(
        0.5,
        "An evaluation whose share of distinct predictions is below this is flagged collapsed (one generic "
        "summary for many dialogues); a collapsed evaluation never wins best-checkpoint or sweep selection.",
        ge=0.0,
        le=1.0,
    )
    collapse_max_top_share: float = _opt(
        0.3,
        "An evaluation where one (repeated) prediction makes up more than this share of all predictions is "
        "flagged collapsed.",
        ge=0.0,
        le=1.0,
    )


@dataclass
class WandbConfig:
    """Weights & Biases logging."""

    mode: str = _opt(
        "disabled", "online, offline (local files, sync later) or disabled.", choices=("online", "offline", "disabled")
    )
    project: str = _opt("dialsum", "W&B project.", nonempty=True)
    entity: str | None = _opt(None, "W&B entity (user or team); null uses the default.", nonempty=True)
    tags: list[str] = _opt([], "W&B run tags.")
    name: str | None = _opt(None, "W&B run name; null uses the experiment name and run id.", nonempty=True)


@dataclass
class InferenceConfig:
    """Prediction on the test split."""

    batch_size: int = _opt(32, "Dialogues per generation batch.", ge=1, most=_MOST_BATCH)
    output_path: str | None = _opt(
        None, "Submission CSV (fname, summary); null means <run dir>/predictions.csv.", nonempty=True
    )


@dataclass
class PipelineConfig:
    """The whole validated configuration. Build it with :meth:`from_dict`; pass :meth:`to_dict` around."""

    experiment: ExperimentConfig = _section(ExperimentConfig, "Experiment name, description and tags.")
    general: GeneralConfig = _section(GeneralConfig, "Seed, artifact root, run directory, device.")
    data: DataConfig = _section(DataConfig, "Input CSVs and their columns.")
    model: ModelConfig = _section(ModelConfig, "Architecture and checkpoint.")
    tokenizer: TokenizerConfig = _section(TokenizerConfig, "Lengths, prefix, special tokens.")
    denoising: DenoisingConfig = _section(DenoisingConfig, "Denoising examples mixed into the training split.")
    training: TrainingConfig = _section(TrainingConfig, "Optimization and schedule.")
    generation: GenerationConfig = _section(GenerationConfig, "Decoding.")
    evaluation: EvaluationConfig = _section(EvaluationConfig, "ROUGE.")
    wandb: WandbConfig = _section(WandbConfig, "Weights & Biases.")
    inference: InferenceConfig = _section(InferenceConfig, "Test-set prediction.")

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any] | None, *, source: str | os.PathLike[str] | None = None
    ) -> PipelineConfig:
        """Validate a (possibly partial) nested dict and fill in the defaults.

        Args:
            data: Nested mapping ``{section: {key: value}}``; missing sections and keys get defaults,
                a section given as null counts as empty.
            source: Where the dict came from, named in the error header.

        Returns:
            The typed config.

        Raises:
            ConfigError: Listing every problem found (unknown keys, wrong types, out-of-range values,
                inconsistent combinations), each prefixed by its dotted key path.
        """
        problems: list[str] = []
        bad: set[str] = set()
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError([f"(top level): expected a mapping of sections, got {type_name(data)}"], source)
        config = _build(cls, data, "", problems, bad)
        problems.extend(_cross_field_problems(config, bad))
        if problems:
            raise ConfigError(problems, source)
        return config

    def to_dict(self) -> dict[str, Any]:
        """Return a plain nested dict with every section and field present (a fresh, mutable copy)."""
        return asdict(self)

    def prefix(self) -> str:
        """Return the tokenizer input prefix resolved for ``model.architecture``."""
        return self.tokenizer.prefix_for(self.model.architecture)

    def effective_train_batch_size(self) -> int:
        """Return the samples per optimizer step on one device (per-device batch x accumulation)."""
        return self.training.per_device_train_batch_size * self.training.gradient_accumulation_steps

    def is_scratch(self) -> bool:
        """Return whether the model is built from ``model.scratch`` instead of loaded from a checkpoint."""
        return self.model.checkpoint == SCRATCH_CHECKPOINT

    def eval_num_beams(self) -> int:
        """Return the beam width used for generation during evaluation."""
        beams = self.training.generation_num_beams_during_eval
        return self.generation.num_beams if beams is None else beams

    def run_dir(self, run_id: str) -> Path:
        """Return the run directory: ``general.output_dir`` or ``<artifact_root>/runs/<experiment>/<run_id>``."""
        if self.general.output_dir is not None:
            return Path(self.general.output_dir)
        return Path(self.general.artifact_root) / "runs" / self.experiment.name / run_id

    def predictions_path(self, run_id: str) -> Path:
        """Return where test predictions go: ``inference.output_path`` or ``<run dir>/predictions.csv``."""
        if self.inference.output_path is not None:
            return Path(self.inference.output_path)
        return self.run_dir(run_id) / "predictions.csv"


# --------------------------------------------------------------------------------------------------
# Validation machinery
# --------------------------------------------------------------------------------------------------

_INVALID = object()

# YAML 1.1 (PyYAML) reads `1e-5` (no dot) as a string; W&B and hand-written dicts pass strings too.
_FLOAT_STRING = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # Annotations are strings under `from __future__ import annotations`; resolve them once per class.
    return typing.get_type_hints(cls)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _split_optional(hint: Any) -> tuple[bool, Any]:
    """Return ``(accepts None, underlying type)`` for ``X`` or ``X | None``."""
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not NoneType]
        return len(args) < len(typing.get_args(hint)), args[0]
    return False, hint


def type_name(value: Any) -> str:
    """How an error message names the type of a config value ('an int', 'a mapping', 'null')."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, int):
        return "an int"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def show_value(value: Any) -> str:
    """Render a value the way it would appear in YAML, shortened, for error messages."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _describe(base: Any, meta: Mapping[str, Any], optional: bool) -> str:
    """Describe the expected value, e.g. ``a float >= 0`` or ``one of 'no', 'steps', 'epoch'``."""
    if meta.get("expect"):
        text = meta["expect"]
    elif meta.get("choices"):
        text = "one of " + ", ".join(repr(c) for c in meta["choices"])
    else:
        text = {
            int: "an int",
            float: "a float",
            bool: "a bool (true or false)",
            str: "a non-empty string" if meta.get("nonempty") else "a string",
        }.get(base, "a list of strings")
        text += _bounds_text(meta)
    return f"{text} or null" if optional else text


def _bounds_text(meta: Mapping[str, Any]) -> str:
    ge, gt, le, lt = (meta.get(k) for k in ("ge", "gt", "le", "lt"))
    low = f"[{_num(ge)}" if ge is not None else f"({_num(gt)}" if gt is not None else None
    high = f"{_num(le)}]" if le is not None else f"{_num(lt)})" if lt is not None else None
    if low and high:
        return f" in {low}, {high}"
    if low:
        return f" >= {low[1:]}" if ge is not None else f" > {low[1:]}"
    if high:
        return f" <= {high[:-1]}" if le is not None else f" < {high[:-1]}"
    return ""


def _convert(value: Any, base: Any) -> Any:
    """Return ``value`` converted to ``base``, or ``_INVALID`` when its type is wrong."""
    if base is bool:
        return value if isinstance(value, bool) else _INVALID
    if isinstance(value, bool):
        # bool is an int subclass in Python; `true` for a batch size is a mistake, not 1.
        return _INVALID
    if base is int:
        if isinstance(value, int):
            return value
        # W&B q_uniform / q_log_uniform searches yield integral floats such as 16.0 for int parameters.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return _INVALID
    if base is float:
        if isinstance(value, int | float):
            return float(value)
        # PyYAML implements YAML 1.1, which reads `1e-5` (no dot) and `3e-5` as strings, not floats.
        if isinstance(value, str) and _FLOAT_STRING.fullmatch(value.strip()):
            return float(value)
        return _INVALID
    if base is str:
        return value if isinstance(value, str) else _INVALID
    # list[str]
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return list(value)
    return _INVALID


_BOUNDS = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}


def _range_ok(value: Any, meta: Mapping[str, Any]) -> bool:
    if meta.get("choices") and value not in meta["choices"]:
        return False
    if isinstance(value, int | float):
        if value != value:  # NaN compares false with every bound
            return False
        for key, holds in _BOUNDS.items():
            if meta.get(key) is not None and not holds(value, meta[key]):
                return False
    if isinstance(value, str):
        if meta.get("nonempty") and not value.strip():
            return False
        if meta.get("pattern") and not re.fullmatch(meta["pattern"], value):
            return False
    check = meta.get("check")
    return check is None or bool(check(value))


def _check_value(raw: Any, hint: Any, meta: Mapping[str, Any], path: str) -> tuple[Any, list[str]]:
    """Type-check, coerce and range-check one leaf value. Returns ``(value, problems)``."""
    optional, base = _split_optional(hint)
    if raw is None:
        if optional:
            return None, []
        return raw, [f"{path}: expected {_describe(base, meta, optional)}, got null"]
    value = _convert(raw, base)
    if value is _INVALID:
        hint_text = ""
        if isinstance(raw, bool) and base is str:
            hint_text = "; YAML 1.1 reads unquoted yes/no/on/off as bools, so quote the value"
        return raw, [
            f"{path}: expected {_describe(base, meta, optional)}, got {show_value(raw)} ({type_name(raw)}){hint_text}"
        ]
    if not _range_ok(value, meta):
        return raw, [f"{path}: expected {_describe(base, meta, optional)}, got {show_value(raw)}"]
    if meta.get("most") is not None and value > meta["most"]:
        return raw, [
            f"{path}: expected {_describe(base, meta, optional)} and at most {meta['most']}, got {show_value(raw)};"
            " no run needs that much (it would run out of memory or never finish), lower it"
        ]
    problems = []
    if meta.get("item_pattern"):
        for i, item in enumerate(value):
            if not re.fullmatch(meta["item_pattern"], item):
                problems.append(
                    f"{path}[{i}]: expected a token like '#Name#' (matching {meta['item_pattern']}), "
                    f"got {show_value(item)}"
                )
    return value, problems


def _unknown_key_problem(path: str, key: Any, valid: list[str]) -> str:
    key_path = _join(path, key)
    kind = "section" if not path else "key"
    # A key that exists in another section is the likeliest mistake (`training.num_beams`).
    elsewhere = [p for p in flat_parameter_names().get(str(key), []) if p != key_path]
    if elsewhere:
        suggestion = " or ".join(repr(p) for p in elsewhere)
        return f"{key_path}: unknown {kind}; did you mean {suggestion}?"
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    if close:
        return f"{key_path}: unknown {kind}; did you mean {close[0]!r}?"
    return f"{key_path}: unknown {kind}; valid {kind}s here: {', '.join(valid)}"


def _build(cls: type, data: Mapping[Any, Any], path: str, problems: list[str], bad: set[str]) -> Any:
    """Build dataclass ``cls`` from ``data``, appending problems; bad values fall back to defaults."""
    hints = _hints(cls)
    names = [f.name for f in fields(cls)]
    for key in data:
        if key not in names:
            problems.append(_unknown_key_problem(path, key, names))
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        key_path, raw, hint = _join(path, f.name), data[f.name], hints[f.name]
        if is_dataclass(hint):
            if raw is None:  # an empty YAML section (`wandb:`) means "all defaults"
                continue
            if not isinstance(raw, Mapping):
                problems.append(f"{key_path}: expected a mapping of {key_path} settings, got {type_name(raw)}")
                bad.add(key_path)
                continue
            kwargs[f.name] = _build(hint, raw, key_path, problems, bad)
            continue
        value, found = _check_value(raw, hint, f.metadata, key_path)
        if found:
            problems.extend(found)
            bad.add(key_path)
        else:
            kwargs[f.name] = value
    return cls(**kwargs)


def _cross_field_problems(cfg: PipelineConfig, bad: set[str]) -> list[str]:
    """Check combinations of fields. A check is skipped when one of its fields already failed."""
    problems: list[str] = []

    def rule(paths: tuple[str, ...], broken: bool, message: str) -> None:
        if broken and not any(p in bad or p.rsplit(".", 1)[0] in bad for p in paths):
            problems.append(message)

    t, s, g, tok = cfg.training, cfg.model.scratch, cfg.generation, cfg.tokenizer
    rule(
        ("model.scratch.d_model", "model.scratch.attention_heads"),
        s.d_model % s.attention_heads != 0,
        f"model.scratch.d_model: {s.d_model} is not divisible by model.scratch.attention_heads ({s.attention_heads});"
        " pick a d_model that is a multiple of the head count",
    )
    if cfg.is_scratch():
        longest = max(tok.encoder_max_len, tok.decoder_max_len, g.max_length)
        rule(
            (
                "model.scratch.max_position_embeddings",
                "tokenizer.encoder_max_len",
                "tokenizer.decoder_max_len",
                "generation.max_length",
            ),
            s.max_position_embeddings < longest,
            f"model.scratch.max_position_embeddings: {s.max_position_embeddings} is shorter than the longest sequence"
            f" ({longest}, from tokenizer.encoder_max_len/decoder_max_len and generation.max_length);"
            " raise it or shorten those",
        )
    rule(
        ("training.fp16", "training.bf16"),
        t.fp16 and t.bf16,
        "training.fp16: fp16 and training.bf16 are both true; choose one mixed-precision mode",
    )
    rule(
        ("training.eval_strategy", "training.eval_steps"),
        t.eval_strategy == "steps" and t.eval_steps is None,
        "training.eval_steps: required (an int >= 1) when training.eval_strategy is 'steps';"
        " set it, or use eval_strategy 'epoch'",
    )
    rule(
        ("training.save_strategy", "training.save_steps"),
        t.save_strategy == "steps" and t.save_steps is None,
        "training.save_steps: required (an int >= 1) when training.save_strategy is 'steps';"
        " set it, or use save_strategy 'epoch'",
    )
    _best_model_rules(t, rule)
    rule(
        ("generation.min_length", "generation.max_length"),
        g.min_length > g.max_length,
        f"generation.min_length: {g.min_length} exceeds generation.max_length ({g.max_length}); lower it",
    )
    return problems


def _best_model_rules(t: TrainingConfig, rule: Callable[[tuple[str, ...], bool, str], None]) -> None:
    """Rules transformers enforces only when training starts; caught here before anything is enqueued."""
    evaluates = t.eval_strategy != "no"
    rule(
        ("training.load_best_model_at_end", "training.eval_strategy"),
        t.load_best_model_at_end and not evaluates,
        "training.load_best_model_at_end: needs evaluation, but training.eval_strategy is 'no';"
        " set load_best_model_at_end to false or evaluate per 'epoch' or 'steps'",
    )
    rule(
        ("training.load_best_model_at_end", "training.eval_strategy", "training.save_strategy"),
        t.load_best_model_at_end and evaluates and t.save_strategy != t.eval_strategy,
        f"training.save_strategy: must equal training.eval_strategy ({t.eval_strategy!r}) when"
        f" load_best_model_at_end is true, got {t.save_strategy!r}",
    )
    both_steps = t.eval_strategy == t.save_strategy == "steps" and t.eval_steps and t.save_steps
    rule(
        ("training.load_best_model_at_end", "training.eval_steps", "training.save_steps"),
        bool(t.load_best_model_at_end and both_steps and t.save_steps % t.eval_steps != 0),
        f"training.save_steps: must be a multiple of training.eval_steps ({t.eval_steps}) when"
        f" load_best_model_at_end is true, got {t.save_steps}",
    )
    rule(
        ("training.early_stopping_patience", "training.eval_strategy", "training.load_best_model_at_end"),
        t.early_stopping_patience is not None and (not evaluates or not t.load_best_model_at_end),
        "training.early_stopping_patience: early stopping needs evaluation and training.load_best_model_at_end true;"
        " set early_stopping_patience to null or enable both",
    )


# --------------------------------------------------------------------------------------------------
# Parameter names
# --------------------------------------------------------------------------------------------------


def _walk_leaves(cls: type, path: str = "") -> Iterator[tuple[str, str]]:
    hints = _hints(cls)
    for f in fields(cls):
        key_path = _join(path, f.name)
        if is_dataclass(hints[f.name]):
            yield from _walk_leaves(hints[f.name], key_path)
        else:
            yield f.name, key_path


def _walk_groups(cls: type, path: str = "") -> Iterator[str]:
    hints = _hints(cls)
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            key_path = _join(path, f.name)
            yield key_path
            yield from _walk_groups(hints[f.name], key_path)


@functools.cache
def _flat_names() -> dict[str, tuple[str, ...]]:
    names: dict[str, list[str]] = {}
    for name, path in _walk_leaves(PipelineConfig):
        names.setdefault(name, []).append(path)
    return {name: tuple(paths) for name, paths in names.items()}


def flat_parameter_names() -> dict[str, list[str]]:
    """Map every leaf field name to the dotted paths that end in it.

    Example: ``{"learning_rate": ["training.learning_rate"], "tags": ["experiment.tags", "wandb.tags"], ...}``.
    Names with more than one path are ambiguous as flat sweep parameters.
    """
    return {name: list(paths) for name, paths in _flat_names().items()}


@functools.cache
def _leaf_paths() -> frozenset[str]:
    return frozenset(path for _, path in _walk_leaves(PipelineConfig))


@functools.cache
def _group_paths() -> frozenset[str]:
    return frozenset(_walk_groups(PipelineConfig))


# --------------------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------------------


class StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and no timestamps.

    YAML 1.1 reads unquoted ``no``/``yes``/``on``/``off`` as booleans (so ``eval_strategy: no`` would be
    ``False``) and ``2024-05-01`` as a date (breaking experiment names). No config field wants either.
    """

    yaml_implicit_resolvers = {
        first: [
            (tag, regexp)
            for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")
        ]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


StrictYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
# YAML 1.1 reads `1e-5` (no dot) as a string; every number a user writes is meant as a number.
StrictYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def parse_yaml(text: str, source: str, error: type[ConfigError] | Any = None) -> Any:
    """Parse one YAML document with :class:`StrictYamlLoader`.

    Syntax errors (with line and column) and duplicate keys (PyYAML silently keeps the last) are
    raised as ``error(problems, source)``: ConfigError by default; the sweep loader passes its own.
    """
    error = error or ConfigError
    loader = StrictYamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        duplicates = list(_duplicate_keys(node, ""))
        if duplicates:
            raise error(duplicates, source)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark else source
        reason = exc.problem or exc.context or "invalid YAML"
        raise error([f"{where}: YAML syntax error: {reason}"], source) from None
    except yaml.YAMLError as exc:
        raise error([f"{source}: YAML error: {exc}"], source) from None
    finally:
        loader.dispose()


def _duplicate_keys(node: yaml.Node, path: str) -> Iterator[str]:
    # PyYAML silently keeps the last of two equal keys, which drops half of a duplicated section.
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            key_path = _join(path, key)
            if key is not None and key in first_line:
                yield (
                    f"{key_path}: duplicate key at line {key_node.start_mark.line + 1} (first at line"
                    f" {first_line[key]}); YAML keeps only the last one, so remove one"
                )
            elif key is not None:
                first_line[key] = key_node.start_mark.line + 1
            yield from _duplicate_keys(value_node, key_path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, f"{path}[{i}]")


# --------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------


def validate_config(
    config: Mapping[str, Any] | None, *, source: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Validate a (partial) nested config dict and return the full normalized dict.

    Raises:
        ConfigError: Listing every problem.
    """
    return PipelineConfig.from_dict(config, source=source).to_dict()


def _set_path(config: dict[str, Any], path: str, value: Any) -> str | None:
    """Set ``config[a][b][c] = value`` for ``path`` ``a.b.c``; return a problem text or None."""
    *parents, leaf = path.split(".")
    node = config
    for depth, part in enumerate(parents):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            holder = ".".join(parents[: depth + 1])
            return f"{path}: cannot set it, {holder!r} holds a value ({show_value(child)}), not a section"
        node = child
    node[leaf] = value
    return None


Overrides = Mapping[str, Any] | Sequence[str] | None
"""Config overrides: ``--set`` style strings (``["training.learning_rate=3e-5"]``) or a mapping of dotted keys to
values (``{"training.learning_rate": 3e-5}``)."""


def _override_items(overrides: Overrides) -> tuple[list[tuple[str, str, Any]], list[str]]:
    """``(key, shown, value)`` per override, and the problems found; string values are parsed as YAML."""
    if overrides is None:
        return [], []
    if isinstance(overrides, (str, bytes)):
        return [], [
            f"{overrides!r}: overrides must be a list of dotted.key=value strings or a mapping of dotted keys to "
            f"values, not one string; write [{overrides!r}]"
        ]
    if isinstance(overrides, Mapping):
        pairs = [(str(key), f"{key}={value!r}", value, False) for key, value in overrides.items()]
    else:
        pairs = []
        for override in overrides:
            key, sep, text = str(override).partition("=")
            pairs.append((key if sep else "", repr(override), text, True))
    items: list[tuple[str, str, Any]] = []
    problems: list[str] = []
    for key, shown, value, from_text in pairs:
        key = key.strip()
        if not key or any(not part.strip() for part in key.split(".")):
            problems.append(f"{shown}: malformed override; expected dotted.key=value, e.g. training.learning_rate=3e-5")
            continue
        key = ".".join(part.strip() for part in key.split("."))
        if from_text:
            try:
                value = yaml.load(value, Loader=StrictYamlLoader)  # a SafeLoader subclass: no object construction
            except yaml.YAMLError as exc:
                reason = getattr(exc, "problem", None) or type(exc).__name__
                problems.append(f"{key}: cannot parse the value of override {shown} as YAML ({reason}); quote it")
                continue
        items.append((key, shown, value))
    return items, problems


def apply_overrides(config: Mapping[str, Any] | None, overrides: Overrides) -> dict[str, Any]:
    """Apply overrides to a copy of ``config``.

    ``overrides`` is a list of ``dotted.key=value`` strings, whose values are parsed as YAML (``3e-5``, ``true``,
    ``null``, ``[a, b]``; an empty value, ``wandb.entity=``, means null), or a mapping of dotted keys to values,
    which are used as given. Types are checked later by validation.

    Returns:
        A new dict; ``config`` is not modified.

    Raises:
        ConfigError: Listing every malformed override.
    """
    result: dict[str, Any] = copy.deepcopy(dict(config or {}))
    items, problems = _override_items(overrides)
    for key, shown, value in items:
        problem = _set_path(result, key, copy.deepcopy(value))
        if problem:
            problems.append(f"{problem} (override {shown})")
    if problems:
        raise ConfigError(problems, "overrides")
    return result


def load_config(path: str | os.PathLike[str], overrides: Overrides = None) -> dict[str, Any]:
    """Read a YAML config, apply overrides, validate, and return the full nested dict with defaults.

    An empty file is a valid config made entirely of defaults.

    Raises:
        FileNotFoundError: The file does not exist.
        ConfigError: YAML syntax error (with file and line), a top level that is not a mapping,
            a malformed override, or any validation problem.
    """
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(_missing_file_message(file))
    source = str(path)
    data = parse_yaml(file.read_text(encoding="utf-8"), source)
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(
            [f"(top level): expected a mapping of sections (model:, training:, ...), got {type_name(data)}"], source
        )
    data = apply_overrides(data, overrides)
    return validate_config(data, source=source)


def _missing_file_message(file: Path) -> str:
    where = "" if file.is_absolute() else f" (relative to {os.getcwd()})"
    message = f"config file not found: {str(file)!r}{where}"
    if file.parent.is_dir():
        siblings = [p.name for p in file.parent.iterdir() if p.suffix in (".yaml", ".yml")]
        close = difflib.get_close_matches(file.name, siblings, n=1, cutoff=0.5)
        if close:
            message += f"; did you mean {str(file.parent / close[0])!r}?"
    return message + " Check the path, then check the file with `dialsum validate-config <file>`."


def save_config(config: Mapping[str, Any] | PipelineConfig, path: str | os.PathLike[str]) -> Path:
    """Write ``config`` as YAML atomically (``pipeline.artifacts.atomic_write_text``).

    The dict is written as given (not validated), in its own key order, with Korean text unescaped.

    Returns:
        The path written.
    """
    data = config.to_dict() if isinstance(config, PipelineConfig) else dict(config)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
    target = atomic_write_text(path, text)
    return target


def _iter_sweep_params(params: Mapping[Any, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yield ``(name, value)``, flattening nested dicts given for sections (``{"training": {...}}``)."""
    for name, value in params.items():
        full = _join(prefix, name)
        if isinstance(value, Mapping) and full in _group_paths():
            yield from _iter_sweep_params(value, full)
        else:
            yield full, value


def _resolve_param(name: str) -> tuple[str | None, str | None]:
    """Return ``(dotted path, None)`` for a sweep parameter name, or ``(None, problem)``."""
    if name in _leaf_paths():
        return name, None
    if name in _group_paths():
        return None, f"{name}: is a section; give a mapping of its parameters or use dotted names like '{name}.<key>'"
    candidates = _flat_names().get(name, ())
    if "." not in name and len(candidates) == 1:
        return candidates[0], None
    if len(candidates) > 1:
        listed = ", ".join(candidates)
        return None, f"{name}: ambiguous sweep parameter, it matches {listed}; use the dotted name"
    pool = sorted(_leaf_paths()) if "." in name else sorted(_flat_names())
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else "use a dotted name like 'training.learning_rate'"
    return None, f"{name}: unknown sweep parameter; {hint}"


def merge_sweep_params(config: Mapping[str, Any] | None, params: Mapping[str, Any]) -> dict[str, Any]:
    """Merge sweep parameters into a copy of ``config`` and validate the result.

    Parameter names may be dotted (``training.learning_rate``), flat leaf names that exist in exactly
    one section (``learning_rate``), or nested dicts (``{"training": {"learning_rate": 1e-4}}``).

    Returns:
        The full, validated nested dict.

    Raises:
        ConfigError: Listing every unknown, ambiguous or repeated name and every invalid value.
    """
    merged: dict[str, Any] = copy.deepcopy(dict(config or {}))
    problems: list[str] = []
    given: dict[str, str] = {}
    for name, value in _iter_sweep_params(params):
        path, problem = _resolve_param(name)
        if problem:
            problems.append(problem)
            continue
        if path in given:
            problems.append(f"{path}: set twice, by sweep parameters {given[path]!r} and {name!r}; keep one")
            continue
        given[path] = name
        problem = _set_path(merged, path, value)
        if problem:
            problems.append(problem)
    try:
        result = validate_config(merged)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems, "sweep parameters")
    return result


class ConfigManager:
    """Loads, validates, saves and merges configs as plain nested dicts (the trainer API's entry point)."""

    def load_config(self, path: str | os.PathLike[str], overrides: Overrides = None) -> dict[str, Any]:
        """Read a YAML file, apply overrides (``--set`` strings or a mapping), validate; see :func:`load_config`."""
        return load_config(path, overrides)

    def validate(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Validate a (partial) config dict and return the full normalized dict; see :func:`validate_config`."""
        return validate_config(config)

    def save_config(self, config: Mapping[str, Any] | PipelineConfig, path: str | os.PathLike[str]) -> Path:
        """Write a config as YAML atomically; see :func:`save_config`."""
        return save_config(config, path)

    def apply_overrides(self, config: Mapping[str, Any], overrides: Overrides) -> dict[str, Any]:
        """Return a copy of ``config`` with overrides applied (not validated); see :func:`apply_overrides`."""
        return apply_overrides(config, overrides)

    def merge_sweep_params(self, config: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        """Merge sweep parameters and validate; see :func:`merge_sweep_params`."""
        return merge_sweep_params(config, params)
