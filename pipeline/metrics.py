"""ROUGE-1/2/L F1 for (Korean) dialogue summaries.

The scores equal ``rouge_score.rouge_scorer.RougeScorer`` given the same tokenizer object, but each distinct
text is tokenized once, in one batch, and the n-gram and LCS arithmetic is done here: Kiwi tokenization
dominates the cost of a naive ``RougeScorer.score`` loop, which re-tokenizes the prediction for every reference.
Kiwi and stemmed-English tokenizations are also kept in a bounded per-process cache (:class:`TokenCache`): evaluation
during training scores new predictions against the same validation references every time, and those need tokenizing
only once.

Never score Korean with rouge_score's default tokenizer: it keeps only ``[a-z0-9]``, so every Hangul character
is deleted and two identical Korean summaries score 0.0.
"""

import functools
import re
import sys
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rouge_score.tokenizers import DefaultTokenizer

MARKER_PATTERN = re.compile(r"#[A-Za-z0-9_]+#")
"""Dialogue markers such as ``#Person1#``, ``#PhoneNumber#``, ``#Address#``, ``#PassportNumber#``."""

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
MULTI_REFERENCE_RULES = ("max", "mean")
DEFAULT_MULTI_REFERENCE = "mean"
"""The Korean competition's rule: each ROUGE F1 is averaged over an example's references."""


KIWI_CACHE_SIZE = 20_000
"""Distinct texts whose Kiwi tokens are kept per process (a few MB: token strings are interned)."""


class TokenCache:
    """A bounded, thread-safe least-recently-used map from a text to its tokens.

    Entries are immutable tuples of interned strings: callers get fresh lists, so no caller can alter what
    another one reads, and the many repeats of common morphemes cost one string each.

    Args:
        maxsize: Most texts kept; the least recently used are dropped beyond it.
    """

    def __init__(self, maxsize: int):
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._entries: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, texts: list[str]) -> list[tuple[str, ...] | None]:
        """The cached tokens of each text, None where a text is not cached."""
        with self._lock:
            found = []
            for text in texts:
                tokens = self._entries.get(text)
                if tokens is not None:
                    self._entries.move_to_end(text)
                found.append(tokens)
            hits = sum(tokens is not None for tokens in found)
            self.hits += hits
            self.misses += len(found) - hits
            return found

    def store(self, texts: list[str], token_lists: list[list[str]]) -> None:
        """Remember the tokens of ``texts``, dropping the least recently used beyond ``maxsize``."""
        with self._lock:
            for text, tokens in zip(texts, token_lists, strict=True):
                self._entries[text] = tuple(sys.intern(token) for token in tokens)
                self._entries.move_to_end(text)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry and reset the hit and miss counts."""
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0


@dataclass(frozen=True)
class Tokenizer:
    """A named tokenizer usable by ``RougeScorer(tokenizer=...)`` and by :func:`compute_rouge`.

    Attributes:
        name: The name given to :func:`get_tokenizer`.
        one: Tokenizes one text.
        many: Tokenizes a list of texts at once, or None to call ``one`` per text. Kiwi spreads a batch over its
            worker threads (a gain only where free cores exist).
        cache: Where :meth:`tokenize_many` keeps tokenizations across calls, or None for none. :meth:`tokenize`
            never uses it, so a ``RougeScorer`` given this object tokenizes every text it sees.
    """

    name: str
    one: Callable[[str], list[str]]
    many: Callable[[list[str]], list[list[str]]] | None = None
    cache: TokenCache | None = field(default=None, compare=False)

    def tokenize(self, text: str) -> list[str]:
        """Tokenizes one text (the method ``RougeScorer`` calls)."""
        return self.one(text)

    def tokenize_many(self, texts: list[str]) -> list[list[str]]:
        """Tokenizes many texts; returns one token list per text, in order.

        With a cache, only texts not seen recently are tokenized, in one batch; the result is the same.
        """
        texts = list(texts)
        if self.cache is None:
            return self._tokenize_uncached(texts)
        found = self.cache.lookup(texts)
        missing = list(dict.fromkeys(text for text, tokens in zip(texts, found, strict=True) if tokens is None))
        fresh = dict(zip(missing, self._tokenize_uncached(missing), strict=True))
        self.cache.store(missing, [fresh[text] for text in missing])
        return [
            list(tokens) if tokens is not None else list(fresh[text]) for text, tokens in zip(texts, found, strict=True)
        ]

    def _tokenize_uncached(self, texts: list[str]) -> list[list[str]]:
        return self.many(texts) if self.many else [self.one(text) for text in texts]


def _lower_unless_marker(token: str) -> str:
    # Markers stay verbatim so that `#PhoneNumber#` reads the same in tokens as in the data. The startswith test
    # spares the regex for the ~95% of tokens that cannot be markers.
    return token if token.startswith("#") and MARKER_PATTERN.fullmatch(token) else token.lower()


def _marker_spans(text: str) -> list[tuple[int, int, str]]:
    # Kiwi would split `#Person1#` into `#Person1` + `#`; pre-tokenized spans keep each marker whole
    # while the rest of the sentence is still analysed in context.
    return [(m.start(), m.end(), "NNP") for m in MARKER_PATTERN.finditer(text)]


@functools.cache
def _kiwi():
    # Kiwi takes seconds to build and its first analysis loads the language model (seconds more): pay both
    # at first use, once per process, so that no timed call pays them.
    from kiwipiepy import Kiwi

    kiwi = Kiwi()
    kiwi.tokenize("모델을 불러옵니다.")
    return kiwi


def _kiwi_forms(tokens) -> list[str]:
    return [_lower_unless_marker(token.form) for token in tokens]


def _kiwi_one(text: str) -> list[str]:
    return _kiwi_forms(_kiwi().tokenize(text, pretokenized=_marker_spans(text)))


def _kiwi_many(texts: list[str]) -> list[list[str]]:
    if not texts:  # spares building Kiwi for nothing
        return []
    # kiwi.tokenize on a list returns a lazy generator: materialize it so callers can index the result.
    return [_kiwi_forms(tokens) for tokens in _kiwi().tokenize(texts, pretokenized=_marker_spans)]


def _whitespace_one(text: str) -> list[str]:
    # Padding markers with spaces detaches them from particles glued to them (`#Person1#의`).
    return [_lower_unless_marker(token) for token in MARKER_PATTERN.sub(r" \g<0> ", text).split()]


_default_one = DefaultTokenizer(use_stemmer=False).tokenize
_english_one = DefaultTokenizer(use_stemmer=True).tokenize

_TOKENIZERS = {
    # Kiwi and the Porter stemmer (about 0.5 ms a summary) are cached; whitespace and default tokenize faster than a
    # cache lookup pays back.
    "kiwi": Tokenizer("kiwi", _kiwi_one, _kiwi_many, cache=TokenCache(KIWI_CACHE_SIZE)),
    "whitespace": Tokenizer("whitespace", _whitespace_one),
    "default": Tokenizer("default", _default_one),
    "english": Tokenizer("english", _english_one, cache=TokenCache(KIWI_CACHE_SIZE)),
}


def get_tokenizer(name: str) -> Tokenizer:
    """Returns the tokenizer called ``name``.

    Args:
        name: ``"kiwi"`` (Korean morphemes from kiwipiepy: each token is a morpheme's ``form``; markers such as
            ``#Person1#`` are one token each, other Latin text is lowercased), ``"whitespace"`` (whitespace split,
            markers detached from adjacent text and kept whole, everything else lowercased), ``"default"``
            (rouge_score's own tokenizer; it deletes every Hangul character, so identical Korean texts score
            0.0: never use it for Korean) or ``"english"`` (rouge_score's tokenizer with its Porter stemmer,
            ``RougeScorer(use_stemmer=True)``, as the DialogSum papers score English; also never for Korean).

    Returns:
        An object with ``tokenize(text) -> list[str]`` and ``tokenize_many(texts) -> list[list[str]]``.

    Raises:
        ValueError: If ``name`` is not one of the valid choices.
    """
    if name not in _TOKENIZERS:
        raise ValueError(f"Unknown tokenizer {name!r}; valid choices: {', '.join(_TOKENIZERS)}")
    return _TOKENIZERS[name]


def combined_f1(r1: float, r2: float, rl: float) -> float:
    """The competition's single score: ``0.33 * rouge1 + 0.33 * rouge2 + 0.34 * rougeL`` (F1 values)."""
    return 0.33 * r1 + 0.33 * r2 + 0.34 * rl


def _fmeasure(precision: float, recall: float) -> float:
    # Same expression as rouge_score.scoring.fmeasure, so the floats are bit-identical.
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _ngram_f1(reference: Counter, prediction: Counter) -> float:
    overlap = sum((reference & prediction).values())
    # max(count, 1) mirrors rouge_score: an empty side gives 0 instead of a division error.
    precision = overlap / max(sum(prediction.values()), 1)
    recall = overlap / max(sum(reference.values()), 1)
    return _fmeasure(precision, recall)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    # The LCS dynamic program run one row at a time, with the row held as bits of an int (Hyyro 2004,
    # "Bit-parallel LCS-length computation revisited"): a zero bit marks where the row's value steps up, so the
    # LCS length is the number of zeros. One big-int step per token of `a` instead of len(b) Python steps.
    # tests/test_metrics.py checks it against rouge_score's table.
    matches: dict[str, int] = {}
    for position, token in enumerate(b):
        matches[token] = matches.get(token, 0) | (1 << position)
    mask = (1 << len(b)) - 1
    row = mask
    for token in a:
        hits = row & matches.get(token, 0)
        row = ((row + hits) | (row - hits)) & mask
    return len(b) - row.bit_count()


def _lcs_f1(reference: Sequence[str], prediction: Sequence[str]) -> float:
    if not reference or not prediction:
        return 0.0
    lcs = _lcs_length(reference, prediction)
    return _fmeasure(lcs / len(prediction), lcs / len(reference))


@dataclass(frozen=True)
class _Analysed:
    tokens: list[str]
    unigrams: Counter
    bigrams: Counter


def _analyse(tokens: list[str]) -> _Analysed:
    return _Analysed(tokens, _ngrams(tokens, 1), _ngrams(tokens, 2))


def _pair_scores(reference: _Analysed, prediction: _Analysed) -> tuple[float, float, float]:
    return (
        _ngram_f1(reference.unigrams, prediction.unigrams),
        _ngram_f1(reference.bigrams, prediction.bigrams),
        _lcs_f1(reference.tokens, prediction.tokens),
    )


def _normalize_references(predictions: list[str], references: Sequence[str | Sequence[str]]) -> list[list[str]]:
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references differ in length: {len(predictions)} predictions, {len(references)} references"
        )
    normalized = [[refs] if isinstance(refs, str) else list(refs) for refs in references]
    for index, refs in enumerate(normalized):
        if not refs:
            raise ValueError(f"Example {index} has an empty reference list")
    return normalized


def _check_rule(multi_reference: str) -> None:
    if multi_reference not in MULTI_REFERENCE_RULES:
        raise ValueError(f"Unknown multi_reference {multi_reference!r}; valid choices: max, mean")


def _reference_scores(
    predictions: list[str], references: list[str] | list[list[str]], tokenizer: str
) -> list[list[tuple[float, float, float]]]:
    """Per example, the (ROUGE-1, ROUGE-2, ROUGE-L) F1 of the prediction against each of its references."""
    reference_lists = _normalize_references(predictions, references)
    tok = get_tokenizer(tokenizer)
    # Every distinct text is tokenized once, in one batch: a per-pair RougeScorer loop re-tokenizes each
    # prediction once per reference, and tokenization is most of the cost.
    texts = list(dict.fromkeys([*predictions, *(ref for refs in reference_lists for ref in refs)]))
    analysed = {text: _analyse(tokens) for text, tokens in zip(texts, tok.tokenize_many(texts), strict=True)}
    return [
        [_pair_scores(analysed[ref], analysed[prediction]) for ref in refs]
        for prediction, refs in zip(predictions, reference_lists, strict=True)
    ]


def _aggregate(per_reference: list[list[tuple[float, float, float]]], multi_reference: str) -> list[dict[str, float]]:
    aggregate = max if multi_reference == "max" else lambda values: sum(values) / len(values)
    results = []
    for scores in per_reference:
        # zip(*...) regroups the scores per metric, so each metric picks its own best reference.
        r1, r2, rl = (aggregate(metric_scores) for metric_scores in zip(*scores, strict=True))
        results.append({"rouge1": r1, "rouge2": r2, "rougeL": rl, "rouge_combined_f1": combined_f1(r1, r2, rl)})
    return results


def _means(per_example: list[dict[str, float]]) -> dict[str, float]:
    if not per_example:
        return {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "rouge_combined_f1": 0.0}
    means = {key: sum(scores[key] for scores in per_example) / len(per_example) for key in ROUGE_KEYS}
    return {**means, "rouge_combined_f1": combined_f1(means["rouge1"], means["rouge2"], means["rougeL"])}


def rouge_per_example(
    predictions: list[str],
    references: list[str] | list[list[str]],
    tokenizer: str = "kiwi",
    multi_reference: str = DEFAULT_MULTI_REFERENCE,
) -> list[dict[str, float]]:
    """ROUGE F1 of each example; arguments as in :func:`compute_rouge`.

    Returns:
        One dict per example with keys ``rouge1``, ``rouge2``, ``rougeL`` and ``rouge_combined_f1``.
    """
    _check_rule(multi_reference)
    return _aggregate(_reference_scores(predictions, references, tokenizer), multi_reference)


def compute_rouge(
    predictions: list[str],
    references: list[str] | list[list[str]],
    tokenizer: str = "kiwi",
    multi_reference: str = DEFAULT_MULTI_REFERENCE,
) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over examples, and their combined score.

    ROUGE-N is clipped n-gram overlap and ROUGE-L is the longest common subsequence of the two token sequences
    (not the summary-level rougeLsum), exactly as rouge_score computes them; an empty or whitespace-only
    prediction scores 0.

    Multiple references: with ``multi_reference="mean"`` (the default and the Korean competition's rule: each
    ROUGE F1 is averaged over the example's references) each metric is averaged over the references. With
    ``"max"`` (rouge_score's ``score_multi``) each example takes, for each metric independently, the highest F1
    over its references, so ROUGE-1 and ROUGE-2 may come from different references; max rewards one generic
    sentence for every dialogue most, as any of the references may happen to match it.

    Args:
        predictions: One generated summary per example.
        references: Per example, one reference string or a non-empty list of reference strings.
        tokenizer: ``"kiwi"`` (default; Korean morphemes), ``"whitespace"``, ``"default"`` or ``"english"``
            (the last two never for Korean, see :func:`get_tokenizer`).
        multi_reference: ``"mean"`` (default) or ``"max"``.

    Returns:
        ``{"rouge1", "rouge2", "rougeL", "rouge_combined_f1"}`` as floats in [0, 1]; all zeros for empty input.
        ``rouge_combined_f1`` is :func:`combined_f1` of the three means.

    Raises:
        ValueError: On a length mismatch (both lengths are named), an example with an empty reference list (its
            index is named), or an unknown tokenizer or multi_reference rule.
    """
    return _means(rouge_per_example(predictions, references, tokenizer, multi_reference))


def compute_rouge_by_rule(
    predictions: list[str],
    references: list[str] | list[list[str]],
    tokenizer: str = "kiwi",
    rules: Sequence[str] = MULTI_REFERENCE_RULES,
) -> dict[str, dict[str, float]]:
    """:func:`compute_rouge` under several multi-reference rules, every pair scored once.

    Returns:
        ``{rule: {"rouge1", "rouge2", "rougeL", "rouge_combined_f1"}}`` for each rule in ``rules``.
    """
    for rule in rules:
        _check_rule(rule)
    per_reference = _reference_scores(predictions, references, tokenizer)
    return {rule: _means(_aggregate(per_reference, rule)) for rule in rules}


def prediction_diversity(predictions: Sequence[str]) -> dict[str, float]:
    """How varied a model's summaries are: the signal of a collapsed model that ROUGE can hide.

    Returns:
        ``distinct_predictions``: the share of distinct predictions (1.0 for none). ``top_prediction_share``: the
        share of all predictions taken by the most common one, counted only when it occurs more than once (0.0
        when every prediction is distinct: a text seen once is no sentence repeated for many dialogues, and
        without this rule any evaluation of three dialogues or fewer would count as collapsed).
    """
    if not predictions:
        return {"distinct_predictions": 1.0, "top_prediction_share": 0.0}
    top_count = Counter(predictions).most_common(1)[0][1]
    return {
        "distinct_predictions": len(set(predictions)) / len(predictions),
        "top_prediction_share": top_count / len(predictions) if top_count > 1 else 0.0,
    }


def collapse_reason(metrics: Mapping[str, Any], evaluation: Mapping[str, Any], prefix: str = "") -> str | None:
    """Why an evaluation counts as collapsed (one generic summary for many dialogues), or None when it does not.

    Collapsed means: the share of distinct predictions is below ``evaluation.collapse_min_distinct``, or one
    prediction makes up more than ``evaluation.collapse_max_top_share`` of all predictions (the values of
    :func:`prediction_diversity`). The reason is derived from these numbers only, so the same text is rebuilt from
    stored metrics (metrics.json, the registry) as was logged when the evaluation ran.

    Args:
        metrics: An evaluation's metrics with ``distinct_predictions`` and ``top_prediction_share``; metrics
            without them (older runs) never count as collapsed.
        evaluation: The config's ``evaluation`` section (its two thresholds).
        prefix: Key prefix of ``metrics``, such as ``"eval_"``.

    Returns:
        A sentence naming each threshold crossed, or None.
    """
    distinct = metrics.get(f"{prefix}distinct_predictions")
    top_share = metrics.get(f"{prefix}top_prediction_share")
    min_distinct, max_top_share = evaluation["collapse_min_distinct"], evaluation["collapse_max_top_share"]
    reasons = []
    if distinct is not None and distinct < min_distinct:
        reasons.append(
            f"only {distinct:.1%} of the predictions are distinct (evaluation.collapse_min_distinct {min_distinct:.0%})"
        )
    if top_share is not None and top_share > max_top_share:
        reasons.append(
            f"one prediction is {top_share:.1%} of all predictions "
            f"(evaluation.collapse_max_top_share {max_top_share:.0%})"
        )
    return "; ".join(reasons) or None
