"""Training throughput: our train stage against a plain Seq2SeqTrainer script, same model, data and steps.

* ours: ``DialogueSummarizationTrainer.train`` (what ``pipeline.lifecycle.train_stage`` runs) with the project's
  defaults, ``training.group_by_length: true``, on the prepared DialogSum split. Only the train split is passed,
  so the final beam-search evaluation of the stage is left out: it is not training and the plain script has none.
* plain: the script HF's ``run_summarization.py`` amounts to: ``load_dataset("csv")``, ``tokenizer(...,
  truncation=True)`` in ``map``, ``DataCollatorForSeq2Seq`` (pad to the longest in the batch), ``Seq2SeqTrainer``
  with its defaults (random sampler).

Same scratch BART (d_model 256, 3+3 layers, ~8M parameters, identical initial weights: checked), same BPE tokenizer,
the same first rows of DialogSum train, batch 16, learning rate, warmup, schedule, weight decay and number of
optimizer steps. Each run is a fresh process; runs alternate. Throughput is HF's ``train_samples_per_second`` (the
training loop, the same clock on both sides). The validation loss of both final models is computed by one function
on the same fixed dev rows (token-weighted cross-entropy, teacher forcing). Targets: samples/s ratio >= 1.5, final
validation loss equal within 2%.

    python bench/train_throughput.py [--quick]
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

from benchlib import WORK_DIR, alternate, data_files, median, parse_args, print_table, run_json, verdict, write_results

SPEED_TARGET = 1.5
LOSS_TOLERANCE = 0.02
FULL = {
    "train_rows": 4000,
    "dev_rows": 200,
    "steps": 40,
    "batch": 16,
    "scratch": {"d_model": 256, "encoder_layers": 3, "decoder_layers": 3, "attention_heads": 4, "ffn_dim": 1024},
    "vocab_size": 8000,
}
QUICK = {
    "train_rows": 200,
    "dev_rows": 24,
    "steps": 3,
    "batch": 8,
    "scratch": {"d_model": 64, "encoder_layers": 1, "decoder_layers": 1, "attention_heads": 2, "ffn_dim": 128},
    "vocab_size": 1000,
}
HYPERPARAMETERS = {"learning_rate": 1e-3, "warmup_ratio": 0.1, "lr_scheduler_type": "linear", "weight_decay": 0.01}
LENGTHS = {"encoder_max_len": 512, "decoder_max_len": 100}


# --------------------------------------------------------------------------- the two sides (child processes)
def run_ours(spec: dict) -> dict:
    """Our train stage's trainer on the spec's data; returns its throughput and final model."""
    from pipeline.config import ConfigManager
    from pipeline.trainer import DialogueSummarizationTrainer

    config = ConfigManager().validate(_our_config(spec))
    trainer = DialogueSummarizationTrainer(config, experiment_name="bench_train")
    trainer.initialize_components()
    initial = _weights_checksum(trainer.model)
    datasets = trainer.prepare_data()
    trainer.train({"train": datasets["train"]})
    record = next(entry for entry in trainer.trainer.state.log_history if "train_samples_per_second" in entry)
    density = _batch_density(trainer.trainer, spec["steps"])
    return _report(spec, trainer.model, trainer.tokenizer, record, initial, density)


def _our_config(spec: dict) -> dict:
    run = Path(spec["workdir"]) / uuid.uuid4().hex[:8]
    return {
        "experiment": {"name": "bench_train"},
        "general": {"seed": 42, "artifact_root": str(WORK_DIR), "output_dir": str(run), "device": "cpu"},
        "data": {
            "train_path": spec["train"],
            "val_path": spec["dev"],
            "test_path": None,
            "max_train_samples": spec["train_rows"],
        },
        "model": {
            "architecture": "bart",
            "checkpoint": "scratch",
            "scratch": {**spec["scratch"], "vocab_size": spec["vocab_size"], "dropout": 0.1},
        },
        "tokenizer": dict(LENGTHS),
        "training": {
            **HYPERPARAMETERS,
            "max_steps": spec["steps"],
            "per_device_train_batch_size": spec["batch"],
            "eval_strategy": "no",
            "save_strategy": "no",
            "load_best_model_at_end": False,
            "early_stopping_patience": None,
            "logging_steps": 10,
            "group_by_length": True,
        },
        "wandb": {"mode": "disabled"},
    }


def run_plain(spec: dict) -> dict:
    """A straightforward ``run_summarization.py``-style Seq2SeqTrainer script; returns its throughput."""
    from benchlib import scratch_tokenizer
    from datasets import load_dataset
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        set_seed,
    )

    set_seed(42)
    tokenizer = scratch_tokenizer(Path(spec["train"]), spec["vocab_size"])
    model = BartForConditionalGeneration(_bart_config(BartConfig, tokenizer, spec))
    initial = _weights_checksum(model)
    raw = load_dataset("csv", data_files={"train": spec["train"]})["train"].select(range(spec["train_rows"]))

    def preprocess(examples):
        inputs = tokenizer(examples["dialogue"], max_length=LENGTHS["encoder_max_len"], truncation=True)
        labels = tokenizer(text_target=examples["summary"], max_length=LENGTHS["decoder_max_len"], truncation=True)
        inputs["labels"] = labels["input_ids"]
        return inputs

    train = raw.map(preprocess, batched=True, remove_columns=raw.column_names)
    args = Seq2SeqTrainingArguments(
        output_dir=str(Path(spec["workdir"]) / uuid.uuid4().hex[:8]),
        per_device_train_batch_size=spec["batch"],
        learning_rate=HYPERPARAMETERS["learning_rate"],
        warmup_steps=HYPERPARAMETERS["warmup_ratio"],  # a float below 1 is a ratio in transformers 5
        lr_scheduler_type=HYPERPARAMETERS["lr_scheduler_type"],
        weight_decay=HYPERPARAMETERS["weight_decay"],
        max_steps=spec["steps"],
        logging_steps=10,
        save_strategy="no",
        seed=42,
        use_cpu=True,
        report_to="none",
    )
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    trainer = Seq2SeqTrainer(
        model=model, args=args, train_dataset=train, data_collator=collator, processing_class=tokenizer
    )
    metrics = trainer.train().metrics
    density = _batch_density(trainer, spec["steps"])
    return _report(spec, model, tokenizer, metrics, initial, density)


def _bart_config(config_class, tokenizer, spec: dict):
    # The same BartConfig pipeline.modeling.build_scratch_model writes, spelled out as a plain script would.
    scratch = spec["scratch"]
    return config_class(
        vocab_size=len(tokenizer),
        d_model=scratch["d_model"],
        encoder_layers=scratch["encoder_layers"],
        decoder_layers=scratch["decoder_layers"],
        encoder_attention_heads=scratch["attention_heads"],
        decoder_attention_heads=scratch["attention_heads"],
        encoder_ffn_dim=scratch["ffn_dim"],
        decoder_ffn_dim=scratch["ffn_dim"],
        max_position_embeddings=1024,
        dropout=0.1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
    )


# --------------------------------------------------------------------------- shared by both sides
def _weights_checksum(model) -> float:
    """A fingerprint of the initial weights: equal on both sides means the same starting model."""
    import torch

    with torch.no_grad():
        return float(sum(parameter.double().abs().sum() for parameter in model.parameters()))


def _batch_density(hf_trainer, steps: int) -> dict:
    """Share of real (non-pad) tokens in the first ``steps`` training batches, encoder and decoder side."""
    real = padded = label_real = label_padded = 0
    for _, batch in zip(range(steps), hf_trainer.get_train_dataloader(), strict=False):
        mask = batch["attention_mask"]
        real, padded = real + int(mask.sum()), padded + mask.numel()
        labels = batch["labels"]
        label_real, label_padded = label_real + int((labels != -100).sum()), label_padded + labels.numel()
    return {"encoder": real / padded, "decoder": label_real / label_padded}


def validation_loss(model, tokenizer, dev_path: str, rows: int, batch_size: int = 16) -> float:
    """Token-weighted cross-entropy of ``model`` on the first ``rows`` dev rows (teacher forcing, file order)."""
    import torch
    from transformers import DataCollatorForSeq2Seq

    from pipeline.data import read_competition_csv

    table = read_competition_csv(dev_path, require_summary=True)
    inputs = tokenizer(table.dialogues[:rows], max_length=LENGTHS["encoder_max_len"], truncation=True)
    targets = [refs[0] for refs in table.references[:rows]]
    labels = tokenizer(text_target=targets, max_length=LENGTHS["decoder_max_len"], truncation=True)["input_ids"]
    features = [
        {"input_ids": ids, "attention_mask": mask, "labels": label}
        for ids, mask, label in zip(inputs["input_ids"], inputs["attention_mask"], labels, strict=True)
    ]
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    model.eval()
    total = count = 0.0
    with torch.inference_mode():
        for start in range(0, len(features), batch_size):
            batch = collator(features[start : start + batch_size])
            logits = model(**batch).logits
            mask = batch["labels"] != -100
            total += float(torch.nn.functional.cross_entropy(logits[mask], batch["labels"][mask], reduction="sum"))
            count += int(mask.sum())
    return total / count


def _report(spec: dict, model, tokenizer, train_metrics: dict, initial: float, density: dict) -> dict:
    return {
        "samples_per_second": train_metrics["train_samples_per_second"],
        "train_runtime": train_metrics["train_runtime"],
        "train_loss": train_metrics.get("train_loss"),
        "validation_loss": validation_loss(model, tokenizer, spec["dev"], spec["dev_rows"]),
        "initial_weights_checksum": initial,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "real_token_share": density,
    }


# --------------------------------------------------------------------------- the driver
def main() -> None:
    args = parse_args(__doc__.splitlines()[0], repeats=2)
    sizes = QUICK if args.quick else FULL
    # The whole training split is kept (the tokenizer is trained on it, as in a real run); both sides use its first
    # train_rows rows. The dev file is whole too; the loss uses its first dev_rows rows.
    files, description = data_files(args.quick)
    workdir = WORK_DIR / "train_throughput"
    spec = {**sizes, "train": str(files["train"]), "dev": str(files["dev"]), "workdir": str(workdir)}
    from benchlib import scratch_tokenizer

    scratch_tokenizer(files["train"], sizes["vocab_size"])  # trained once here, not inside a timed side
    spec_path = workdir / f"spec-{uuid.uuid4().hex[:8]}.json"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec))
    side = [str(Path(__file__).resolve()), "--spec", str(spec_path), "--side"]
    runs = alternate({name: lambda name=name: run_json([*side, name]) for name in ("plain", "ours")}, args.repeats)
    spec_path.unlink()
    _summarize(args, spec, description, runs)


def _summarize(args, spec: dict, description: str, runs: dict) -> None:
    figures = {
        name: {key: median([run[key] for run in runs[name]]) for key in ("samples_per_second", "validation_loss")}
        for name in runs
    }
    speed = figures["ours"]["samples_per_second"] / figures["plain"]["samples_per_second"]
    loss_ratio = figures["ours"]["validation_loss"] / figures["plain"]["validation_loss"]
    same_start = len({run["initial_weights_checksum"] for name in runs for run in runs[name]}) == 1
    density = {name: runs[name][0]["real_token_share"] for name in runs}
    rows = [
        [
            name,
            f"{figures[name]['samples_per_second']:.2f}",
            f"{figures[name]['validation_loss']:.4f}",
            f"{density[name]['encoder']:.1%} / {density[name]['decoder']:.1%}",
        ]
        for name in ("plain", "ours")
    ]
    rows.append(["ours / plain", f"{speed:.2f}", f"{loss_ratio:.4f}", ""])
    print_table(
        f"Training, {runs['ours'][0]['parameters'] / 1e6:.1f}M-parameter scratch BART, {description}, first "
        f"{spec['train_rows']} train rows, batch {spec['batch']}, {spec['steps']} steps; "
        f"loss on {spec['dev_rows']} dev rows; median of {args.repeats} alternated runs each",
        ["side", "samples/s", "validation loss", "real tokens enc / dec"],
        rows,
    )
    loss_ok = abs(loss_ratio - 1) <= LOSS_TOLERANCE
    print(f"samples/s ratio {speed:.2f} (target >= {SPEED_TARGET}): {verdict(speed, SPEED_TARGET)}")
    print(f"validation loss ratio {loss_ratio:.4f} (target within 2%): {'met' if loss_ok else 'MISSED'}")
    print(f"identical initial weights on both sides: {same_start}")
    write_results(
        "train_throughput",
        args,
        {
            "spec": spec,
            "data": description,
            "runs": runs,
            "median": figures,
            "samples_per_second_ratio": speed,
            "validation_loss_ratio": loss_ratio,
            "identical_initial_weights": same_start,
            "targets": {"samples_per_second_ratio": SPEED_TARGET, "loss_tolerance": LOSS_TOLERANCE},
        },
    )


def _child() -> None:
    spec = json.loads(Path(sys.argv[sys.argv.index("--spec") + 1]).read_text())
    side = sys.argv[sys.argv.index("--side") + 1]
    from benchlib import quiet_libraries

    quiet_libraries()
    result = {"ours": run_ours, "plain": run_plain}[side](spec)
    print(json.dumps(result))


if __name__ == "__main__":
    _child() if "--side" in sys.argv else main()
