"""Generation: ``generate_predictions`` (length-sorted batches) against naive batched generation in file order.

Two models, each used by both sides: a scratch BART (d_model 256, 3+3 layers) trained briefly on DialogSum by our
trainer (it collapses to one short summary for every dialogue, as such a model does for its first epochs), and the
same BART untrained (its summaries all differ and all run to the maximum length: the decoder-heavy case, and a
stricter check of identical outputs). Both are saved once and reused (cached under ``artifacts/bench``). Both sides
run in this process on the same loaded model, alternating, with the project's generation settings (beam 4, max
length 100, no repeated bigrams) and batch size (``inference.batch_size`` 32), on the first dev rows in file order.
The naive side pads each batch of consecutive rows to its longest dialogue, as a plain loop over a DataLoader does.
Outputs must be identical. Target: summaries/s ratio >= 1.5.

    python bench/generation.py [--quick]
"""

from __future__ import annotations

import hashlib
import json

from benchlib import WORK_DIR, alternate, data_files, median, parse_args, print_table, timed, verdict, write_results

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


def config_for(sizes: dict, files: dict, checkpoint: str, output_dir: str) -> dict:
    """The pipeline config of the model: scratch to train it, its saved directory to generate with it.

    The dev file is given as the *test* split: prepared validation splits are stored longest first, test splits
    keep the file's order, which the naive side needs.
    """
    return {
        "experiment": {"name": "bench_generation"},
        "general": {"seed": 42, "artifact_root": str(WORK_DIR), "output_dir": output_dir, "device": "cpu"},
        "data": {
            "train_path": str(files["train"]),
            "val_path": str(files["dev"]),
            "test_path": str(files["dev"]),
            "max_train_samples": sizes["train_rows"],
        },
        "model": {
            "architecture": "bart",
            "checkpoint": checkpoint,
            "scratch": {**sizes["scratch"], "vocab_size": sizes["vocab_size"]},
        },
        "tokenizer": {"encoder_max_len": 512, "decoder_max_len": 100},
        "training": {
            "max_steps": sizes["train_steps"],
            "learning_rate": 1e-3,
            "warmup_ratio": 0.1,
            "lr_scheduler_type": "linear",
            "eval_strategy": "no",
            "save_strategy": "no",
            "load_best_model_at_end": False,
            "early_stopping_patience": None,
        },
        "generation": sizes["generation"],
        "inference": {"batch_size": sizes["batch_size"]},
        "wandb": {"mode": "disabled"},
    }


def saved_model(sizes: dict, files: dict, trained: bool) -> str:
    """A saved model directory, built by our trainer the first time (cached): trained briefly, or as initialized."""
    from pipeline.artifacts import file_sha256
    from pipeline.trainer import DialogueSummarizationTrainer

    # Keyed by content, not path: --quick writes its data subset to a new temporary directory every time.
    contents = {split: file_sha256(path) for split, path in files.items()}
    key = hashlib.sha256(json.dumps([sizes, contents, trained], sort_keys=True).encode()).hexdigest()[:12]
    run = WORK_DIR / "generation" / key
    if (run / "model" / "config.json").is_file():
        return str(run / "model")
    trainer = DialogueSummarizationTrainer(config_for(sizes, files, "scratch", str(run)))
    if not trained:
        trainer.initialize_components()
        return str(trainer.save_model())
    datasets = trainer.prepare_data()
    return trainer.train({"train": datasets["train"]}).model_path


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


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], repeats=3)
    sizes = QUICK if args.quick else FULL
    files, description = data_files(args.quick)
    models = {
        f"trained {sizes['train_steps']} steps": saved_model(sizes, files, trained=True),
        "untrained (random init)": saved_model(sizes, files, trained=False),
    }
    measured = {name: measure(sizes, files, model_dir, args.repeats) for name, model_dir in models.items()}
    _summarize(args, sizes, description, measured)


def measure(sizes: dict, files: dict, model_dir: str, repeats: int) -> dict:
    """Both sides on one model, alternating: their seconds per repeat, last outputs and the inputs' lengths."""
    from pipeline.trainer import DialogueSummarizationTrainer

    trainer = DialogueSummarizationTrainer(config_for(sizes, files, model_dir, str(WORK_DIR / "generation" / "use")))
    trainer.initialize_components()
    dataset = trainer.prepare_data()["test"].select(range(sizes["rows"]))
    outputs: dict[str, list[str]] = {}

    def ours() -> float:
        seconds, rows = timed(lambda: trainer.generate_predictions(dataset))
        outputs["ours"] = [row["prediction"] for row in rows]
        return seconds

    def naive() -> float:
        seconds, outputs["naive"] = timed(lambda: naive_generation(trainer, dataset))
        return seconds

    # One untimed batch first: the first generate() of a process pays one-off set-up that neither side should carry.
    naive_generation(trainer, dataset.select(range(sizes["batch_size"])))
    seconds = alternate({"naive": naive, "ours": ours}, repeats)
    return {"seconds": seconds, "outputs": outputs, "lengths": dataset["length"]}


def real_token_share(lengths: list[int], batch: int) -> float:
    """Share of real encoder tokens when consecutive ``lengths`` are batched and padded to each batch's longest."""
    padded = sum(max(lengths[i : i + batch]) * len(lengths[i : i + batch]) for i in range(0, len(lengths), batch))
    return sum(lengths) / padded


def _summarize(args, sizes: dict, description: str, measured: dict) -> None:
    batch, gen = sizes["batch_size"], sizes["generation"]
    rows, results = [], {}
    for model, figures in measured.items():
        seconds, outputs, lengths = figures["seconds"], figures["outputs"], figures["lengths"]
        rates = {name: sizes["rows"] / median(values) for name, values in seconds.items()}
        ratio = rates["ours"] / rates["naive"]
        differing = sum(mine != theirs for mine, theirs in zip(outputs["ours"], outputs["naive"], strict=True))
        density = {
            "naive": real_token_share(lengths, batch),
            "ours": real_token_share(sorted(lengths, reverse=True), batch),
        }
        distinct = len(set(outputs["ours"]))
        rows.append(
            [model, f"{rates['naive']:.2f}", f"{rates['ours']:.2f}", f"{density['naive']:.0%} / {density['ours']:.0%}"]
            + [f"{ratio:.2f}", f"{differing} of {sizes['rows']}", distinct, verdict(ratio, TARGET)]
        )
        results[model] = {
            "seconds": seconds,
            "summaries_per_second": rates,
            "ratio": ratio,
            "differing_outputs": differing,
            "distinct_summaries": distinct,
            "real_encoder_token_share": density,
            "example_summaries": outputs["ours"][:3],
        }
    print_table(
        f"Generation, {description}, first {sizes['rows']} dev rows, beam {gen['num_beams']}, max length "
        f"{gen['max_length']}, batch {batch}; median of {args.repeats} alternated repeats",
        ["model", "naive summaries/s", "generate_predictions summaries/s", "real encoder tokens naive / ours"]
        + ["ratio", "outputs differing", "distinct outputs", f"target >= {TARGET}"],
        rows,
    )
    identical = all(result["differing_outputs"] == 0 for result in results.values())
    print(f"outputs identical on both sides for every model: {identical}")
    write_results("generation", args, {"sizes": sizes, "data": description, "models": results, "target": TARGET})
    if not identical:
        raise SystemExit("outputs differ between the two sides")


if __name__ == "__main__":
    main()
