"""LEAD-n baseline: utterance extraction and its ROUGE, checked against n-gram overlaps counted by hand."""

from __future__ import annotations

import pytest

from pipeline.baselines import _cached_lead_rouge, baseline_metrics, lead_n, lead_rouge
from pipeline.metrics import combined_f1

DIALOGUE = "#Person1#: the cat sat\n#Person2#: on the mat\n#Person1#: it was warm\n#Person2#: very nice"
# A turn broken over two lines, and only two turns: LEAD-3 takes what there is.
SHORT = "#Person1#: hello there\nhow are you\n\n#Person2#: fine"


def test_lead_n_takes_the_first_utterances_without_speaker_tags():
    assert lead_n(DIALOGUE) == "the cat sat on the mat it was warm"
    assert lead_n(DIALOGUE, n=1) == "the cat sat"
    assert lead_n(SHORT) == "hello there how are you fine"
    assert lead_n("") == ""
    # A PII mask inside a turn is text, not a speaker tag.
    assert lead_n("#Person1#: 제 주소는 #Address#입니다.\r\n#Person2#: 네.") == "제 주소는 #Address#입니다. 네."


def test_lead3_rouge_on_a_hand_checked_example():
    # F1 = 2 * overlap / (len(lead) + len(reference)), for n-grams and for the LCS alike.
    # Example 1: lead "the cat sat on the mat it was warm" (9 tokens, 8 bigrams); reference "the cat sat on a warm
    # mat" (7 tokens, 6 bigrams). Clipped unigram overlap: the, cat, sat, on, mat, warm = 6 -> 12/16. Bigram
    # overlap: "the cat", "cat sat", "sat on" = 3 -> 6/14. LCS "the cat sat on mat" = 5 -> 10/16.
    # Example 2: lead "hello there how are you fine" (6 tokens, 5 bigrams), references "hello fine" and
    # "how are you". Unigrams: 2 -> 4/8 and 3 -> 6/9; bigrams: 0 and 2 ("how are", "are you") -> 4/7;
    # LCS: 2 -> 4/8 and 3 -> 6/9. The mean rule averages each metric over the two references.
    dialogues = [DIALOGUE, SHORT]
    references = [["the cat sat on a warm mat"], ["hello fine", "how are you"]]
    r1 = (12 / 16 + (4 / 8 + 6 / 9) / 2) / 2
    r2 = (6 / 14 + (0 + 4 / 7) / 2) / 2
    rl = (10 / 16 + (4 / 8 + 6 / 9) / 2) / 2
    scores = lead_rouge(dialogues, references, tokenizer="whitespace", multi_reference="mean")
    assert scores == pytest.approx(
        {"rouge1": r1, "rouge2": r2, "rougeL": rl, "rouge_combined_f1": combined_f1(r1, r2, rl)}
    )
    # max takes the better reference per metric: 6/9, 4/7 and 6/9 for example 2.
    best = lead_rouge(dialogues, references, tokenizer="whitespace", multi_reference="max")
    assert best["rouge1"] == pytest.approx((12 / 16 + 6 / 9) / 2)
    assert best["rouge2"] == pytest.approx((6 / 14 + 4 / 7) / 2)


def test_lead3_is_scored_once_per_split():
    dialogues, references = [DIALOGUE, SHORT], [["the cat sat on a warm mat"], ["hello fine", "how are you"]]
    first = lead_rouge(dialogues, references, tokenizer="whitespace")
    hits = _cached_lead_rouge.cache_info().hits
    # Equal but new lists, as a later evaluation of the same split passes them.
    again = lead_rouge(list(dialogues), [list(refs) for refs in references], tokenizer="whitespace")
    assert again == first and _cached_lead_rouge.cache_info().hits == hits + 1
    again["rouge1"] = -1.0  # callers get their own dict
    assert lead_rouge(dialogues, references, tokenizer="whitespace") == first


def test_baseline_metrics_are_lead_scores_and_margins():
    model = {"rouge1": 0.5, "rouge2": 0.2, "rougeL": 0.4, "rouge_combined_f1": 0.366}
    lead = {"rouge1": 0.3, "rouge2": 0.25, "rougeL": 0.3, "rouge_combined_f1": 0.2835}
    metrics = baseline_metrics(model, lead)
    assert metrics["lead3_rouge2"] == 0.25 and metrics["rouge2_margin_over_lead3"] == pytest.approx(-0.05)
    assert metrics["rouge1_margin_over_lead3"] == pytest.approx(0.2)
    assert set(metrics) == {
        *(f"lead3_{key}" for key in model),
        *(f"{key}_margin_over_lead3" for key in model),
    }
