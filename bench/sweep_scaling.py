"""Sweep scaling: T trials on K = 1, 2, 4 workers with a fixed-cost stand-in train stage, against the ideal.

A real grid sweep (``PipelineClient.submit_sweep(..., parallel=K)``) over T seeds runs on a private redis-server and
K real workers (``dialsum worker --gpus none --cpu-workers K`` command lines; also stock Celery prefork, see
``bench/worker_variants.py``). The workers run the real stage tasks
and sweep machinery with stand-in stage bodies (``bench/standin_stages.py``): train sleeps S seconds, the other
three stages only write their manifest. Makespan: from ``submit_sweep`` until the client sees the sweep finished
(leaderboard and report written). Ideal: ceil(T/K) x S. Target: makespan / ideal <= 1.05.

    python bench/sweep_scaling.py [--quick]
"""

from __future__ import annotations

import json
import math
import sys
import time
import uuid
from pathlib import Path

from benchlib import WORK_DIR, median, parse_args, print_table, quiet_libraries, run_json, verdict, write_results
from cluster import PRODUCT, VARIANTS, Cluster

TARGET = 1.05


def base_config(root) -> dict:
    """A valid pipeline config (the stand-in stages read only its seed and paths)."""
    from pipeline.config import ConfigManager

    config = ConfigManager().validate({"general": {"artifact_root": str(root)}, "model": {"checkpoint": "scratch"}})
    config["data"].update(train_path=str(root / "train.csv"), val_path=str(root / "dev.csv"), test_path=None)
    return config


def makespan(cluster: Cluster, trials: int, parallel: int) -> float:
    """Seconds from submitting a grid sweep of ``trials`` seeds until the client sees it finished."""
    from tasks.client import PipelineClient

    root = WORK_DIR / "sweep_scaling" / uuid.uuid4().hex[:8]
    sweep = {
        "method": "grid",
        "metric": {"name": "eval/loss", "goal": "minimize"},
        "parameters": {"seed": {"values": list(range(1, trials + 1))}},
    }
    start = time.time()
    handle = PipelineClient(cluster.url).submit_sweep(base_config(root), sweep, parallel=parallel)
    rows = handle.wait(timeout=3600, progress=False, poll_seconds=0.05)
    seconds = time.time() - start
    finished = [row for row in rows if row["status"] == "finished"]
    if len(finished) != trials:
        raise RuntimeError(f"{len(finished)} of {trials} trials finished: {rows}")
    return seconds


def measure(variant: str, workers: int, trials: int, stage_seconds: float, repeats: int) -> dict:
    """Start ``workers`` workers running ``variant`` and run ``repeats`` sweeps on them; their makespans."""
    scratch = WORK_DIR / "sweep_scaling" / uuid.uuid4().hex[:8]
    env = {"BENCH_TRAIN_SECONDS": str(stage_seconds)}
    with Cluster(scratch, workers, app_module="standin_stages", variant=variant, env=env) as cluster:
        makespans = [makespan(cluster, trials, workers) for _ in range(repeats)]
    return {"makespans": makespans, "cluster_start_seconds": cluster.started_in}


def _options(parser) -> None:
    parser.add_argument("--trials", type=int, default=None, help="trials per sweep (default 8; quick 2)")
    parser.add_argument("--train-seconds", type=float, default=None, help="stand-in train stage (default 6; quick 0.2)")
    parser.add_argument("--workers", default=None, help="comma-separated K values (default 1,2,4; quick 1,2)")
    parser.add_argument("--product-only", action="store_true", help=f"only the {PRODUCT} worker, not stock Celery")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], repeats=2, configure=_options)
    # --quick checks that the script works, fast: 2 short trials, and only the product worker, whose hand-offs take
    # a fraction of a second where stock Celery prefork's may take 5 s each (bench/orchestration.py --quick runs it).
    trials = args.trials or (2 if args.quick else 8)
    stage_seconds = args.train_seconds or (0.2 if args.quick else 6.0)
    worker_counts = [int(k) for k in (args.workers or ("1,2" if args.quick else "1,2,4")).split(",")]
    variants = [PRODUCT] if args.quick or args.product_only else list(VARIANTS)
    seconds: dict[str, dict[int, list[float]]] = {variant: {} for variant in variants}
    for workers in worker_counts:
        for variant in variants:
            # One process per cluster: Celery's app keeps its broker connection pool, which must not outlive redis.
            child = [str(Path(__file__).resolve()), "--child", variant, str(workers), str(trials), str(stage_seconds)]
            result = run_json([*child, str(args.repeats)])
            print(f"K={workers}, {variant}: workers up in {result['cluster_start_seconds']:.1f}s", file=sys.stderr)
            seconds[variant][workers] = result["makespans"]
    _summarize(args, trials, stage_seconds, seconds)


def _summarize(args, trials: int, stage_seconds: float, seconds: dict) -> None:
    rows, ratios = [], {}
    for variant, by_workers in seconds.items():
        for workers, values in by_workers.items():
            rounds = math.ceil(trials / workers)
            ideal = rounds * stage_seconds
            ratio = median(values) / ideal
            ratios[f"{variant}, K={workers}"] = ratio
            overhead = (median(values) - ideal) / rounds
            rows.append(
                [variant, workers, f"{median(values):.2f}", f"{ideal:.1f}", f"{ratio:.3f}", f"{overhead:.2f}"]
                + [f"<= {TARGET}", verdict(ratio, TARGET, False)]
            )
    print_table(
        f"Sweep of {trials} trials, stand-in train stage of {stage_seconds:g}s; median of {args.repeats} sweeps each",
        ["worker", "K", "makespan s", "ideal s", "makespan / ideal", "overhead per trial s", "target", ""],
        rows,
    )
    write_results(
        "sweep_scaling",
        args,
        {
            "trials": trials,
            "train_seconds": stage_seconds,
            "makespan_seconds": seconds,
            "ratio": ratios,
            "target": TARGET,
        },
    )


if __name__ == "__main__":
    if "--child" in sys.argv:
        variant, workers, trials, stage_seconds, repeats = sys.argv[sys.argv.index("--child") + 1 :][:5]
        quiet_libraries()
        print(json.dumps(measure(variant, int(workers), int(trials), float(stage_seconds), int(repeats))))
    else:
        main()
