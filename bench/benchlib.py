"""What every benchmark script shares: arguments, side-by-side timing, the machine, the table, the JSON.

Each script in ``bench/`` measures two ways of doing one thing in the same run, alternating them (A B, B A,
A B, ...) so that a machine whose speed drifts (other processes, thermal limits) shifts both sides alike, and
reports the median of the repeats. Results go to ``bench/results/<name>.json`` (not committed: BENCHMARKS.md
holds the numbers that were reviewed).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "bench"
RESULTS_DIR = BENCH_DIR / "results"
# Scratch space for models, prepared datasets and run directories; ignored by git like every artifact.
WORK_DIR = Path(os.environ.get("DIALSUM_BENCH_WORK", REPO / "artifacts" / "bench"))
# DialogSum (English, competition CSV format) lives beside the project when it is there at all.
DIALOGSUM_DIR = Path(os.environ.get("DIALSUM_BENCH_DATA", REPO.parent / "shared" / "data" / "dialogsum"))


def parse_args(description: str, repeats: int, configure: Callable[[argparse.ArgumentParser], None] | None = None):
    """The arguments every benchmark takes: ``--quick``, ``--repeats`` and ``--out``.

    Args:
        description: The script's one-line purpose (``--help``).
        repeats: Default number of alternated repeats of the full benchmark.
        configure: Adds the script's own arguments to the parser.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: checks the script still works")
    parser.add_argument("--repeats", type=int, default=None, help=f"alternated repeats (default {repeats}; quick 1)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default bench/results/<name>.json)")
    if configure is not None:
        configure(parser)
    args = parser.parse_args()
    quiet_libraries()
    if args.repeats is None:
        args.repeats = 1 if args.quick else repeats
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def machine() -> dict[str, Any]:
    """Where the numbers were measured: cores, CPU model, memory, load, library versions."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_gib": _mem_gib(),
        "loadavg": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
    }
    for module in ("torch", "transformers", "celery", "kiwipiepy"):
        if module in sys.modules:
            info[module] = getattr(sys.modules[module], "__version__", "?")
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def alternate(sides: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[Any]]:
    """Run every side once per repeat, rotating which goes first, and collect what each returns.

    Args:
        sides: Name -> a call that measures that side once and returns its figure (seconds, a dict...).
        repeats: Rounds; in round ``r`` the order starts at side ``r mod len(sides)``.

    Returns:
        Name -> the figures of the rounds, in round order.
    """
    names = list(sides)
    figures: dict[str, list[Any]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            figures[name].append(sides[name]())
    return figures


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, result)`` of one call, on the monotonic clock."""
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def median(values: Sequence[float]) -> float:
    """The median (the figure quoted: one slow or one lucky repeat must not move it)."""
    return float(statistics.median(values))


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile by linear interpolation between the closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a Markdown table (pasted into BENCHMARKS.md as it is)."""
    cells = [[_cell(value) for value in row] for row in rows]
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for row in cells:
        print("| " + " | ".join(row) + " |")
    print()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    """``met`` or ``MISSED`` for a figure against its target."""
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "MISSED"


def write_results(name: str, args: argparse.Namespace, results: dict[str, Any]) -> Path:
    """Write ``results`` with the machine and the command line to ``bench/results/<name>.json``."""
    path = args.out or RESULTS_DIR / f"{name}{'-quick' if args.quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": args.quick,
        "repeats": args.repeats,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        **results,
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"results: {path}")
    return path


def dialogsum_files() -> dict[str, Path] | None:
    """DialogSum ``train``/``dev`` CSVs when they are beside the project, else None."""
    files = {"train": DIALOGSUM_DIR / "train.csv", "dev": DIALOGSUM_DIR / "dev.csv"}
    return files if all(path.is_file() for path in files.values()) else None


def data_files(quick: bool, train_rows: int | None = None, dev_rows: int | None = None) -> tuple[dict[str, Path], str]:
    """The benchmark data: DialogSum when present, else generated Korean sample data.

    With ``--quick``, or when fewer rows are asked for, the first rows are written to a temporary directory
    (outside the project: DialogSum is never copied into it), so that everything downstream (the tokenizer
    trained on the training split, its cache key) sees only those rows.

    Args:
        quick: Tiny sizes (300 training and 40 validation rows unless given).
        train_rows: Training rows to keep (all when None and not quick).
        dev_rows: Validation rows to keep (all when None and not quick).

    Returns:
        ``({"train": path, "dev": path}, description)``.
    """
    if quick:
        train_rows, dev_rows = train_rows or 300, dev_rows or 40
    found = dialogsum_files()
    directory = Path(tempfile.mkdtemp(prefix="dialsum-bench-"))
    if found is None:
        from pipeline.sample_data import write_sample_data

        written = write_sample_data(directory, n_train=train_rows or 4000, n_dev=dev_rows or 500, n_test=10, seed=0)
        return {"train": written["train"], "dev": written["dev"]}, "generated Korean sample data (no DialogSum)"
    if train_rows is None and dev_rows is None:
        return found, f"DialogSum ({DIALOGSUM_DIR})"
    files = {
        split: _head_csv(path, rows, directory / path.name) if rows else path
        for (split, path), rows in zip(found.items(), (train_rows, dev_rows), strict=True)
    }
    return files, f"DialogSum ({DIALOGSUM_DIR}), first {train_rows or 'all'} train / {dev_rows or 'all'} dev rows"


def _head_csv(source: Path, rows: int, target: Path) -> Path:
    with source.open(encoding="utf-8", newline="") as file:
        reader = csv.reader(file)
        kept = [next(reader), *itertools.islice(reader, rows)]
    with target.open("w", encoding="utf-8", newline="") as file:
        csv.writer(file).writerows(kept)
    return target


def scratch_tokenizer(train_path: Path, vocab_size: int = 8000):
    """The project's scratch BPE tokenizer for ``train_path``, trained once and cached under ``WORK_DIR``."""
    from pipeline.config import DEFAULT_SPECIAL_TOKENS
    from pipeline.modeling import load_scratch_tokenizer

    return load_scratch_tokenizer(WORK_DIR, train_path, vocab_size, list(DEFAULT_SPECIAL_TOKENS))


def run_json(argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 3600) -> dict[str, Any]:
    """Run ``python argv...`` in a fresh process and parse the JSON object it prints on its last stdout line.

    A fresh process per measured side keeps one side's allocator, thread pools and caches from helping or
    hurting the other.
    """
    result = subprocess.run(
        [sys.executable, *argv],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def quiet_libraries() -> None:
    """Keep library progress bars and W&B out of the measured processes' output."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.getLogger("pipeline").setLevel(logging.ERROR)  # truncation notices would drown the table
