"""Load a model and tokenizer from a hub id or a local directory, or build a small one from scratch.

``model.checkpoint: scratch`` is how this project runs with no model hub: a small BART is built
from the sizes in ``model.scratch`` and a byte-level BPE tokenizer is trained on the training
split. Either way, dialogue markers (``#Person1#``) and PII masks (``#PhoneNumber#``) are added
as tokens that are never split and, being non-special, survive ``decode(skip_special_tokens=True)``
(registered as *special* tokens they vanish from predictions and distort ROUGE).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.artifacts import atomic_directory, content_hash, file_sha256

logger = logging.getLogger(__name__)

SCRATCH = "scratch"
# BART's conventional special tokens and ids; the scratch tokenizer reserves them first.
_SCRATCH_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
_SCRATCH_TOKENIZER_VERSION = 1


class ModelLoadError(RuntimeError):
    """The model or tokenizer could not be loaded; the message says what to use instead."""


def resolve_device(name: str) -> Any:
    """Turn ``general.device`` (auto | cpu | cuda | cuda:N | mps) into a ``torch.device``."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"general.device is {name!r} but CUDA is not available here; use 'cpu' or 'auto'")
    return torch.device(name)


def add_marker_tokens(tokenizer: Any, markers: list[str]) -> int:
    """Add dialogue markers and PII masks as unsplittable, non-special tokens.

    Returns:
        How many tokens were new to the tokenizer.
    """
    from transformers import AddedToken

    vocab = tokenizer.get_vocab()
    new = [AddedToken(marker, normalized=False, special=False) for marker in markers if marker not in vocab]
    return tokenizer.add_tokens(new) if new else 0


def _training_texts(train_path: Path) -> list[str]:
    """Dialogues and summaries of the training split: the scratch tokenizer's corpus."""
    from pipeline.data import read_competition_csv

    table = read_competition_csv(train_path, require_summary=True)
    return table.dialogues + [reference for references in table.references for reference in references]


def train_scratch_tokenizer(train_path: str | Path, vocab_size: int, markers: list[str]) -> Any:
    """Train a byte-level BPE tokenizer (BART's scheme) on the training split.

    Byte-level BPE never produces ``<unk>``: Korean syllables outside the learned merges fall back
    to bytes, so no dialogue in the test split is unrepresentable.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SCRATCH_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_training_texts(Path(train_path)), trainer)
    bos, eos = backend.token_to_id("<s>"), backend.token_to_id("</s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    add_marker_tokens(tokenizer, markers)
    return tokenizer


def scratch_tokenizer_dir(
    artifact_root: str | Path, train_path: str | Path, vocab_size: int, markers: list[str]
) -> Path:
    """Where the scratch tokenizer for these inputs is cached: training it again would give the same one."""
    key = content_hash(
        {"train": file_sha256(train_path), "vocab": vocab_size, "markers": markers, "v": _SCRATCH_TOKENIZER_VERSION}
    )
    return Path(artifact_root) / "tokenizers" / key


def load_scratch_tokenizer(
    artifact_root: str | Path, train_path: str | Path, vocab_size: int, markers: list[str]
) -> Any:
    """Load the cached scratch tokenizer for this training split, training and caching it first if needed."""
    from transformers import AutoTokenizer

    train_path = Path(train_path)
    if not train_path.is_file():
        raise FileNotFoundError(
            f"model.checkpoint is 'scratch', which trains a tokenizer on the training split, "
            f"but data.train_path {train_path} does not exist"
        )
    directory = scratch_tokenizer_dir(artifact_root, train_path, vocab_size, markers)
    if not (directory / "tokenizer_config.json").is_file():
        logger.info("training a %d-token BPE tokenizer on %s", vocab_size, train_path)
        with atomic_directory(directory) as tmp:
            train_scratch_tokenizer(train_path, vocab_size, markers).save_pretrained(tmp)
    return AutoTokenizer.from_pretrained(str(directory))


def build_scratch_model(tokenizer: Any, scratch: dict[str, Any], max_positions: int) -> Any:
    """A small BART sized by ``model.scratch``, with embeddings for every token of ``tokenizer``.

    With ``pre_layer_norm`` it is an mBART: the same BART, with each sublayer's layer norm moved in front of it
    and one more at the end of the encoder and decoder. Why it is offered (RESULTS.md): a 3-layer post-norm
    encoder trained from scratch on DialogSum at learning rate 1e-3 had, after 750 steps, shrunk the spread between
    its positions (per-dimension std across positions) from 0.95 after the embeddings to 0.0002 at its output: one
    vector for every input. mBART shifts labels into decoder inputs by moving the final ``</s>`` to the front,
    which with BART-style labels (``<s> ... </s>``) gives exactly BART's ``decoder_start_token_id=</s>``.
    """
    from transformers import BartConfig, BartForConditionalGeneration, MBartConfig, MBartForConditionalGeneration

    config_class, model_class = (
        (MBartConfig, MBartForConditionalGeneration)
        if scratch.get("pre_layer_norm")
        else (BartConfig, BartForConditionalGeneration)
    )
    config = config_class(
        vocab_size=len(tokenizer),
        d_model=scratch["d_model"],
        encoder_layers=scratch["encoder_layers"],
        decoder_layers=scratch["decoder_layers"],
        encoder_attention_heads=scratch["attention_heads"],
        decoder_attention_heads=scratch["attention_heads"],
        encoder_ffn_dim=scratch["ffn_dim"],
        decoder_ffn_dim=scratch["ffn_dim"],
        max_position_embeddings=max(scratch["max_position_embeddings"], max_positions),
        dropout=scratch["dropout"],
        init_std=scratch.get("init_std", 0.02),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # BART starts decoding from </s>, as the pretrained checkpoints do.
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
    )
    return model_class(config)


def load_pretrained(checkpoint: str) -> tuple[Any, Any]:
    """Load tokenizer and model from a local ``save_pretrained`` directory or a hub id.

    Raises:
        ModelLoadError: The directory is not a model, or the hub cannot be reached and the model is
            not cached; the message says how to use a local directory or ``scratch``.
    """
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    local = Path(checkpoint).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise ModelLoadError(
            f"model.checkpoint {checkpoint!r} is a directory without config.json; point it at a directory "
            f"written by save_pretrained (for example a run's model/ directory)"
        )
    source = str(local) if local.exists() else checkpoint
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSeq2SeqLM.from_pretrained(source)
    except OSError as error:
        raise ModelLoadError(
            f"could not load model.checkpoint {checkpoint!r}: {error}\n"
            f"No model hub is reachable from this machine, or the id is wrong. Either download the model "
            f"elsewhere (save_pretrained) and set model.checkpoint to that local directory, or set "
            f"model.checkpoint: scratch to train a small model from nothing (see config/tiny.yaml)."
        ) from error
    return tokenizer, model


def load_model_and_tokenizer(
    config: dict[str, Any], artifact_root: str | Path, train_path: str | Path
) -> tuple[Any, Any]:
    """The tokenizer and model the config asks for, with marker tokens added and embeddings resized.

    Args:
        config: The validated pipeline config (nested dict).
        artifact_root: Where a scratch tokenizer is cached.
        train_path: The training split, used to train a scratch tokenizer.

    Returns:
        ``(tokenizer, model)``.
    """
    model_config = config["model"]
    markers = list(config["tokenizer"]["special_tokens"])
    if model_config["checkpoint"] == SCRATCH:
        scratch = model_config["scratch"]
        tokenizer = load_scratch_tokenizer(artifact_root, train_path, scratch["vocab_size"], markers)
        max_positions = max(config["tokenizer"]["encoder_max_len"], config["tokenizer"]["decoder_max_len"]) + 2
        return tokenizer, build_scratch_model(tokenizer, scratch, max_positions)

    tokenizer, model = load_pretrained(model_config["checkpoint"])
    if add_marker_tokens(tokenizer, markers) or len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return tokenizer, model


def count_parameters(model: Any) -> tuple[int, int]:
    """``(total, trainable)`` parameter counts."""
    total = sum(parameter.numel() for parameter in model.parameters())
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    return total, trainable
