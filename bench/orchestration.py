"""Orchestration cost: stage hand-off latency through Redis, and a tiny run through the cluster against in process.

1. Hand-off latency: chains of four *empty* stages (``bench/empty_stages.py``: the real app and worker, stage
   bodies that only record their start and end) through a private ``redis-server`` and one real worker, one
   chain at a time. Hand-off = next stage's start - previous stage's end; also submit -> first start. Measured on
   the worker ``dialsum worker`` starts and on stock Celery prefork (the same worker with ``--pool prefork`` and the
   preload's ``gc.freeze()`` undone: ``bench/worker_variants.py``), to show what those two changes are worth.
2. The tiny config (``config/tiny.yaml`` on its generated sample data) run end to end through the broker and one
   ``dialsum worker``-style worker (``--gpus none --cpu-workers 1``: one worker with all cores, like one GPU),
   against the same four stage functions called in one process. Each side starts with torch imported (the
   worker preloads it; the in-process side imports it before its clock starts) and a fresh artifact root; the
   cluster side's clock runs from ``submit`` until the client sees the run completed. Runs alternate; both
   workers.
   Target: wall-time ratio <= 1.05; the overhead of each stage is listed.

    python bench/orchestration.py [--quick]
    python bench/orchestration.py --summarize bench/results/orchestration.json   # the tables again, from a file
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import uuid
from pathlib import Path

from benchlib import (
    REPO,
    WORK_DIR,
    alternate,
    median,
    parse_args,
    percentile,
    print_table,
    quiet_libraries,
    run_json,
    verdict,
    write_results,
)
from cluster import PRODUCT, STOCK, VARIANTS, Cluster

TARGET = 1.05
STAGES = ("prepare_data", "train", "evaluate", "generate_predictions")


# --------------------------------------------------------------------------- 1. hand-off latency
def handoff_latency(cluster: Cluster, chains: int) -> dict[str, list[float]]:
    """Seconds of each hand-off over ``chains`` sequential chains of the four empty stages (after one warm-up)."""
    from celery import chain
    from empty_stages import EMPTY_QUEUES, EMPTY_TASKS

    from tasks.app import app

    app.conf.update(broker_url=cluster.url, result_backend=cluster.url)
    figures: dict[str, list[float]] = {"submit": [], "handoff": [], "result": [], "chain": []}
    for index in range(chains + 1):
        signatures = [app.signature(EMPTY_TASKS[stage], queue=EMPTY_QUEUES[stage]) for stage in STAGES]
        submitted = time.time()
        result = chain(signatures[0].clone(args=({"stages": []},)), *signatures[1:]).apply_async()
        records = result.get(timeout=120, interval=0.005)["stages"]
        received = time.time()
        if index == 0:
            continue  # the first chain also pays the first connection and pool start-up
        figures["submit"].append(records[0]["started"] - submitted)
        figures["handoff"] += [after["started"] - before["finished"] for before, after in itertools.pairwise(records)]
        figures["result"].append(received - records[-1]["finished"])
        figures["chain"].append(received - submitted)
    return figures


# --------------------------------------------------------------------------- 2. tiny run, cluster vs in process
def tiny_config(quick: bool, data_dir: Path) -> dict:
    """``config/tiny.yaml`` on sample data in ``data_dir`` (--quick: shrunk like the tests' micro config)."""
    from pipeline.config import ConfigManager
    from pipeline.sample_data import write_sample_data

    config = ConfigManager().load_config(REPO / "config" / "tiny.yaml")
    sizes = {"n_train": 300, "n_dev": 30, "n_test": 15} if quick else {"n_train": 2000, "n_dev": 200, "n_test": 100}
    files = write_sample_data(data_dir, seed=config["general"]["seed"], **sizes)
    config["data"].update(
        sample_data=False, train_path=str(files["train"]), val_path=str(files["dev"]), test_path=str(files["test"])
    )
    if quick:
        config["model"]["scratch"].update(vocab_size=600, d_model=64, ffn_dim=128)
        config["training"].update(max_steps=8, per_device_train_batch_size=16, eval_steps=4, save_steps=4)
        config["generation"].update(num_beams=1, max_length=16)
        config["inference"]["batch_size"] = 8
    return ConfigManager().validate(config)


def fresh(config: dict, label: str) -> dict:
    """The config with its own artifact root and run directory: no side finds the other's caches or results."""
    root = WORK_DIR / "orchestration" / f"{label}-{uuid.uuid4().hex[:8]}"
    config = json.loads(json.dumps(config))
    config["general"].update(artifact_root=str(root), output_dir=str(root / "run"))
    return config


def run_in_process(config_path: Path) -> dict:
    """The four stage functions one after another in this process (what ``dialsum run`` does)."""
    import pipeline.trainer  # noqa: F401  (imported before the clock, as the worker preloads it)
    from pipeline.lifecycle import STAGE_FUNCTIONS, new_manifest

    config = json.loads(config_path.read_text())
    start = time.time()
    manifest = new_manifest(config)
    for stage in STAGES:
        manifest = STAGE_FUNCTIONS[stage](manifest)
    wall = time.time() - start
    return {"wall": wall, "stages": _stage_times(manifest, start)}


def run_on_cluster(cluster: Cluster, config: dict) -> dict:
    """Submit the run and follow it as a client does; wall from submit until the client sees it completed."""
    from tasks.client import PipelineClient

    start = time.time()
    manifest = PipelineClient(cluster.url).submit(config).wait(timeout=1800, progress=False, poll_seconds=0.05)
    wall = time.time() - start
    return {"wall": wall, "stages": _stage_times(manifest, start)}


def _stage_times(manifest: dict, start: float) -> dict:
    """Per stage: seconds inside the stage function and the gap since the previous stage ended (or the start)."""
    times, previous_end = {}, start
    for stage in STAGES:
        record = manifest["stages"][stage]
        times[stage] = {"seconds": record["seconds"], "gap": record["started_at"] - previous_end}
        previous_end = record["finished_at"]
    return times


# --------------------------------------------------------------------------- the driver
def measure_handoffs(variant: str, chains: int) -> dict[str, list[float]]:
    """Hand-off latency on a fresh cluster whose worker runs ``variant``."""
    scratch = WORK_DIR / "orchestration" / uuid.uuid4().hex[:8]
    with Cluster(scratch, workers=1, app_module="empty_stages", variant=variant) as cluster:
        return handoff_latency(cluster, chains)


def measure_cluster_run(variant: str, config_path: Path) -> dict:
    """One tiny run on a fresh cluster (started before the clock) whose worker runs ``variant``."""
    config = json.loads(config_path.read_text())
    # The product runs on the plain app, exactly as deployed; the stock worker needs the bench module that undoes
    # the freeze.
    module = "tasks.app" if variant == PRODUCT else "worker_variants"
    with Cluster(config_path.parent / uuid.uuid4().hex[:8], 1, app_module=module, variant=variant) as cluster:
        return run_on_cluster(cluster, config)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], repeats=2)
    script = str(Path(__file__).resolve())
    latency = {}
    # --quick checks that the script works, fast: one chain on the stock worker (its hand-offs may take 5 s each),
    # enough to show that the switch back to stock Celery still starts a working worker.
    # The full run: fewer chains on the stock worker, whose hand-offs take ~6 s each (20 chains would take 8 min).
    for variant, chains in ((PRODUCT, 3), (STOCK, 1)) if args.quick else ((PRODUCT, 20), (STOCK, 8)):
        # One process per cluster: Celery's app keeps its broker connection pool, which must not outlive its redis.
        latency[variant] = run_json([script, "--handoffs", variant, str(chains)])
    scratch = WORK_DIR / "orchestration" / uuid.uuid4().hex[:8]
    config = tiny_config(args.quick, scratch / "data")

    def side(flag: str, variant: str | None = None):
        def run() -> dict:
            path = scratch / f"config-{uuid.uuid4().hex[:8]}.json"
            path.write_text(json.dumps(fresh(config, flag.strip("-"))))
            return run_json([script, flag, *([variant] if variant else []), str(path)])

        return run

    sides = {"in process": side("--in-process")}
    cluster_variants = (PRODUCT,) if args.quick else VARIANTS  # --quick: not the tiny run on the slower stock worker
    sides.update({f"cluster, {variant}": side("--cluster-run", variant) for variant in cluster_variants})
    _summarize(args, latency, alternate(sides, args.repeats))


def _tail(run: dict) -> float:
    """Seconds from the last stage's end until the client saw the run completed."""
    return run["wall"] - sum(times["seconds"] + times["gap"] for times in run["stages"].values())


def _summarize(args, latency: dict, runs: dict, write: bool = True) -> None:
    rows = []
    for variant, figures in latency.items():
        for name, values in (
            ("submit -> first stage starts", figures["submit"]),
            ("stage ends -> next stage starts", figures["handoff"]),
            ("whole chain of 4 empty stages", figures["chain"]),
        ):
            p50, p99 = percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000
            rows.append([variant, name, len(values), f"{p50:.0f}", f"{p99:.0f}"])
    print_table(
        "Hand-off latency, empty stages, real Redis and worker (one chain at a time)",
        ["worker", "what", "n", "p50 ms", "p99 ms"],
        rows,
    )

    reference = "in process"
    walls = {side: median([run["wall"] for run in runs[side]]) for side in runs}
    ratios = {side: walls[side] / walls[reference] for side in runs}
    # What orchestration costs, apart from the stage bodies: the run's wall time minus the seconds spent inside the
    # four stage functions. On a shared machine the stage bodies (the training above all) vary by far more between
    # runs than this does, so it is also quoted as the ratio it gives at the in-process wall time.
    outside = {
        side: median([run["wall"] - sum(times["seconds"] for times in run["stages"].values()) for run in runs[side]])
        for side in runs
    }
    cost_ratios = {side: 1 + (outside[side] - outside[reference]) / walls[reference] for side in runs}
    stage_rows = []
    for side in runs:
        for stage in STAGES:
            seconds = median([run["stages"][stage]["seconds"] for run in runs[side]])
            gap = median([run["stages"][stage]["gap"] for run in runs[side]])
            stage_rows.append([side, stage, f"{seconds:.2f}", f"{gap * 1000:.0f}"])
        tail = median([_tail(run) for run in runs[side]])
        stage_rows.append([side, "last stage ends -> client sees the run completed", "", f"{tail * 1000:.0f}"])
        stage_rows.append([side, "outside the stage functions (wall - stage seconds)", f"{outside[side]:.2f}", ""])
        stage_rows.append([side, "whole run (wall)", f"{walls[side]:.2f}", f"ratio {ratios[side]:.3f}"])
    print_table(
        f"Tiny run through broker + worker vs in process; median of {args.repeats} alternated runs each",
        ["side", "stage", "seconds", "gap before it ms"],
        stage_rows,
    )
    for side in runs:
        if side != reference:
            ratio, cost = ratios[side], cost_ratios[side]
            met = verdict(ratio, TARGET, False)
            print(f"wall-time ratio {side} / in process {ratio:.3f} (target <= {TARGET}): {met}")
            print(
                f"  its orchestration cost, {outside[side] - outside[reference]:.2f} s per run, at the in-process wall "
                f"time: ratio {cost:.3f} (target <= {TARGET}): {verdict(cost, TARGET, False)}"
            )
    if not write:
        return
    write_results(
        "orchestration",
        args,
        {
            "handoff_seconds": latency,
            "handoff_ms": {
                variant: {
                    name: {"p50": percentile(values, 0.5) * 1000, "p99": percentile(values, 0.99) * 1000}
                    for name, values in figures.items()
                }
                for variant, figures in latency.items()
            },
            "runs": runs,
            "median_wall": walls,
            "wall_ratio": ratios,
            "outside_stage_seconds": outside,
            "cost_ratio": cost_ratios,
            "target": TARGET,
        },
    )


if __name__ == "__main__":
    if "--in-process" in sys.argv:
        print(json.dumps(run_in_process(Path(sys.argv[sys.argv.index("--in-process") + 1]))))
    elif "--cluster-run" in sys.argv:
        variant, path = sys.argv[sys.argv.index("--cluster-run") + 1 :][:2]
        quiet_libraries()
        print(json.dumps(measure_cluster_run(variant, Path(path))))
    elif "--summarize" in sys.argv:
        # The tables again from a results file, without measuring anything.
        saved = json.loads(Path(sys.argv[sys.argv.index("--summarize") + 1]).read_text())
        saved_args = argparse.Namespace(repeats=saved["repeats"], quick=saved["quick"], out=None)
        _summarize(saved_args, saved["handoff_seconds"], saved["runs"], write=False)
    elif "--handoffs" in sys.argv:
        variant, chains = sys.argv[sys.argv.index("--handoffs") + 1 :][:2]
        quiet_libraries()
        print(json.dumps(measure_handoffs(variant, int(chains))))
    else:
        main()
