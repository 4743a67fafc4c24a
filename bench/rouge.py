"""ROUGE: ``compute_rouge`` (Kiwi, 3 references per prediction) against a naive per-pair ``rouge_score`` loop.

The naive side is what one writes with rouge_score: ``RougeScorer.score(reference, prediction)`` for every pair,
the same Kiwi tokenizer object, max over references per metric. Ours is measured twice:

* cold: the tokenization cache is empty (the first evaluation of a training, or a fresh process);
* warm: the cache holds the references because an earlier call scored *other* predictions against them (every
  later evaluation of a training: new predictions, same validation references). The predictions are never cached.

All texts are distinct Korean summaries (generated sample data), so no side gains from repeated texts within a
call. Scores must be identical per example.

    python bench/rouge.py [--quick]
"""

from __future__ import annotations

from benchlib import alternate, median, parse_args, print_table, timed, verdict, write_results

TARGET = 3.0
KEYS = ("rouge1", "rouge2", "rougeL")


def distinct_summaries(count: int) -> list[str]:
    """``count`` distinct Korean summaries from the sample-data generator (the competition's style)."""
    from pipeline.sample_data import generate_dialogues

    seen: dict[str, None] = {}
    seed = 0
    while len(seen) < count:
        for row in generate_dialogues(2000, seed=seed, split="dev"):
            seen.setdefault(row["summary"], None)
        seed += 1
    return list(seen)[:count]


def naive_scores(predictions: list[str], references: list[list[str]]) -> list[dict[str, float]]:
    """Per example, the max F1 over references of each metric, from one ``RougeScorer.score`` per pair."""
    from rouge_score.rouge_scorer import RougeScorer

    from pipeline.metrics import get_tokenizer

    scorer = RougeScorer(list(KEYS), tokenizer=get_tokenizer("kiwi"))
    results = []
    for prediction, refs in zip(predictions, references, strict=True):
        pair_scores = [scorer.score(reference, prediction) for reference in refs]
        results.append({key: max(scores[key].fmeasure for scores in pair_scores) for key in KEYS})
    return results


def ours(predictions: list[str], references: list[list[str]], primer: list[str] | None) -> list[dict[str, float]]:
    """``rouge_per_example``; the cache is emptied first and, for a warm call, filled by scoring ``primer``."""
    from pipeline.metrics import get_tokenizer, rouge_per_example

    get_tokenizer("kiwi").cache.clear()
    if primer is not None:
        rouge_per_example(primer, references, multi_reference="max")
    # "max", as the naive loop: the default rule ("mean") would differ from it by design, not by error.
    seconds, scores = timed(lambda: rouge_per_example(predictions, references, multi_reference="max"))
    return seconds, scores


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], repeats=5)
    examples = 40 if args.quick else 500
    texts = distinct_summaries(examples * 5)
    predictions, primer = texts[:examples], texts[examples : 2 * examples]
    pool = texts[2 * examples :]
    references = [pool[3 * index : 3 * index + 3] for index in range(examples)]

    from pipeline.metrics import compute_rouge, get_tokenizer

    get_tokenizer("kiwi").tokenize("모델을 불러옵니다.")  # Kiwi's seconds of start-up are paid before any timing
    outputs: dict[str, list] = {}

    def side(name, call):
        def measure():
            seconds, scores = call()
            outputs[name] = scores
            return seconds

        return measure

    seconds = alternate(
        {
            "naive": side("naive", lambda: timed(lambda: naive_scores(predictions, references))),
            "cold": side("cold", lambda: ours(predictions, references, None)),
            "warm": side("warm", lambda: ours(predictions, references, primer)),
        },
        args.repeats,
    )
    naive, cold, warm = (median(seconds[name]) for name in ("naive", "cold", "warm"))
    differences = [
        abs(mine[key] - theirs[key])
        for variant in ("cold", "warm")
        for mine, theirs in zip(outputs[variant], outputs["naive"], strict=True)
        for key in KEYS
    ]
    identical = max(differences) == 0.0
    means = compute_rouge(predictions, references, multi_reference="max")
    rows = [
        ["naive per-pair RougeScorer", f"{naive:.3f}", "1.00", "", ""],
        [
            "compute_rouge, cold cache",
            f"{cold:.3f}",
            f"{naive / cold:.2f}",
            f">= {TARGET}",
            verdict(naive / cold, TARGET),
        ],
        [
            "compute_rouge, warm cache",
            f"{warm:.3f}",
            f"{naive / warm:.2f}",
            f">= {TARGET}",
            verdict(naive / warm, TARGET),
        ],
    ]
    print_table(
        f"ROUGE, Kiwi, {examples} predictions x 3 references ({len(texts) - examples} distinct texts scored), "
        f"median of {args.repeats} alternated repeats",
        ["side", "seconds", "speed-up vs naive", "target", ""],
        rows,
    )
    print(f"scores identical to the naive scorer per example: {identical} (max |difference| {max(differences):.1e})")
    print("mean scores: " + ", ".join(f"{key} {means[key]:.4f}" for key in (*KEYS, "rouge_combined_f1")))
    write_results(
        "rouge",
        args,
        {
            "examples": examples,
            "references_per_example": 3,
            "seconds": seconds,
            "median_seconds": {"naive": naive, "cold": cold, "warm": warm},
            "speedup": {"cold": naive / cold, "warm": naive / warm},
            "target": TARGET,
            "identical_scores": identical,
            "max_abs_difference": max(differences),
            "mean_scores": means,
        },
    )
    if not identical:
        raise SystemExit("scores differ from the naive scorer")


if __name__ == "__main__":
    main()
