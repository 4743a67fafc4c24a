"""prepare_data: a cold prepare (read, validate, tokenize, save) against a cached one, and rows/s tokenized.

Both sides call ``pipeline.data.prepare_datasets`` on the DialogSum training split with the project's scratch BPE
tokenizer (8,000 tokens, trained once on that split and cached): cold into a fresh artifact root, cached into a root
that already holds the same fingerprint. A third measurement times reading + ``tokenize_table`` alone, for rows/s.
Target: cached <= 5% of cold.

    python bench/prepare_data.py [--quick]
"""

from __future__ import annotations

import shutil
import uuid

from benchlib import (
    WORK_DIR,
    alternate,
    data_files,
    median,
    parse_args,
    print_table,
    scratch_tokenizer,
    timed,
    verdict,
    write_results,
)

TARGET = 0.05
LENGTHS = {"prefix": "", "encoder_max_len": 512, "decoder_max_len": 100}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], repeats=5)
    files, description = data_files(args.quick)
    tokenizer = scratch_tokenizer(files["train"])
    from pipeline.data import prepare_datasets, read_competition_csv, tokenize_table

    split = {"train": files["train"]}
    scratch = WORK_DIR / "prepare" / uuid.uuid4().hex[:8]
    warm_root = scratch / "warm"
    first = prepare_datasets(split, tokenizer, artifact_root=warm_root, **LENGTHS)  # fills the cache: untimed
    rows = len(first.datasets["train"])

    def cold() -> float:
        root = scratch / uuid.uuid4().hex[:8]
        seconds, prepared = timed(lambda: prepare_datasets(split, tokenizer, artifact_root=root, **LENGTHS))
        assert not prepared.cache_hit
        shutil.rmtree(root)
        return seconds

    def cached() -> float:
        seconds, prepared = timed(lambda: prepare_datasets(split, tokenizer, artifact_root=warm_root, **LENGTHS))
        assert prepared.cache_hit and len(prepared.datasets["train"]) == rows
        return seconds

    def tokenize_only() -> float:
        table = read_competition_csv(files["train"], require_summary=True)
        return timed(lambda: tokenize_table(table, tokenizer, **LENGTHS))[0]

    seconds = alternate({"cold": cold, "cached": cached, "tokenize": tokenize_only}, args.repeats)
    shutil.rmtree(scratch, ignore_errors=True)
    cold_s, cached_s, tokenize_s = (median(seconds[name]) for name in ("cold", "cached", "tokenize"))
    share = cached_s / cold_s
    print_table(
        f"prepare_data on {description}, train split, {rows} rows; median of {args.repeats} alternated repeats",
        ["measurement", "seconds", "figure", "target", ""],
        [
            [
                "cold prepare (read, validate, tokenize, save, load)",
                f"{cold_s:.3f}",
                f"{rows / cold_s:.0f} rows/s",
                "",
                "",
            ],
            [
                "cached prepare (fingerprint, load)",
                f"{cached_s:.3f}",
                f"{share:.1%} of cold",
                "<= 5%",
                verdict(share, TARGET, False),
            ],
            ["tokenize_table alone", f"{tokenize_s:.3f}", f"{rows / tokenize_s:.0f} rows/s", "", ""],
        ],
    )
    write_results(
        "prepare_data",
        args,
        {
            "data": description,
            "rows": rows,
            "seconds": seconds,
            "median_seconds": {"cold": cold_s, "cached": cached_s, "tokenize": tokenize_s},
            "cached_share_of_cold": share,
            "rows_per_second_tokenized": rows / tokenize_s,
            "rows_per_second_cold": rows / cold_s,
            "target_cached_share": TARGET,
        },
    )


if __name__ == "__main__":
    main()
