"""LEAD-n: the model-free baseline reported beside every ROUGE score.

LEAD-3 (the first three utterances of the dialogue, speaker tags removed) is the standard extractive baseline of
the DialogSum and SAMSum papers. A model that does not beat it on ROUGE-2 has not learned to summarize, whatever
its ROUGE-1: one generic sentence for every dialogue can score a higher ROUGE-1 than LEAD-3 and a far lower
ROUGE-2. LEAD-n depends only on the split, so its scores are computed once per split, tokenizer and rule
(:func:`lead_rouge` keeps them) and evaluations during training do not score it again.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from pipeline.metrics import DEFAULT_MULTI_REFERENCE, compute_rouge

LEAD_N = 3
SCORE_KEYS = ("rouge1", "rouge2", "rougeL", "rouge_combined_f1")
_SPEAKER_TAG = re.compile(r"^\s*#[^#\s]+#\s*:\s*")
"""A turn's leading speaker tag, ``#Person1#:``; a PII mask such as ``#Address#`` inside a sentence has no colon."""


def lead_n(dialogue: str, n: int = LEAD_N) -> str:
    """The first ``n`` utterances of a dialogue, speaker tags removed, joined by spaces.

    Utterances are lines starting with a speaker tag (``#Person1#: text``); a line without one continues the
    utterance before it (a line break inside a turn), and blank lines are skipped.

    Args:
        dialogue: Turns as ``#PersonN#: text`` lines, as in the competition and DialogSum files.
        n: How many utterances.

    Returns:
        The LEAD-n summary ("" for an empty dialogue).
    """
    utterances: list[str] = []
    for line in dialogue.splitlines():
        if not line.strip():
            continue
        tagged = _SPEAKER_TAG.match(line)
        text = line[tagged.end() :].strip() if tagged else line.strip()
        if tagged or not utterances:
            if len(utterances) == n:
                break
            utterances.append(text)
        else:
            utterances[-1] = f"{utterances[-1]} {text}"
    return " ".join(utterance for utterance in utterances if utterance)


@functools.lru_cache(maxsize=16)
def _cached_lead_rouge(
    dialogues: tuple[str, ...], references: tuple[tuple[str, ...], ...], tokenizer: str, multi_reference: str, n: int
) -> tuple[tuple[str, float], ...]:
    summaries = [lead_n(dialogue, n) for dialogue in dialogues]
    return tuple(compute_rouge(summaries, list(references), tokenizer, multi_reference).items())


def lead_rouge(
    dialogues: Sequence[str],
    references: Sequence[str | Sequence[str]],
    tokenizer: str = "kiwi",
    multi_reference: str = DEFAULT_MULTI_REFERENCE,
    n: int = LEAD_N,
) -> dict[str, float]:
    """ROUGE of LEAD-n on a split, scored as :func:`pipeline.metrics.compute_rouge` scores a model.

    Kept per process for the last few (dialogues, references, tokenizer, rule, n): hashing a split's texts costs
    microseconds, scoring them again seconds.

    Args:
        dialogues: One dialogue per example.
        references: Per example, one reference string or a list of them.
        tokenizer: As for :func:`pipeline.metrics.compute_rouge`.
        multi_reference: ``"mean"`` or ``"max"``.
        n: Utterances taken from the start of each dialogue.

    Returns:
        ``{"rouge1", "rouge2", "rougeL", "rouge_combined_f1"}``.
    """
    normalized = tuple((refs,) if isinstance(refs, str) else tuple(refs) for refs in references)
    return dict(_cached_lead_rouge(tuple(dialogues), normalized, tokenizer, multi_reference, n))


def baseline_metrics(scores: dict[str, float], lead: dict[str, float], n: int = LEAD_N) -> dict[str, float]:
    """LEAD-n scores and the model's margins over them, as metric keys.

    Args:
        scores: The model's ``rouge1``, ``rouge2``, ``rougeL`` and ``rouge_combined_f1``.
        lead: The same keys for LEAD-n (:func:`lead_rouge`).
        n: The n of ``lead``, used in the key names.

    Returns:
        ``lead3_rouge1`` ... ``lead3_rouge_combined_f1`` and ``rouge1_margin_over_lead3`` ...
        ``rouge_combined_f1_margin_over_lead3`` (model minus LEAD-n; positive when the model is better).
    """
    metrics = {f"lead{n}_{key}": lead[key] for key in SCORE_KEYS}
    metrics.update({f"{key}_margin_over_lead{n}": scores[key] - lead[key] for key in SCORE_KEYS})
    return metrics
