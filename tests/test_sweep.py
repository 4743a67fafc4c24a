"""Sweep configs in W&B's format: validation with key paths, grid/random/bayes search, hyperband, storage."""

from __future__ import annotations

import json
import math
import pickle
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import ConfigError, ConfigManager
from pipeline.sweep import (
    HyperbandSpec,
    SweepConfigError,
    SweepSpec,
    describe,
    grid_points,
    grid_size,
    load_sweep_config,
    metric_value,
    parse_sweep_config,
    should_stop,
    suggest,
)

REPO = Path(__file__).resolve().parents[1]
LR = "training.learning_rate"
BATCH = "training.per_device_train_batch_size"
BEAMS = "generation.num_beams"


@pytest.fixture(scope="module")
def base_config() -> dict:
    return ConfigManager().load_config(REPO / "config" / "base_config.yaml")


def sweep(parameters: dict | None = None, **top) -> dict:
    """A valid bayes sweep, with the given parameters and top-level keys replaced."""
    config = {
        "method": "bayes",
        "metric": {"name": "eval/rouge_combined_f1", "goal": "maximize"},
        "parameters": parameters or {"learning_rate": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-3}},
    }
    config.update(top)
    return {key: value for key, value in config.items() if value is not None}


def problems_of(config: dict, base: dict | None = None) -> list[str]:
    with pytest.raises(SweepConfigError) as caught:
        parse_sweep_config(config, base)
    return caught.value.problems


# ------------------------------------------------------------------------------------------ invalid


INVALID = {
    "unknown method": (sweep(method="grdi"), "method: 'grdi' is not one of grid, random, bayes"),
    "min greater than max": (
        sweep({"learning_rate": {"min": 0.1, "max": 0.01}}),
        "parameters.learning_rate.min: 0.1 is greater than max 0.01",
    ),
    "min equals max": (sweep({"num_beams": {"min": 4, "max": 4}}), "parameters.num_beams.min: 4 equals max"),
    "unknown parameter": (
        sweep({"lerning_rate": {"values": [1e-4]}}),
        "parameters.lerning_rate: unknown parameter; did you mean 'learning_rate'?",
    ),
    "unknown nested parameter": (
        sweep({"training": {"parameters": {"lerning_rate": {"values": [1e-4]}}}}),
        "parameters.training.parameters.lerning_rate: unknown parameter; did you mean 'learning_rate'",
    ),
    "ambiguous flat parameter": (
        sweep({"tags": {"values": [["a"], ["b"]]}}),
        "parameters.tags: ambiguous parameter, it matches experiment.tags, wandb.tags",
    ),
    "section as parameter": (
        sweep({"training": {"values": [1]}}),
        "parameters.training: 'training' is a config section",
    ),
    "nested under a setting": (
        sweep({"learning_rate": {"parameters": {"x": {"value": 1}}}}),
        "parameters.learning_rate: nested parameters must be a config section",
    ),
    "grid over a uniform range": (
        sweep({"learning_rate": {"min": 1e-5, "max": 1e-3}}, method="grid"),
        "parameters.learning_rate: grid search cannot enumerate a uniform parameter",
    ),
    "grid with probabilities": (
        sweep({"num_beams": {"values": [2, 4], "probabilities": [0.5, 0.5]}}, method="grid"),
        "parameters.num_beams: grid search cannot enumerate a categorical_w_probabilities parameter",
    ),
    "wrong probability count": (
        sweep({"num_beams": {"values": [2, 4, 8], "probabilities": [0.5, 0.5]}}),
        "parameters.num_beams.probabilities: 2 probabilities for 3 values",
    ),
    "probabilities not summing to 1": (
        sweep({"num_beams": {"values": [2, 4], "probabilities": [0.5, 0.6]}}),
        "parameters.num_beams.probabilities: must sum to 1",
    ),
    "hyperband without metric": (
        sweep(metric=None, method="random", early_terminate={"type": "hyperband", "min_iter": 1}),
        "metric: required for early_terminate",
    ),
    "hyperband with a nameless metric": (
        sweep(metric={"goal": "maximize"}, method="random", early_terminate={"type": "hyperband", "min_iter": 1}),
        "metric.name: required",
    ),
    "bayes without metric": (sweep(metric=None), "metric: required for method bayes"),
    "eta not above 1": (
        sweep(early_terminate={"type": "hyperband", "min_iter": 1, "eta": 1}),
        "early_terminate.eta: expected a number > 1, got 1",
    ),
    "max_iter without s": (
        sweep(early_terminate={"type": "hyperband", "max_iter": 27}),
        "early_terminate.s: required with max_iter",
    ),
    "max_iter below eta": (
        sweep(early_terminate={"type": "hyperband", "max_iter": 2, "s": 2}),
        "early_terminate.max_iter: 2 / eta 3 is below 1",
    ),
    "early_terminate not a mapping": (sweep(early_terminate="hyperband"), "early_terminate: expected a mapping"),
    "unknown early_terminate type": (
        sweep(early_terminate={"type": "median", "min_iter": 1}),
        "early_terminate.type: 'median' is not supported",
    ),
    "run_cap 0": (sweep(run_cap=0), "run_cap: expected an int >= 1, got 0"),
    "unknown top-level key": (sweep(paramaters={}), "paramaters: unknown key; did you mean 'parameters'?"),
    "unknown distribution": (
        sweep({"learning_rate": {"distribution": "log_uniform_value", "min": 1e-5, "max": 1e-3}}),
        "parameters.learning_rate.distribution: 'log_uniform_value' is not a W&B distribution; "
        "did you mean 'log_uniform_values'?",
    ),
    "log_uniform_values with min 0": (
        sweep({"learning_rate": {"distribution": "log_uniform_values", "min": 0, "max": 1e-3}}),
        "parameters.learning_rate.min: log_uniform_values needs min > 0",
    ),
    "missing parameters": ({"method": "random"}, "parameters: required"),
    "empty parameters": (sweep(parameters=None) | {"parameters": {}}, "parameters: expected a non-empty mapping"),
    "unknown key in a parameter": (
        sweep({"learning_rate": {"min": 1e-5, "max": 1e-3, "distrbution": "uniform"}}),
        "parameters.learning_rate.distrbution: not a setting of a uniform parameter; did you mean 'distribution'?",
    ),
    "int_uniform with floats": (
        sweep({"num_beams": {"distribution": "int_uniform", "min": 1.5, "max": 4}}),
        "parameters.num_beams.min: int_uniform needs an int, got 1.5",
    ),
    "q without distribution": (sweep({"num_beams": {"q": 2}}), "parameters.num_beams: q needs a distribution"),
    "bare value": (
        sweep({"learning_rate": 1e-4}),
        "parameters.learning_rate: expected a mapping such as {value: 0.0001}",
    ),
    "set twice": (
        sweep({"learning_rate": {"value": 1e-4}, "training": {"parameters": {"learning_rate": {"value": 2e-4}}}}),
        "parameters.training.parameters.learning_rate: sets training.learning_rate, which "
        "parameters.learning_rate sets already",
    ),
    "bad goal": (sweep(metric={"name": "loss", "goal": "maximise"}), "metric.goal: 'maximise' is not one of"),
}


@pytest.mark.parametrize("config, expected", INVALID.values(), ids=INVALID.keys())
def test_invalid_sweeps_name_the_key(config, expected):
    problems = problems_of(config)
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(
    "parameter, expected",
    [
        ({"per_device_train_batch_size": {"values": [16, 0]}}, "parameters.per_device_train_batch_size.values[1]: 0"),
        ({"warmup_ratio": {"min": 0.0, "max": 1.5}}, "parameters.warmup_ratio.max: 1.5"),
        ({"lr_scheduler_type": {"value": "cosine_warm"}}, "parameters.lr_scheduler_type.value: 'cosine_warm'"),
        # A float range over an int setting: endpoints pass (integral floats), draws in between do not.
        (
            {"per_device_train_batch_size": {"distribution": "uniform", "min": 8, "max": 32}},
            "parameters.per_device_train_batch_size: uniform draws values such as",
        ),
    ],
)
def test_values_are_checked_against_the_pipeline_config(base_config, parameter, expected):
    problems = problems_of(sweep(parameter), base_config)
    assert any(problem.startswith(expected) for problem in problems), problems
    # The pipeline config's own message travels along.
    assert any("training." in problem for problem in problems)


def test_constant_parameters_are_checked_together(base_config):
    """Every trial gets all the value: parameters, so a pair valid together is accepted although each alone is not."""
    base = {**base_config, "training": {**base_config["training"], "eval_strategy": "steps", "eval_steps": 500}}
    base["training"]["save_strategy"], base["training"]["save_steps"] = "steps", 500
    pair = {"eval_steps": {"value": 200}, "save_steps": {"value": 200}, "learning_rate": {"values": [1e-4, 3e-4]}}
    assert parse_sweep_config(sweep(pair, method="grid"), base).parameters  # no error
    alone = problems_of(sweep({"save_steps": {"value": 200}}, method="grid"), base)
    assert alone and "must be a multiple of training.eval_steps" in alone[0]
    broken = {"eval_steps": {"value": 300}, "save_steps": {"value": 200}}
    assert any("must be a multiple of training.eval_steps" in problem for problem in problems_of(sweep(broken), base))


def test_batch_size_zero_carries_the_config_message(base_config):
    problems = problems_of(sweep({"per_device_train_batch_size": {"values": [0]}}), base_config)
    assert problems == [
        "parameters.per_device_train_batch_size.values[0]: 0 is rejected by the pipeline config:"
        " training.per_device_train_batch_size: expected an int >= 1, got 0"
    ]


def test_every_problem_is_reported_at_once():
    config = {
        "method": "grdi",
        "parameters": {"lerning_rate": {"values": [1e-4]}, "num_beams": {"min": 8, "max": 2}},
        "run_cap": 0,
    }
    with pytest.raises(SweepConfigError) as caught:
        parse_sweep_config(config)
    error = caught.value
    assert len(error.problems) == 4
    lines = str(error).splitlines()
    assert lines[0] == "Invalid sweep config (4 problems):"
    assert lines[1:] == error.problems
    assert isinstance(error, ValueError)
    # Survives a process boundary with its problems (Celery result backends pickle exceptions).
    assert pickle.loads(pickle.dumps(error)).problems == error.problems


# ------------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    "body, distribution",
    [
        ({"values": [1, 2]}, "categorical"),
        ({"values": [1, 2], "probabilities": [0.3, 0.7]}, "categorical_w_probabilities"),
        ({"value": 3}, "constant"),
        ({"min": 1, "max": 4}, "int_uniform"),
        ({"min": 1.0, "max": 4.0}, "uniform"),
        ({"min": 1, "max": 4.5}, "uniform"),
        ({"min": "1e-5", "max": "1e-3"}, "uniform"),  # PyYAML's strings for 1e-5 are numbers here
        ({"distribution": "uniform", "min": 1, "max": 4}, "uniform"),
        ({"distribution": "q_uniform", "min": 1, "max": 8, "q": 2}, "q_uniform"),
        ({"distribution": "normal"}, "normal"),
    ],
)
def test_distribution_inference_follows_wandb(body, distribution):
    spec = parse_sweep_config(sweep({"num_beams": body}, method="random"))
    assert spec.parameters[BEAMS].distribution == distribution


def test_wandb_defaults_are_filled():
    spec = parse_sweep_config(
        sweep(
            {
                "length_penalty": {"distribution": "normal"},
                "warmup_ratio": {"distribution": "q_uniform", "min": 0.0, "max": 0.2},
                "dropout": {"distribution": "beta"},
            },
            method="random",
        )
    )
    normal, quantized, beta = spec.parameters.values()
    assert (normal.mu, normal.sigma) == (0.0, 1.0)
    assert quantized.q == 1.0
    assert (beta.a, beta.b) == (1.0, 1.0)
    assert spec.goal == "maximize" and spec.seed == 0 and spec.run_cap is None


def test_goal_defaults_to_minimize_and_metric_is_optional_for_grid():
    assert parse_sweep_config(sweep(metric={"name": "eval/loss"})).goal == "minimize"
    spec = parse_sweep_config(sweep({"num_beams": {"values": [2, 4]}}, method="grid", metric=None))
    assert spec.metric_name is None


def test_parameter_names_map_onto_config_paths():
    spec = parse_sweep_config(
        sweep(
            {
                "learning_rate": {"value": 1e-4},  # flat leaf name
                "generation.num_beams": {"values": [2, 4]},  # dotted path
                "model": {"parameters": {"scratch": {"parameters": {"d_model": {"values": [64, 128]}}}}},  # nested
                "training": {"parameters": {"warmup_ratio": {"min": 0.0, "max": 0.2}}},
            },
            method="random",
        )
    )
    assert list(spec.parameters) == [LR, BEAMS, "model.scratch.d_model", "training.warmup_ratio"]
    assert spec.parameters["model.scratch.d_model"].name == "model.scratch.d_model"
    assert spec.parameters[LR].name == "learning_rate"


def test_hyperband_brackets_match_wandb():
    # The numbers of W&B's own tests (tests/test_hyperband_stopping.py).
    assert HyperbandSpec(min_iter=3, eta=3).brackets()[:3] == [3, 9, 27]
    assert HyperbandSpec(max_iter=81, eta=3, s=3).brackets() == [3, 9, 27]
    assert HyperbandSpec(max_iter=18, eta=3, s=2).brackets() == [2, 6]
    assert HyperbandSpec(max_iter=27, eta=3, s=5).brackets() == [1, 3, 9]  # stops below 1
    spec = parse_sweep_config(sweep(early_terminate={"type": "hyperband", "min_iter": 2, "eta": 2, "strict": True}))
    assert spec.early_terminate == HyperbandSpec(min_iter=2, eta=2, strict=True)
    assert spec.early_terminate.brackets()[:4] == [2, 4, 8, 16]


# ------------------------------------------------------------------------------------------ grid


def test_grid_2x2_has_four_distinct_points():
    spec = parse_sweep_config(
        sweep({"num_beams": {"values": [2, 4, 2]}, "learning_rate": {"values": [1e-4, 3e-4, 1e-4]}}, method="grid")
    )
    points = grid_points(spec)
    assert len(points) == grid_size(spec) == 4
    assert len({json.dumps(p, sort_keys=True) for p in points}) == 4
    assert points == [
        {BEAMS: 2, LR: 1e-4},
        {BEAMS: 2, LR: 3e-4},
        {BEAMS: 4, LR: 1e-4},
        {BEAMS: 4, LR: 3e-4},
    ]
    assert [suggest(spec, i, []) for i in range(4)] == points
    assert suggest(spec, 4, []) is None


def test_grid_dedupes_integral_floats_and_expands_ranges():
    spec = parse_sweep_config(
        sweep(
            {
                "per_device_train_batch_size": {"values": [16, 16.0, 32]},
                "num_beams": {"min": 1, "max": 3},
                "warmup_ratio": {"distribution": "q_uniform", "min": 0.0, "max": 0.2, "q": 0.05},
                "no_repeat_ngram_size": {"value": 3},
            },
            method="grid",
        )
    )
    axes = {path: list(param.grid_values()) for path, param in spec.parameters.items()}
    assert axes[BATCH] == [16, 32]
    assert axes[BEAMS] == [1, 2, 3]
    # W&B enumerates numpy.arange(min, max, q): max is excluded, and there is no binary noise here.
    assert axes["training.warmup_ratio"] == [0.0, 0.05, 0.1, 0.15]
    assert grid_size(spec) == 2 * 3 * 4
    points = grid_points(spec)
    assert len({json.dumps(p, sort_keys=True) for p in points}) == len(points) == 24
    assert all(p["generation.no_repeat_ngram_size"] == 3 for p in points)


def test_grid_respects_run_cap():
    spec = parse_sweep_config(sweep({"num_beams": {"min": 1, "max": 10}}, method="grid", run_cap=3))
    assert [suggest(spec, i, [])[BEAMS] for i in range(3)] == [1, 2, 3]
    assert suggest(spec, 3, []) is None


# ------------------------------------------------------------------------------------------ random


RANDOM_PARAMETERS = {
    "learning_rate": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-1},
    "per_device_train_batch_size": {"values": [8, 16, 32]},
    "num_beams": {"min": 1, "max": 4},
    "warmup_ratio": {"distribution": "q_uniform", "min": 0.0, "max": 0.2, "q": 0.05},
    "max_length": {"distribution": "q_log_uniform_values", "min": 16, "max": 128, "q": 8},
    "length_penalty": {"distribution": "log_uniform", "min": -1, "max": 1},
    "dropout": {"distribution": "inv_log_uniform_values", "min": 0.01, "max": 0.5},
    "weight_decay": {"distribution": "normal", "mu": 0.01, "sigma": 0.001},
    "max_grad_norm": {"distribution": "log_normal", "mu": 0.0, "sigma": 0.5},
    "gradient_accumulation_steps": {"values": [1, 2], "probabilities": [0.9, 0.1]},
    "min_length": {"value": 1},
}


def test_random_is_deterministic_per_seed_and_index():
    spec = parse_sweep_config(sweep(RANDOM_PARAMETERS, method="random", seed=7))
    assert suggest(spec, 3, []) == suggest(spec, 3, [{"params": {}, "metric": 1.0, "status": "finished"}])
    assert suggest(spec, 3, []) != suggest(spec, 4, [])
    other_seed = parse_sweep_config(sweep(RANDOM_PARAMETERS, method="random", seed=8))
    assert suggest(spec, 3, []) != suggest(other_seed, 3, [])


def test_random_is_deterministic_across_processes():
    spec = parse_sweep_config(sweep(RANDOM_PARAMETERS, method="random", seed=7))
    code = (
        "import json, sys; from pipeline.sweep import SweepSpec, suggest;"
        "spec = SweepSpec.from_dict(json.loads(sys.stdin.read())); print(json.dumps(suggest(spec, 5, [])))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(spec.to_dict()),
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
        check=True,
    )
    assert json.loads(result.stdout) == suggest(spec, 5, [])


def test_random_values_stay_in_their_distributions():
    spec = parse_sweep_config(sweep(RANDOM_PARAMETERS, method="random"))
    points = [suggest(spec, i, []) for i in range(400)]
    column = {path: [p[path] for p in points] for path in spec.parameters}
    lrs = column[LR]
    assert all(1e-5 <= lr <= 1e-1 for lr in lrs)
    # Log-uniform: the median is near the geometric mean 1e-3; a uniform draw's median would be ~0.05.
    assert 3e-4 < statistics.median(lrs) < 3e-3
    assert set(column[BATCH]) == {8, 16, 32}
    assert set(column[BEAMS]) == {1, 2, 3, 4} and all(isinstance(v, int) for v in column[BEAMS])
    assert set(column["training.warmup_ratio"]) <= {0.0, 0.05, 0.1, 0.15, 0.2}
    # q written as an int: ints, multiples of q.
    assert all(isinstance(v, int) and v % 8 == 0 and 16 <= v <= 128 for v in column["generation.max_length"])
    assert all(math.exp(-1) <= v <= math.e for v in column["generation.length_penalty"])
    assert all(0.01 <= v <= 0.5 for v in column["model.scratch.dropout"])
    assert abs(statistics.mean(column["training.weight_decay"]) - 0.01) < 0.0005
    assert all(v > 0 for v in column["training.max_grad_norm"])
    assert 0.8 < column["training.gradient_accumulation_steps"].count(1) / 400 < 0.97
    assert set(column["generation.min_length"]) == {1}
    assert json.loads(json.dumps(points)) == points  # JSON-safe scalars


def test_random_respects_run_cap():
    spec = parse_sweep_config(sweep(RANDOM_PARAMETERS, method="random", run_cap=5))
    assert suggest(spec, 4, []) is not None
    assert suggest(spec, 5, []) is None


def test_metric_target_ends_the_search():
    spec = parse_sweep_config(sweep(RANDOM_PARAMETERS, method="random", metric={"name": "loss", "target": 0.5}))
    assert suggest(spec, 1, [{"params": {}, "metric": 0.7, "status": "finished"}]) is not None
    assert suggest(spec, 1, [{"params": {}, "metric": 0.4, "status": "finished"}]) is None


# ------------------------------------------------------------------------------------------ bayes


def lr_history(count: int = 10) -> list[dict]:
    """Finished trials spread over 1e-5 .. 1e-1 whose metric peaks at learning rate 1e-3."""
    history = []
    for k in range(count):
        exponent = -5 + 4 * k / (count - 1)
        params = {LR: 10**exponent, BEAMS: [1, 2, 4][k % 3], "generation.min_length": 1}
        history.append({"params": params, "metric": 1 - abs(exponent + 3) / 2, "status": "finished"})
    return history


def lr_sweep(method: str, seed: int = 0, **top) -> SweepSpec:
    parameters = {
        "learning_rate": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-1},
        "num_beams": {"values": [1, 2, 4]},
        "min_length": {"value": 1},
    }
    return parse_sweep_config(sweep(parameters, method=method, seed=seed, **top))


def test_bayes_returns_valid_deterministic_points():
    spec = lr_sweep("bayes")
    history = lr_history()
    point = suggest(spec, 10, history)
    assert set(point) == {LR, BEAMS, "generation.min_length"}
    assert 1e-5 <= point[LR] <= 1e-1 and point[BEAMS] in (1, 2, 4) and point["generation.min_length"] == 1
    assert type(point[LR]) is float and type(point[BEAMS]) is int
    assert suggest(spec, 10, history) == point
    assert suggest(SweepSpec.from_dict(spec.to_dict()), 10, history) == point
    assert suggest(spec, 0, []) is not None  # no history: TPE's random startup


def test_bayes_concentrates_where_the_history_is_good():
    spec, uniform = lr_sweep("bayes"), lr_sweep("random")
    history = lr_history()

    def median_distance(search: SweepSpec) -> float:
        """Median distance in decades from lr 1e-3 over 20 suggestions."""
        return statistics.median(abs(math.log10(suggest(search, i, history)[LR]) + 3) for i in range(10, 30))

    bayes, random_ = median_distance(spec), median_distance(uniform)
    # Log-uniform draws over 4 decades lie a median 1 decade from the middle; TPE stays close.
    assert bayes < 0.5 < random_, (bayes, random_)


def test_bayes_takes_every_trial_state():
    spec = lr_sweep("bayes", metric={"name": "rouge_combined_f1", "goal": "maximize", "impute": "worst"})
    history = [
        *lr_history(),
        {"params": {LR: 1e-2, BEAMS: 1}, "metric": None, "status": "failed"},
        {"params": {LR: 2e-3, BEAMS: 2}, "metric": 0.3, "status": "pruned", "curve": [0.1, 0.3]},
        {"params": {LR: 1e-3, BEAMS: 4}, "metric": None, "status": "running"},
        {"params": {LR: 5.0, BEAMS: 4}, "metric": 0.9, "status": "finished"},  # outside the space: left out
        {"params": {}, "metric": 0.9, "status": "finished"},
    ]
    point = suggest(spec, 15, history)
    assert 1e-5 <= point[LR] <= 1e-1


def test_bayes_respects_run_cap():
    spec = lr_sweep("bayes", run_cap=11)
    assert suggest(spec, 10, lr_history()) is not None
    assert suggest(spec, 11, lr_history()) is None


# ------------------------------------------------------------------------------------------ hyperband


def hyperband_spec(goal: str = "maximize", **hyperband) -> SweepSpec:
    settings = {"type": "hyperband", "min_iter": 1, "eta": 3, **hyperband}
    metric = {"name": "eval/rouge_combined_f1", "goal": goal}
    return parse_sweep_config(sweep(method="random", metric=metric, early_terminate=settings))


def test_hopeless_trial_stops_at_the_first_bracket():
    spec = hyperband_spec()  # brackets 1, 3, 9, ...
    assert should_stop(spec, [0.0], [[0.30], [0.35]])
    assert should_stop(spec, [0.0], [[0.30]])  # two trials: the better one survives


def test_best_trial_and_lone_trial_continue():
    spec = hyperband_spec()
    assert not should_stop(spec, [0.40], [[0.30], [0.35]])
    assert not should_stop(spec, [0.0], [])
    assert not should_stop(spec, [], [[0.3]])


def test_nothing_stops_before_the_first_bracket():
    spec = hyperband_spec(min_iter=3)
    assert not should_stop(spec, [0.0, 0.0], [[0.3, 0.4, 0.5], [0.3, 0.4, 0.5]])
    assert should_stop(spec, [0.0, 0.0, 0.0], [[0.3, 0.4, 0.5], [0.3, 0.4, 0.5]])


def test_late_judgement_between_brackets():
    # W&B checks every evaluation against the last bracket passed: a trial that reached bracket 1
    # alone still stops at evaluation 2 once better trials have reached bracket 1.
    spec = hyperband_spec()
    assert not should_stop(spec, [0.0], [])
    assert should_stop(spec, [0.0, 0.01], [[0.3], [0.35]])


def test_best_so_far_versus_strict():
    # Non-strict (W&B's default) judges the best value so far, strict the value at the bracket.
    others = [[0.5, 0.5, 0.5], [0.4, 0.4, 0.4]]
    assert not should_stop(hyperband_spec(), [0.1, 0.6, 0.2], others)
    assert should_stop(hyperband_spec(strict=True), [0.1, 0.6, 0.2], others)


def test_minimize_goal():
    spec = hyperband_spec(goal="minimize")
    assert should_stop(spec, [9.0], [[2.0], [3.0]])
    assert not should_stop(spec, [1.0], [[2.0], [3.0]])


def test_keeps_about_one_in_eta():
    # W&B's threshold is the value at position int(count / eta): 2 of 6 trials plus one survive.
    spec = hyperband_spec(eta=3)
    values = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    survivors = [v for v in values if not should_stop(spec, [v], [[o] for o in values if o != v])]
    assert survivors == [0.9, 0.8, 0.7]


def test_nan_counts_as_worst_and_no_early_terminate_never_stops():
    assert should_stop(hyperband_spec(), [float("nan")], [[0.3]])
    plain = parse_sweep_config(sweep(method="random"))
    assert not should_stop(plain, [0.0], [[0.3], [0.4]])


# ------------------------------------------------------------------------------------------ metrics


@pytest.mark.parametrize("name", ["eval/rouge_combined_f1", "eval_rouge_combined_f1", "rouge_combined_f1"])
@pytest.mark.parametrize("key", ["eval/rouge_combined_f1", "eval_rouge_combined_f1", "rouge_combined_f1"])
def test_metric_value_normalizes_prefixes(name, key):
    spec = parse_sweep_config(sweep(metric={"name": name, "goal": "maximize"}))
    assert metric_value(spec, {key: 0.42, "eval_loss": 1.0}) == 0.42


@pytest.mark.parametrize("name", ["eval/rouge2_f1", "eval/rouge2", "eval_rouge2"])
def test_metric_value_finds_the_trainer_key_for_the_names_wandb_logs(name):
    # The trainer's metrics say eval_rouge2; W&B shows the same number as eval/rouge2_f1.
    spec = parse_sweep_config(sweep(metric={"name": name, "goal": "maximize"}))
    assert metric_value(spec, {"eval_rouge1": 0.5, "eval_rouge2": 0.21, "eval_rougeL": 0.4}) == 0.21


def test_metric_value_prefers_eval_keys_and_handles_absence():
    spec = parse_sweep_config(sweep(metric={"name": "eval/loss"}))
    assert metric_value(spec, {"loss": 3.0, "eval_loss": 1.2}) == 1.2
    assert metric_value(spec, {"rouge1": 0.5}) is None
    assert metric_value(spec, {}) is None
    no_metric = parse_sweep_config(sweep(method="random", metric=None))
    assert metric_value(no_metric, {"loss": 1.0}) is None


def test_is_better_follows_the_goal():
    maximize = parse_sweep_config(sweep())
    minimize = parse_sweep_config(sweep(metric={"name": "eval/loss"}))
    assert maximize.is_better(0.5, 0.4) and not maximize.is_better(0.4, 0.5)
    assert minimize.is_better(0.4, 0.5) and not minimize.is_better(0.5, 0.4)
    assert maximize.is_better(0.1, None) and not maximize.is_better(None, 0.1)
    assert not maximize.is_better(float("nan"), 0.1)


# ------------------------------------------------------------------------------------------ storage, files, text


def test_to_dict_from_dict_round_trip(base_config):
    config = sweep(RANDOM_PARAMETERS, run_cap=20, seed=3, early_terminate={"type": "hyperband", "max_iter": 9, "s": 2})
    spec = parse_sweep_config(config, base_config)
    stored = json.dumps(spec.to_dict())  # what goes into Redis
    restored = SweepSpec.from_dict(json.loads(stored))
    assert restored == spec
    assert restored.raw == config
    assert [suggest(restored, i, []) for i in range(3)] == [suggest(spec, i, []) for i in range(3)]


SWEEP_YAML = """\
method: bayes
metric:
  name: eval/rouge_combined_f1
  goal: maximize
run_cap: 12
seed: 1
parameters:
  learning_rate:
    distribution: log_uniform_values
    min: 1e-5          # PyYAML alone would read this as a string
    max: 1e-4
  per_device_train_batch_size:
    values: [8, 16, 32]
  generation:
    parameters:
      num_beams: {values: [2, 4]}
      no_repeat_ngram_size: {values: [2, 3]}
early_terminate:
  type: hyperband
  min_iter: 1
"""


def test_load_sweep_config(tmp_path, base_config):
    # The project's own sweep config once it exists; our own YAML otherwise.
    shipped = REPO / "config" / "sweep_config.yaml"
    path = shipped
    if not shipped.exists():
        path = tmp_path / "sweep_config.yaml"
        path.write_text(SWEEP_YAML, encoding="utf-8")
    spec = load_sweep_config(path, base_config)
    assert spec.method in ("grid", "random", "bayes") and spec.parameters
    assert all(param.path in spec.parameters for param in spec.parameters.values())
    assert suggest(spec, 0, []) is not None


def test_shipped_dialsum_sweep_loads_with_the_command_its_header_gives():
    """config/dialsum_scratch_sweep.yaml against the recipe it searches, with the --set its first lines name."""
    path = REPO / "config" / "dialsum_scratch_sweep.yaml"
    header = path.read_text(encoding="utf-8").splitlines()[:2]
    assert header[0].startswith(
        "# dialsum sweep --config config/dialsum_scratch.yaml --sweep " + path.relative_to(REPO).as_posix()
    )
    overrides = [item for item in " ".join(header).split() if "=" in item and not item.startswith("--")]
    base = ConfigManager().load_config(REPO / "config" / "dialsum_scratch.yaml", overrides=overrides)
    spec = load_sweep_config(path, base)
    assert spec.method == "grid" and "model.scratch.init_std" in spec.parameters


def test_load_reads_exponents_as_floats(tmp_path, base_config):
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP_YAML, encoding="utf-8")
    spec = load_sweep_config(path, base_config)
    assert spec.parameters[LR].min == 1e-5 and spec.parameters[LR].max == 1e-4
    assert spec.seed == 1 and spec.run_cap == 12
    assert list(spec.parameters) == [LR, BATCH, BEAMS, "generation.no_repeat_ngram_size"]


def test_load_keeps_yaml_1_1_booleans_as_strings(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("method: grid\nparameters:\n  eval_strategy: {values: [no, epoch]}\n", encoding="utf-8")
    assert load_sweep_config(path).parameters["training.eval_strategy"].values == ["no", "epoch"]


def test_invalid_base_config_raises_config_error():
    with pytest.raises(ConfigError, match="training.learning_rate"):
        parse_sweep_config(sweep(), {"training": {"learning_rate": -1}})


def test_bayes_handles_list_and_null_choices():
    spec = parse_sweep_config(
        sweep({"experiment.tags": {"values": [["a"], ["b", "c"]]}, "max_train_samples": {"values": [None, 100]}})
    )
    history = [
        {"params": {"experiment.tags": ["a"], "data.max_train_samples": None}, "metric": 0.5, "status": "finished"},
        {"params": {"experiment.tags": ["b", "c"], "data.max_train_samples": 100}, "metric": 0.2, "status": "finished"},
    ]
    point = suggest(spec, 2, history)
    assert point["experiment.tags"] in (["a"], ["b", "c"]) and point["data.max_train_samples"] in (None, 100)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_sweep_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("method: random\nparameters:\n  learning_rate: {values: [1, 2}\n", encoding="utf-8")
    with pytest.raises(SweepConfigError, match=r"broken\.yaml, line 3, column \d+: YAML syntax error"):
        load_sweep_config(broken)
    duplicated = tmp_path / "duplicated.yaml"
    duplicated.write_text("method: random\nparameters: {num_beams: {value: 2}}\nmethod: grid\n", encoding="utf-8")
    with pytest.raises(SweepConfigError, match="method: duplicate key at line 3"):
        load_sweep_config(duplicated)
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("method: grdi\nparameters: {num_beams: {value: 2}}\n", encoding="utf-8")
    with pytest.raises(SweepConfigError) as caught:
        load_sweep_config(invalid)
    assert str(invalid) in str(caught.value).splitlines()[0]
    assert caught.value.problems[0].startswith("method: 'grdi'")


def test_describe_summarizes_the_sweep():
    grid = parse_sweep_config(
        sweep({"num_beams": {"values": [2, 4]}, "learning_rate": {"values": [1e-4, 3e-4]}}, method="grid")
    )
    text = describe(grid)
    assert "grid search" in text and "maximize eval/rouge_combined_f1" in text and "4 grid points" in text
    assert BEAMS in text and LR in text
    text = describe(hyperband_spec(min_iter=1, eta=3))
    assert "hyperband" in text and "1, 3, 9" in text and "runs until cancelled" in text
    text = describe(lr_sweep("bayes", run_cap=8))
    assert "up to 8 runs" in text and "1e-05 .. 0.1 (log scale)" in text and "= 1" in text


# ------------------------------------------------------------------------------------------ collapse


def _validation_metrics(combined: float, collapsed: bool) -> dict:
    """A finished trial's validation metrics as evaluate_stage writes them to metrics.json."""
    reason = "only 0.5% of the predictions are distinct (evaluation.collapse_min_distinct 50%)" if collapsed else None
    return {
        "eval_rouge_combined_f1": combined,
        "eval_lead3_rouge2": 0.239,
        "eval_rouge2_margin_over_lead3": -0.08 if collapsed else 0.05,
        "eval_collapsed": float(collapsed),
        "collapsed": collapsed,
        "collapse_reason": reason,
    }


def test_trial_records_collapse_and_lead3_from_its_validation_metrics():
    from tasks.sweeps import evaluation_fields

    assert evaluation_fields(_validation_metrics(0.61, True)) == {
        "collapsed": True,
        "collapse_reason": "only 0.5% of the predictions are distinct (evaluation.collapse_min_distinct 50%)",
        "lead3_rouge2": 0.239,
        "rouge2_margin_over_lead3": -0.08,
    }
    assert evaluation_fields({"eval_rouge_combined_f1": 0.3}) == {"collapsed": False, "collapse_reason": ""}


def test_finished_sweep_promotes_the_best_healthy_trial_not_a_collapsed_one(redis_server, tmp_path, base_config):
    """finish_sweep on a real Redis and a real registry: the collapsed trial has the highest metric."""
    from pipeline.registry import ModelRegistry
    from tasks import sweeps
    from tasks.app import app
    from tasks.state import write_run

    base = {**base_config, "general": {**base_config["general"], "artifact_root": str(tmp_path / "artifacts")}}
    registry = ModelRegistry(tmp_path / "artifacts")
    previous_broker = app.conf.broker_url
    app.conf.broker_url = redis_server.url
    try:
        sweep_id = sweeps.create_sweep(parse_sweep_config(sweep(), base).to_dict(), base, parallel=3)
        for index, (combined, collapsed) in enumerate([(0.61, True), (0.48, False), (0.52, False)]):
            run_id, run_dir = f"run-{index}", tmp_path / "artifacts" / "runs" / f"trial{index}"
            (run_dir / "model").mkdir(parents=True)
            validation = _validation_metrics(combined, collapsed)
            metrics = {key[len("eval_") :]: value for key, value in validation.items() if key.startswith("eval_")}
            registry.register(run_dir / "model", metrics, base, name="sweep-model")
            write_run(run_id, run_dir=str(run_dir))
            sweeps.update_trial(
                sweep_id,
                f"{sweep_id}-t{index}",
                trial_id=f"{sweep_id}-t{index}",
                index=index,
                params={LR: 10.0 ** -(index + 3)},
                status="finished",
                metric=combined,
                run_id=run_id,
                **sweeps.evaluation_fields(validation),
            )

        best = sweeps.finish_sweep(sweep_id, "finished")

        assert best["trial_id"] == f"{sweep_id}-t2"
        promoted = registry.get_stage("sweep-model")
        assert promoted["model_path"] == str((tmp_path / "artifacts" / "runs" / "trial2" / "model").resolve())
        leaderboard = json.loads((tmp_path / "artifacts" / "sweeps" / sweep_id / "leaderboard.json").read_text())
        assert [(row["index"], row["collapsed"]) for row in leaderboard] == [(2, False), (1, False), (0, True)]
        assert 'class="collapsed-row"' in (tmp_path / "artifacts" / "sweeps" / sweep_id / "report.html").read_text()
    finally:
        app.conf.broker_url = previous_broker
