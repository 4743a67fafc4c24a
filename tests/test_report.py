"""Sweep leaderboard (ordering, table, CSV/JSON) and the HTML report, down to a headless-browser screenshot."""

from __future__ import annotations

import csv
import json
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib

import pytest

from pipeline.report import (
    STATUS_COLORS,
    best_row,
    leaderboard,
    leaderboard_table,
    render_report,
    write_leaderboard,
    write_report,
)

SWEEP = {
    "sweep_id": "sweep-abc123",
    "method": "grid",
    "metric": {"name": "rouge_combined_f1", "goal": "maximize"},
    "status": "finished",
    "created_at": 1764300000.0,
}
LR, BATCH = "training.learning_rate", "training.per_device_train_batch_size"


def _trial(index, metric, status="finished", lr=1e-4, batch=16, curve=None, error=""):
    if curve is None:
        curve = [] if metric is None else [[10, metric * 0.4], [20, metric * 0.8], [30, metric]]
    return {
        "trial_id": f"t{index}",
        "index": index,
        "params": {LR: lr, BATCH: batch},
        "status": status,
        "metric": metric,
        "curve": curve,
        "run_id": f"run-{1000 + index}",
        "worker": f"gpu{index % 2}@node1",
        "seconds": 800.0 + 13.25 * index,
        "error": error,
    }


def realistic_trials() -> list[dict]:
    """Six trials: learning rates over more than two decades (log axis), one pruned early, one failed."""
    return [
        _trial(0, 0.41, lr=1e-5, batch=16),
        _trial(1, 0.52, lr=3e-5, batch=32),
        _trial(2, 0.63, lr=3e-4, batch=16),
        _trial(3, 0.58, lr=2e-3, batch=32),
        _trial(4, None, "failed", lr=5e-3, batch=16, curve=[[10, 0.05]], error="<script>alert('x')</script> CUDA OOM"),
        _trial(5, 0.30, "pruned", lr=1e-4, batch=32, curve=[[10, 0.2], [20, 0.3]]),
    ]


# ------------------------------------------------------------------------------------------ leaderboard


def test_leaderboard_orders_best_first_for_maximize():
    rows = leaderboard(SWEEP, realistic_trials())

    assert [r["trial_id"] for r in rows] == ["t2", "t3", "t1", "t0", "t5", "t4"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5, None]
    assert rows[0]["metric"] == 0.63 and rows[-1]["metric"] is None
    assert set(rows[0]) == {"rank", "trial_id", "index", "status", "metric", "run_id", "worker", "seconds", LR, BATCH}
    assert rows[0][LR] == 3e-4 and rows[0][BATCH] == 16 and rows[0]["run_id"] == "run-1002"


def test_leaderboard_orders_lowest_first_for_minimize():
    sweep = {**SWEEP, "metric": {"name": "eval_loss", "goal": "minimize"}}
    trials = [_trial(0, 2.5), _trial(1, None, "running"), _trial(2, 1.5), _trial(3, 3.0)]

    rows = leaderboard(sweep, trials)

    assert [r["trial_id"] for r in rows] == ["t2", "t0", "t3", "t1"]
    assert [r["rank"] for r in rows] == [1, 2, 3, None]


def test_trials_without_a_usable_metric_come_last_by_index():
    trials = [
        _trial(5, None, "queued"),
        _trial(1, float("nan"), "failed"),
        _trial(3, 0.2),
        _trial(0, float("inf"), "failed"),
        _trial(2, 0.2),  # a tie with t3: index order, consecutive ranks
    ]

    rows = leaderboard(SWEEP, trials)

    assert [r["trial_id"] for r in rows] == ["t2", "t3", "t0", "t1", "t5"]
    assert [r["rank"] for r in rows] == [1, 2, None, None, None]
    assert all(r["metric"] is None for r in rows[2:])


def test_leaderboard_has_a_column_per_parameter_even_where_a_trial_lacks_it():
    trials = [_trial(0, 0.5), {**_trial(1, 0.6), "params": {"generation.num_beams": 4}}]

    rows = leaderboard(SWEEP, trials)

    assert rows[0]["trial_id"] == "t1" and rows[0]["generation.num_beams"] == 4 and rows[0][LR] is None
    assert rows[1]["generation.num_beams"] is None and rows[1][LR] == 1e-4
    assert leaderboard(SWEEP, []) == []


def test_write_leaderboard_writes_parseable_csv_and_strict_json(tmp_path):
    trials = [*realistic_trials(), {**_trial(6, float("nan")), "seconds": float("nan")}]
    rows = leaderboard(SWEEP, trials)

    paths = write_leaderboard(rows, tmp_path / "sweeps" / "sweep-abc123")

    assert set(paths) == {"csv", "json"}
    with open(paths["csv"], newline="", encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    assert [r["trial_id"] for r in records] == [r["trial_id"] for r in rows]
    assert records[0]["rank"] == "1" and float(records[0]["metric"]) == 0.63 and float(records[0][LR]) == 3e-4
    assert records[-1]["rank"] == "" and records[-1]["metric"] == ""

    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    loaded = json.loads(paths["json"].read_text(encoding="utf-8"), parse_constant=reject)
    assert loaded == json.loads(json.dumps(rows))
    assert not list(paths["csv"].parent.glob(".*.tmp")), "atomic write left a temporary file"


def test_table_lists_every_trial_in_aligned_columns():
    rows = leaderboard(SWEEP, realistic_trials())

    table = leaderboard_table(rows)
    lines = table.splitlines()

    assert len(lines) == 2 + len(rows)
    assert len({len(line) for line in lines}) == 1, table
    for row in rows:
        assert re.search(rf"\b{row['trial_id']}\b", table)
    header = lines[0]
    assert "learning_rate" in header and "per_device_train_batch_size" in header and LR not in header
    # Numbers are right-aligned: every metric cell ends where the "metric" header ends.
    end = header.index("metric") + len("metric")
    assert [line[end - 4 : end] for line in lines[2:7]] == ["0.63", "0.58", "0.52", "0.41", " 0.3"]
    assert lines[7][:end].rstrip().endswith("-")
    assert "0.0003" in lines[2] and "826.5" in lines[2]


def test_table_keeps_ambiguous_parameter_paths_and_fits_the_width():
    trials = [{**_trial(i, 0.1 * i), "params": {LR: 1e-4, "data.learning_rate": 2, "note": "x" * 80}} for i in range(3)]
    rows = leaderboard(SWEEP, trials)

    wide = leaderboard_table(rows, max_width=400)
    narrow = leaderboard_table(rows, max_width=90)

    assert LR in wide and "data.learning_rate" in wide and "worker" in wide
    assert all(len(line) <= 90 for line in narrow.splitlines()), narrow
    assert "worker" not in narrow and "t0" in narrow and "t2" in narrow and "…" in narrow
    assert leaderboard_table([]) == "(no trials)"


def test_table_formats_floats_to_four_significant_digits():
    trials = [{**_trial(0, 0.612345678), "seconds": 12345.678, "params": {LR: 3.14159e-5}}]

    table = leaderboard_table(leaderboard(SWEEP, trials))

    assert "0.6123" in table and "3.142e-05" in table and "12346" in table
    assert "0.612345" not in table


def collapse_trials() -> list[dict]:
    """Three finished trials as ``on_trial_event`` records them: the highest metric belongs to a collapsed one."""
    reason = "only 2.0% of the predictions are distinct (evaluation.collapse_min_distinct 50%)"
    return [
        {
            **_trial(0, 0.61),
            "collapsed": True,
            "collapse_reason": reason,
            "lead3_rouge2": 0.239,
            "rouge2_margin_over_lead3": -0.083,
        },
        {
            **_trial(1, 0.48),
            "collapsed": False,
            "collapse_reason": "",
            "lead3_rouge2": 0.239,
            "rouge2_margin_over_lead3": 0.041,
        },
        {
            **_trial(2, 0.52),
            "collapsed": False,
            "collapse_reason": "",
            "lead3_rouge2": 0.239,
            "rouge2_margin_over_lead3": 0.065,
        },
        _trial(3, None, "running"),
    ]


def test_collapsed_trial_ranks_after_healthy_ones_and_is_never_best():
    rows = leaderboard(SWEEP, collapse_trials())

    assert [(r["trial_id"], r["rank"], r["collapsed"]) for r in rows] == [
        ("t2", 1, False),
        ("t1", 2, False),
        ("t0", 3, True),
        ("t3", None, None),
    ]
    assert rows[0]["lead3_rouge2"] == 0.239 and rows[0]["rouge2_margin_over_lead3"] == 0.065
    assert best_row(rows)["trial_id"] == "t2"
    # Every finished trial collapsed: the collapsed one still ranks first, but nothing is promoted.
    all_collapsed = [{**trial, "collapsed": True} for trial in collapse_trials()[:3]]
    assert (
        leaderboard(SWEEP, all_collapsed)[0]["trial_id"] == "t0" and best_row(leaderboard(SWEEP, all_collapsed)) is None
    )


def test_collapsed_and_baseline_columns_appear_in_table_csv_and_report(tmp_path):
    rows = leaderboard(SWEEP, collapse_trials())

    table = leaderboard_table(rows)
    header, *body = [line for i, line in enumerate(table.splitlines()) if i != 1]
    assert "collapsed" in header and "lead3 R2" in header and "R2 margin" in header
    assert re.search(r"\bt0\b.*\byes\b", body[2]) and re.search(r"\bt2\b.*\bno\b", body[0])
    with open(write_leaderboard(rows, tmp_path)["csv"], newline="", encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    assert records[2]["collapsed"] == "True" and records[0]["rouge2_margin_over_lead3"] == "0.065"

    page = render_report(SWEEP, collapse_trials())
    for svg in _svgs(page):
        ET.fromstring(svg)
    assert "1 trial collapsed" in page and ">collapsed</text>" in page  # header and the bar's label
    assert re.search(r'<tr class="collapsed-row"><td[^>]*>3</td><td>t0</td>', page)
    assert 'title="only 2.0% of the predictions are distinct' in page  # the reason, as the badge's tooltip
    assert re.search(r"Best trial <b>t2</b>", page)
    # Trials recorded before the check existed get no such columns.
    assert "collapsed" not in leaderboard(SWEEP, realistic_trials())[0]
    healthy_page = render_report(SWEEP, realistic_trials())
    assert "trial collapsed" not in healthy_page and 'class="collapsed-row"' not in healthy_page


# ------------------------------------------------------------------------------------------------ report


def _svgs(page: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", page, flags=re.DOTALL)


def test_report_has_its_plots_leaderboard_and_escapes_text():
    page = render_report(SWEEP, realistic_trials())

    svgs = _svgs(page)
    assert len(svgs) == 4  # metric per trial, one scatter per parameter (2), learning curves
    for svg in svgs:
        ET.fromstring(svg)  # well-formed: every text from the input was escaped
    assert "<title>Sweep sweep-abc123 report</title>" in page
    assert "grid" in page and "rouge_combined_f1" in page and "finished 4" in page and "failed 1" in page
    assert "learning_rate (log scale)" in page and "per_device_train_batch_size (log scale)" not in page
    assert 'stroke-dasharray="7 4"' in page  # the pruned trial's curve is dashed
    assert "★ best" in page
    for index in range(6):
        assert re.search(rf"<tr[^>]*><td[^>]*>[-\d]+</td><td>t{index}</td>", page)
    assert "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert not re.search(r"https?://", page), "the report must not reference anything online"
    assert not re.search(r"""(src|href)\s*=|@import|url\(""", page)


def test_report_orders_leaderboard_rows_by_rank():
    page = render_report(SWEEP, realistic_trials())

    order = re.findall(r"<tr[^>]*><td[^>]*>[-\d]+</td><td>(t\d)</td>", page)

    assert order == ["t2", "t3", "t1", "t0", "t5", "t4"]


def test_categorical_parameters_become_categories():
    trials = [
        {**_trial(i, 0.1 + 0.05 * i), "params": {"optimizer": name, "fp16": i % 2 == 0}}
        for i, name in enumerate(["adamw", "adafactor", "adamw", "sgd"])
    ]

    page = render_report(SWEEP, trials)

    svgs = _svgs(page)
    assert len(svgs) == 4
    for label in ("adafactor", "adamw", "sgd", "True", "False"):
        assert f">{label}</text>" in page


EDGE_CASES = {
    "no trials": [],
    "all metrics None": [_trial(0, None, "running", curve=[[5, 0.1]]), _trial(1, None, "queued")],
    "single trial": [_trial(0, 0.5)],
    "constant metric": [_trial(i, 0.0, lr=1e-3, curve=[[1, 0.0], [2, 0.0]]) for i in range(3)],
    "NaN and junk": [
        {
            **_trial(0, float("nan"), curve=[[1, float("nan")], ["bad"], None, [2, 0.3]]),
            "params": {LR: float("nan"), BATCH: float("inf")},
            "seconds": float("nan"),
        },
        {"trial_id": "x", "index": 1, "status": "mystery", "metric": float("inf"), "params": None, "curve": None},
    ],
    "missing keys": [{}],
    "negative and huge": [_trial(0, -3.0, lr=-1e-9), _trial(1, 2.0, lr=1e9)],
}


@pytest.mark.parametrize("trials", list(EDGE_CASES.values()), ids=list(EDGE_CASES))
def test_edge_cases_render(trials, tmp_path):
    for goal in ("maximize", "minimize"):
        sweep = {**SWEEP, "metric": {"name": "m", "goal": goal}}
        page = render_report(sweep, trials)

        assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
        assert "nan" not in page.lower() and "inf<" not in page
        for svg in _svgs(page):
            ET.fromstring(svg)
        rows = leaderboard(sweep, trials)
        assert len(leaderboard_table(rows).splitlines()) == (2 + len(rows) if rows else 1)
    paths = write_leaderboard(leaderboard(SWEEP, trials), tmp_path)
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == json.loads(json.dumps(leaderboard(SWEEP, trials)))
    assert write_report(SWEEP, trials, tmp_path / "report.html").read_text(encoding="utf-8") == render_report(
        SWEEP, trials
    )


def test_report_on_an_empty_sweep_says_so():
    page = render_report({"sweep_id": "s1"}, [])

    assert "0 trials" in page and "No trials yet." in page and "<svg" not in page


def test_write_report_is_atomic_and_self_contained(tmp_path):
    target = tmp_path / "sweeps" / "sweep-abc123" / "report.html"

    path = write_report(SWEEP, realistic_trials(), target)

    assert path == target and path.read_text(encoding="utf-8") == render_report(SWEEP, realistic_trials())
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]


# ------------------------------------------------------------------------------------- headless browser

WIDTH, HEIGHT = 1280, 2000


def _png_rows(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """Decode an 8-bit, non-interlaced RGB or RGBA PNG into rows of pixel bytes (standard library only)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    pos, chunks, idat = 8, {}, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        chunks.setdefault(kind, body)
        if kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert depth == 8 and color in (2, 6) and interlace == 0, f"unexpected PNG format {depth=} {color=} {interlace=}"
    bpp = 3 if color == 2 else 4
    raw, stride = zlib.decompress(b"".join(idat)), width * bpp
    assert len(raw) == height * (stride + 1), "truncated image data"
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        _unfilter(kind, line, previous, bpp)
        rows.append(bytes(line))
        previous = line
    return width, height, bpp, rows


def _unfilter(kind: int, line: bytearray, previous: bytearray, bpp: int) -> None:
    if kind == 1:
        for i in range(bpp, len(line)):
            line[i] = (line[i] + line[i - bpp]) & 255
    elif kind == 2:
        line[:] = bytes((a + b) & 255 for a, b in zip(line, previous, strict=True))
    elif kind == 3:
        for i in range(len(line)):
            line[i] = (line[i] + ((line[i - bpp] if i >= bpp else 0) + previous[i]) // 2) & 255
    elif kind == 4:
        for i in range(len(line)):
            a, b = (line[i - bpp], previous[i - bpp]) if i >= bpp else (0, 0)
            up = previous[i]
            p = a + up - b
            pa, pb, pc = abs(p - a), abs(p - up), abs(p - b)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else up if pb <= pc else b)) & 255
    else:
        assert kind == 0, f"bad PNG filter type {kind}"


def _count_color(rows: list[bytes], bpp: int, hex_color: str) -> int:
    rgb = bytes.fromhex(hex_color.lstrip("#"))
    return sum(1 for row in rows for x in range(0, len(row), bpp) if row[x : x + 3] == rgb)


def test_report_renders_its_plots_in_headless_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("chromium is not installed; install it with: apt-get update && apt-get install -y chromium")
    report = write_report(SWEEP, realistic_trials(), tmp_path / "report.html")
    screenshot = tmp_path / "report.png"
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--force-device-scale-factor=1",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--window-size={WIDTH},{HEIGHT}",
        f"--screenshot={screenshot}",
        report.resolve().as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90, env={"HOME": str(tmp_path)})

    assert screenshot.is_file(), f"no screenshot (rc {result.returncode}): {result.stderr[-2000:]}"
    data = screenshot.read_bytes()
    assert len(data) > 20_000, "screenshot is suspiciously small (blank page?)"
    width, height, bpp, rows = _png_rows(data)
    assert (width, height) == (WIDTH, HEIGHT)
    # The plots are on screen: the bars and points of each status and the best trial's curve show up
    # in their exact colours, in quantities no text or badge reaches alone.
    finished = _count_color(rows, bpp, STATUS_COLORS["finished"])
    pruned = _count_color(rows, bpp, STATUS_COLORS["pruned"])
    assert finished > 20_000, f"{finished} pixels of finished bars"
    assert pruned > 3_000, f"{pruned} pixels of the pruned bar"
    assert _count_color(rows, bpp, "#e15759") > 300, "the best trial's learning curve is missing"
    distinct = {row[x : x + 3] for row in rows[::8] for x in range(0, len(row), bpp * 8)}
    assert len(distinct) > 50, "too few colours for a page of charts"
