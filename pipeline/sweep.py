"""Sweeps in W&B's sweep config format, searched here (W&B's sweep server is unreachable offline).

A user brings the sweep YAML they already write for W&B::

    method: bayes
    metric: {name: eval/rouge_combined_f1, goal: maximize}
    run_cap: 24
    parameters:
      learning_rate: {distribution: log_uniform_values, min: 1.0e-5, max: 1.0e-4}
      per_device_train_batch_size: {values: [8, 16, 32]}
      generation:
        parameters:
          num_beams: {values: [2, 4]}
    early_terminate: {type: hyperband, min_iter: 1, eta: 3}

:func:`parse_sweep_config` checks it against W&B's schema (``wandb/sweeps``' ``config/schema.json``)
and against the pipeline config, reporting every problem at once with its YAML key path, and returns
a :class:`SweepSpec` whose parameters are keyed by dotted config path (``training.learning_rate``).

The search is stateless: :func:`suggest` computes trial ``index``'s parameters from the spec and the
history of earlier trials only, so any process holding the stored history (Redis) can continue a
sweep. :func:`should_stop` is W&B's hyperband rule on the sweep metric's per-evaluation curve.

Rules taken from W&B's source (``wandb/sweeps``, ``src/sweeps``) rather than guessed:

- Distribution inference (the order of the schema's ``anyOf``): ``values`` -> categorical (with
  ``probabilities`` -> categorical_w_probabilities), ``value`` -> constant, int ``min``/``max`` ->
  int_uniform, any other numbers -> uniform. ``min`` must be strictly less than ``max``
  (``validate_min_max``); ``*_values`` log distributions need ``min > 0``.
- Sampling (``params.py``): ``log_uniform``/``inv_log_uniform``/``q_log_uniform`` take exponents
  (values e**min..e**max, e**-max..e**-min); the ``_values`` variants take the values themselves;
  ``q_*`` round to multiples of ``q`` (``round(x / q) * q``), ints when ``q`` is written as an int;
  ``q`` defaults to 1.0, ``mu``/``sigma`` to 0/1, beta's ``a``/``b`` to 1.
- Grid (``grid_search.py``): only categorical, constant, int_uniform (every int in [min, max]) and
  q_uniform (``numpy.arange(min, max, q)``: ``max`` itself is excluded) parameters; duplicate values
  count once, with integral floats equal to ints (``yaml_hash``).
- Hyperband (``hyperband_stopping.py``): see :meth:`HyperbandSpec.brackets` and :func:`should_stop`.

Our extensions: a top-level ``seed`` (default 0) that makes random and bayes sweeps reproducible,
and bayes search by Optuna's TPE instead of W&B's Gaussian process (see :func:`suggest`).

This module imports only the standard library, PyYAML and :mod:`pipeline.config`; Optuna is imported
when a bayes sweep is asked for a point, so validating a sweep stays cheap.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import json
import math
import os
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.config import (
    ConfigError,
    ConfigManager,
    flat_parameter_names,
    merge_sweep_params,
    parse_yaml,
)
from pipeline.config import (
    show_value as _show,
)
from pipeline.config import (
    type_name as _type_name,
)

__all__ = [
    "DISTRIBUTIONS",
    "GRID_DISTRIBUTIONS",
    "METHODS",
    "HyperbandSpec",
    "ParamSpec",
    "SweepConfigError",
    "SweepSpec",
    "describe",
    "grid_points",
    "grid_size",
    "load_sweep_config",
    "metric_value",
    "parse_sweep_config",
    "should_stop",
    "suggest",
]

METHODS = ("grid", "random", "bayes")
GOALS = ("minimize", "maximize")
GRID_DISTRIBUTIONS = ("categorical", "constant", "int_uniform", "q_uniform")

_RANGE = ("min", "max")
# distribution -> (required keys, optional keys with W&B's defaults), from W&B's schema.json.
_DISTRIBUTION_KEYS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "constant": (("value",), {}),
    "categorical": (("values",), {}),
    "categorical_w_probabilities": (("values", "probabilities"), {}),
    "int_uniform": (_RANGE, {}),
    "uniform": (_RANGE, {}),
    "q_uniform": (_RANGE, {"q": 1.0}),
    "log_uniform": (_RANGE, {}),
    "log_uniform_values": (_RANGE, {}),
    "inv_log_uniform": (_RANGE, {}),
    "inv_log_uniform_values": (_RANGE, {}),
    "q_log_uniform": (_RANGE, {"q": 1.0}),
    "q_log_uniform_values": (_RANGE, {"q": 1.0}),
    "normal": ((), {"mu": 0.0, "sigma": 1.0}),
    "q_normal": ((), {"mu": 0.0, "sigma": 1.0, "q": 1.0}),
    "log_normal": ((), {"mu": 0.0, "sigma": 1.0}),
    "q_log_normal": ((), {"mu": 0.0, "sigma": 1.0, "q": 1.0}),
    "beta": ((), {"a": 1.0, "b": 1.0}),
    "q_beta": ((), {"a": 1.0, "b": 1.0, "q": 1.0}),
}
DISTRIBUTIONS = tuple(_DISTRIBUTION_KEYS)
_POSITIVE_RANGE = ("log_uniform_values", "inv_log_uniform_values", "q_log_uniform_values")
_EXPONENT_RANGE = ("log_uniform", "inv_log_uniform", "q_log_uniform")
_CATEGORICAL = ("categorical", "categorical_w_probabilities")
# Unbounded distributions get these bounds where bounds are needed (TPE's search space): +-4 sigma.
_SIGMAS = 4.0
# math.exp overflows above ~709; exponents beyond this are a mistake (log_uniform_values was meant).
_MAX_EXPONENT = 700.0

_TOP_LEVEL_KEYS = (
    "method",
    "metric",
    "parameters",
    "early_terminate",
    "run_cap",
    "name",
    "description",
    "program",
    "command",
    "project",
    "entity",
    "seed",
)
# Valid in W&B's schema but meaningless here (they select W&B's controller or launch jobs): accepted, ignored.
_IGNORED_WANDB_KEYS = ("apiVersion", "kind", "controller", "job", "image_uri")
_METRIC_KEYS = ("name", "goal", "target", "impute", "impute_while_running")
_IMPUTE = ("latest", "best", "worst")
_HYPERBAND_KEYS = ("type", "min_iter", "max_iter", "s", "eta", "strict")
# W&B computes 100 brackets from min_iter; beyond this many evaluations none can matter.
_MIN_ITER_BRACKETS = 100
_MAX_BRACKET = 10**12
_EVAL_PREFIXES = ("eval/", "eval_")
_WANDB_ROUGE_NAMES = {"rouge1_f1": "rouge1", "rouge2_f1": "rouge2", "rougeL_f1": "rougeL"}
# TPE samples at random until this many trials have finished (Optuna's default), fewer for small run caps.
_TPE_STARTUP = 10
_FLOAT_STRING = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


# --------------------------------------------------------------------------------------------------
# Errors and specs
# --------------------------------------------------------------------------------------------------


class SweepConfigError(ValueError):
    """An invalid sweep config: every problem found, reported together.

    Attributes:
        problems: One line per problem, each starting with the key path in the sweep YAML it
            concerns (``parameters.learning_rate.min: 0.1 is greater than max 0.01``).
        source: Where the sweep came from (a file path), or None.
    """

    def __init__(self, problems: list[str] | str, source: str | os.PathLike[str] | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = None if source is None else str(source)
        where = f" in {self.source}" if self.source else ""
        count = len(self.problems)
        header = f"Invalid sweep config{where} ({count} problem{'s' if count != 1 else ''}):"
        super().__init__("\n".join([header, *self.problems]))

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the problem list when the exception crosses a process boundary (Celery result backends).
        return (type(self), (self.problems, self.source))


@dataclass
class ParamSpec:
    """One swept parameter, with its distribution made explicit and W&B's defaults filled in.

    Attributes:
        name: The name as written in the sweep (``learning_rate``; nested names joined by dots).
        path: The dotted config path it sets (``training.learning_rate``).
        distribution: W&B's distribution name, inferred when the sweep omitted it.
        values: Choices of categorical distributions.
        value: The value of a constant.
        min, max: Bounds of range distributions (exponents for log_uniform, inv_log_uniform, q_log_uniform).
        q: Quantization step of ``q_*`` distributions.
        mu, sigma: Normal and log-normal parameters.
        probabilities: Weights of categorical_w_probabilities, one per value.
        a, b: Beta distribution parameters.
    """

    name: str
    path: str
    distribution: str
    values: list[Any] | None = None
    value: Any | None = None
    min: float | None = None
    max: float | None = None
    q: float | None = None
    mu: float | None = None
    sigma: float | None = None
    probabilities: list[float] | None = None
    a: float | None = None
    b: float | None = None

    def sample(self, rng: random.Random) -> Any:
        """Draw one value the way W&B's random search does (its ``ppf`` per distribution)."""
        kind = self.distribution
        if kind == "constant":
            return self.value
        if kind == "categorical":
            return rng.choice(self.values)
        if kind == "categorical_w_probabilities":
            return rng.choices(self.values, weights=self.probabilities)[0]
        if kind == "int_uniform":
            return rng.randint(self.min, self.max)
        if kind in ("normal", "q_normal"):
            x = rng.gauss(self.mu, self.sigma)
        elif kind in ("log_normal", "q_log_normal"):
            x = math.exp(rng.gauss(self.mu, self.sigma))
        elif kind in ("beta", "q_beta"):
            x = rng.betavariate(self.a, self.b)
        else:
            low, high, log = self.support()
            x = math.exp(rng.uniform(math.log(low), math.log(high))) if log else rng.uniform(low, high)
        return self.quantize(x)

    def support(self) -> tuple[float, float, bool]:
        """Return ``(low, high, log_scale)``: where the (unquantized) values lie.

        Unbounded distributions get mu +- 4 sigma (in log space for log_normal); beta gets [0, 1].
        """
        kind = self.distribution.removeprefix("q_")
        if kind == "uniform":
            return float(self.min), float(self.max), False
        if kind == "log_uniform":
            return math.exp(self.min), math.exp(self.max), True
        if kind in ("log_uniform_values", "inv_log_uniform_values"):
            # W&B samples inv_log_uniform_values as exp(-U[-log max, -log min]): log-uniform on [min, max].
            return float(self.min), float(self.max), True
        if kind == "inv_log_uniform":
            return math.exp(-self.max), math.exp(-self.min), True
        if kind == "normal":
            return self.mu - _SIGMAS * self.sigma, self.mu + _SIGMAS * self.sigma, False
        if kind == "log_normal":
            return math.exp(self.mu - _SIGMAS * self.sigma), math.exp(self.mu + _SIGMAS * self.sigma), True
        if kind == "beta":
            return 0.0, 1.0, False
        raise ValueError(f"{self.path}: a {self.distribution} parameter has no continuous support")

    def quantize(self, x: float) -> Any:
        """Round ``x`` to a multiple of ``q`` for ``q_*`` distributions (an int when ``q`` is an int)."""
        if not self.distribution.startswith("q_"):
            return float(x)
        return _step_value(round(x / self.q) * self.q, self.q)

    def grid_values(self) -> Sequence[Any]:
        """Return the values a grid search enumerates, without duplicates, in a stable order.

        Raises:
            ValueError: The distribution is continuous (grid search cannot enumerate it).
        """
        kind = self.distribution
        if kind == "constant":
            return [self.value]
        if kind == "categorical":
            return _dedupe(self.values)
        if kind == "int_uniform":
            # A range: large integer grids are indexed without being materialized.
            return range(self.min, self.max + 1)
        if kind == "q_uniform":
            # W&B enumerates numpy.arange(min, max, q): from min in steps of q, max excluded.
            count = max(1, math.ceil((self.max - self.min) / self.q - 1e-9))
            step_type = self.q if isinstance(self.min, int) else float(self.q)
            return [_step_value(self.min + k * self.q, step_type) for k in range(count)]
        raise ValueError(
            f"{self.path}: grid search cannot enumerate a {kind} parameter; allowed: {', '.join(GRID_DISTRIBUTIONS)}"
        )


@dataclass
class HyperbandSpec:
    """W&B's hyperband early termination (``early_terminate: {type: hyperband, ...}``).

    Attributes:
        min_iter: First bracket; brackets follow at ``min_iter * eta**k`` (W&B ignores ``s`` then).
        max_iter: With ``s``: brackets at ``max_iter / eta**k`` for k = 1..s (those >= 1).
        eta: Keep roughly the best 1/eta of the trials at each bracket (W&B default 3).
        s: Number of brackets below ``max_iter``; W&B has no default and requires it with ``max_iter``.
        strict: Judge a trial by its value at the bracket (W&B's "strict") instead of its best value
            so far. W&B's tests and docs give false as the default.
    """

    min_iter: int | None = None
    max_iter: int | None = None
    eta: float = 3
    s: int | None = None
    strict: bool = False

    def brackets(self) -> list[int]:
        """Return the evaluation counts (1-based) at which trials are compared, ascending.

        As W&B computes them: with ``max_iter``, ``int(max_iter / eta**k)`` for k = 1..s, stopping
        below 1 (max_iter 27, eta 3, s 3 -> [1, 3, 9]); with ``min_iter``, ``int(min_iter * eta**k)``
        for k = 0..99 (min_iter 3, eta 3 -> [3, 9, 27, ...]), here cut at 10**12 evaluations.
        """
        bands: set[int] = set()
        if self.max_iter is not None:
            band = float(self.max_iter)
            for _ in range(self.s or 0):
                band /= self.eta
                if band < 1:
                    break
                bands.add(int(band))
        elif self.min_iter is not None:
            band = float(self.min_iter)
            for _ in range(_MIN_ITER_BRACKETS):
                if band > _MAX_BRACKET:
                    break
                bands.add(int(band))
                band *= self.eta
        return sorted(bands)


@dataclass
class SweepSpec:
    """A validated sweep: search method, objective, parameters by config path, early termination.

    Attributes:
        method: ``grid``, ``random`` or ``bayes``.
        metric_name: The metric as written (``eval/rouge_combined_f1``), or None (grid and random
            sweeps may omit ``metric``); :func:`metric_value` finds it under any eval prefix.
        goal: ``maximize`` or ``minimize`` (W&B's default).
        parameters: Parameter specs keyed by dotted config path, in the sweep's order.
        early_terminate: Hyperband settings, or None.
        run_cap: Most trials the sweep starts, or None (a grid ends when exhausted; random and bayes
            run until cancelled).
        seed: Our extension (top-level ``seed``, default 0): random and bayes points are a function
            of ``(seed, trial index, history)``.
        raw: The sweep config as given.
        metric_target: ``metric.target``: no new trials once a finished trial reaches it.
        metric_impute: ``metric.impute`` (W&B default ``worst``): the metric bayes search assumes for
            failed trials.
    """

    method: str
    metric_name: str | None
    goal: str
    parameters: dict[str, ParamSpec]
    early_terminate: HyperbandSpec | None = None
    run_cap: int | None = None
    seed: int = 0
    raw: dict[str, Any] = field(default_factory=dict)
    metric_target: float | None = None
    metric_impute: str = "worst"

    def is_better(self, a: float | None, b: float | None) -> bool:
        """Return whether metric value ``a`` beats ``b`` under the goal; a missing or NaN value never wins."""
        if not _is_number(a):
            return False
        if not _is_number(b):
            return True
        return a > b if self.goal == "maximize" else a < b

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict (for Redis) that :meth:`from_dict` turns back into an equal spec."""
        return json.loads(json.dumps(asdict(self), default=_json_default))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepSpec:
        """Rebuild a spec from :meth:`to_dict`'s output (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["parameters"] = {path: ParamSpec(**param) for path, param in data["parameters"].items()}
        if data.get("early_terminate") is not None:
            values["early_terminate"] = HyperbandSpec(**data["early_terminate"])
        return cls(**values)


# --------------------------------------------------------------------------------------------------
# Parsing and validation
# --------------------------------------------------------------------------------------------------


def parse_sweep_config(sweep: Mapping[str, Any], base_config: Mapping[str, Any] | None = None) -> SweepSpec:
    """Validate a W&B sweep config and return its :class:`SweepSpec`.

    Args:
        sweep: The sweep config (a parsed YAML mapping).
        base_config: The pipeline config trials start from. When given, every categorical or
            constant value and every range endpoint must also pass pipeline config validation
            when merged into it (``merge_sweep_params``).

    Returns:
        The spec, parameters keyed by dotted config path.

    Raises:
        SweepConfigError: Listing every problem, each prefixed by its key path in the sweep.
        ConfigError: ``base_config`` itself is invalid.
    """
    if not isinstance(sweep, Mapping):
        raise SweepConfigError(
            [f"(top level): expected a mapping (method:, metric:, parameters:), got {_type_name(sweep)}"]
        )
    problems: list[str] = []
    problems.extend(_top_level_problems(sweep))
    method = _parse_method(sweep, problems)
    metric = _parse_metric(sweep.get("metric"), problems)
    parameters, key_paths = _parse_parameters(sweep, problems)
    hyperband = _parse_early_terminate(sweep.get("early_terminate"), problems)
    run_cap = _parse_count(sweep, "run_cap", 1, problems)
    seed = _parse_count(sweep, "seed", 0, problems)
    problems.extend(_requirement_problems(sweep, method, metric, hyperband))
    if method == "grid":
        problems.extend(_grid_problems(parameters, key_paths))
    if base_config is not None and parameters:
        problems.extend(_base_config_problems(parameters, key_paths, base_config, method))
    if problems:
        raise SweepConfigError(problems)
    return SweepSpec(
        method=method,
        metric_name=metric["name"],
        goal=metric["goal"],
        parameters=parameters,
        early_terminate=hyperband,
        run_cap=run_cap,
        seed=0 if seed is None else seed,
        raw=copy.deepcopy(dict(sweep)),
        metric_target=metric["target"],
        metric_impute=metric["impute"],
    )


def load_sweep_config(path: str | os.PathLike[str], base_config: Mapping[str, Any] | None = None) -> SweepSpec:
    """Read a sweep YAML file and parse it with :func:`parse_sweep_config`.

    The YAML is read with YAML 1.2 scalars: ``1e-5`` is a float (PyYAML alone reads it as a string),
    ``no``/``on`` stay strings; duplicate keys are errors (PyYAML would silently keep the last).

    Raises:
        FileNotFoundError: The file does not exist (the message names it).
        SweepConfigError: YAML syntax error (with file, line and column) or any sweep problem.
    """
    file = Path(path)
    if not file.exists():
        where = "" if file.is_absolute() else f" (relative to {os.getcwd()})"
        raise FileNotFoundError(f"sweep config not found: {str(file)!r}{where}")
    source = str(path)
    data = parse_yaml(file.read_text(encoding="utf-8"), source, SweepConfigError)
    if not isinstance(data, Mapping):
        raise SweepConfigError(
            [f"(top level): expected a mapping (method:, metric:, parameters:), got {_type_name(data)}"], source
        )
    try:
        return parse_sweep_config(data, base_config)
    except SweepConfigError as exc:
        raise SweepConfigError(exc.problems, source) from None


def _top_level_problems(sweep: Mapping[str, Any]) -> Iterator[str]:
    allowed = _TOP_LEVEL_KEYS + _IGNORED_WANDB_KEYS
    for key in sweep:
        if key not in allowed:
            yield f"{key}: unknown key{_did_you_mean(str(key), _TOP_LEVEL_KEYS, allowed)}"
    for key in ("name", "description", "program", "project", "entity"):
        if key in sweep and sweep[key] is not None and not isinstance(sweep[key], str):
            yield f"{key}: expected a string, got {_show(sweep[key])}"
    if "command" in sweep and not isinstance(sweep["command"], list):
        yield f"command: expected a list, got {_show(sweep['command'])}"


def _parse_method(sweep: Mapping[str, Any], problems: list[str]) -> str:
    method = sweep.get("method")
    if method is None:
        problems.append(f"method: required; one of {', '.join(METHODS)}")
    elif method not in METHODS:
        hint = _close(str(method), METHODS)
        hint = f"; did you mean {hint!r}?" if hint else ""
        if method == "custom":
            hint = "; custom schedulers need W&B's launch service"
        problems.append(f"method: {_show(method)} is not one of {', '.join(METHODS)}{hint}")
    return method if method in METHODS else "random"


def _parse_metric(raw: Any, problems: list[str]) -> dict[str, Any]:
    metric: dict[str, Any] = {"name": None, "goal": "minimize", "target": None, "impute": "worst"}
    if raw is None:
        return metric
    if not isinstance(raw, Mapping):
        problems.append(
            f"metric: expected a mapping like {{name: eval/rouge_combined_f1, goal: maximize}}, got {_show(raw)}"
        )
        return metric
    for key in raw:
        if key not in _METRIC_KEYS:
            problems.append(f"metric.{key}: unknown key{_did_you_mean(str(key), _METRIC_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(f"metric.name: required, a metric name such as eval/rouge_combined_f1; got {_show(name)}")
    else:
        metric["name"] = name.strip()
    goal = raw.get("goal", "minimize")
    if goal not in GOALS:
        problems.append(f"metric.goal: {_show(goal)} is not one of {', '.join(GOALS)}")
    else:
        metric["goal"] = goal
    if raw.get("target") is not None:
        target = _number(raw["target"])
        if target is None:
            problems.append(f"metric.target: expected a number, got {_show(raw['target'])}")
        metric["target"] = target
    if raw.get("impute", "worst") not in _IMPUTE:
        problems.append(f"metric.impute: {_show(raw['impute'])} is not one of {', '.join(_IMPUTE)}")
    else:
        metric["impute"] = raw.get("impute", "worst")
    # impute_while_running is accepted for W&B compatibility; running trials are handled by TPE's constant liar.
    if raw.get("impute_while_running", "false") not in (*_IMPUTE, "false", False):
        problems.append(
            f"metric.impute_while_running: {_show(raw['impute_while_running'])} is not one of"
            " latest, best, worst, false"
        )
    return metric


def _parse_count(sweep: Mapping[str, Any], key: str, minimum: int, problems: list[str]) -> int | None:
    value = sweep.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        problems.append(f"{key}: expected an int >= {minimum}, got {_show(value)}")
        return None
    return value


def _requirement_problems(
    sweep: Mapping[str, Any], method: str, metric: Mapping[str, Any], hyperband: HyperbandSpec | None
) -> Iterator[str]:
    # A metric section without a name is reported by _parse_metric already.
    no_metric = "metric" not in sweep or sweep["metric"] is None
    if method == "bayes" and no_metric:
        yield "metric: required for method bayes; e.g. metric: {name: eval/rouge_combined_f1, goal: maximize}"
    if hyperband is not None and no_metric:
        yield (
            "metric: required for early_terminate (hyperband compares trials on it);"
            " e.g. metric: {name: eval/rouge_combined_f1, goal: maximize}"
        )


# --------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------


@functools.cache
def _config_names() -> tuple[dict[str, tuple[str, ...]], frozenset[str], frozenset[str]]:
    """Return (flat name -> dotted paths, leaf paths, section paths) of the pipeline config."""
    flat = {name: tuple(paths) for name, paths in flat_parameter_names().items()}
    leaves = frozenset(path for paths in flat.values() for path in paths)
    sections = frozenset(leaf.rsplit(".", i)[0] for leaf in leaves for i in range(1, leaf.count(".") + 1))
    return flat, leaves, sections


def _parse_parameters(sweep: Mapping[str, Any], problems: list[str]) -> tuple[dict[str, ParamSpec], dict[str, str]]:
    """Return (specs by config path, YAML key path by config path)."""
    raw = sweep.get("parameters")
    if "parameters" not in sweep:
        problems.append("parameters: required; a mapping of config keys to search, e.g. learning_rate: {values: [...]}")
        return {}, {}
    if not isinstance(raw, Mapping) or not raw:
        problems.append(f"parameters: expected a non-empty mapping of config keys to search, got {_show(raw)}")
        return {}, {}
    specs: dict[str, ParamSpec] = {}
    key_paths: dict[str, str] = {}
    for key_path, name, body in _walk_parameters(raw, "parameters", "", problems):
        path, problem = _resolve_name(name)
        if problem:
            problems.append(f"{key_path}: {problem}")
        spec = _parse_param(name, path or name, body, key_path, problems)
        if path is None or spec is None:
            continue
        if path in specs:
            problems.append(f"{key_path}: sets {path}, which {key_paths[path]} sets already; keep one")
            continue
        specs[path] = spec
        key_paths[path] = key_path
    return specs, key_paths


def _walk_parameters(
    raw: Mapping[Any, Any], yaml_path: str, prefix: str, problems: list[str]
) -> Iterator[tuple[str, str, Any]]:
    """Yield (YAML key path, dotted name, spec) for every leaf parameter, descending into nested ``parameters``."""
    _, _, sections = _config_names()
    for key, body in raw.items():
        key_path = f"{yaml_path}.{key}"
        if not isinstance(key, str) or not key:
            problems.append(f"{key_path}: parameter names must be non-empty strings, got {_show(key)}")
            continue
        name = prefix + key
        if not (isinstance(body, Mapping) and "parameters" in body):
            yield key_path, name, body
            continue
        extra = [k for k in body if k != "parameters"]
        if extra:
            problems.append(f"{key_path}: a nested parameter holds only 'parameters', not {', '.join(map(str, extra))}")
        nested = body["parameters"]
        if name not in sections:
            hint = _close(name, sections)
            hint = f"; did you mean {hint!r}?" if hint else f"; sections: {', '.join(sorted(sections))}"
            problems.append(f"{key_path}: nested parameters must be a config section, {name!r} is not{hint}")
        elif not isinstance(nested, Mapping) or not nested:
            problems.append(f"{key_path}.parameters: expected a non-empty mapping of {name} keys, got {_show(nested)}")
        else:
            yield from _walk_parameters(nested, f"{key_path}.parameters", f"{name}.", problems)


def _resolve_name(name: str) -> tuple[str | None, str | None]:
    """Map a sweep parameter name onto a dotted config path: ``(path, None)`` or ``(None, problem)``."""
    flat, leaves, sections = _config_names()
    if name in leaves:
        return name, None
    if name in sections:
        return None, (
            f"{name!r} is a config section, not a setting; nest its settings under"
            f" {{parameters: {{...}}}} or use dotted names like '{name}.<key>'"
        )
    candidates = flat.get(name, ()) if "." not in name else ()
    if len(candidates) == 1:
        return candidates[0], None
    if candidates:
        return None, f"ambiguous parameter, it matches {', '.join(candidates)}; use the dotted name"
    return None, f"unknown parameter{_name_suggestion(name)}"


def _name_suggestion(name: str) -> str:
    flat, leaves, _ = _config_names()
    # A dotted tail of a real path (`scratch.d_model`) is the likeliest mistake for dotted names.
    tails = sorted(leaf for leaf in leaves if leaf.endswith("." + name))
    if tails:
        return f"; did you mean {tails[0]!r}?"
    section, _, leaf = name.rpartition(".")
    if section:
        # Suggest within the section written (the nested spelling), else any dotted path.
        in_section = [p.removeprefix(section + ".") for p in leaves if p.startswith(section + ".")]
        close = _close(leaf, in_section)
        if close:
            return f"; did you mean {close!r} ({section}.{close})?"
        close = _close(name, leaves)
    else:
        close = _close(name, flat)
    return (
        f"; did you mean {close!r}?" if close else "; use a config key such as learning_rate or training.learning_rate"
    )


def _parse_param(name: str, path: str, body: Any, key_path: str, problems: list[str]) -> ParamSpec | None:
    """Validate one parameter's spec and return it with its distribution inferred and defaults filled."""
    if not isinstance(body, Mapping):
        problems.append(
            f"{key_path}: expected a mapping such as {{value: {_show(body)}}}, {{values: [...]}} or"
            f" {{min: ..., max: ...}}, got {_show(body)}"
        )
        return None
    distribution = body.get("distribution")
    if distribution is None:
        distribution, problem = _infer_distribution(body)
        if problem:
            problems.append(f"{key_path}: {problem}")
            return None
    elif distribution not in _DISTRIBUTION_KEYS:
        problems.append(
            f"{key_path}.distribution: {_show(distribution)} is not a W&B distribution"
            f"{_did_you_mean(str(distribution), DISTRIBUTIONS)} (known: {', '.join(DISTRIBUTIONS)})"
        )
        return None
    required, defaults = _DISTRIBUTION_KEYS[distribution]
    found = len(problems)
    allowed = ("distribution", *required, *defaults)
    for key in body:
        if key not in allowed:
            problems.append(
                f"{key_path}.{key}: not a setting of a {distribution} parameter"
                f"{_did_you_mean(str(key), allowed)} (allowed: {', '.join(allowed)})"
            )
    for key in required:
        if key not in body:
            problems.append(f"{key_path}: a {distribution} parameter needs {key}")
    if len(problems) > found:
        return None
    settings = {**defaults, **{k: v for k, v in body.items() if k != "distribution"}}
    spec = ParamSpec(name=name, path=path, distribution=distribution)
    problems.extend(_fill_settings(spec, settings, key_path))
    return spec if len(problems) == found else None


def _infer_distribution(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """W&B's inference when ``distribution`` is omitted (the first matching schema wins)."""
    if "values" in body:
        return ("categorical_w_probabilities" if "probabilities" in body else "categorical"), None
    if "value" in body:
        return "constant", None
    if "min" in body and "max" in body:
        both_ints = all(isinstance(body[k], int) and not isinstance(body[k], bool) for k in _RANGE)
        return ("int_uniform" if both_ints else "uniform"), None
    if "min" in body or "max" in body:
        given, missing = ("min", "max") if "min" in body else ("max", "min")
        return None, f"{given} without {missing}; a range needs both"
    needs = [k for k in ("q", "mu", "sigma", "a", "b") if k in body]
    if needs:
        return None, f"{', '.join(needs)} needs a distribution (e.g. q_uniform, normal, log_normal, beta)"
    return None, "expected value, values, min and max, a distribution, or nested parameters"


def _fill_settings(spec: ParamSpec, settings: Mapping[str, Any], key_path: str) -> Iterator[str]:
    """Check each setting of ``spec``'s distribution and store it on ``spec``; yield problems."""
    if "value" in settings:
        spec.value = settings["value"]
        if not _json_safe(spec.value):
            yield f"{key_path}.value: {_show(spec.value)} is not a plain value (number, string, bool, null or list)"
    if "values" in settings:
        yield from _fill_values(spec, settings, key_path)
    for key in ("min", "max", "q", "mu", "sigma", "a", "b"):
        if key in settings:
            number = _number(settings[key])
            if number is None:
                yield f"{key_path}.{key}: expected a finite number, got {_show(settings[key])}"
            setattr(spec, key, number)
    if spec.distribution == "int_uniform":
        yield from _int_range(spec, key_path)
    yield from _range_problems(spec, key_path)
    for key, low, strict in (("q", 0, True), ("sigma", 0, False), ("a", 0, True), ("b", 0, True)):
        value = getattr(spec, key)
        if value is not None and (value < low or (strict and value == low)):
            yield f"{key_path}.{key}: must be {'>' if strict else '>='} {low}, got {_show(value)}"


def _fill_values(spec: ParamSpec, settings: Mapping[str, Any], key_path: str) -> Iterator[str]:
    values = settings["values"]
    if not isinstance(values, list) or not values:
        yield f"{key_path}.values: expected a non-empty list, got {_show(values)}"
        return
    spec.values = list(values)
    for i, value in enumerate(values):
        if not _json_safe(value):
            yield f"{key_path}.values[{i}]: {_show(value)} is not a plain value (number, string, bool, null or list)"
    if "probabilities" not in settings:
        return
    probabilities = settings["probabilities"]
    numbers = [_number(p) for p in probabilities] if isinstance(probabilities, list) else None
    if numbers is None or any(p is None or p < 0 for p in numbers):
        yield f"{key_path}.probabilities: expected a list of numbers >= 0, got {_show(probabilities)}"
    elif len(numbers) != len(values):
        yield f"{key_path}.probabilities: {len(numbers)} probabilities for {len(values)} values; give one per value"
    elif not math.isclose(sum(numbers), 1.0, abs_tol=1e-6):
        yield f"{key_path}.probabilities: must sum to 1, they sum to {sum(numbers):g}"
    else:
        spec.probabilities = numbers


def _int_range(spec: ParamSpec, key_path: str) -> Iterator[str]:
    for key in _RANGE:
        value = getattr(spec, key)
        if isinstance(value, float) and value.is_integer():
            setattr(spec, key, int(value))
        elif value is not None and not isinstance(value, int):
            yield f"{key_path}.{key}: int_uniform needs an int, got {_show(value)}; use uniform for real numbers"


def _range_problems(spec: ParamSpec, key_path: str) -> Iterator[str]:
    low, high = spec.min, spec.max
    if low is None or high is None:
        return
    if low > high:
        yield f"{key_path}.min: {_show(low)} is greater than max {_show(high)}"
    elif low == high:
        yield f"{key_path}.min: {_show(low)} equals max; W&B needs min < max (use value: {_show(low)} for a constant)"
    if spec.distribution in _POSITIVE_RANGE and low <= 0:
        yield f"{key_path}.min: {spec.distribution} needs min > 0 (the values' logarithm is taken), got {_show(low)}"
    if spec.distribution in _EXPONENT_RANGE and max(abs(low), abs(high)) > _MAX_EXPONENT:
        yield (
            f"{key_path}: {spec.distribution}'s min and max are exponents (e**min .. e**max), so"
            f" {_show(low)} .. {_show(high)} overflows; did you mean {spec.distribution}_values?"
        )


def _grid_problems(parameters: Mapping[str, ParamSpec], key_paths: Mapping[str, str]) -> Iterator[str]:
    for path, spec in parameters.items():
        if spec.distribution not in GRID_DISTRIBUTIONS:
            yield (
                f"{key_paths[path]}: grid search cannot enumerate a {spec.distribution} parameter;"
                " give values: [...], or int_uniform (int min and max) or q_uniform (with q)"
            )


def _parse_early_terminate(raw: Any, problems: list[str]) -> HyperbandSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        problems.append(f"early_terminate: expected a mapping like {{type: hyperband, min_iter: 1}}, got {_show(raw)}")
        return None
    found = len(problems)
    for key in raw:
        if key not in _HYPERBAND_KEYS:
            problems.append(f"early_terminate.{key}: unknown key{_did_you_mean(str(key), _HYPERBAND_KEYS)}")
    if raw.get("type") != "hyperband":
        problems.append(f"early_terminate.type: {_show(raw.get('type'))} is not supported; the only type is hyperband")
    spec = HyperbandSpec(
        min_iter=_hyperband_int(raw, "min_iter", problems),
        max_iter=_hyperband_int(raw, "max_iter", problems),
        s=_hyperband_int(raw, "s", problems),
    )
    eta = _number(raw.get("eta", 3))
    if eta is None or eta <= 1:
        problems.append(f"early_terminate.eta: expected a number > 1, got {_show(raw.get('eta'))}")
    else:
        spec.eta = eta
    strict = raw.get("strict", False)
    if not isinstance(strict, bool):
        problems.append(f"early_terminate.strict: expected true or false, got {_show(strict)}")
    else:
        spec.strict = strict
    if len(problems) == found:
        problems.extend(_bracket_problems(spec, raw))
    return spec if len(problems) == found else None


def _hyperband_int(raw: Mapping[str, Any], key: str, problems: list[str]) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        problems.append(f"early_terminate.{key}: expected an int >= 1, got {_show(value)}")
        return None
    return value


def _bracket_problems(spec: HyperbandSpec, raw: Mapping[str, Any]) -> Iterator[str]:
    if "min_iter" in raw and "max_iter" in raw:
        yield "early_terminate: give min_iter (first bracket) or max_iter with s (last bracket), not both"
    elif spec.min_iter is None and spec.max_iter is None:
        yield "early_terminate: needs min_iter (first bracket) or max_iter with s (last bracket)"
    elif spec.max_iter is not None and spec.s is None:
        yield "early_terminate.s: required with max_iter (the number of brackets below max_iter)"
    elif not spec.brackets():
        yield (
            f"early_terminate.max_iter: {spec.max_iter} / eta {spec.eta:g} is below 1, so there is no bracket;"
            " raise max_iter or lower eta"
        )


# --------------------------------------------------------------------------------------------------
# Checking values against the pipeline config
# --------------------------------------------------------------------------------------------------


def _base_config_problems(
    parameters: Mapping[str, ParamSpec], key_paths: Mapping[str, str], base_config: Mapping[str, Any], method: str
) -> Iterator[str]:
    """Merge representative values of each parameter into the base config; yield what validation rejects.

    Constant parameters (``value:``) are in every trial, so they are checked together and the others against the
    base config with them: ``eval_steps: {value: 200}`` and ``save_steps: {value: 200}`` are fine as a pair even where
    either alone breaks the rule that save_steps is a multiple of eval_steps.
    """
    base = ConfigManager().validate(base_config)
    constants = {path: spec.value for path, spec in parameters.items() if spec.distribution == "constant"}
    together = _config_rejects_all(base, constants) if constants else None
    if constants and together is None:
        base = merge_sweep_params(base, constants)
    reported = False
    for path, spec in parameters.items():
        if spec.distribution == "constant" and together is None:
            continue
        rejected = False
        for suffix, value, note in _probe_values(spec, method):
            reason = _config_rejects(base, path, value)
            if reason:
                rejected = True
                key = f"{key_paths[path]}.{suffix}" if suffix else key_paths[path]
                reported = True
                yield f"{key}: {_show(value)}{note} is rejected by the pipeline config: {reason}"
        interior = _interior_probe(spec)
        if interior is not None and not rejected:
            reason = _config_rejects(base, path, interior)
            if reason:
                yield (
                    f"{key_paths[path]}: {spec.distribution} draws values such as {interior:.6g}, which the pipeline"
                    f" config rejects: {reason}; for an int setting use int_uniform (int min and max) or a q_"
                    " distribution with an int q"
                )
    if together is not None and not reported:
        names = ", ".join(key_paths[path] for path in constants)
        yield f"{names}: these value: parameters are rejected by the pipeline config together: {together}"


def _probe_values(spec: ParamSpec, method: str) -> Iterator[tuple[str, Any, str]]:
    """Yield (key suffix, value, note): the values and range endpoints a parameter can produce."""
    kind = spec.distribution
    if kind == "constant":
        yield "value", spec.value, ""
    elif kind in _CATEGORICAL:
        for i, value in enumerate(spec.values):
            yield f"values[{i}]", value, ""
    elif kind == "int_uniform":
        yield "min", spec.min, ""
        yield "max", spec.max, ""
    elif kind == "q_uniform" and method == "grid":
        values = spec.grid_values()
        yield "min", values[0], ""
        yield "max", values[-1], " (the last grid value)"
    elif spec.min is not None:
        low, high, _ = spec.support()
        if kind in ("inv_log_uniform",):
            low, high = high, low  # e**-min belongs to min, e**-max to max
        yield "min", spec.quantize(low), _endpoint_note(spec, "min")
        yield "max", spec.quantize(high), _endpoint_note(spec, "max")
    elif kind.removeprefix("q_") in ("normal", "log_normal"):
        center = spec.mu if kind.removeprefix("q_") == "normal" else math.exp(spec.mu)
        yield "mu", spec.quantize(center), " (the distribution's center)"
    else:
        yield "", spec.quantize(spec.a / (spec.a + spec.b)), " (the beta distribution's mean)"


def _endpoint_note(spec: ParamSpec, key: str) -> str:
    if spec.distribution in ("log_uniform", "q_log_uniform"):
        return f" (e**{_show(getattr(spec, key))})"
    if spec.distribution == "inv_log_uniform":
        return f" (e**-{_show(getattr(spec, key))})"
    return " (rounded to q)" if spec.distribution.startswith("q_") else ""


def _interior_probe(spec: ParamSpec) -> float | None:
    """A non-integer value that a continuous distribution draws; it catches float ranges over int settings."""
    if spec.distribution in GRID_DISTRIBUTIONS or spec.distribution in _CATEGORICAL or spec.distribution[:2] == "q_":
        return None
    value = spec.sample(random.Random(0))
    return None if float(value).is_integer() else value


def _config_rejects(base: Mapping[str, Any], path: str, value: Any) -> str | None:
    return _config_rejects_all(base, {path: value})


def _config_rejects_all(base: Mapping[str, Any], values: Mapping[str, Any]) -> str | None:
    try:
        merge_sweep_params(base, dict(values))
    except ConfigError as exc:
        return "; ".join(exc.problems)
    return None


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def _bare_metric(name: str) -> str:
    for prefix in _EVAL_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    # W&B logs eval/rouge2_f1 (the spec's names) for what the trainer calls eval_rouge2: both are the same metric.
    return _WANDB_ROUGE_NAMES.get(name, name)


def metric_value(spec: SweepSpec, metrics: Mapping[str, Any] | None) -> float | None:
    """Find the sweep metric in an evaluation's metrics.

    Keys may be bare (``rouge_combined_f1``), ``eval_``-prefixed (the Trainer's) or ``eval/``-style
    (W&B's); all are compared by their bare name. When several keys match, the key written exactly
    as in the sweep wins, then eval-prefixed keys, then the bare one (a bare ``loss`` may be the
    training loss).

    Returns:
        The value as a float (NaN stays NaN), or None when the sweep has no metric or it is absent
        or not a number.
    """
    if not spec.metric_name or not metrics:
        return None
    wanted = _bare_metric(spec.metric_name)
    ranked = []
    for key, value in metrics.items():
        key = str(key)
        if _bare_metric(key) != wanted:
            continue
        rank = 0 if key == spec.metric_name else 1 if key != wanted else 2
        ranked.append((rank, value))
    for _, value in sorted(ranked, key=lambda item: item[0]):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


# --------------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------------


def grid_size(spec: SweepSpec) -> int:
    """Return the number of distinct grid points (ValueError when a parameter is continuous)."""
    return math.prod(len(param.grid_values()) for param in spec.parameters.values())


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Return every grid point (dotted path -> value), without duplicates, the last parameter varying fastest.

    Raises:
        ValueError: A parameter is continuous (only grid sweeps are guaranteed to have a grid).
    """
    return [_grid_point(spec, index) for index in range(grid_size(spec))]


def _grid_point(spec: SweepSpec, index: int) -> dict[str, Any] | None:
    """Decode ``index`` as a mixed-radix number over the parameters' grid values (itertools.product order)."""
    axes = [(path, param.grid_values()) for path, param in spec.parameters.items()]
    if index >= math.prod(len(values) for _, values in axes):
        return None
    point: dict[str, Any] = {}
    for path, values in reversed(axes):
        index, position = divmod(index, len(values))
        point[path] = _plain(values[position])
    return {path: point[path] for path in spec.parameters}


def suggest(spec: SweepSpec, index: int, history: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Return the parameters of trial ``index`` (0-based), or None when the sweep has no more trials.

    Stateless and deterministic: the result depends only on ``(spec, index, history)``, so any
    process holding the stored history continues the sweep the same way.

    - grid: ``grid_points(spec)[index]``; None once exhausted.
    - random: each parameter drawn with ``random.Random(f"{spec.seed}:{index}")`` (W&B's sampling).
    - bayes: Optuna's TPE (seeded ``spec.seed + index``) fitted on the history; see :func:`_bayes_point`.

    None also when ``index >= run_cap``, and once a finished trial reached ``metric.target``.

    Args:
        spec: The sweep.
        index: The trial number.
        history: Earlier trials, ``{"params": {path: value}, "metric": float | None,
            "status": "finished" | "failed" | "pruned" | "running"}``; an optional ``"curve"``
            (metric per evaluation) gives a pruned trial's intermediate values to TPE.

    Returns:
        Dotted config path -> JSON-safe value, for every parameter (constants included).
    """
    if index < 0:
        raise ValueError(f"trial index must be >= 0, got {index}")
    if spec.run_cap is not None and index >= spec.run_cap:
        return None
    if _target_reached(spec, history):
        return None
    if spec.method == "grid":
        return _grid_point(spec, index)
    if spec.method == "random":
        rng = random.Random(f"{spec.seed}:{index}")
        return {path: _plain(param.sample(rng)) for path, param in spec.parameters.items()}
    return _bayes_point(spec, index, history)


def _target_reached(spec: SweepSpec, history: Sequence[Mapping[str, Any]]) -> bool:
    if spec.metric_target is None:
        return False
    for trial in history:
        metric = trial.get("metric")
        if trial.get("status") == "finished" and _is_number(metric):
            if metric == spec.metric_target or spec.is_better(metric, spec.metric_target):
                return True
    return False


@dataclass
class _Axis:
    """One searched parameter as TPE sees it: an Optuna distribution and the value mapping both ways."""

    param: ParamSpec
    distribution: Any

    def encode(self, value: Any) -> Any | None:
        """Return the Optuna-internal value for a trial's parameter value, or None when it is outside the space."""
        kind = self.param.distribution
        if kind in _CATEGORICAL:
            keys = [_canonical(v) for v in self.param.values]
            key = _canonical(value)
            return keys.index(key) if key in keys else None
        if not _is_number(value):
            return None
        if kind == "int_uniform":
            inside = float(value).is_integer() and self.param.min <= value <= self.param.max
            return int(value) if inside else None
        # Quantized or normal draws can fall just outside the bounds TPE searches: clamp them in.
        low, high = self.distribution.low, self.distribution.high
        return min(max(float(value), low), high)

    def decode(self, internal: Any) -> Any:
        kind = self.param.distribution
        if kind in _CATEGORICAL:
            return self.param.values[internal]
        if kind == "int_uniform":
            return int(internal)
        return self.param.quantize(internal)


def _tpe_axes(spec: SweepSpec) -> dict[str, _Axis]:
    """Map each non-constant parameter to an Optuna distribution (TPE's search space)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    axes: dict[str, _Axis] = {}
    for path, param in spec.parameters.items():
        kind = param.distribution
        if kind == "constant":
            continue
        if kind in _CATEGORICAL:
            # Indices, not values: values may be lists or None, which Optuna's choices do not allow.
            # TPE ignores categorical_w_probabilities' weights (it learns its own).
            distribution = CategoricalDistribution(list(range(len(param.values))))
        elif kind == "int_uniform":
            distribution = IntDistribution(param.min, param.max)
        else:
            # q_ variants search the underlying continuous range and round the suggestion to q;
            # normal and log_normal are searched within +-4 sigma (TPE needs bounds).
            low, high, log = param.support()
            if low == high:
                continue
            distribution = FloatDistribution(low, high, log=log)
        axes[path] = _Axis(param, distribution)
    return axes


def _bayes_point(spec: SweepSpec, index: int, history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Ask Optuna's TPE for a point, given every earlier trial.

    Why TPE rather than W&B's Gaussian process: it handles categorical, integer and log-scaled
    parameters natively, scales to many trials, and Optuna rebuilds it from a trial list in
    milliseconds, which keeps the search stateless. The in-memory study gets:

    - finished trials with a metric: COMPLETE with that value;
    - failed trials (and finished ones without a metric): COMPLETE with the imputed metric, as W&B's
      ``metric.impute`` (default ``worst``: the worst finished value) so TPE avoids where runs crash;
    - pruned trials: PRUNED with their curve (or last metric) as intermediate values;
    - running trials: RUNNING, which TPE's ``constant_liar`` treats as bad so that parallel trials
      spread out instead of piling onto the same point.

    The first trials (10, or a third of ``run_cap`` when smaller, at least 2) are TPE's random
    startup. Trials whose parameters fall outside the current space are left out.
    """
    import optuna
    from optuna.trial import TrialState, create_trial

    axes = _tpe_axes(spec)
    startup = _TPE_STARTUP if spec.run_cap is None else max(2, min(_TPE_STARTUP, spec.run_cap // 3))
    sampler = optuna.samplers.TPESampler(seed=spec.seed + index, n_startup_trials=startup, constant_liar=True)
    distributions = {path: axis.distribution for path, axis in axes.items()}
    with _quiet_optuna():
        study = optuna.create_study(direction=spec.goal, sampler=sampler)
        imputed = _imputed_metric(spec, history)
        for trial in history:
            given = trial.get("params") or {}
            # A trial lacking a parameter (or outside its range) ran in another space: leave it out.
            params = {path: axis.encode(given[path]) if path in given else None for path, axis in axes.items()}
            if any(value is None for value in params.values()):
                continue
            state, kwargs = _trial_outcome(spec, trial, imputed)
            if state is None:
                continue
            study.add_trial(
                create_trial(state=getattr(TrialState, state), params=params, distributions=distributions, **kwargs)
            )
        asked = study.ask(distributions)
    point = {}
    for path, param in spec.parameters.items():
        if path in axes:
            point[path] = _plain(axes[path].decode(asked.params[path]))
        else:
            point[path] = _plain(_fixed_value(param))
    return point


def _fixed_value(param: ParamSpec) -> Any:
    """The value of a parameter TPE does not search: a constant, or a normal with sigma 0."""
    return param.value if param.distribution == "constant" else param.quantize(param.support()[0])


def _imputed_metric(spec: SweepSpec, history: Sequence[Mapping[str, Any]]) -> float | None:
    finished = [
        float(trial["metric"])
        for trial in history
        if trial.get("status") == "finished" and _is_number(trial.get("metric"))
    ]
    if not finished or spec.metric_impute == "latest":
        return None
    worst = min if spec.goal == "maximize" else max
    best = max if spec.goal == "maximize" else min
    return (worst if spec.metric_impute == "worst" else best)(finished)


def _trial_outcome(
    spec: SweepSpec, trial: Mapping[str, Any], imputed: float | None
) -> tuple[str | None, dict[str, Any]]:
    """Return (Optuna state name, create_trial kwargs) for a history entry; (None, {}) to leave it out."""
    status = trial.get("status")
    metric = trial.get("metric")
    metric = float(metric) if _is_number(metric) else None
    if status == "finished" and metric is not None:
        return "COMPLETE", {"value": metric}
    if status == "pruned":
        curve = [float(v) for v in trial.get("curve") or [] if _is_number(v)]
        if not curve and metric is None:
            return None, {}
        steps = dict(enumerate(curve)) if curve else {0: metric}
        return "PRUNED", {"intermediate_values": steps}
    if status in ("failed", "finished"):
        value = metric if spec.metric_impute == "latest" else imputed
        return ("COMPLETE", {"value": value}) if value is not None else (None, {})
    return "RUNNING", {}


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    # Optuna logs "A new study created in memory" at INFO for every study; one per suggestion is noise.
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


# --------------------------------------------------------------------------------------------------
# Early termination
# --------------------------------------------------------------------------------------------------


def should_stop(spec: SweepSpec, curve: Sequence[float], other_curves: Sequence[Sequence[float]]) -> bool:
    """Return whether hyperband stops this trial now (W&B's ``hyperband_stop_runs`` rule, for one trial).

    ``curve[i]`` is this trial's sweep metric after evaluation i + 1; ``other_curves`` are every other
    trial's curves (running, finished and pruned: all count, as in W&B). The rule:

    1. The bracket that applies is the last bracket b <= len(curve); before the first, never stop.
    2. The threshold is taken over the value at evaluation b of every trial that reached it, this one
       included, sorted best first: the value at position ``int(count / eta)``. So about the best
       1/eta survive (``int(count / eta) + 1`` of them, ties included) and a lone trial never stops.
    3. Stop when this trial's best value so far (W&B's default) is worse than the threshold; with
       ``strict: true``, its value at evaluation b.

    This is W&B's "asynchronous successive halving" reading: it is checked at every evaluation, not
    only at bracket evaluations, so a trial that passed bracket b while few others had reached it
    can still be stopped later, once more trials reach b and raise the bar. A NaN or missing value
    counts as the worst possible (W&B drops such values, which would let a diverged trial run on).
    """
    hyperband = spec.early_terminate
    if hyperband is None or not curve:
        return False
    sign = -1.0 if spec.goal == "maximize" else 1.0  # compare as "lower is better", as W&B does
    mine = [_lower_is_better(value, sign) for value in curve]
    passed = [band for band in hyperband.brackets() if band <= len(mine)]
    if not passed:
        return False
    band = passed[-1]
    at_band = sorted([mine[band - 1], *(_lower_is_better(c[band - 1], sign) for c in other_curves if len(c) >= band)])
    threshold = at_band[int(len(at_band) * (1.0 / hyperband.eta))]
    value = mine[band - 1] if hyperband.strict else min(mine)
    return value > threshold


def _lower_is_better(value: Any, sign: float) -> float:
    return sign * float(value) if _is_number(value) else math.inf


# --------------------------------------------------------------------------------------------------
# Description
# --------------------------------------------------------------------------------------------------


def describe(spec: SweepSpec) -> str:
    """Return a short human summary: method, metric and goal, run budget, parameter table, early termination."""
    metric = f"{spec.goal} {spec.metric_name}" if spec.metric_name else "no metric"
    if spec.metric_target is not None:
        metric += f" (stop at {_show(spec.metric_target)})"
    lines = [f"Sweep: {spec.method} search, {metric}, {_budget(spec)}, seed {spec.seed}"]
    width = max([len("parameter"), *map(len, spec.parameters)])
    dist_width = max([len("distribution"), *(len(p.distribution) for p in spec.parameters.values())])
    lines.append(f"  {'parameter':<{width}}  {'distribution':<{dist_width}}  search space")
    for path, param in spec.parameters.items():
        lines.append(f"  {path:<{width}}  {param.distribution:<{dist_width}}  {_space(param)}")
    hyperband = spec.early_terminate
    if hyperband is not None:
        brackets = hyperband.brackets()
        shown = ", ".join(map(str, brackets[:6])) + (", ..." if len(brackets) > 6 else "")
        mode = "value at the bracket" if hyperband.strict else "best value so far"
        lines.append(f"Early termination: hyperband, eta {hyperband.eta:g}, compared at evaluations {shown} ({mode})")
    return "\n".join(lines)


def _budget(spec: SweepSpec) -> str:
    if spec.method == "grid":
        size = grid_size(spec)
        capped = f", capped at {spec.run_cap} runs" if spec.run_cap is not None and spec.run_cap < size else ""
        return f"{size} grid point{'s' if size != 1 else ''}{capped}"
    if spec.run_cap is not None:
        return f"up to {spec.run_cap} runs"
    return "runs until cancelled (no run_cap)"


def _space(param: ParamSpec) -> str:
    kind = param.distribution
    if kind == "constant":
        text = f"= {_show(param.value)}"
    elif kind == "categorical":
        text = ", ".join(map(_show, param.values))
    elif kind == "categorical_w_probabilities":
        text = ", ".join(f"{_show(v)} (p {p:g})" for v, p in zip(param.values, param.probabilities, strict=True))
    elif kind == "int_uniform":
        text = f"{param.min} .. {param.max} (ints)"
    elif kind.removeprefix("q_") in ("normal", "log_normal"):
        text = f"mu {param.mu:g}, sigma {param.sigma:g}"
    elif kind.removeprefix("q_") == "beta":
        text = f"a {param.a:g}, b {param.b:g}"
    else:
        low, high, log = param.support()
        text = f"{low:.4g} .. {high:.4g}{' (log scale)' if log else ''}"
    if kind.startswith("q_"):
        text += f", step {param.q:g}"
    return text if len(text) <= 70 else text[:67] + "..."


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _number(value: Any) -> float | int | None:
    """Return a finite int or float (numeric strings such as "1e-5" converted), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and _FLOAT_STRING.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return value
    return None


def _step_value(value: float, step: Any) -> Any:
    """Return a multiple of a step: an int for int steps, else a float without binary noise (0.3, not 0.3000...4)."""
    if isinstance(step, int) and not isinstance(step, bool):
        return int(round(value))
    return float(f"{value:.15g}")


def _canonical(value: Any) -> str:
    # Integral floats equal ints (W&B's yaml_hash): values [16, 16.0] are one grid value.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True, default=repr)


def _dedupe(values: Sequence[Any]) -> list[Any]:
    seen: set[str] = set()
    unique = []
    for value in values:
        key = _canonical(value)
        if key not in seen:
            seen.add(key)
            unique.append(value)
    return unique


def _plain(value: Any) -> Any:
    """Return ``value`` as a JSON-safe Python scalar (NumPy scalars from Optuna become int/float)."""
    if hasattr(value, "item") and not isinstance(value, list | dict | str):
        return value.item()
    return value


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)


def _close(word: str, choices: Any) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def _did_you_mean(word: str, choices: Sequence[str], known: Sequence[str] | None = None) -> str:
    close = _close(word, choices)
    if close:
        return f"; did you mean {close!r}?"
    return f"; known keys: {', '.join(known or choices)}"
