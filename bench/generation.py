"""Generation: ``generate_predictions`` (length-sorted batches) against naive batched generation in file order.

Both sides run in this process on the same loaded model, alternating, with the same generation settings and batch
size, on the first dev rows in file order; the naive side pads each batch of consecutive rows to its longest dialogue,
as a plain loop over a DataLoader does. Outputs must be identical. Target: summaries/s ratio >= 1.5. Three models,
each built or trained once by our trainer and cached under ``artifacts/bench``:

* DialogSum, a scratch BART (d_model 256, 3+3 layers) trained 150 steps, with the project's default generation
  settings (beam 4, max length 100, no repeated bigrams, batch 32). Like every such model in its first epochs it
  emits one short summary for every dialogue.
* The same BART untrained: every summary runs to the maximum length, the decoder-heavy case.
* ``config/tiny.yaml`` (its 0.9M-parameter BART, beam 2, max length 48, batch 64) trained 2 epochs on the Korean
  sample data: its summaries differ per dialogue, so identical outputs show that every summary is put back in its
  row; the sample dialogues vary little in length, so sorting has less padding to remove.

    python bench/generation.py [--quick]
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from benchlib import (
    REPO,
    WORK_DIR,
    alternate,
    data_files,
    median,
    parse_args,
    print_table,
    timed,
    verdict,
    write_results,
)

TARGET = 1.5
FULL = {
    "rows": 160,
    "train_rows": 4000,
    "train_steps": 150,
    "vocab_size": 8000,
    "scratch": {"d_model": 256, "encoder_layers": 3, "decoder_layers": 3, "attention_heads": 4, "ffn_dim": 1024},
    "generation": {"num_beams": 4, "max_length": 100, "no_repeat_ngram_size": 2},
    "batch_size": 32,
}
QUICK = {
    "rows": 16,
    "train_rows": 200,
    "train_steps": 2,
    "vocab_size": 1000,
    "scratch": {"d_model": 64, "encoder_layers": 1, "decoder_layers": 1, "attention_heads": 2, "ffn_dim": 128},
    "generation": {"num_beams": 2, "max_length": 16, "no_repeat_ngram_size": 2},
    "batch_size": 4,
}

# Training settings of the benchmark's models: no evaluation or checkpoint during their short training.
_NO_EVALUATION = {
    "eval_strategy": "no",
    "save_strategy": "no",
    "load_best_model_at_end": False,
    "early_stopping_patience": None,
}


@dataclass
class Case:
    """One model to generate with: its pipeline config (``model.checkpoint: scratch``), whether to train it first,
    and how many dev rows to summarize. The dev file is the config's *test* split: prepared validation splits are
    stored longest first, test splits keep the file's order, which the naive side needs."""

    name: str
    config: dict
    train: bool
    rows: int


def dialogsum_case(name: str, sizes: dict, files: dict, train: bool) -> Case:
    """The DialogSum scratch BART with the project's default generation settings."""
    config = {
        "experiment": {"name": "bench_generation"},
        "general": {"seed": 42, "artifact_root": str(WORK_DIR), "device": "cpu"},
        "data": {
            "train_path": str(files["train"]),
            "val_path": str(files["dev"]),
            "test_path": str(files["dev"]),
            "max_train_samples": sizes["train_rows"],
        },
        "model": {
            "architecture": "bart",
            "checkpoint": "scratch",
            "scratch": {**sizes["scratch"], "vocab_size": sizes["vocab_size"]},
        },
        "tokenizer": {"encoder_max_len": 512, "decoder_max_len": 100},
        "training": {
            "max_steps": sizes["train_steps"],
            "learning_rate": 1e-3,
            "warmup_ratio": 0.1,
            "lr_scheduler_type": "linear",
            **_NO_EVALUATION,
        },
        "generation": sizes["generation"],
        "inference": {"batch_size": sizes["batch_size"]},
        "wandb": {"mode": "disabled"},
    }
    return Case(name, config, train, sizes["rows"])


def korean_case(quick: bool) -> Case:
    """``config/tiny.yaml`` trained briefly on freshly written Korean sample data."""
    import tempfile

    from pipeline.config import ConfigManager
    from pipeline.sample_data import write_sample_data

    config = ConfigManager().load_config(REPO / "config" / "tiny.yaml")
    sizes = {"n_train": 200, "n_dev": 16, "n_test": 10} if quick else {"n_train": 2000, "n_dev": 200, "n_test": 10}
    files = write_sample_data(Path(tempfile.mkdtemp(prefix="dialsum-bench-")), seed=42, **sizes)
    config["general"]["artifact_root"] = str(WORK_DIR)
    config["data"].update(
        sample_data=False, train_path=str(files["train"]), val_path=str(files["dev"]), test_path=str(files["dev"])
    )
    config["training"].update(num_train_epochs=2, max_steps=2 if quick else -1, **_NO_EVALUATION)
    return Case("Korean sample data, tiny.yaml trained 2 epochs", config, True, sizes["n_dev"])


def saved_model(case: Case) -> str:
    """The case's model directory, built (and trained, if asked) by our trainer the first time, then reused."""
    from pipeline.artifacts import file_sha256
    from pipeline.trainer import DialogueSummarizationTrainer

    data = case.config["data"]
    # Keyed by content, not path: the data files are written to a new temporary directory by every run.
    contents = [file_sha256(data["train_path"]), file_sha256(data["test_path"])]
    settings = {key: value for key, value in case.config.items() if key != "general"}
    key = hashlib.sha256(json.dumps([settings["model"], settings["training"], contents, case.train]).encode())
    run = WORK_DIR / "generation" / key.hexdigest()[:12]
    if (run / "model" / "config.json").is_file():
        return str(run / "model")
    config = copy.deepcopy(case.config)
    config["general"]["output_dir"] = str(run)
    trainer = DialogueSummarizationTrainer(config)
    if not case.train:
        trainer.initialize_components()
        return str(trainer.save_model())
    datasets = trainer.prepare_data()
    return trainer.train({"train": datasets["train"]}).model_path


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], repeats=3)
    sizes = QUICK if args.quick else FULL
    files, description = data_files(args.quick)
    cases = [
        dialogsum_case(f"DialogSum, trained {sizes['train_steps']} steps", sizes, files, train=True),
        dialogsum_case("DialogSum, untrained", sizes, files, train=False),
        korean_case(args.quick),
    ]
    measured = {case.name: measure(case, saved_model(case), args.repeats) for case in cases}
    _summarize(args, description, measured)


def measure(case: Case, model_dir: str, repeats: int) -> dict:
    """Both sides on one model, alternating: their seconds per repeat, last outputs and the inputs' lengths."""
    from pipeline.trainer import DialogueSummarizationTrainer

    config = copy.deepcopy(case.config)
    config["model"]["checkpoint"] = model_dir
    config["general"]["output_dir"] = str(WORK_DIR / "generation" / "use")
    trainer = DialogueSummarizationTrainer(config)
    trainer.initialize_components()
    dataset = trainer.prepare_data()["test"].select(range(case.rows))
    outputs: dict[str, list[str]] = {}

    def ours() -> float:
        seconds, rows = timed(lambda: trainer.generate_predictions(dataset))
        outputs["ours"] = [row["prediction"] for row in rows]
        return seconds

    def naive() -> float:
        seconds, outputs["naive"] = timed(lambda: naive_generation(trainer, dataset))
        return seconds

    batch = config["inference"]["batch_size"]
    # One untimed batch first: the first generate() of a process pays one-off set-up that neither side should carry.
    naive_generation(trainer, dataset.select(range(min(batch, case.rows))))
    seconds = alternate({"naive": naive, "ours": ours}, repeats)
    generation = config["generation"]
    settings = f"beam {generation['num_beams']}, max length {generation['max_length']}, batch {batch}"
    return {"seconds": seconds, "outputs": outputs, "lengths": dataset["length"], "batch": batch, "settings": settings}


def naive_generation(trainer, dataset) -> list[str]:
    """Batches of consecutive rows in file order, each padded to its longest dialogue; same model and settings."""
    import torch

    model, tokenizer = trainer.model, trainer.tokenizer
    batch_size = trainer.config["inference"]["batch_size"]
    summaries = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            rows = dataset[start : start + batch_size]
            batch = tokenizer.pad({"input_ids": rows["input_ids"]}, return_tensors="pt")
            output = model.generate(**batch, generation_config=model.generation_config)
            summaries += [text.strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True)]
    return summaries


def real_token_share(lengths: list[int], batch: int) -> float:
    """Share of real encoder tokens when consecutive ``lengths`` are batched and padded to each batch's longest."""
    padded = sum(max(lengths[i : i + batch]) * len(lengths[i : i + batch]) for i in range(0, len(lengths), batch))
    return sum(lengths) / padded


def _summarize(args, description: str, measured: dict) -> None:
    rows, results = [], {}
    for model, figures in measured.items():
        seconds, outputs, lengths, batch = figures["seconds"], figures["outputs"], figures["lengths"], figures["batch"]
        count = len(lengths)
        rates = {name: count / median(values) for name, values in seconds.items()}
        ratio = rates["ours"] / rates["naive"]
        differing = sum(mine != theirs for mine, theirs in zip(outputs["ours"], outputs["naive"], strict=True))
        density = {
            "naive": real_token_share(lengths, batch),
            "ours": real_token_share(sorted(lengths, reverse=True), batch),
        }
        distinct = len(set(outputs["ours"]))
        rows.append(
            [model, figures["settings"], count, f"{rates['naive']:.2f}", f"{rates['ours']:.2f}"]
            + [f"{density['naive']:.0%} / {density['ours']:.0%}", f"{ratio:.2f}", differing, distinct]
            + [verdict(ratio, TARGET)]
        )
        results[model] = {
            "settings": figures["settings"],
            "rows": count,
            "seconds": seconds,
            "summaries_per_second": rates,
            "ratio": ratio,
            "differing_outputs": differing,
            "distinct_summaries": distinct,
            "real_encoder_token_share": density,
            "example_summaries": outputs["ours"][:3],
        }
    print_table(
        f"Generation ({description}); first dev rows in file order; median of {args.repeats} alternated repeats",
        ["model", "settings", "rows", "naive summaries/s", "generate_predictions summaries/s"]
        + ["real encoder tokens naive / ours", "ratio", "outputs differing", "distinct outputs", f"target >= {TARGET}"],
        rows,
    )
    identical = all(result["differing_outputs"] == 0 for result in results.values())
    print(f"outputs identical on both sides for every model: {identical}")
    write_results("generation", args, {"data": description, "models": results, "target": TARGET})
    if not identical:
        raise SystemExit("outputs differ between the two sides")


if __name__ == "__main__":
    main()
