"""The DialogSum scratch recipe (config/dialsum_scratch.yaml) and its denoising examples, on tiny sizes.

The recipe's real data (../shared/data/dialogsum) is never needed here: the config's shape runs on the built-in
sample data with a tiny model; RESULTS.md records the full run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ConfigError, ConfigManager
from pipeline.data import DialogueTable, denoising_columns, infill

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "config" / "dialsum_scratch.yaml"
MASK = 4


@pytest.fixture(scope="module")
def scratch_tokenizer(sample_dir, tmp_path_factory):
    """A real scratch tokenizer trained on the sample data, saved and loaded back as a run would."""
    from transformers import AutoTokenizer

    from pipeline.modeling import train_scratch_tokenizer

    directory = tmp_path_factory.mktemp("tokenizer")
    train_scratch_tokenizer(sample_dir / "train.csv", 500, ["#Person1#", "#Person2#"]).save_pretrained(directory)
    return AutoTokenizer.from_pretrained(str(directory))


def test_infill_hides_about_the_ratio_keeps_order_and_is_seeded():
    tokens = list(range(100, 400))
    out = infill(tokens, MASK, 0.3, 3.0, np.random.default_rng(7))
    kept = [token for token in out if token != MASK]
    # What survives is in its original order, and about 30% was hidden (spans can overshoot the budget).
    assert kept == [token for token in tokens if token in set(kept)]
    assert 0.28 <= 1 - len(kept) / len(tokens) <= 0.40
    for seed in range(20):  # one <mask> per hidden span: never two in a row
        noisy = infill(tokens, MASK, 0.3, 3.0, np.random.default_rng(seed))
        assert MASK in noisy and not any(a == b == MASK for a, b in zip(noisy, noisy[1:], strict=False))
    assert out == infill(tokens, MASK, 0.3, 3.0, np.random.default_rng(7))
    assert out != infill(tokens, MASK, 0.3, 3.0, np.random.default_rng(8))
    assert infill(tokens, MASK, 0.0, 3.0, np.random.default_rng(7)) == tokens


def _table(count: int) -> DialogueTable:
    dialogues = [f"#Person1#: hello number {i}\n#Person2#: hi there {i}\n#Person1#: bye now {i}" for i in range(count)]
    return DialogueTable(Path("t.csv"), [f"d{i}" for i in range(count)], dialogues, [["s"]] * count)


def _settings(**changes) -> dict:
    return {"copies": 1.0, "mask_ratio": 0.3, "mean_span": 3.0, "shuffle_turns": False, "target_max_len": 12, **changes}


def test_denoising_rows_reconstruct_the_dialogue_start_from_a_corrupted_copy(scratch_tokenizer):
    table = _table(10)
    columns = denoising_columns(table, scratch_tokenizer, "", 64, _settings(copies=1.5), seed=0)
    assert len(columns["fname"]) == 15  # one per dialogue plus a seeded half
    assert len(set(columns["fname"])) == 15 and all("#denoise" in name for name in columns["fname"])
    first = table.dialogues[int(columns["fname"][0].split("#")[0][1:])]
    label = scratch_tokenizer(text_target=first)["input_ids"]
    assert columns["labels"][0] == label[:11] + label[-1:]  # the beginning, closed by </s>
    assert scratch_tokenizer.mask_token_id in columns["input_ids"][0]
    assert all(len(ids) <= 64 for ids in columns["input_ids"])
    assert columns["length"] == [len(ids) for ids in columns["input_ids"]]
    again = denoising_columns(table, scratch_tokenizer, "", 64, _settings(copies=1.5), seed=0)
    assert again == columns


def test_shuffled_turns_keep_every_turn(scratch_tokenizer):
    table = _table(30)
    columns = denoising_columns(table, scratch_tokenizer, "", 64, _settings(shuffle_turns=True), seed=1)
    original = dict(zip(table.fnames, table.dialogues, strict=True))
    inputs = {name.split("#")[0]: text for name, text in zip(columns["fname"], columns["input"], strict=True)}
    assert all(sorted(inputs[name].split("\n")) == sorted(original[name].split("\n")) for name in inputs)
    assert any(inputs[name] != original[name] for name in inputs)


def test_denoising_needs_a_mask_token(scratch_tokenizer):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(scratch_tokenizer.name_or_path)
    tokenizer.mask_token = None
    with pytest.raises(ValueError, match="denoising.copies"):
        denoising_columns(_table(3), tokenizer, "", 64, _settings(), seed=0)


def test_recipe_config_is_valid_and_bad_denoising_values_are_named():
    config = ConfigManager().load_config(RECIPE)
    assert config["model"]["checkpoint"] == "scratch" and config["denoising"]["copies"] > 0
    assert config["data"]["train_path"].endswith("dialogsum/train.csv")
    with pytest.raises(ConfigError) as error:
        ConfigManager().load_config(RECIPE, overrides=["denoising.mask_ratio=1.5", "denoising.copies=-1"])
    assert "denoising.mask_ratio" in str(error.value) and "denoising.copies" in str(error.value)


def _tiny_recipe(sample_dir: Path, root: Path) -> dict:
    """The recipe's config with only data paths and sizes changed: its denoising, label smoothing, length grouping,
    evaluation on a validation subset and a labeled test split are what runs."""
    return ConfigManager().load_config(
        RECIPE,
        overrides=[
            f"general.artifact_root={root}",
            f"data.train_path={sample_dir / 'train.csv'}",
            f"data.val_path={sample_dir / 'dev.csv'}",
            f"data.test_path={sample_dir / 'dev.csv'}",
            "data.max_val_samples=12",
            "model.scratch.d_model=64",
            "model.scratch.ffn_dim=128",
            "model.scratch.encoder_layers=1",
            "model.scratch.decoder_layers=1",
            "model.scratch.vocab_size=600",
            "tokenizer.encoder_max_len=96",
            "tokenizer.decoder_max_len=32",
            "training.max_steps=8",
            "training.eval_steps=4",
            "training.save_steps=4",
            "generation.max_length=16",
            "generation.min_length=2",
            "evaluation.rouge_tokenizer=whitespace",  # the sample data is Korean
        ],
    )


def test_recipe_shape_runs_end_to_end_on_tiny_sizes(sample_dir, tmp_path):
    from pipeline.lifecycle import STAGE_FUNCTIONS, new_manifest

    config = _tiny_recipe(sample_dir, tmp_path / "artifacts")
    manifest = new_manifest(config)
    for function in STAGE_FUNCTIONS.values():
        manifest = function(manifest)

    prepared = manifest["stages"]["prepare_data"]
    train_rows = 300 + 150  # the sample's 300 dialogues and half as many denoising rows (copies: 0.5)
    assert prepared["stats"]["train"]["denoising_rows"] == 150
    from datasets import load_from_disk

    datasets = load_from_disk(prepared["dataset_dir"])
    assert len(datasets["train"]) == train_rows and len(datasets["validation"]) == 12
    assert "#denoise" not in "".join([*datasets["validation"]["fname"], *datasets["test"]["fname"]])

    metrics = json.loads((Path(manifest["run_dir"]) / "metrics.json").read_text())
    assert set(metrics) == {"validation", "test"}  # the labeled test split is scored on all its rows
    assert 0 <= metrics["test"]["test_rouge2"] <= 1
    rows = (Path(manifest["run_dir"]) / "predictions.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "fname,summary" and len(rows) == 1 + 30
    history = [json.loads(line) for line in (Path(manifest["run_dir"]) / "history.jsonl").open()]
    assert any("eval_loss" in record for record in history) and manifest["stages"]["train"]["global_step"] == 8
