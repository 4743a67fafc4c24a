"""The ``dialsum`` command line: run the lifecycle, predict, validate configs, make sample data.

Every subcommand is a thin wrapper over library functions, so what the CLI does can be done from
Python too. Errors a user can fix (a bad config key, a missing file) are printed as one clear
message with exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

EPILOG = """examples:
  dialsum run --config config/tiny.yaml                      whole lifecycle on built-in sample data (CPU, minutes)
  dialsum run --config config/base_config.yaml --set training.learning_rate=3e-5 --set wandb.mode=disabled
  dialsum validate-config config/base_config.yaml            check a config without loading any model
  dialsum predict --model artifacts/runs/tiny/RUN/model --input data/sample/test.csv --out submission.csv
  dialsum sample-data --out data/sample --n 2000             Korean dialogues in the competition format
"""


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline config YAML (see config/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value by its dotted YAML path, e.g. --set training.learning_rate=3e-5 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dialsum`` with the library's subcommands (no cluster commands)."""
    parser = argparse.ArgumentParser(
        prog="dialsum",
        description="Train, evaluate and predict dialogue summarization models (KoBART, BART, T5, mT5).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_library_commands(commands)
    return parser


def add_library_commands(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add run, validate-config, predict and sample-data; returns the ``run`` parser (the cluster CLI extends it)."""
    run = commands.add_parser(
        "run",
        help="run prepare_data -> train -> evaluate -> generate_predictions in this process",
        description="Run the four stages in this process and write the run directory "
        "(<artifact_root>/runs/<experiment>/<run_id>: model/, metrics.json, predictions.csv, "
        "manifest.json, config.yaml).",
    )
    _add_config_arguments(run)
    run.add_argument("--experiment-name", help="experiment name (default: experiment.name of the config)")
    run.set_defaults(handler=cmd_run)

    validate = commands.add_parser("validate-config", help="validate a config and print it with defaults filled in")
    validate.add_argument("config", help="config YAML")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    validate.set_defaults(handler=cmd_validate_config)

    predict = commands.add_parser("predict", help="summarize a CSV with a trained model directory")
    predict.add_argument("--model", required=True, help="a save_pretrained directory (a run's model/)")
    predict.add_argument("--input", required=True, help="CSV with fname,dialogue (summary optional)")
    predict.add_argument("--out", required=True, help="submission CSV to write (fname,summary)")
    predict.add_argument("--config", help="config for generation/tokenizer settings (default: the run's config.yaml)")
    predict.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    predict.set_defaults(handler=cmd_predict)

    sample = commands.add_parser("sample-data", help="write Korean sample dialogues in the competition format")
    sample.add_argument("--out", required=True, help="directory for train.csv, dev.csv, test.csv")
    sample.add_argument("--n", type=int, default=2000, help="training rows (dev gets n/10, test n/20; default 2000)")
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(handler=cmd_sample_data)
    return run


_SUMMARY_ROWS = (("ROUGE-1", "rouge1"), ("ROUGE-2", "rouge2"), ("ROUGE-L", "rougeL"), ("combined", "rouge_combined_f1"))
_SAMPLE_WIDTH = 100


def _split_metric(values: dict, prefix: str, key: str) -> float:
    """``values[f"{prefix}_{key}"]`` as a float; NaN (printed as ``nan``) where a split lacks it (an older run)."""
    value = values.get(f"{prefix}_{key}")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def print_run_summary(manifest: dict) -> None:
    """The closing table of a run: per labeled split, the model against LEAD-3 with the margin per metric, the
    share of distinct predictions and whether the evaluation collapsed (and why); then the first validation
    predictions beside their references.

    The samples come from the train stage's final evaluation of the saved model on the validation split (the
    split these scores are from), not from ``predictions.jsonl``: the test split usually has no references.
    """
    from pipeline.lifecycle import metric_prefix
    from pipeline.report import _truncate  # display-width aware: Hangul takes two terminal columns

    for split, values in manifest["stages"]["evaluate"]["metrics"].items():
        prefix = metric_prefix(split)
        get = functools.partial(_split_metric, values, prefix)
        print(f"{split:<12}{'model':>9}{'LEAD-3':>9}{'margin':>9}")
        for label, key in _SUMMARY_ROWS:
            print(f"  {label:<10}{get(key):>9.4f}{get(f'lead3_{key}'):>9.4f}{get(f'{key}_margin_over_lead3'):>+9.4f}")
        if f"{prefix}_rouge1_max" in values:
            other = "max" if manifest["config"]["evaluation"]["multi_reference"] == "mean" else "mean"
            others = "  ".join(f"{label} {get(f'{key}_{other}'):.4f}" for label, key in _SUMMARY_ROWS)
            print(f"  {other} over references: {others}")
        collapsed = f"yes: {values.get('collapse_reason')}" if values.get("collapsed") else "no"
        print(f"  distinct predictions {get('distinct_predictions'):.1%}; collapsed: {collapsed}")
    samples = manifest["stages"]["train"].get("validation_samples") or []
    if samples:
        print(f"sample predictions (first {len(samples)} of validation):")
        for sample in samples:
            print(f"  {sample['fname']}")
            print(f"    model: {_truncate(sample['prediction'] or '(empty)', _SAMPLE_WIDTH)}")
            print(f"    ref:   {_truncate(sample['references'][0] if sample['references'] else '', _SAMPLE_WIDTH)}")


def cmd_run(args: argparse.Namespace) -> int:
    """``dialsum run``: the four stages in process."""
    from pipeline.config import ConfigManager
    from pipeline.lifecycle import STAGE_FUNCTIONS, new_manifest

    config = ConfigManager().load_config(args.config, overrides=args.overrides)
    manifest = new_manifest(config, args.experiment_name)
    print(f"run {manifest['run_id']} -> {manifest['run_dir']}")
    for number, (stage, function) in enumerate(STAGE_FUNCTIONS.items(), start=1):
        print(f"[{number}/4] {stage} ...", flush=True)
        manifest = function(manifest)
        print(f"[{number}/4] {stage} done in {manifest['stages'][stage]['seconds']:.1f}s", flush=True)
    print_run_summary(manifest)
    print(f"model:       {manifest['stages']['train']['model_dir']}")
    print(f"predictions: {manifest['stages']['generate_predictions']['predictions_csv']}")
    print(f"manifest:    {Path(manifest['run_dir']) / 'manifest.json'}")
    return 0


def cmd_validate_config(args: argparse.Namespace) -> int:
    """``dialsum validate-config``: load, validate, print the resolved YAML."""
    import yaml

    from pipeline.config import ConfigManager

    config = ConfigManager().load_config(args.config, overrides=args.overrides)
    print(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), end="")
    print(f"# {args.config}: valid", file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """``dialsum predict``: summarize a CSV with a trained model directory."""
    from pipeline.config import ConfigManager
    from pipeline.data import Columns, read_competition_csv, tokenize_table
    from pipeline.trainer import DialogueSummarizationTrainer, write_predictions

    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"--model {model_dir} is not a save_pretrained directory (no config.json)")
    config_path = Path(args.config) if args.config else model_dir.parent / "config.yaml"
    manager = ConfigManager()
    config = (
        manager.load_config(config_path, overrides=args.overrides) if config_path.is_file() else manager.validate({})
    )
    config["model"]["checkpoint"] = str(model_dir)
    config["data"]["sample_data"] = False
    trainer = DialogueSummarizationTrainer(config)
    trainer.initialize_components()
    from datasets import Dataset

    from pipeline.config import PipelineConfig

    table = read_competition_csv(args.input, Columns.from_config(config["data"]))
    columns, _ = tokenize_table(
        table,
        trainer.tokenizer,
        PipelineConfig.from_dict(config).prefix(),
        config["tokenizer"]["encoder_max_len"],
        config["tokenizer"]["decoder_max_len"],
    )
    started = time.perf_counter()
    predictions = trainer.generate_predictions(Dataset.from_dict(columns))
    write_predictions(predictions, args.out)
    print(f"wrote {len(predictions)} summaries to {args.out} in {time.perf_counter() - started:.1f}s")
    return 0


def cmd_sample_data(args: argparse.Namespace) -> int:
    """``dialsum sample-data``: write the built-in Korean sample data."""
    from pipeline.sample_data import write_sample_data

    if args.n < 10:
        raise ValueError(f"--n must be at least 10, got {args.n}")
    paths = write_sample_data(
        args.out, n_train=args.n, n_dev=max(args.n // 10, 10), n_test=max(args.n // 20, 10), seed=args.seed
    )
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; user-fixable errors exit with status 2."""
    from pipeline.artifacts import OutputDirectoryError

    args = (parser or build_parser()).parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, KeyError, OutputDirectoryError) as error:
        # Config, data, lookup and disk errors already say what is wrong and how to fix it; a traceback adds nothing.
        print(f"error: {error.args[0] if isinstance(error, KeyError) else error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
