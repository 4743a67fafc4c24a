"""Every benchmark in bench/ still runs: each script with --quick (tiny sizes) exits 0, prints its table and writes
its results JSON. No timing is asserted: the figures belong to BENCHMARKS.md, measured on a quiet machine.

The scripts are started together and each test waits for its own: most of their time is process start-up and
waiting on workers, so running them side by side keeps this module near one minute instead of three.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

# Command -> a line its table must print.
COMMANDS = {
    "rouge": ([sys.executable, "bench/rouge.py"], "| compute_rouge, warm cache |"),
    "prepare_data": ([sys.executable, "bench/prepare_data.py"], "| cached prepare (fingerprint, load) |"),
    "generation": ([sys.executable, "bench/generation.py"], "| DialogSum, untrained |"),
    "train_throughput": ([sys.executable, "bench/train_throughput.py"], "| ours / plain |"),
    "orchestration": ([sys.executable, "bench/orchestration.py"], "| stage ends -> next stage starts |"),
    "sweep_scaling": ([sys.executable, "bench/sweep_scaling.py"], "| makespan / ideal |"),
    "shared_host": ([sys.executable, "bench/shared_host.py"], "| two launchers started separately |"),
    "gpu": (["bash", "bench/gpu.sh"], "| generation summaries/s |"),
}


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> dict[str, tuple[subprocess.Popen, Path]]:
    """Every benchmark started with --quick, each with its own results file, log and scratch directory."""
    directory = tmp_path_factory.mktemp("bench")
    processes = {}
    for name, (command, _) in COMMANDS.items():
        log = (directory / f"{name}.log").open("w")
        env = {**os.environ, "WANDB_MODE": "disabled", "DIALSUM_BENCH_WORK": str(directory / f"{name}-work")}
        process = subprocess.Popen(
            [*command, "--quick", "--out", str(directory / f"{name}.json")],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        processes[name] = (process, directory)
    yield processes
    for process, _ in processes.values():
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def _finished(launched, name: str) -> tuple[str, dict]:
    process, directory = launched[name]
    try:
        code = process.wait(timeout=600)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"bench {name} --quick did not finish in 10 minutes")
    output = (directory / f"{name}.log").read_text()
    assert code == 0, f"bench {name} --quick exited {code}:\n{output[-5000:]}"
    return output, json.loads((directory / f"{name}.json").read_text())


@pytest.mark.parametrize("name", list(COMMANDS))
def test_benchmark_runs_quick_and_prints_its_table(launched, name):
    output, results = _finished(launched, name)
    assert COMMANDS[name][1] in output
    assert results["quick"] is True and results["machine"]["nproc"] >= 1


def test_gpu_benchmark_prints_every_figure(launched):
    output, results = _finished(launched, "gpu")
    for figure in ("training samples/s", "training tokens/s", "MFU", "generation summaries/s"):
        assert f"| {figure} |" in output
    assert results["train"]["samples_per_second"] > 0 and results["generation"]["summaries_per_second"] > 0
