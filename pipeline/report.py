"""Sweep results: the leaderboard (terminal table, CSV, JSON) and a self-contained HTML report.

Both read the sweep's trial table, plain JSON-safe dicts::

    sweep  = {"sweep_id", "method", "metric": {"name", "goal"}, "status", "created_at"}
    trials = [{"trial_id", "index", "params": {dotted path: value}, "status", "metric",
               "curve": [[global_step, metric], ...], "run_id", "worker", "seconds", "error",
               "collapsed", "collapse_reason", "lead3_rouge2", "rouge2_margin_over_lead3"}, ...]

The last four are set on finished trials (``tasks.sweeps.on_trial_event``). A collapsed trial (one generic summary
for many dialogues, see ``pipeline.metrics.collapse_reason``) is ranked after every healthy trial that has the
metric, is marked in the table and the report, and is never the best (:func:`best_row`).

The report draws its charts as inline SVG written here: no JavaScript, no plotting library and
nothing fetched from the network, so the one HTML file opens offline (a copied file, an e-mail
attachment, a headless browser on a cluster node).

A metric that is missing, not a number, NaN or infinite counts as "no metric": such a trial is
listed after the ranked ones and left out of the charts that need a value.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.artifacts import atomic_write_json, atomic_write_text

FIXED_COLUMNS = ("rank", "trial_id", "index", "status", "metric", "run_id", "worker", "seconds")
"""Leaderboard columns present in every row; one column per sweep parameter follows them."""

BASELINE_FIELDS = ("lead3_rouge2", "rouge2_margin_over_lead3")
"""Trial fields with the LEAD-3 baseline of the trial's validation split and the model's margin over it."""

OPTIONAL_COLUMNS = ("collapsed", *BASELINE_FIELDS)
"""Leaderboard columns present only when some trial has the field (sweeps from before they existed have none)."""

_RESERVED_COLUMNS = (*FIXED_COLUMNS, *OPTIONAL_COLUMNS)
_COLLAPSED_COLOR = "#b3261e"

STATUS_ORDER = ("queued", "running", "finished", "failed", "pruned", "cancelled")
STATUS_COLORS = {
    "queued": "#9e9e9e",
    "running": "#e6a117",
    "finished": "#2f78b7",
    "failed": "#d1342f",
    "pruned": "#8e63b5",
    "cancelled": "#5f5f5f",
}
_UNKNOWN_COLOR = "#17a2b8"
# Tableau 10: distinct enough to tell ten learning curves apart; more trials reuse the colours.
_CURVE_PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
_CURVE_DASH = {"pruned": "7 4", "failed": "2 3", "cancelled": "2 3"}
_BEST_STROKE = "#111111"
_LOG_RATIO = 100.0  # a positive numeric parameter gets a log axis when max / min exceeds this
_MAX_CURVE_LEGEND = 20
_CHAR_PX = 7.0  # rough width of one 12px sans-serif character, for laying out labels without a browser


# ----------------------------------------------------------------------------------------------- values


def _finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number (bools excluded), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _clean(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None, so CSV and strict JSON readers accept it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value: Any) -> str:
    """Human-readable cell text: floats to 4 significant digits, None as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        # .4g turns 12345.6 into 1.235e+04; seconds and step counts read better as plain integers.
        return f"{value:.0f}" if 1e4 <= abs(value) < 1e15 else f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _goal(sweep: dict) -> str:
    """``"minimize"`` or ``"maximize"`` (the default, as for W&B sweeps)."""
    metric = sweep.get("metric") or {}
    return "minimize" if str(metric.get("goal", "maximize")).lower() == "minimize" else "maximize"


def _metric_name(sweep: dict) -> str:
    return str((sweep.get("metric") or {}).get("name") or "metric")


def _status(trial: dict) -> str:
    return str(trial.get("status") or "unknown")


def _status_color(status: str) -> str:
    return STATUS_COLORS.get(status, _UNKNOWN_COLOR)


def _label(trial: dict) -> str:
    """The name a person sees for a trial: its id, else its index."""
    return str(trial.get("trial_id") or f"#{trial.get('index')}")


def _index_key(trial: dict) -> tuple[bool, int]:
    index = trial.get("index")
    return (not isinstance(index, int), index if isinstance(index, int) else 0)


# ----------------------------------------------------------------------------------------- leaderboard


def _ranked(sweep: dict, trials: Sequence[dict]) -> list[tuple[int | None, dict]]:
    """Trials best first as ``(rank, trial)``; trials without a metric last (rank None), by index.

    Ties keep index order and get consecutive ranks, so every rank names exactly one trial.
    """
    sign = 1.0 if _goal(sweep) == "minimize" else -1.0

    def key(trial: dict) -> tuple:
        metric = _finite(trial.get("metric"))
        # Collapsed trials go after every healthy one that has the metric, whatever their metric.
        return (metric is None, _collapsed(trial), sign * metric if metric is not None else 0.0, _index_key(trial))

    ordered = sorted(trials, key=key)
    return [(position if _finite(t.get("metric")) is not None else None, t) for position, t in enumerate(ordered, 1)]


def _collapsed(trial: dict) -> bool:
    return trial.get("collapsed") is True


def _optional_columns(trials: Iterable[dict]) -> list[str]:
    """The optional columns some trial (or leaderboard row) has a value for, in their fixed order."""
    trials = list(trials)
    return [key for key in OPTIONAL_COLUMNS if any(trial.get(key) is not None for trial in trials)]


def best_row(rows: list[dict]) -> dict | None:
    """The trial a sweep promotes: the rank-1 row when it finished and did not collapse, else None.

    Collapsed trials rank after healthy ones, so a collapsed rank 1 means no finished trial is healthy.
    """
    return next((row for row in rows if row["rank"] == 1 and row["status"] == "finished" and not _collapsed(row)), None)


def _param_keys(trials: Iterable[dict]) -> list[str]:
    """Every parameter name in the trials, in order of first appearance."""
    keys: dict[str, None] = {}
    for trial in trials:
        keys.update(dict.fromkeys(trial.get("params") or {}))
    return list(keys)


def _param_column(key: str) -> str:
    """Leaderboard column of a parameter; a name equal to a fixed column is prefixed so neither is lost."""
    return f"params.{key}" if key in _RESERVED_COLUMNS else key


def leaderboard(sweep: dict, trials: list[dict]) -> list[dict]:
    """Rank the trials of a sweep by its metric.

    Args:
        sweep: The sweep dict; ``sweep["metric"]["goal"]`` (``maximize`` or ``minimize``) sets the order.
        trials: One dict per trial (see the module docstring).

    Returns:
        One row per trial, best first, collapsed trials after the healthy ones, trials without a metric
        last (then by index). Each row has ``rank`` (1-based, None without a metric), ``trial_id``,
        ``index``, ``status``, ``metric``, ``run_id``, ``worker``, ``seconds``; ``collapsed``,
        ``lead3_rouge2`` and ``rouge2_margin_over_lead3`` when some trial has them; and one column per
        parameter keyed by its dotted path (None where a trial lacks it). Non-finite numbers become None.
    """
    keys = _param_keys(trials)
    optional = _optional_columns(trials)
    rows = []
    for rank, trial in _ranked(sweep, trials):
        params = trial.get("params") or {}
        row = {
            "rank": rank,
            "trial_id": trial.get("trial_id"),
            "index": trial.get("index"),
            "status": trial.get("status"),
            "metric": _finite(trial.get("metric")),
            "run_id": trial.get("run_id"),
            "worker": trial.get("worker"),
            "seconds": _clean(trial.get("seconds")),
        }
        row.update({key: _finite(trial.get(key)) for key in optional if key != "collapsed"})
        if "collapsed" in optional:
            row["collapsed"] = trial.get("collapsed") if isinstance(trial.get("collapsed"), bool) else None
        row.update({_param_column(key): _clean(params.get(key)) for key in keys})
        rows.append(row)
    return rows


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """Map each dotted parameter path to its leaf name where no other column shares that leaf."""
    leaves = Counter(key.rsplit(".", 1)[-1] for key in keys)
    names = {}
    for key in keys:
        leaf = key.rsplit(".", 1)[-1]
        clash = leaves[leaf] > 1 or (leaf != key and (leaf in keys or leaf in _RESERVED_COLUMNS))
        names[key] = key if clash else leaf
    return names


def _row_param_columns(rows: Sequence[dict]) -> list[str]:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(key for key in row if key not in _RESERVED_COLUMNS))
    return list(columns)


def _display_width(text: str) -> int:
    """Terminal columns taken by ``text``: wide (CJK, Hangul) characters take two."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def _truncate(text: str, width: int) -> str:
    if _display_width(text) <= width:
        return text
    out, used = [], 0
    for char in text:
        size = _display_width(char)
        if used + size > width - 1:
            break
        out.append(char)
        used += size
    return "".join(out) + "…"


def _pad(text: str, width: int, right: bool) -> str:
    fill = " " * (width - _display_width(text))
    return fill + text if right else text + fill


@dataclass
class _Column:
    """One terminal-table column: its header, cell texts and alignment."""

    header: str
    cells: list[str]
    right: bool
    optional: bool = False
    shrinkable: bool = True

    @property
    def width(self) -> int:
        return max(_display_width(text) for text in [self.header, *self.cells])


_CORE_TABLE_COLUMNS = (("rank", "rank"), ("trial_id", "trial"), ("status", "status"), ("metric", "metric"))
_OPTIONAL_HEADERS = {"collapsed": "collapsed", "lead3_rouge2": "lead3 R2", "rouge2_margin_over_lead3": "R2 margin"}


def _table_columns(rows: Sequence[dict]) -> list[_Column]:
    """The table's columns in display order: rank, trial, status, metric, parameters, then extras."""
    params = _row_param_columns(rows)
    names = _short_names(params)

    def column(key: str, header: str, optional: bool = False, shrinkable: bool = True) -> _Column:
        values = [row.get(key) for row in rows]
        numeric = all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values)
        cells = [("yes" if v else "no") if isinstance(v, bool) else _fmt(v) for v in values]
        return _Column(header, cells, numeric, optional, shrinkable)

    # A shortened trial id or metric would make the row useless, so only parameters and extras shrink; the
    # collapsed flag is what tells a generic-summary trial from a good one, so it is never dropped either.
    core = [column(key, header, shrinkable=False) for key, header in _CORE_TABLE_COLUMNS]
    present = _optional_columns(rows)
    flags = [column("collapsed", "collapsed", shrinkable=False)] if "collapsed" in present else []
    baselines = [column(key, _OPTIONAL_HEADERS[key], True) for key in BASELINE_FIELDS if key in present]
    extras = [column("seconds", "seconds", True), column("worker", "worker", True), column("run_id", "run_id", True)]
    return core + flags + baselines + [column(key, names[key]) for key in params] + extras


def _total_width(columns: Sequence[_Column]) -> int:
    return sum(c.width for c in columns) + 2 * (len(columns) - 1)


def _fit(columns: list[_Column], max_width: int) -> list[_Column]:
    """Drop the optional columns (last first), then shorten the widest parameter cells until the table fits."""
    while _total_width(columns) > max_width and any(c.optional for c in columns):
        last_optional = max(i for i, c in enumerate(columns) if c.optional)
        columns.pop(last_optional)
    while _total_width(columns) > max_width:
        widest = max((c for c in columns if c.shrinkable), key=lambda c: c.width, default=None)
        if widest is None or widest.width <= 6:  # narrower than this is unreadable; overflow instead
            break
        target = widest.width - 1
        widest.header = _truncate(widest.header, target)
        widest.cells = [_truncate(text, target) for text in widest.cells]
    return columns


def leaderboard_table(rows: list[dict], max_width: int = 120) -> str:
    """Format leaderboard rows as an aligned plain-text table for a terminal.

    Numbers are right-aligned, floats shown to 4 significant digits, parameters headed by their
    leaf name when no other column shares it. Columns ``seconds``, ``worker`` and ``run_id`` are
    dropped, then the widest cells shortened with ``…``, until a line fits in ``max_width``.

    Args:
        rows: Rows from :func:`leaderboard`.
        max_width: Widest line wanted, in terminal columns.

    Returns:
        The table; every line has the same display width. ``"(no trials)"`` for no rows.
    """
    if not rows:
        return "(no trials)"
    columns = _fit(_table_columns(rows), max_width)
    widths = [c.width for c in columns]
    header = "  ".join(_pad(c.header, w, c.right) for c, w in zip(columns, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = [
        "  ".join(_pad(c.cells[i], w, c.right) for c, w in zip(columns, widths, strict=True)) for i in range(len(rows))
    ]
    return "\n".join([header, rule, *body])


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value


def write_leaderboard(rows: list[dict], directory: str | Path) -> dict[str, Path]:
    """Write ``leaderboard.csv`` and ``leaderboard.json`` into ``directory``, each atomically.

    Args:
        rows: Rows from :func:`leaderboard`.
        directory: Target directory (created if missing), typically ``<root>/sweeps/<sweep_id>``.

    Returns:
        ``{"csv": path, "json": path}``.
    """
    directory = Path(directory)
    fieldnames = [*FIXED_COLUMNS, *_optional_columns(rows), *_row_param_columns(rows)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _csv_value(row.get(key)) for key in fieldnames})
    return {
        "csv": atomic_write_text(directory / "leaderboard.csv", buffer.getvalue()),
        "json": atomic_write_json(directory / "leaderboard.json", rows),
    }


# ------------------------------------------------------------------------------------------ SVG scales


@dataclass(frozen=True)
class _Scale:
    """Maps data values in ``[lo, hi]`` onto pixels ``[start, end]``, linearly or in log10."""

    lo: float
    hi: float
    start: float
    end: float
    log: bool = False

    def __call__(self, value: float) -> float:
        f = math.log10 if self.log else float
        fraction = (f(value) - f(self.lo)) / (f(self.hi) - f(self.lo))
        return self.start + fraction * (self.end - self.start)


def _nice_step(span: float, count: int, integer: bool = False) -> float:
    """A round tick spacing (1, 2, 2.5 or 5 times a power of ten) giving about ``count`` intervals.

    Integer data (steps, batch sizes) gets whole-number spacing: a tick at step 12.5 means nothing.
    """
    raw = max(span / count, 1.0) if integer else span / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    multipliers = (1.0, 2.0, 5.0, 10.0) if integer and magnitude >= 1 else (1.0, 2.0, 2.5, 5.0, 10.0)
    return next(m * magnitude for m in multipliers if m * magnitude >= raw * (1 - 1e-9))


def _decimals(step: float) -> int:
    """Fewest decimals that show ``step`` exactly (0.25 -> 2), so tick labels stay distinct."""
    return next((d for d in range(12) if abs(round(step, d) - step) <= abs(step) * 1e-6), 12)


def _linear_ticks(
    values: Sequence[float], count: int = 5, integer: bool = False, margin: float = 0.0
) -> tuple[float, float, list[tuple[float, str]]]:
    """Domain rounded out to whole ticks, and ``(value, label)`` ticks covering ``values``.

    A single value or a constant series gets a padded domain instead of a zero-width one.
    ``margin`` (a fraction of the range) keeps extreme points off the axis lines.
    """
    lo, hi = min(values), max(values)
    if lo == hi:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    lo, hi = lo - margin * (hi - lo), hi + margin * (hi - lo)
    step = _nice_step(hi - lo, count, integer)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    decimals = _decimals(step)
    ticks = []
    for k in range(first, last + 1):
        value = k * step
        label = f"{value:.{decimals}f}" if 1e-4 <= step < 1e7 else f"{value:.3g}"
        ticks.append((value, "0" if value == 0 else label))
    return first * step, last * step, ticks


def _power_label(exponent: int) -> str:
    return _fmt(10.0**exponent) if -3 <= exponent <= 4 else f"1e{exponent}"


def _log_ticks(values: Sequence[float]) -> tuple[float, float, list[tuple[float, str]]]:
    """Domain between whole powers of ten around ``values`` (all positive) and a tick per decade."""
    first = math.floor(math.log10(min(values)))
    last = max(math.ceil(math.log10(max(values))), first + 1)
    every = max(1, math.ceil((last - first) / 8))  # at most ~8 labels on a narrow chart
    ticks = [(10.0**k, _power_label(k)) for k in range(first, last + 1, every)]
    return 10.0**first, 10.0**last, ticks


# ------------------------------------------------------------------------------------ SVG primitives


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _n(value: float) -> str:
    """A pixel coordinate, short enough to keep the file small."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _text(x: float, y: float, text: str, anchor: str = "middle", extra: str = "") -> str:
    return f'<text x="{_n(x)}" y="{_n(y)}" text-anchor="{anchor}"{extra}>{_esc(text)}</text>'


def _title(text: str) -> str:
    """A hover tooltip; browsers show it without any script."""
    return f"<title>{_esc(text)}</title>"


@dataclass(frozen=True)
class _Box:
    """The plot area of a chart in pixels (y grows downward)."""

    left: float
    top: float
    right: float
    bottom: float


def _axes(
    box: _Box, xticks: Sequence[tuple[float, str]], yticks: Sequence[tuple[float, str]], labels: tuple[str, str]
) -> str:
    """Grid lines, axis lines, tick marks and labels; ticks are ``(pixel, label)`` pairs."""
    parts = []
    for y, label in yticks:
        parts.append(f'<line class="grid" x1="{_n(box.left)}" y1="{_n(y)}" x2="{_n(box.right)}" y2="{_n(y)}"/>')
        parts.append(_text(box.left - 7, y + 4, label, "end"))
    for x, label in xticks:
        parts.append(f'<line class="tick" x1="{_n(x)}" y1="{_n(box.bottom)}" x2="{_n(x)}" y2="{_n(box.bottom + 5)}"/>')
        parts.append(_text(x, box.bottom + 18, label))
    parts.append(
        f'<path class="axis" d="M{_n(box.left)},{_n(box.top)} V{_n(box.bottom)} H{_n(box.right)}" fill="none"/>'
    )
    xlabel, ylabel = labels
    parts.append(_text((box.left + box.right) / 2, box.bottom + 38, xlabel, extra=' class="axis-title"'))
    mid = (box.top + box.bottom) / 2
    parts.append(_text(16, mid, ylabel, extra=f' class="axis-title" transform="rotate(-90 16 {_n(mid)})"'))
    return "\n".join(parts)


@dataclass(frozen=True)
class _LegendItem:
    """One legend entry: a swatch (``rect``, ``line`` or ``ring``) and its label."""

    label: str
    color: str
    kind: str = "rect"
    dash: str = ""
    thick: bool = False


def _swatch(item: _LegendItem, x: float, y: float) -> str:
    if item.kind == "line":
        dash = f' stroke-dasharray="{item.dash}"' if item.dash else ""
        width = 3.5 if item.thick else 2
        return (
            f'<line x1="{_n(x)}" y1="{_n(y)}" x2="{_n(x + 22)}" y2="{_n(y)}" stroke="{item.color}" '
            f'stroke-width="{width}"{dash}/>'
        )
    if item.kind == "ring":
        return f'<circle cx="{_n(x + 7)}" cy="{_n(y)}" r="6" fill="none" stroke="{item.color}" stroke-width="2.5"/>'
    return f'<rect x="{_n(x)}" y="{_n(y - 6)}" width="14" height="12" rx="2" fill="{item.color}"/>'


def _legend(items: Sequence[_LegendItem], x: float, y: float, width: float) -> tuple[str, float]:
    """Legend entries laid out in rows that wrap at ``width``; returns the SVG and its height."""
    parts, cx, cy, row_height = [], x, y + 8, 20.0
    for item in items:
        swatch_width = 30 if item.kind == "line" else 20
        entry_width = swatch_width + len(item.label) * _CHAR_PX + 18
        if cx > x and cx + entry_width > x + width:
            cx, cy = x, cy + row_height
        parts.append(_swatch(item, cx, cy))
        parts.append(_text(cx + swatch_width, cy + 4, item.label, "start"))
        cx += entry_width
    return "\n".join(parts), (cy - y) + row_height if items else 0.0


def _status_legend(statuses: Iterable[str], best: bool) -> list[_LegendItem]:
    items = [_LegendItem(status, _status_color(status)) for status in _ordered_statuses(statuses)]
    return items + ([_LegendItem("best trial", _BEST_STROKE, "ring")] if best else [])


def _chart(width: float, height: float, body: str, legend: tuple[str, float], label: str) -> str:
    """A chart's SVG: the plot drawn in ``height`` pixels, its legend below it."""
    legend_svg, legend_height = legend
    placed = f'<g transform="translate(0 {_n(height)})">{legend_svg}</g>'
    return _svg(width, height + legend_height, f"{body}\n{placed}", label)


def _svg(width: float, height: float, body: str, label: str) -> str:
    return (
        f'<svg class="chart" width="{_n(width)}" height="{_n(height)}" viewBox="0 0 {_n(width)} {_n(height)}" '
        f'role="img" aria-label="{_esc(label)}">\n{body}\n</svg>'
    )


def _placeholder(message: str) -> str:
    return f'<p class="empty">{_esc(message)}</p>'


def _ordered_statuses(statuses: Iterable[str]) -> list[str]:
    """Distinct statuses in lifecycle order, unknown ones after, in order of appearance."""
    seen = list(dict.fromkeys(statuses))
    return [s for s in STATUS_ORDER if s in seen] + [s for s in seen if s not in STATUS_ORDER]


# ------------------------------------------------------------------------------------------- charts


def _short(text: str, pixels: float) -> str:
    """``text`` cut to fit about ``pixels`` wide."""
    return _truncate(text, max(2, int(pixels / _CHAR_PX)))


def _bar_chart(trials: Sequence[dict], best: dict | None, metric_name: str) -> str:
    """Section 1: the metric of every trial in index order, bars coloured by status, the best outlined."""
    width, height = 1100.0, 330.0
    box = _Box(72, 26, width - 16, height - 58)
    metrics = [_finite(t.get("metric")) for t in trials]
    y0, y1, yticks = _linear_ticks([m for m in metrics if m is not None] + [0.0])
    ys = _Scale(y0, y1, box.bottom, box.top)
    band = (box.right - box.left) / len(trials)
    labels, xlabel = _bar_labels(trials, band)
    label_every = max(1, math.ceil((max(map(len, labels)) * _CHAR_PX + 8) / band))  # thin labels that would touch
    parts, xticks = [], []
    for i, (trial, metric) in enumerate(zip(trials, metrics, strict=True)):
        centre = box.left + band * (i + 0.5)
        if i % label_every == 0:
            xticks.append((centre, labels[i]))
        parts.append(_bar(trial, metric, centre, band, ys, trial is best))
    body = _axes(box, xticks, [(ys(v), t) for v, t in yticks], (xlabel, metric_name))
    legend = _legend(_status_legend(map(_status, trials), best is not None), box.left, 0, 900)
    return _chart(width, height, body + "".join(parts), legend, f"{metric_name} per trial")


def _bar_labels(trials: Sequence[dict], band: float) -> tuple[list[str], str]:
    """Tick labels under the bars: trial ids when they fit, else indices (long ids cut short all look alike)."""
    ids = [_label(t) for t in trials]
    if max(map(len, ids)) * _CHAR_PX <= band - 4:
        return ids, "trial"
    return [str(t.get("index", i)) for i, t in enumerate(trials)], "trial index"


def _bar(trial: dict, metric: float | None, centre: float, band: float, ys: _Scale, is_best: bool) -> str:
    """One bar (or an ``×`` on the baseline for a trial without a metric) with a tooltip."""
    color = _status_color(_status(trial))
    tip = _title(f"{_label(trial)} · {_status(trial)}{_collapsed_note(trial)} · {_fmt(metric)}")
    bar_width = max(1.0, band * 0.7)
    if metric is None:
        cross = _text(centre, ys(0.0) - 4, "×", extra=f' fill="{color}" class="nometric"')
        return f"<g>{tip}{cross}</g>"
    top, bottom = sorted((ys(metric), ys(0.0)))
    outline = f' stroke="{_BEST_STROKE}" stroke-width="2.5"' if is_best else ""
    rect = (
        f'<rect x="{_n(centre - bar_width / 2)}" y="{_n(top)}" width="{_n(bar_width)}" '
        f'height="{_n(max(bottom - top, 0.5))}" fill="{color}"{outline}>{tip}</rect>'
    )
    # The label goes beyond the bar's free end: above a positive bar, below a negative one.
    label_y = top - 6 if metric >= 0 else bottom + 16
    star = _text(centre, label_y, "★ best", extra=' class="best-label"') if is_best else ""
    if _collapsed(trial):
        star += _text(centre, label_y, "collapsed", extra=f' class="collapsed-label" fill="{_COLLAPSED_COLOR}"')
    return rect + star


@dataclass(frozen=True)
class _XAxis:
    """How one parameter is placed along x: a scale for numbers, or positions of categories."""

    ticks: list[tuple[float, str]]
    place: Callable[[Any], float]
    log: bool


def _numeric_param(values: Sequence[Any]) -> bool:
    return bool(values) and all(_finite(v) is not None for v in values)


def _category(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else str(value)


def _param_axis(values: Sequence[Any], box: _Box) -> _XAxis:
    """Numeric values on a linear axis, or log10 when all positive and spanning over two decades;
    anything else (strings, bools, mixed) as evenly spaced categories."""
    if _numeric_param(values):
        numbers = [float(v) for v in values]
        log = min(numbers) > 0 and max(numbers) / min(numbers) > _LOG_RATIO
        integer = all(isinstance(v, int) for v in values)
        lo, hi, ticks = _log_ticks(numbers) if log else _linear_ticks(numbers, integer=integer)
        scale = _Scale(lo, hi, box.left + 10, box.right - 10, log)
        return _XAxis([(scale(v), t) for v, t in ticks], lambda v: scale(float(v)), log)
    categories = sorted({_category(v) for v in values})
    band = (box.right - box.left) / len(categories)
    positions = {c: box.left + band * (i + 0.5) for i, c in enumerate(categories)}
    ticks = [(positions[c], _short(c, band - 6)) for c in categories]
    return _XAxis(ticks, lambda v: positions[_category(v)], False)


def _jitter(index: int, spread: float) -> float:
    """A fixed small offset per trial so repeated grid values do not hide each other."""
    return ((index * 7919) % 11 - 5) / 5 * spread


def _scatter(key: str, name: str, trials: Sequence[dict], best: dict | None, metric_name: str) -> str:
    """Section 2: the metric against one parameter, one point per trial that has both."""
    width, height = 540.0, 310.0
    box = _Box(72, 16, width - 16, height - 58)
    valued = [(t, t["params"][key]) for t in trials if _has_param(t, key)]
    points = [(t, v, _finite(t.get("metric"))) for t, v in valued]
    points = [(t, v, m) for t, v, m in points if m is not None]
    if not points:
        return ""
    # The axis spans every trial's value, not only the plotted ones, so it stays put as trials finish.
    values = [v for _, v in valued]
    axis = _param_axis(values, box)
    y0, y1, yticks = _linear_ticks([m for _, _, m in points], margin=0.05)
    ys = _Scale(y0, y1, box.bottom, box.top)
    # Grid sweeps repeat each value; a small fixed sideways offset keeps those points apart.
    spread = 6.0 if not _numeric_param(values) or len(set(map(_category, values))) < len(values) else 0.0
    parts = []
    for position, (trial, value, metric) in enumerate(points):
        x = axis.place(value) + _jitter(position, spread)
        parts.append(_point(trial, x, ys(metric), f"{name}={_fmt(value)} → {_fmt(metric)}", trial is best))
    xlabel = f"{name} (log scale)" if axis.log else name
    body = _axes(box, axis.ticks, [(ys(v), t) for v, t in yticks], (xlabel, metric_name))
    shown = [trial for trial, _, _ in points]
    legend = _legend(_status_legend(map(_status, shown), any(t is best for t in shown)), box.left, 0, width - box.left)
    return _chart(width, height, body + "".join(parts), legend, f"{metric_name} against {key}")


def _has_param(trial: dict, key: str) -> bool:
    """Whether the trial has a plottable value for ``key`` (NaN and None are not)."""
    value = (trial.get("params") or {}).get(key)
    return value is not None and not (isinstance(value, float) and not math.isfinite(value))


def _point(trial: dict, x: float, y: float, tip: str, is_best: bool) -> str:
    color = _status_color(_status(trial))
    ring = (
        f'<circle cx="{_n(x)}" cy="{_n(y)}" r="10" fill="none" stroke="{_BEST_STROKE}" stroke-width="2.5"/>'
        if is_best
        else ""
    )
    return (
        f"<g>{_title(f'{_label(trial)} · {_status(trial)}{_collapsed_note(trial)} · {tip}')}{ring}"
        f'<circle cx="{_n(x)}" cy="{_n(y)}" r="6" fill="{color}" fill-opacity="0.85" stroke="#fff"/></g>'
    )


def _curve_points(trial: dict) -> list[tuple[float, float]]:
    """Finite ``(step, metric)`` pairs of a trial's curve, by step; malformed entries are skipped."""
    points = []
    for entry in trial.get("curve") or []:
        try:
            step, value = _finite(entry[0]), _finite(entry[1])
        except (TypeError, IndexError, KeyError):
            continue
        if step is not None and value is not None:
            points.append((step, value))
    return sorted(points)


def _curves_chart(trials: Sequence[dict], best: dict | None, metric_name: str) -> str:
    """Section 3: metric against step, one polyline per trial; pruned dashed, failed dotted, best thick."""
    curves = [(t, _curve_points(t)) for t in trials]
    curves = [(t, points) for t, points in curves if points]
    if not curves:
        return ""
    width, height = 1100.0, 360.0
    box = _Box(72, 16, width - 16, height - 58)
    x0, x1, xticks = _linear_ticks([0.0] + [s for _, points in curves for s, _ in points], 8, integer=True)
    y0, y1, yticks = _linear_ticks([v for _, points in curves for _, v in points], margin=0.05)
    xs, ys = _Scale(x0, x1, box.left, box.right), _Scale(y0, y1, box.bottom, box.top)
    parts, legend_items = [], []
    for position, (trial, points) in enumerate(curves):
        color = _CURVE_PALETTE[position % len(_CURVE_PALETTE)]
        parts.append(_polyline(trial, points, (xs, ys), color, trial is best))
        if position < _MAX_CURVE_LEGEND:
            legend_items.append(_curve_legend_item(trial, color, trial is best))
    if len(curves) > _MAX_CURVE_LEGEND:
        legend_items.append(_LegendItem(f"… and {len(curves) - _MAX_CURVE_LEGEND} more", "#ffffff", "line"))
    body = _axes(box, [(xs(v), t) for v, t in xticks], [(ys(v), t) for v, t in yticks], ("global step", metric_name))
    legend = _legend(legend_items, box.left, 0, box.right - box.left)
    return _chart(width, height, body + "".join(parts), legend, f"{metric_name} learning curves")


def _curve_legend_item(trial: dict, color: str, is_best: bool) -> _LegendItem:
    status = _status(trial)
    label = f"{_label(trial)} ({status}{', best' if is_best else ''})"
    return _LegendItem(label, color, "line", _CURVE_DASH.get(status, ""), is_best)


def _polyline(
    trial: dict, points: Sequence[tuple[float, float]], scales: tuple[_Scale, _Scale], color: str, is_best: bool
) -> str:
    """One learning curve; markers on every point of short curves, so a one-point curve still shows."""
    xs, ys = scales
    coords = " ".join(f"{_n(xs(s))},{_n(ys(v))}" for s, v in points)
    dash = _CURVE_DASH.get(_status(trial), "")
    dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
    tip = _title(f"{_label(trial)} · {_status(trial)} · last {_fmt(points[-1][1])} at step {_fmt(points[-1][0])}")
    marked = points if len(points) <= 40 else points[-1:]
    markers = "".join(f'<circle cx="{_n(xs(s))}" cy="{_n(ys(v))}" r="3" fill="{color}"/>' for s, v in marked)
    line = (
        f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="{3.5 if is_best else 2}" '
        f'stroke-linejoin="round"{dash_attr}/>'
    )
    return f"<g>{tip}{line}{markers}</g>"


# --------------------------------------------------------------------------------------------- HTML


_CSS = """
body { margin: 0; background: #f6f7f9; color: #1d2330;
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 10px 48px; }
h1 { font-size: 26px; margin: 0 0 6px; }
h2 { font-size: 19px; margin: 30px 0 4px; }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 0.92em; }
.meta, .counts, .best, .collapsed { margin: 4px 0; }
.note { color: #5a6272; font-size: 13px; margin: 0 0 8px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-size: 13px; }
.card { background: #fff; border: 1px solid #dde1e7; border-radius: 6px; padding: 6px; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
svg.chart { display: block; max-width: 100%; height: auto; font-size: 12px; fill: #1d2330;
            font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
svg .grid { stroke: #e4e7ec; } svg .tick, svg .axis { stroke: #5a6272; stroke-width: 1; }
svg .axis-title { font-size: 13px; font-weight: 600; }
svg .best-label { font-size: 12px; font-weight: 700; }
svg .nometric { font-size: 16px; font-weight: 700; }
.empty { color: #5a6272; font-style: italic; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; background: #fff; font-size: 13.5px; }
th, td { padding: 5px 10px; border-bottom: 1px solid #e4e7ec; text-align: left; white-space: nowrap; }
th { background: #eef1f5; white-space: normal; vertical-align: bottom; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.error div { white-space: pre-wrap; overflow-wrap: anywhere; width: 240px; max-height: 6em; overflow: hidden;
               color: #9b1c1c; font-family: "DejaVu Sans Mono", monospace; font-size: 12px; }
tr.best-row td { font-weight: 700; background: #fff8e1; }
tr.collapsed-row td { background: #fdeceb; color: #6b2a26; }
svg .collapsed-label { font-size: 11px; font-weight: 700; }
"""


def _badge(status: str, text: str | None = None) -> str:
    return _badge_html(text or status, _status_color(status))


def _badge_html(text: str, color: str, title: str = "") -> str:
    title_attr = f' title="{_esc(title)}"' if title else ""
    return f'<span class="badge" style="background:{color}"{title_attr}>{_esc(text)}</span>'


def _collapsed_note(trial: dict) -> str:
    return " · collapsed" if _collapsed(trial) else ""


def _created(sweep: dict) -> str:
    stamp = _finite(sweep.get("created_at"))
    if stamp is None:
        return ""
    try:
        return datetime.fromtimestamp(stamp, tz=timezone.utc).strftime(" · created %Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError):
        return ""


def _header(sweep: dict, trials: Sequence[dict], best: dict | None, names: dict[str, str]) -> str:
    """Title, sweep settings, counts by status and the best trial in one line each."""
    sweep_id = str(sweep.get("sweep_id") or "sweep")
    counts = Counter(_status(t) for t in trials)
    badges = " ".join(_badge(s, f"{s} {counts[s]}") for s in _ordered_statuses(_status(t) for t in trials))
    lines = [
        f"<h1>Sweep <code>{_esc(sweep_id)}</code></h1>",
        f'<p class="meta">method <b>{_esc(sweep.get("method") or "?")}</b> · metric <b>{_esc(_metric_name(sweep))}</b>'
        f" ({_esc(_goal(sweep))}) · status {_badge(str(sweep.get('status') or 'unknown'))}{_esc(_created(sweep))}</p>",
        f'<p class="counts">{len(trials)} trial{"" if len(trials) == 1 else "s"}: {badges or "none yet"}</p>',
    ]
    collapsed = sum(_collapsed(t) for t in trials)
    if collapsed:
        lines.append(
            f'<p class="collapsed">{_badge_html("collapsed", _COLLAPSED_COLOR)} {collapsed} trial'
            f"{'' if collapsed == 1 else 's'} collapsed (one summary for many dialogues): ranked after every "
            "healthy trial and never promoted.</p>"
        )
    if best is not None:
        params = ", ".join(f"{names.get(k, k)}={_fmt(v)}" for k, v in (best.get("params") or {}).items())
        lines.append(
            f'<p class="best">Best trial <b>{_esc(_label(best))}</b>: {_esc(_metric_name(sweep))} = '
            f"<b>{_esc(_fmt(_finite(best.get('metric'))))}</b>{_esc(' · ' + params if params else '')}</p>"
        )
    return "\n".join(lines)


def _section(title: str, note: str, content: str) -> str:
    note_html = f'<p class="note">{_esc(note)}</p>' if note else ""
    return f"<section>\n<h2>{_esc(title)}</h2>\n{note_html}\n{content}\n</section>"


def _leaderboard_html(sweep: dict, trials: Sequence[dict], names: dict[str, str]) -> str:
    """Section 4: the ranked table; the trial's error is shown (escaped) when any trial has one."""
    ranked = _ranked(sweep, trials)
    if not ranked:
        return _placeholder("No trials yet.")
    keys = _param_keys(trials)
    optional = _optional_columns(trials)
    with_error = any(t.get("error") for t in trials)
    head = ["rank", "trial", "status", _metric_name(sweep), *(_OPTIONAL_HEADERS[k] for k in optional)]
    head += [names[k] for k in keys] + ["seconds", "worker", "run"]
    titles = ["", "", "", ""] + [""] * len(optional) + keys + ["", "", ""]
    if with_error:
        head, titles = head + ["error"], titles + [""]
    header = "".join(
        f'<th title="{_esc(t)}">{_breakable(h)}</th>' if t else f"<th>{_breakable(h)}</th>"
        for h, t in zip(head, titles, strict=True)
    )
    body = "\n".join(_leaderboard_row(rank, trial, keys, optional, with_error) for rank, trial in ranked)
    return f'<div class="table-wrap"><table>\n<thead><tr>{header}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>'


def _breakable(text: str) -> str:
    """Escaped header text that may wrap after ``_`` and ``.``: long config names would widen the table."""
    return _esc(text).replace("_", "_<wbr>").replace(".", ".<wbr>")


def _cell(value: Any, numeric: bool | None = None) -> str:
    """A table cell, right-aligned for numbers (or for a numeric column's ``-``)."""
    right = _finite(value) is not None if numeric is None else numeric
    return f'<td class="num">{_esc(_fmt(value))}</td>' if right else f"<td>{_esc(_fmt(value))}</td>"


def _collapsed_cell(trial: dict) -> str:
    """The collapsed column: a red badge whose tooltip is the reason, ``no`` for a healthy trial, ``-`` unknown."""
    if _collapsed(trial):
        reason = str(trial.get("collapse_reason") or "collapsed")
        return f"<td>{_badge_html('collapsed', _COLLAPSED_COLOR, reason)}</td>"
    return f"<td>{'no' if trial.get('collapsed') is False else '-'}</td>"


def _leaderboard_row(
    rank: int | None, trial: dict, keys: Sequence[str], optional: Sequence[str], with_error: bool
) -> str:
    params = trial.get("params") or {}
    cells = [
        _cell(rank, numeric=True),
        f"<td>{_esc(_label(trial))}</td>",
        f"<td>{_badge(_status(trial))}</td>",
        _cell(_finite(trial.get("metric")), numeric=True),
        *(_collapsed_cell(trial) if k == "collapsed" else _cell(_finite(trial.get(k)), numeric=True) for k in optional),
        *(_cell(_clean(params.get(k))) for k in keys),
        _cell(_clean(trial.get("seconds")), numeric=True),
        _cell(trial.get("worker"), numeric=False),
        _cell(trial.get("run_id"), numeric=False),
    ]
    if with_error:
        error = str(trial.get("error") or "")
        cells.append(f'<td class="error" title="{_esc(error)}"><div>{_esc(_truncate(error, 300))}</div></td>')
    css = ' class="collapsed-row"' if _collapsed(trial) else ' class="best-row"' if rank == 1 else ""
    return f"<tr{css}>{''.join(cells)}</tr>"


def _param_sections(trials: Sequence[dict], best: dict | None, metric_name: str, names: dict[str, str]) -> str:
    charts = [_scatter(key, names[key], trials, best, metric_name) for key in _param_keys(trials)]
    charts = [f'<div class="card">{chart}</div>' for chart in charts if chart]
    if not charts:
        return _placeholder("No trial has both parameters and a metric yet.")
    return f'<div class="grid">\n{"".join(charts)}\n</div>'


def _best_trial(sweep: dict, trials: Sequence[dict]) -> dict | None:
    """The rank-1 trial unless it collapsed (then every trial with the metric did, and none is best)."""
    ranked = _ranked(sweep, trials)
    return ranked[0][1] if ranked and ranked[0][0] is not None and not _collapsed(ranked[0][1]) else None


def render_report(sweep: dict, trials: list[dict]) -> str:
    """Render one self-contained HTML page describing a sweep.

    The page has a header (sweep id, method, metric, status, counts by status, best trial) and four
    sections: (1) the metric of each trial as bars coloured by status, the best outlined; (2) the
    metric against each parameter, one scatter per parameter, log x-axis for positive values spanning
    more than two decades, categories for non-numeric values; (3) learning curves, metric against
    step, pruned trials dashed; (4) the leaderboard. Collapsed trials are counted in the header, labelled
    "collapsed" on their bar, shaded red in the leaderboard with the reason as the badge's tooltip, and
    never shown as best. Charts are inline SVG and every text from the input is HTML-escaped; nothing is
    loaded from elsewhere.

    Args:
        sweep: The sweep dict (see the module docstring).
        trials: One dict per trial; may be empty, and trials may lack metrics or curves.

    Returns:
        The HTML document.
    """
    trials = [t for t in trials if isinstance(t, dict)]
    by_index = sorted(trials, key=_index_key)
    best = _best_trial(sweep, trials)
    metric_name = _metric_name(sweep)
    names = _short_names(_param_keys(trials))
    has_metric = any(_finite(t.get("metric")) is not None for t in trials)
    bars = (
        _bar_chart(by_index, best, metric_name) if has_metric else _placeholder("No trial has reported the metric yet.")
    )
    scatters = _param_sections(by_index, best, metric_name, names)
    curves = _curves_chart(by_index, best, metric_name) or _placeholder("No evaluation has been reported yet.")
    sections = [
        _section("1. Metric per trial", "Bars coloured by status; × marks a trial without a metric.", _card(bars)),
        _section("2. Metric against each parameter", "One point per trial with a metric.", scatters),
        _section(
            "3. Learning curves", "Dashed: pruned; dotted: failed or cancelled; thick: best trial.", _card(curves)
        ),
        _section("4. Leaderboard", "", _leaderboard_html(sweep, trials, names)),
    ]
    title = f"Sweep {sweep.get('sweep_id') or ''} report"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"{_header(sweep, trials, best, names)}\n{''.join(sections)}\n</main>\n</body>\n</html>\n"
    )


def _card(content: str) -> str:
    return f'<div class="card">{content}</div>' if content.startswith("<svg") else content


def write_report(sweep: dict, trials: list[dict], path: str | Path) -> Path:
    """Render the sweep's HTML report and write it to ``path`` atomically.

    Args:
        sweep: The sweep dict.
        trials: Its trials.
        path: Target file, typically ``<root>/sweeps/<sweep_id>/report.html``.

    Returns:
        The written path.
    """
    return atomic_write_text(path, render_report(sweep, trials))
