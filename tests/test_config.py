"""Tests for pipeline.config: loading, defaults, overrides, validation errors, sweep merging."""

from __future__ import annotations

import pickle
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
import yaml

from pipeline.config import (
    ConfigError,
    ConfigManager,
    PipelineConfig,
    apply_overrides,
    flat_parameter_names,
    merge_sweep_params,
    save_config,
)

REPO = Path(__file__).resolve().parents[1]
# Pipeline configs; config/sweep_config.yaml and config/*_sweep.yaml are W&B sweep configs, loaded in test_sweep.py.
SWEEP_FILES = ("sweep_config.yaml", "_sweep.yaml")
CONFIG_FILES = sorted(
    path for path in (REPO / "config").glob("*.yaml") if not path.name.endswith(SWEEP_FILES)
) + sorted((REPO / "config" / "models").glob("*.yaml"))
SECTIONS = {
    "experiment",
    "general",
    "data",
    "model",
    "tokenizer",
    "denoising",
    "training",
    "generation",
    "evaluation",
    "wandb",
    "inference",
}


def write_yaml(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(data: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        PipelineConfig.from_dict(data)
    return info.value


# ------------------------------------------------------------------------------------------------ files


def test_repository_configs_exist():
    names = {p.relative_to(REPO / "config").as_posix() for p in CONFIG_FILES}
    assert {"base_config.yaml", "tiny.yaml", "models/kobart.yaml", "models/bart.yaml"} <= names
    assert {"models/t5.yaml", "models/mt5.yaml"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_repository_config_loads_and_validates(path: Path):
    config = ConfigManager().load_config(path)
    assert set(config) == SECTIONS
    assert path.read_text(encoding="utf-8").startswith("# dialsum ")
    PipelineConfig.from_dict(config)  # the returned dict is itself valid


def test_tiny_config_is_offline_scratch_cpu():
    typed = PipelineConfig.from_dict(ConfigManager().load_config(REPO / "config" / "tiny.yaml"))
    assert typed.is_scratch()
    assert typed.general.device == "cpu"
    assert typed.wandb.mode == "disabled"
    assert typed.data.sample_data and typed.data.train_path == "data/sample/train.csv"
    assert typed.training.learning_rate == pytest.approx(1e-3)
    assert typed.training.early_stopping_patience is None


def test_base_config_values():
    config = ConfigManager().load_config(REPO / "config" / "base_config.yaml")
    assert config["model"]["checkpoint"] == "gogamza/kobart-base-v2"
    assert config["training"]["learning_rate"] == pytest.approx(1e-5)
    assert config["training"]["per_device_train_batch_size"] == 50
    assert config["evaluation"]["rouge_tokenizer"] == "kiwi"
    assert config["wandb"]["mode"] == "offline"


# ------------------------------------------------------------------------------------------------ defaults


def test_evaluation_defaults_follow_the_competition_and_flag_collapse():
    evaluation = ConfigManager().validate({})["evaluation"]
    assert evaluation == {
        "rouge_tokenizer": "kiwi",
        "multi_reference": "mean",
        "collapse_min_distinct": 0.5,
        "collapse_max_top_share": 0.3,
    }
    base = ConfigManager().load_config(REPO / "config" / "base_config.yaml")
    assert base["evaluation"]["multi_reference"] == "mean"
    english = {"evaluation": {"rouge_tokenizer": "english", "multi_reference": "max"}}
    assert PipelineConfig.from_dict(english).evaluation.rouge_tokenizer == "english"
    error = config_error({"evaluation": {"collapse_min_distinct": 1.5, "collapse_max_top_share": -0.1}})
    assert [problem.split(":")[0] for problem in error.problems] == [
        "evaluation.collapse_min_distinct",
        "evaluation.collapse_max_top_share",
    ]


def test_partial_dict_from_spec_gets_defaults():
    partial = {
        "model": {"architecture": "kobart", "checkpoint": "gogamza/kobart-base-v2"},
        "training": {"learning_rate": 5e-5, "per_device_train_batch_size": 16},
    }
    typed = PipelineConfig.from_dict(partial)
    assert typed.training.learning_rate == 5e-5
    assert typed.training.num_train_epochs == 20.0
    assert typed.generation.num_beams == 4
    assert typed.model.scratch.d_model == 128
    assert "#PhoneNumber#" in typed.tokenizer.special_tokens
    full = typed.to_dict()
    assert set(full) == SECTIONS
    assert full["general"]["output_dir"] is None
    assert len(full["training"]) == len(fields(typed.training))


def test_validate_does_not_mutate_input_and_returns_fresh_dicts():
    partial = {"training": {"learning_rate": "3e-5"}}
    first = ConfigManager().validate(partial)
    assert partial == {"training": {"learning_rate": "3e-5"}}
    first["tokenizer"]["special_tokens"].append("#New#")
    assert "#New#" not in ConfigManager().validate(partial)["tokenizer"]["special_tokens"]


def test_empty_sections_and_empty_file_mean_defaults(tmp_path: Path):
    assert ConfigManager().load_config(write_yaml(tmp_path, ""))["model"]["architecture"] == "kobart"
    config = ConfigManager().load_config(write_yaml(tmp_path, "wandb:\nmodel:\n  scratch:\n", "e.yaml"))
    assert config["wandb"]["mode"] == "disabled"


def test_derived_values():
    t5 = PipelineConfig.from_dict({"model": {"architecture": "t5", "checkpoint": "google-t5/t5-small"}})
    assert t5.prefix() == "summarize: "
    assert PipelineConfig.from_dict({"model": {"architecture": "mt5"}}).prefix() == "summarize: "
    assert PipelineConfig.from_dict({}).prefix() == ""
    custom = PipelineConfig.from_dict({"model": {"architecture": "t5"}, "tokenizer": {"prefix": ""}})
    assert custom.prefix() == ""
    typed = PipelineConfig.from_dict(
        {"training": {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 4}, "experiment": {"name": "e"}}
    )
    assert typed.effective_train_batch_size() == 32
    assert not typed.is_scratch()
    assert typed.eval_num_beams() == 4
    assert typed.run_dir("abc") == Path("artifacts/runs/e/abc")
    assert typed.predictions_path("abc") == Path("artifacts/runs/e/abc/predictions.csv")


def test_every_field_has_help():
    def walk(instance):
        for f in fields(instance):
            assert f.metadata.get("help"), f"{type(instance).__name__}.{f.name} has no help"
            value = getattr(instance, f.name)
            if is_dataclass(value):
                walk(value)

    walk(PipelineConfig())


# ------------------------------------------------------------------------------------------------ round trip


def test_loaded_dict_is_mutable_and_round_trips(tmp_path: Path):
    manager = ConfigManager()
    config = manager.load_config(REPO / "config" / "base_config.yaml")
    # The trainer API's "dynamic config" example mutates the dict in place.
    config["training"]["learning_rate"] = 3e-5
    config["training"]["warmup_ratio"] = 0.1
    config["experiment"]["description"] = "한국어 설명"
    out = tmp_path / "runs" / "x" / "config.yaml"
    manager.save_config(config, out)
    assert "한국어 설명" in out.read_text(encoding="utf-8")
    assert not [p for p in out.parent.iterdir() if p.name != "config.yaml"]  # no temp file left
    assert manager.load_config(out) == config


def test_save_config_replaces_existing_file(tmp_path: Path):
    out = tmp_path / "config.yaml"
    out.write_text("old: true\n", encoding="utf-8")
    save_config(PipelineConfig.from_dict({}), out)
    assert yaml.safe_load(out.read_text(encoding="utf-8"))["model"]["architecture"] == "kobart"


# ------------------------------------------------------------------------------------------------ coercion


def test_yaml_exponent_without_dot_is_coerced_to_float(tmp_path: Path):
    path = write_yaml(tmp_path, "training:\n  learning_rate: 1e-5\n  weight_decay: 0\n")
    assert yaml.safe_load(path.read_text())["training"]["learning_rate"] == "1e-5"  # the PyYAML quirk
    config = ConfigManager().load_config(path)
    assert config["training"]["learning_rate"] == 1e-5
    assert isinstance(config["training"]["learning_rate"], float)
    assert isinstance(config["training"]["weight_decay"], float)


def test_yaml_no_is_a_string_not_a_bool(tmp_path: Path):
    path = write_yaml(
        tmp_path,
        "experiment:\n  name: 2024-05-01\ntraining:\n  eval_strategy: no\n  save_strategy: no\n"
        "  load_best_model_at_end: false\n  early_stopping_patience: null\n",
    )
    config = ConfigManager().load_config(path)
    assert config["training"]["eval_strategy"] == "no"
    assert config["experiment"]["name"] == "2024-05-01"


def test_integral_float_accepted_for_int():
    # W&B q_uniform yields floats like 16.0 for integer parameters.
    assert (
        PipelineConfig.from_dict(
            {"training": {"per_device_train_batch_size": 16.0}}
        ).training.per_device_train_batch_size
        == 16
    )


# ------------------------------------------------------------------------------------------------ overrides


def test_overrides(tmp_path: Path):
    path = write_yaml(tmp_path, "training:\n  learning_rate: 1.0e-5\n")
    config = ConfigManager().load_config(
        path,
        overrides=[
            "training.learning_rate=3e-5",
            "wandb.mode=offline",
            "training.early_stopping_patience=null",
            "experiment.tags=[a, b]",
            "model.scratch.d_model=256",
        ],
    )
    assert config["training"]["learning_rate"] == 3e-05
    assert isinstance(config["training"]["learning_rate"], float)
    assert config["wandb"]["mode"] == "offline"
    assert config["training"]["early_stopping_patience"] is None
    assert config["experiment"]["tags"] == ["a", "b"]
    assert config["model"]["scratch"]["d_model"] == 256


def test_apply_overrides_returns_new_dict():
    original = {"training": {"learning_rate": 1e-5}}
    result = apply_overrides(original, ["training.learning_rate=2e-5", "general.seed=7"])
    assert original == {"training": {"learning_rate": 1e-5}}
    assert result == {"training": {"learning_rate": 2e-5}, "general": {"seed": 7}}  # `2e-5` is a number


def test_overrides_as_a_mapping(tmp_path: Path):
    """What a Python user writes: a dict of dotted keys, values used as given (not parsed as YAML)."""
    path = write_yaml(tmp_path, "training:\n  learning_rate: 1.0e-5\n")
    overrides = {"training.learning_rate": 3e-5, "experiment.tags": ["a", "b"], "wandb.entity": None}
    config = ConfigManager().load_config(path, overrides=overrides)
    assert config["training"]["learning_rate"] == 3e-5
    assert config["experiment"]["tags"] == ["a", "b"]
    assert config["wandb"]["entity"] is None
    assert overrides["experiment.tags"] == ["a", "b"]  # the caller's values are copied, not aliased
    assert apply_overrides({}, {"experiment.name": "1e-3"}) == {"experiment": {"name": "1e-3"}}  # a str stays one


def test_mapping_overrides_are_validated_and_named(tmp_path: Path):
    path = write_yaml(tmp_path, "{}\n")
    with pytest.raises(ConfigError) as info:
        ConfigManager().load_config(path, overrides={"training.learning_rat": 1e-4, "training..x": 1})
    message = str(info.value)
    assert "training..x=1: malformed override" in message
    with pytest.raises(ConfigError, match=r"training\.learning_rat: unknown key; did you mean 'learning_rate'\?"):
        ConfigManager().load_config(path, overrides={"training.learning_rat": 1e-4})


def test_one_string_is_not_taken_for_a_list_of_overrides():
    with pytest.raises(ConfigError, match=r"not one string; write \['training.learning_rate=3e-5'\]"):
        apply_overrides({}, "training.learning_rate=3e-5")


@pytest.mark.parametrize("override", ["training.learning_rate", "=3", "training..learning_rate=1", ".x=1"])
def test_malformed_override(override: str):
    with pytest.raises(ConfigError) as info:
        apply_overrides({}, [override])
    assert repr(override) in str(info.value)
    assert "dotted.key=value" in str(info.value)


def test_override_through_a_value_is_reported():
    with pytest.raises(ConfigError, match=r"training\.learning_rate\.x"):
        apply_overrides({"training": {"learning_rate": 1e-5}}, ["training.learning_rate.x=1"])


def test_override_with_unknown_key_suggests(tmp_path: Path):
    path = write_yaml(tmp_path, "{}\n")
    with pytest.raises(ConfigError, match=r"training\.learning_rat: unknown key; did you mean 'learning_rate'\?"):
        ConfigManager().load_config(path, overrides=["training.learning_rat=1e-4"])


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_key_suggests_closest():
    error = config_error({"model": {"archtecture": "kobart"}})
    assert "model.archtecture: unknown key; did you mean 'architecture'?" in error.problems


def test_unknown_key_that_belongs_to_another_section():
    error = config_error({"training": {"num_beams": 2}})
    assert "training.num_beams: unknown key; did you mean 'generation.num_beams'?" in error.problems


def test_unknown_section_suggests_closest():
    error = config_error({"trainng": {"learning_rate": 1e-5}})
    assert "trainng: unknown section; did you mean 'training'?" in error.problems


def test_wrong_type_str_for_int():
    error = config_error({"training": {"per_device_train_batch_size": "sixteen"}})
    assert error.problems == ["training.per_device_train_batch_size: expected an int >= 1, got 'sixteen' (a string)"]


def test_bool_for_int_is_rejected():
    error = config_error({"generation": {"num_beams": True}})
    assert "generation.num_beams" in str(error)
    assert "got true (a bool)" in str(error)


def test_bool_for_float_and_str_for_bool_rejected():
    error = config_error({"training": {"learning_rate": False, "fp16": "yes"}})
    assert len(error.problems) == 2
    assert "training.learning_rate" in str(error) and "training.fp16" in str(error)


def test_negative_learning_rate():
    error = config_error({"training": {"learning_rate": -1}})
    assert error.problems == ["training.learning_rate: expected a float >= 0, got -1"]


def test_zero_beams():
    error = config_error({"generation": {"num_beams": 0}})
    assert error.problems == ["generation.num_beams: expected an int >= 1, got 0"]


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("training", "warmup_ratio", 1.5),
        ("model", "scratch", {"dropout": 1.0}),
        ("data", "sample_size", 5),
        ("data", "max_train_samples", 0),
        ("model", "scratch", {"vocab_size": 50}),
        ("training", "max_steps", 0),
        ("general", "device", "gpu"),
        ("experiment", "name", "../escape"),
        ("wandb", "entity", ""),
        ("training", "learning_rate", "fast"),
    ],
)
def test_other_out_of_range_values(section: str, key: str, value):
    error = config_error({section: {key: value}})
    assert len(error.problems) == 1
    assert error.problems[0].startswith(f"{section}.{key}")


def test_invalid_choice_lists_choices():
    error = config_error({"model": {"architecture": "gpt2"}})
    (problem,) = error.problems
    assert problem.startswith("model.architecture: expected one of")
    for choice in ("bart", "kobart", "t5", "mt5", "gpt2"):
        assert repr(choice) in problem


def test_yaml_bool_for_choice_explains_quoting():
    error = config_error({"training": {"eval_strategy": False}})
    assert "training.eval_strategy" in str(error) and "quote" in str(error)


def test_fp16_and_bf16():
    error = config_error({"training": {"fp16": True, "bf16": True}})
    assert len(error.problems) == 1
    assert error.problems[0].startswith("training.fp16") and "training.bf16" in error.problems[0]


def test_eval_strategy_steps_requires_eval_steps():
    error = config_error({"training": {"eval_strategy": "steps", "save_strategy": "steps", "save_steps": 100}})
    assert len(error.problems) == 1
    assert error.problems[0].startswith("training.eval_steps: required")


def test_steps_strategies_valid_when_complete():
    training = {"eval_strategy": "steps", "eval_steps": 50, "save_strategy": "steps", "save_steps": 100}
    assert PipelineConfig.from_dict({"training": training}).training.eval_steps == 50
    error = config_error({"training": {**training, "save_steps": 75}})
    assert error.problems[0].startswith("training.save_steps: must be a multiple")


def test_save_strategy_must_match_eval_strategy_with_best_model():
    error = config_error({"training": {"save_strategy": "no"}})
    assert error.problems[0].startswith("training.save_strategy: must equal training.eval_strategy")
    ok = {"save_strategy": "no", "load_best_model_at_end": False, "early_stopping_patience": None}
    PipelineConfig.from_dict({"training": ok})


def test_early_stopping_needs_best_model():
    error = config_error({"training": {"load_best_model_at_end": False}})
    assert error.problems[0].startswith("training.early_stopping_patience")


def test_d_model_not_divisible_by_heads():
    error = config_error({"model": {"checkpoint": "scratch", "scratch": {"d_model": 130, "attention_heads": 4}}})
    assert len(error.problems) == 1
    assert error.problems[0].startswith("model.scratch.d_model")
    assert "model.scratch.attention_heads" in error.problems[0]


def test_scratch_positions_must_cover_lengths():
    error = config_error({"model": {"checkpoint": "scratch", "scratch": {"max_position_embeddings": 64}}})
    assert error.problems[0].startswith("model.scratch.max_position_embeddings")


def test_min_length_above_max_length():
    error = config_error({"generation": {"min_length": 200, "max_length": 100}})
    assert error.problems[0].startswith("generation.min_length")


def test_bad_special_token():
    error = config_error({"tokenizer": {"special_tokens": ["#Person1#", "Person2", "#Bad Token#"]}})
    assert len(error.problems) == 2
    assert error.problems[0].startswith("tokenizer.special_tokens[1]")
    assert error.problems[1].startswith("tokenizer.special_tokens[2]")


def test_special_tokens_must_be_list_of_strings():
    error = config_error({"tokenizer": {"special_tokens": "#Person1#"}})
    assert error.problems[0].startswith("tokenizer.special_tokens: expected a list of strings")


def test_section_must_be_mapping():
    error = config_error({"training": [1, 2]})
    assert error.problems == ["training: expected a mapping of training settings, got a list"]


def test_cross_checks_skip_fields_that_already_failed():
    # An invalid eval_strategy must not also produce a spurious "save_strategy must equal" error.
    error = config_error({"training": {"eval_strategy": "sometimes"}})
    assert len(error.problems) == 1 and error.problems[0].startswith("training.eval_strategy")


def test_many_problems_reported_together(tmp_path: Path):
    path = write_yaml(
        tmp_path,
        "model:\n  archtecture: kobart\n"
        "training:\n  learning_rate: -1\n  per_device_train_batch_size: sixteen\n  fp16: true\n  bf16: true\n"
        "generation:\n  num_beams: 0\n"
        "wandbb:\n  mode: offline\n",
    )
    with pytest.raises(ConfigError) as info:
        ConfigManager().load_config(path)
    message = str(info.value)
    paths = [
        "model.archtecture",
        "training.learning_rate",
        "training.per_device_train_batch_size",
        "training.fp16",
        "generation.num_beams",
        "wandbb",
    ]
    assert sum(p in message for p in paths) >= 3
    assert all(p in message for p in paths)
    assert message.splitlines()[0] == f"Invalid configuration in {path} (6 problems):"
    assert len(info.value.problems) == 6
    # Each line after the header starts with its key path.
    for line, key_path in zip(message.splitlines()[1:], sorted(paths, key=message.index), strict=True):
        assert line.startswith(key_path)


def test_config_error_is_value_error_and_pickles():
    error = config_error({"generation": {"num_beams": 0}})
    assert isinstance(error, ValueError)
    clone = pickle.loads(pickle.dumps(error))
    assert clone.problems == error.problems and str(clone) == str(error)


def test_top_level_not_mapping():
    with pytest.raises(ConfigError, match="top level"):
        PipelineConfig.from_dict(["model"])


# ------------------------------------------------------------------------------------------------ file errors


def test_missing_config_file(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError) as info:
        ConfigManager().load_config(missing)
    assert str(missing) in str(info.value)
    assert "dialsum validate-config" in str(info.value)


def test_missing_config_file_suggests_sibling(tmp_path: Path):
    write_yaml(tmp_path, "{}\n", "base_config.yaml")
    with pytest.raises(FileNotFoundError, match="base_config.yaml"):
        ConfigManager().load_config(tmp_path / "base_confg.yaml")


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path):
    path = write_yaml(tmp_path, "training:\n  learning_rate: 1.0e-5\n   bad: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        ConfigManager().load_config(path)
    assert str(path) in str(info.value)
    assert "line 3" in str(info.value)
    assert "YAML syntax error" in str(info.value)


def test_top_level_list_in_file(tmp_path: Path):
    path = write_yaml(tmp_path, "- model\n- training\n")
    with pytest.raises(ConfigError) as info:
        ConfigManager().load_config(path)
    assert str(path) in str(info.value) and "mapping" in str(info.value)


def test_duplicate_keys_are_reported(tmp_path: Path):
    path = write_yaml(
        tmp_path, "training:\n  learning_rate: 1.0e-5\ngeneration:\n  num_beams: 2\ntraining:\n  fp16: true\n"
    )
    with pytest.raises(ConfigError) as info:
        ConfigManager().load_config(path)
    assert info.value.problems[0].startswith("training: duplicate key at line 5 (first at line 1)")


# ------------------------------------------------------------------------------------------------ sweeps


def test_flat_parameter_names():
    names = flat_parameter_names()
    assert names["learning_rate"] == ["training.learning_rate"]
    assert names["d_model"] == ["model.scratch.d_model"]
    assert sorted(names["tags"]) == ["experiment.tags", "wandb.tags"]
    assert names["max_length"] == ["generation.max_length"]


def test_sweep_merge_flat_dotted_and_nested():
    base = {"model": {"architecture": "kobart"}}
    merged = ConfigManager().merge_sweep_params(
        base,
        {
            "learning_rate": "1e-4",
            "generation.num_beams": 2,
            "model": {"scratch": {"d_model": 256}},
            "training": {"warmup_ratio": 0.05},
            "dropout": 0.2,
        },
    )
    assert merged["training"]["learning_rate"] == 1e-4
    assert merged["generation"]["num_beams"] == 2
    assert merged["model"]["scratch"]["d_model"] == 256
    assert merged["model"]["scratch"]["dropout"] == 0.2
    assert merged["training"]["warmup_ratio"] == 0.05
    assert base == {"model": {"architecture": "kobart"}}


def test_sweep_ambiguous_flat_name_lists_candidates():
    with pytest.raises(ConfigError) as info:
        merge_sweep_params({}, {"tags": ["a"]})
    (problem,) = info.value.problems
    assert problem.startswith("tags: ambiguous")
    assert "experiment.tags" in problem and "wandb.tags" in problem and "dotted name" in problem


def test_sweep_unknown_name_suggests():
    with pytest.raises(ConfigError) as info:
        merge_sweep_params({}, {"learning_rat": 1e-4, "training.warmup_ratoi": 0.1})
    assert "learning_rat: unknown sweep parameter; did you mean 'learning_rate'?" in info.value.problems
    assert (
        "training.warmup_ratoi: unknown sweep parameter; did you mean 'training.warmup_ratio'?" in info.value.problems
    )


def test_sweep_collects_all_problems_including_values():
    with pytest.raises(ConfigError) as info:
        merge_sweep_params(
            {}, {"name": "x", "learning_rate": -1.0, "training.learning_rate": 1e-4, "num_beams": 0, "bogus": 1}
        )
    text = str(info.value)
    assert "name: ambiguous" in text
    assert "training.learning_rate: set twice" in text
    assert "generation.num_beams: expected an int >= 1, got 0" in text
    assert "bogus: unknown sweep parameter" in text
    assert "training.learning_rate: expected a float >= 0, got -1.0" in text
