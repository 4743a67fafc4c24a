"""Every benchmark in bench/ still runs: each script with --quick (tiny sizes) exits 0, prints its table and writes
its results JSON. No timing is asserted: the figures belong to BENCHMARKS.md, measured on a quiet machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

# Script -> a line its table must print.
SCRIPTS = {
    "rouge.py": "| compute_rouge, warm cache |",
    "prepare_data.py": "| cached prepare (fingerprint, load) |",
    "generation.py": "| untrained (random init) |",
    "train_throughput.py": "| ours / plain |",
    "orchestration.py": "| stage ends -> next stage starts |",
    "sweep_scaling.py": "| makespan / ideal |",
}


def _run(command: list[str], tmp_path) -> tuple[str, dict]:
    out = tmp_path / "results.json"
    result = subprocess.run(
        [*command, "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**_environment(), "DIALSUM_BENCH_WORK": str(tmp_path / "work")},
    )
    output = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{output}"
    return result.stdout, json.loads(out.read_text())


def _environment() -> dict:
    return {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_benchmark_script_runs_quick(script, tmp_path):
    stdout, results = _run([sys.executable, f"bench/{script}"], tmp_path)
    assert SCRIPTS[script] in stdout
    assert results["quick"] is True and results["machine"]["nproc"] >= 1


def test_gpu_script_runs_quick_on_whatever_device_is_there(tmp_path):
    stdout, results = _run(["bash", "bench/gpu.sh"], tmp_path)
    for figure in ("training samples/s", "training tokens/s", "MFU", "generation summaries/s"):
        assert f"| {figure} |" in stdout
    assert results["train"]["samples_per_second"] > 0 and results["generation"]["summaries_per_second"] > 0
