"""Competition CSV loading and validation, tokenization, and the prepared-dataset cache.

The competition format is a CSV with ``fname,dialogue,summary,topic``; test files have no
``summary``; multi-reference files carry ``summary1..summaryN`` instead. Every problem with a file
is reported with the file, the row and the column, because a user staring at a 12,000-row CSV
needs to know where to look.

Prepared (tokenized) splits are cached under ``<root>/datasets/<fingerprint>/``: the fingerprint
covers the input files' bytes, the preprocessing settings and the tokenizer, so a second
``prepare_data`` with the same inputs loads from disk instead of tokenizing again.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.artifacts import content_hash, datasets_dir, file_lock, file_sha256, output_errors

logger = logging.getLogger(__name__)

# Bump when the layout of prepared datasets changes, so old caches are not reused.
PREPARE_VERSION = 1
PREPARE_META_FILE = "prepare_meta.json"
_MULTI_REF_RE = re.compile(r"^summary(\d+)$")
# The config key that names each split's file.
SPLIT_CONFIG_KEYS = {"train": "data.train_path", "validation": "data.val_path", "test": "data.test_path"}


class DataError(ValueError):
    """A data file that cannot be used; the message names the file, row and column."""


@dataclass
class DialogueTable:
    """The rows of one competition CSV, column by column.

    Attributes:
        path: The file the rows came from.
        fnames: The ``fname`` of each row (unique).
        dialogues: The dialogue text, turns separated by newlines.
        references: One list of reference summaries per row, or None for an unlabeled (test) file.
        topics: The topic of each row ("" where the file has none).
    """

    path: Path
    fnames: list[str]
    dialogues: list[str]
    references: list[list[str]] | None
    topics: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.fnames)


@dataclass
class Columns:
    """Column names of the competition CSV (the ``data`` section of the config)."""

    id: str = "fname"
    dialogue: str = "dialogue"
    summary: str = "summary"
    topic: str = "topic"

    @classmethod
    def from_config(cls, data_config: dict[str, Any]) -> Columns:
        return cls(
            id=data_config.get("id_column", "fname"),
            dialogue=data_config.get("dialogue_column", "dialogue"),
            summary=data_config.get("summary_column", "summary"),
            topic=data_config.get("topic_column", "topic"),
        )


def _decode(path: Path) -> str:
    """Read ``path`` as UTF-8 (a BOM is allowed), naming the line of the first bad byte."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line} (byte {error.start}) is not valid UTF-8; re-save the file as UTF-8 "
            f"(Korean files saved by Excel are often CP949: iconv -f cp949 -t utf-8 {path.name} > fixed.csv)"
        ) from None


def _reference_columns(header: list[str], columns: Columns) -> list[str]:
    """The reference column(s): ``summary``, or ``summary1..summaryN`` in numeric order."""
    if columns.summary in header:
        return [columns.summary]
    numbered = [(int(m.group(1)), name) for name in header if (m := _MULTI_REF_RE.match(name))]
    return [name for _, name in sorted(numbered)]


def read_competition_csv(
    path: str | Path, columns: Columns | None = None, require_summary: bool = False
) -> DialogueTable:
    """Load and validate one competition CSV.

    Args:
        path: The CSV file.
        columns: Column names; the competition's defaults when None.
        require_summary: True for training and validation files: a missing summary column or an
            empty summary is then an error. Test files may have no summary column.

    Returns:
        The validated rows. With several reference columns (``summary1..summaryN``) each row keeps
        all its non-empty references; training uses the first.

    Raises:
        FileNotFoundError: The file does not exist.
        DataError: The file is empty, not UTF-8, lacks a column, or has an empty dialogue, an empty
            summary, a duplicate fname or a malformed row; the message names file, row and column.
    """
    columns = columns or Columns()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path} (check data.*_path in the config, or pass the path)")
    text = _decode(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty; expected a header line '{columns.id},{columns.dialogue},...'")

    reader = csv.reader(io.StringIO(text, newline=""))
    header = [name.strip() for name in next(reader)]
    reference_columns = _reference_columns(header, columns)
    missing = [name for name in (columns.id, columns.dialogue) if name not in header]
    if require_summary and not reference_columns:
        missing.append(columns.summary)
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(repr(m) for m in missing)}; the header has {header}. "
            f"Rename the column or set data.*_column in the config"
        )

    index = {name: position for position, name in enumerate(header)}
    table = DialogueTable(path=path, fnames=[], dialogues=[], references=[] if reference_columns else None)
    first_row_of: dict[str, int] = {}
    for row_number, row in enumerate(reader, start=1):
        if not any(cell.strip() for cell in row):
            continue  # blank lines at the end of hand-edited files
        if len(row) != len(header):
            hint = "a dialogue with commas or newlines must be quoted"
            if len(row) < len(header) and any("\n" in cell for cell in row):
                # An unclosed quote swallows the rest of the file into one field.
                hint = "a quote opened in this row is never closed, so the lines after it were read into one field"
            raise DataError(f"{path}, row {row_number}: {len(row)} fields but the header has {len(header)}; {hint}")
        fname = row[index[columns.id]].strip()
        dialogue = row[index[columns.dialogue]].strip()
        if not fname:
            raise DataError(f"{path}, row {row_number}, column '{columns.id}': empty id; every row needs a fname")
        if fname in first_row_of:
            raise DataError(
                f"{path}, row {row_number}, column '{columns.id}': duplicate fname {fname!r} "
                f"(first at row {first_row_of[fname]}); fnames must be unique"
            )
        first_row_of[fname] = row_number
        if not dialogue:
            raise DataError(
                f"{path}, row {row_number} (fname {fname!r}), column '{columns.dialogue}': empty dialogue; "
                f"fill it or delete the row"
            )
        table.fnames.append(fname)
        table.dialogues.append(dialogue)
        table.topics.append(row[index[columns.topic]].strip() if columns.topic in index else "")
        if reference_columns:
            references = [row[index[name]].strip() for name in reference_columns if row[index[name]].strip()]
            if not references and require_summary:
                raise DataError(
                    f"{path}, row {row_number} (fname {fname!r}), column '{reference_columns[0]}': empty summary; "
                    f"fill it or delete the row"
                )
            table.references.append(references)
    if not table.fnames:
        raise DataError(f"{path}: the file has a header but no rows")
    return table


def check_data_files(split_files: dict[str, str | Path], columns: Columns | None = None) -> None:
    """Read and validate every split's file, so that a bad one is refused before anything is written.

    Reading a CSV costs little next to tokenizing it; the trainer calls this before it trains a
    scratch tokenizer or fills the dataset cache, so a bad file leaves the artifact root as it was.

    Args:
        split_files: ``{"train": path, "validation": path, "test": path}``; any subset. Every split
            but ``test`` must have summaries.
        columns: CSV column names.

    Raises:
        FileNotFoundError: A file does not exist; the message names it and its config key.
        DataError: A file is malformed; the message names the file, row and column.
    """
    for split, path in split_files.items():
        if not Path(path).is_file():
            key = SPLIT_CONFIG_KEYS.get(split, f"the {split} split's path")
            raise FileNotFoundError(f"{split} data file {path} does not exist; fix {key} in the config")
        read_competition_csv(path, columns, require_summary=split != "test")


def first_n(table: DialogueTable, limit: int | None) -> DialogueTable:
    """The first ``limit`` rows of ``table`` (all of them when ``limit`` is None)."""
    if limit is None or limit >= len(table):
        return table
    return DialogueTable(
        path=table.path,
        fnames=table.fnames[:limit],
        dialogues=table.dialogues[:limit],
        references=None if table.references is None else table.references[:limit],
        topics=table.topics[:limit],
    )


def _truncate(ids: list[int], max_len: int, keep_last: bool) -> list[int]:
    """Cut ``ids`` to ``max_len``, keeping a trailing special token (``</s>``) when there is one."""
    if len(ids) <= max_len:
        return ids
    return ids[: max_len - 1] + ids[-1:] if keep_last else ids[:max_len]


def _ends_with_special(tokenizer: Any) -> bool:
    """Whether the tokenizer appends a special token (BART, T5: ``</s>``) that truncation must keep."""
    probe = tokenizer("a")["input_ids"]
    return bool(probe) and probe[-1] in set(tokenizer.all_special_ids)


def tokenize_table(
    table: DialogueTable, tokenizer: Any, prefix: str, encoder_max_len: int, decoder_max_len: int
) -> tuple[dict[str, list], dict[str, int]]:
    """Tokenize a table into model inputs, labels and the text columns used for decoding and ROUGE.

    The dialogue keeps its turn structure (newline-separated ``#PersonN#:`` turns); the model's
    prefix (``summarize: `` for T5) is prepended. Labels are left unpadded: the collator pads
    them with -100 so padding never counts in the loss.

    Returns:
        ``(columns, stats)``: the dataset columns and counts of truncated dialogues and summaries.
    """
    keep_last = _ends_with_special(tokenizer)
    encoded = tokenizer([prefix + dialogue for dialogue in table.dialogues])["input_ids"]
    truncated_inputs = sum(len(ids) > encoder_max_len for ids in encoded)
    input_ids = [_truncate(ids, encoder_max_len, keep_last) for ids in encoded]
    columns: dict[str, list] = {
        "fname": list(table.fnames),
        "input": list(table.dialogues),
        "input_ids": input_ids,
        "attention_mask": [[1] * len(ids) for ids in input_ids],
        "length": [len(ids) for ids in input_ids],
    }
    stats = {"rows": len(table), "truncated_dialogues": truncated_inputs, "truncated_summaries": 0}
    if table.references is not None:
        labels = tokenizer(text_target=[references[0] for references in table.references])["input_ids"]
        stats["truncated_summaries"] = sum(len(ids) > decoder_max_len for ids in labels)
        columns["labels"] = [_truncate(ids, decoder_max_len, keep_last) for ids in labels]
        columns["references"] = [list(references) for references in table.references]
    return columns, stats


def _special_ends(ids: list[int], special_ids: set[int]) -> tuple[list[int], list[int], list[int]]:
    """Split ``ids`` into leading special tokens (``<s>``), the text, and trailing ones (``</s>``)."""
    start, end = 0, len(ids)
    while start < end and ids[start] in special_ids:
        start += 1
    while end > start and ids[end - 1] in special_ids:
        end -= 1
    return ids[:start], ids[start:end], ids[end:]


def infill(ids: list[int], mask_id: int, mask_ratio: float, mean_span: float, rng: Any) -> list[int]:
    """BART's text infilling: hide about ``mask_ratio`` of the tokens under spans, each span one ``mask_id``.

    Span lengths are Poisson(``mean_span``); a zero-length span inserts a ``<mask>`` where nothing is missing,
    as in BART, so the model cannot count masks to know how much to write.

    Args:
        ids: The text's token ids, without special tokens at the ends.
        mask_id: The tokenizer's mask token id.
        mask_ratio: Share of the tokens to hide.
        mean_span: Mean span length.
        rng: A ``numpy.random.Generator``.
    """
    budget = round(len(ids) * mask_ratio)
    masked = [False] * len(ids)
    inserts: set[int] = set()
    hidden = 0
    # Bounded: a span can land on hidden tokens, so a few extra draws may be needed, never unboundedly many.
    for _ in range(4 * len(ids)):
        if hidden >= budget:
            break
        start, length = int(rng.integers(len(ids))), int(rng.poisson(mean_span))
        if length == 0:
            inserts.add(start)
            continue
        for index in range(start, min(start + length, len(ids))):
            hidden += not masked[index]
            masked[index] = True
    out: list[int] = []
    for index, token in enumerate(ids):
        if index in inserts and not masked[index] and (not out or out[-1] != mask_id):
            out.append(mask_id)
        if not masked[index]:
            out.append(token)
        elif not out or out[-1] != mask_id:
            out.append(mask_id)
    return out


def denoising_columns(
    table: DialogueTable, tokenizer: Any, prefix: str, encoder_max_len: int, settings: dict[str, Any], seed: int
) -> dict[str, list]:
    """Denoising training rows built from the table's dialogues (see ``DenoisingConfig``).

    Each row's input is a corrupted dialogue (turns optionally shuffled, then spans masked) and its label the
    first ``target_max_len`` tokens of the original. ``copies`` rows per dialogue (a fraction picks a seeded
    subset), in the columns :func:`tokenize_table` writes, so the rows mix into the training split.

    Raises:
        ValueError: The tokenizer has no mask token (T5's sentinel scheme is not supported).
    """
    import numpy as np

    if tokenizer.mask_token_id is None:
        raise ValueError(
            "denoising.copies > 0 needs a tokenizer with a mask token (BART, KoBART, scratch have <mask>); "
            "set denoising.copies: 0 for this model"
        )
    rng = np.random.default_rng(seed)
    whole, fraction = divmod(settings["copies"], 1)
    count = len(table) * int(whole) + round(len(table) * fraction)
    sources = [index for _ in range(int(whole)) for index in range(len(table))]
    sources += sorted(rng.choice(len(table), size=count - len(sources), replace=False).tolist())
    keep_last = _ends_with_special(tokenizer)
    special_ids = set(tokenizer.all_special_ids)
    texts = []
    for index in sources:
        turns = table.dialogues[index].split("\n")
        if settings["shuffle_turns"]:
            turns = [turns[i] for i in rng.permutation(len(turns))]
        texts.append(prefix + "\n".join(turns))
    noisy = []
    for ids in tokenizer(texts)["input_ids"]:
        head, body, tail = _special_ends(ids, special_ids)
        corrupted = head + infill(body, tokenizer.mask_token_id, settings["mask_ratio"], settings["mean_span"], rng)
        noisy.append(_truncate(corrupted + tail, encoder_max_len, keep_last))
    originals = tokenizer(text_target=[table.dialogues[index] for index in sources])["input_ids"]
    return {
        "fname": [f"{table.fnames[index]}#denoise{number}" for number, index in enumerate(sources)],
        "input": texts,
        "input_ids": noisy,
        "attention_mask": [[1] * len(ids) for ids in noisy],
        "length": [len(ids) for ids in noisy],
        "labels": [_truncate(ids, settings["target_max_len"], keep_last) for ids in originals],
        "references": [[table.dialogues[index]] for index in sources],
    }


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything that decides how the tokenizer splits text (vocab, merges, added tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    serialized = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return content_hash([type(tokenizer).__name__, serialized, tokenizer.all_special_tokens])


def dataset_fingerprint(split_files: dict[str, Path], preprocessing: dict[str, Any], tokenizer_hash: str) -> str:
    """The cache key of a prepared dataset: input bytes + preprocessing settings + tokenizer."""
    files = {split: file_sha256(path) for split, path in sorted(split_files.items())}
    return content_hash(
        {"version": PREPARE_VERSION, "files": files, "preprocessing": preprocessing, "tokenizer": tokenizer_hash}
    )


@dataclass
class PreparedData:
    """Result of :func:`prepare_datasets`.

    Attributes:
        datasets: The tokenized ``DatasetDict`` (splits ``train``, ``validation``, ``test`` as given).
        directory: Where it is cached: ``<root>/datasets/<fingerprint>``.
        fingerprint: The cache key.
        cache_hit: True when it was loaded from disk instead of tokenized.
        stats: Per split: rows, truncated dialogues and summaries.
    """

    datasets: Any
    directory: Path
    fingerprint: str
    cache_hit: bool
    stats: dict[str, dict[str, int]]


def prepare_datasets(
    split_files: dict[str, str | Path],
    tokenizer: Any,
    *,
    artifact_root: str | Path,
    prefix: str,
    encoder_max_len: int,
    decoder_max_len: int,
    columns: Columns | None = None,
    max_samples: dict[str, int | None] | None = None,
    denoising: dict[str, Any] | None = None,
    seed: int = 0,
) -> PreparedData:
    """Load, validate, tokenize and cache the given splits (or load them from the cache).

    Args:
        split_files: ``{"train": path, "validation": path, "test": path}``; any subset.
        tokenizer: The model's tokenizer.
        artifact_root: The artifact root; the cache lives in its ``datasets/`` directory.
        prefix: Text prepended to every dialogue (``summarize: `` for T5, "" for BART).
        encoder_max_len: Dialogues longer than this many tokens are truncated.
        decoder_max_len: Summaries longer than this many tokens are truncated.
        columns: CSV column names.
        max_samples: Optional per-split row limits (the first N rows are kept).
        denoising: The ``denoising`` config section: with ``copies > 0`` the training split gets denoising rows
            (:func:`denoising_columns`) mixed in.
        seed: Seeds the corruption of the denoising rows.

    Returns:
        The prepared data, its cache directory and truncation statistics.
    """
    columns = columns or Columns()
    max_samples = max_samples or {}
    paths = {split: Path(path) for split, path in split_files.items() if path is not None}
    for split, path in paths.items():
        if not path.is_file():
            raise FileNotFoundError(f"{split} data file not found: {path} (check data.*_path in the config)")
    preprocessing = {
        "prefix": prefix,
        "encoder_max_len": encoder_max_len,
        "decoder_max_len": decoder_max_len,
        "columns": columns.__dict__,
        "max_samples": {split: max_samples.get(split) for split in paths},
    }
    if denoising and denoising["copies"] > 0 and "train" in paths:
        # Only when on, so that the fingerprints of caches prepared without denoising stay as they were.
        preprocessing["denoising"] = {**denoising, "seed": seed}
    fingerprint = dataset_fingerprint(paths, preprocessing, tokenizer_fingerprint(tokenizer))
    directory = datasets_dir(artifact_root) / fingerprint
    # Workers preparing the same fingerprint at once (trials of a sweep) queue here: the first
    # tokenizes, the others find its result.
    with file_lock(directory.parent / f".{fingerprint}.lock"):
        return _load_or_build(paths, tokenizer, directory, fingerprint, preprocessing, columns, max_samples)


def _load_or_build(
    paths: dict[str, Path],
    tokenizer: Any,
    directory: Path,
    fingerprint: str,
    preprocessing: dict[str, Any],
    columns: Columns,
    max_samples: dict[str, int | None],
) -> PreparedData:
    from datasets import Dataset, DatasetDict, load_from_disk

    encoder_max_len, decoder_max_len = preprocessing["encoder_max_len"], preprocessing["decoder_max_len"]
    meta_path = directory / PREPARE_META_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        logger.info("prepared dataset cache hit: %s", directory)
        return PreparedData(load_from_disk(str(directory)), directory, fingerprint, True, meta["stats"])

    splits, stats = {}, {}
    for split, path in paths.items():
        table = first_n(read_competition_csv(path, columns, require_summary=split != "test"), max_samples.get(split))
        split_columns, stats[split] = tokenize_table(
            table, tokenizer, preprocessing["prefix"], encoder_max_len, decoder_max_len
        )
        if split == "train" and "denoising" in preprocessing:
            settings = preprocessing["denoising"]
            extra = denoising_columns(
                table, tokenizer, preprocessing["prefix"], encoder_max_len, settings, settings["seed"]
            )
            split_columns = {key: values + extra[key] for key, values in split_columns.items()}
            stats[split]["denoising_rows"] = len(extra["fname"])
        dataset = Dataset.from_dict(split_columns)
        if split == "validation":
            # Longest first: evaluation batches are then dense (little padding) and an
            # out-of-memory shows up in the first batch rather than at the end of an epoch.
            dataset = dataset.sort("length", reverse=True)
        splits[split] = dataset
        if stats[split]["truncated_dialogues"] or stats[split]["truncated_summaries"]:
            logger.warning(
                "%s: truncated %d of %d dialogues to %d tokens and %d summaries to %d tokens",
                path,
                stats[split]["truncated_dialogues"],
                stats[split]["rows"],
                encoder_max_len,
                stats[split]["truncated_summaries"],
                decoder_max_len,
            )
    dataset_dict = DatasetDict(splits)
    _save_once(
        dataset_dict,
        directory,
        {
            "fingerprint": fingerprint,
            "files": {s: str(p) for s, p in paths.items()},
            "preprocessing": preprocessing,
            "stats": stats,
            "created": time.time(),
        },
    )
    return PreparedData(load_from_disk(str(directory)), directory, fingerprint, False, stats)


def _save_once(dataset_dict: Any, directory: Path, meta: dict[str, Any]) -> None:
    """Write the prepared dataset under a temporary name and rename it into place.

    Two workers preparing the same fingerprint at once both build it; the first rename wins and
    the second copy is discarded, so readers never see a partial directory.
    """
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        # A full or read-only disk is reported naming the directory (before the partial copy is removed).
        with output_errors(directory.parent):
            directory.parent.mkdir(parents=True, exist_ok=True)
            dataset_dict.save_to_disk(str(tmp))
            (tmp / PREPARE_META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
        try:
            os.rename(tmp, directory)
        except OSError:
            if not (directory / PREPARE_META_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
