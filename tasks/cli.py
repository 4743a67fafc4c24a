"""The ``dialsum`` console script: the library's commands plus the cluster's (worker, flower, submit, ...).

The cluster commands live here, not in ``pipeline/cli.py``, because ``pipeline/`` never imports celery.
"""

from __future__ import annotations

import argparse
import sys

from pipeline import cli as library_cli

CLUSTER_EPILOG = """cluster:
  dialsum worker --gpus 0,1,2,3                   one worker per GPU on this node (CPU-only machine: --gpus none)
  dialsum flower                                  Flower dashboard on the same broker (basic auth)
  dialsum submit --config config/base_config.yaml --wait
  dialsum status [RUN_ID] [--root R]              one run, or all runs (and those only on disk under R)
  dialsum recover --root R                        re-enqueue unfinished runs a restarted Redis forgot
  dialsum cancel RUN_ID                           stop a run at the next step; its last checkpoint is kept
  dialsum sweep --config F --sweep S --parallel 8 W&B-format sweep; sweep-status ID, report ID
  dialsum metrics --port 9808                     Prometheus metrics: queue depth, runs and trials by state
  every process reads the broker from DIALSUM_BROKER_URL (default redis://127.0.0.1:6379/0)
"""


def build_parser() -> argparse.ArgumentParser:
    """The full ``dialsum`` parser: library and cluster subcommands."""
    parser = argparse.ArgumentParser(
        prog="dialsum",
        description="Train, evaluate and predict dialogue summarization models (KoBART, BART, T5, mT5), "
        "in process or on Celery workers.",
        epilog=library_cli.EPILOG + "\n" + CLUSTER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = library_cli.add_library_commands(commands)
    run.add_argument("--broker", help="submit to the cluster on this broker and follow it (default: run in process)")
    run.set_defaults(handler=cmd_run)
    add_worker_command(commands)
    add_flower_command(commands)
    add_run_commands(commands)
    add_sweep_commands(commands)
    add_metrics_command(commands)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    """``dialsum run``: in process, or through the cluster with ``--broker`` (followed with a progress bar)."""
    if not args.broker:
        return library_cli.cmd_run(args)
    from tasks.broker import shown_url

    handle = _client(args.broker).submit(args.config, overrides=args.overrides, experiment_name=args.experiment_name)
    print(f"run {handle.id} submitted to {shown_url(args.broker)}")  # never the password
    return _follow(handle)


def _client(broker: str | None):
    """The cluster client for ``--broker`` (default DIALSUM_BROKER_URL), once the broker accepted this client."""
    from tasks.broker import check_broker
    from tasks.client import PipelineClient

    client = PipelineClient(broker)
    check_broker(client.broker_url)
    return client


def _follow(handle) -> int:
    from tasks.client import RunFailed

    try:
        manifest = handle.wait(progress=True)
    except RunFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    library_cli.print_run_summary(manifest)
    for stage, record in manifest["stages"].items():
        print(f"{stage:<22}{record['worker']:<28}queue={record['queue']:<5}{record['seconds']:>9.1f}s")
    print(f"run directory: {manifest['run_dir']}")
    return 0


def add_run_commands(commands: argparse._SubParsersAction) -> None:
    """``dialsum submit``, ``status`` and ``cancel``: runs on the cluster (broker from DIALSUM_BROKER_URL)."""
    submit = commands.add_parser("submit", help="validate a config and enqueue its run on the cluster")
    library_cli._add_config_arguments(submit)
    submit.add_argument("--experiment-name", help="experiment name (default: experiment.name of the config)")
    submit.add_argument("--wait", action="store_true", help="follow the run with a progress bar until it ends")
    submit.add_argument("--broker", help="broker URL (default: DIALSUM_BROKER_URL or redis://127.0.0.1:6379/0)")
    submit.set_defaults(handler=cmd_submit)

    status = commands.add_parser("status", help="show one run, or a table of all runs")
    status.add_argument("run_id", nargs="?", help="a run id (run-...); all runs when omitted")
    status.add_argument("--broker", help="broker URL")
    status.add_argument(
        "--root",
        help="also list the runs on disk under this artifact root that the broker does not know (after a Redis "
        "restart without persistence), with the command that resubmits them",
    )
    status.set_defaults(handler=cmd_status)

    recover = commands.add_parser(
        "recover",
        help="re-enqueue the unfinished runs under an artifact root that the broker forgot",
        description="After a Redis restart that lost its data: every run under ARTIFACT_ROOT/runs whose manifest is "
        "not completed and which the broker does not know is enqueued again with its own config (same run id); "
        "finished stages are skipped and training resumes from the latest checkpoint. A run whose worker still "
        "holds its lease keeps running there (its record is written again). Safe to run twice.",
    )
    recover.add_argument("--root", required=True, help="the shared artifact root (general.artifact_root)")
    recover.add_argument("--broker", help="broker URL (default: DIALSUM_BROKER_URL)")
    recover.set_defaults(handler=cmd_recover)

    cancel = commands.add_parser("cancel", help="stop a run at the next training step; its checkpoint is kept")
    cancel.add_argument("run_id")
    cancel.add_argument("--broker", help="broker URL")
    cancel.set_defaults(handler=cmd_cancel)


def cmd_submit(args: argparse.Namespace) -> int:
    """``dialsum submit``."""
    handle = _client(args.broker).submit(args.config, overrides=args.overrides, experiment_name=args.experiment_name)
    _warn_if_redis_forgets()
    print(handle.id)
    return _follow(handle) if args.wait else 0


def cmd_status(args: argparse.Namespace) -> int:
    """``dialsum status [RUN_ID]``."""
    import json

    client = _client(args.broker)
    if args.run_id:
        print(json.dumps(client.get(args.run_id).status(), indent=2, default=str))
        return 0
    print(f"{'run':<18}{'status':<11}{'stage':<22}{'step':>10}  experiment")
    for record in client.list_runs():
        progress = record.get("progress") or {}
        step = f"{progress.get('step', '')}/{progress.get('total', '')}" if progress else ""
        stage, status = record.get("stage", ""), record.get("status") or "?"
        print(f"{record['run_id']:<18}{status:<11}{stage:<22}{step:>10}  {record.get('experiment', '')}")
    if args.root:
        from tasks.recover import describe_unknown, runs_on_disk

        unknown = [row for row in runs_on_disk(args.root) if row["broker"] is None and row["status"] != "completed"]
        if unknown:
            print(f"\n{len(unknown)} unfinished run(s) under {args.root} unknown to the broker:")
            for row in unknown:
                print("  " + describe_unknown(row, args.root))
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    """``dialsum recover --root ARTIFACT_ROOT``."""
    from pathlib import Path

    from tasks.recover import recover

    if not (Path(args.root) / "runs").is_dir():
        print(
            f"error: {args.root} has no runs/ directory; pass the artifact root (general.artifact_root)",
            file=sys.stderr,
        )
        return 2
    _client(args.broker)
    actions = recover(args.root)
    for action in actions:
        print(f"{action['run_id']:<18}{action['action']:<12}{action['detail']}")
    resubmitted = sum(action["action"] == "resubmitted" for action in actions)
    print(f"{resubmitted} run(s) resubmitted, {len(actions) - resubmitted} left as they were")
    return 0


def _warn_if_redis_forgets() -> None:
    """One loud line when the broker's Redis would lose every queued run on a restart."""
    from tasks.recover import persistence_warning

    warning = persistence_warning()
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def cmd_cancel(args: argparse.Namespace) -> int:
    """``dialsum cancel RUN_ID``."""
    _client(args.broker).get(args.run_id).cancel()
    print(f"cancel requested for {args.run_id}")
    return 0


def add_worker_command(commands: argparse._SubParsersAction) -> None:
    """``dialsum worker`` (see tasks/worker.py)."""
    worker = commands.add_parser(
        "worker",
        help="start one Celery worker per GPU (and a CPU worker) on this node, in the foreground",
        description="Start one `celery -A tasks.app worker` process per GPU (CUDA_VISIBLE_DEVICES=k, node gpu<k>@host, "
        "concurrency 1, queue gpu) plus a CPU worker (cpu0@host, queue cpu); on a CPU-only node (--gpus none) CPU "
        "workers consume both queues. CPU threads are split between all dialsum workers of this host, and node names "
        "never repeat on it. SIGTERM/SIGINT stop them all: "
        "each running task gets the soft-shutdown window, then goes back on the queue.",
    )
    worker.add_argument("--gpus", required=True, help="GPU indices as nvidia-smi numbers them (0,1,2,3), all, or none")
    worker.add_argument("--queues", help="queues of the GPU workers (CPU-only node: of the CPU workers); default gpu")
    worker.add_argument(
        "--cpu-workers",
        type=int,
        default=1,
        metavar="N",
        help="CPU workers: with GPUs 1 (queue cpu) or 0; with --gpus none N workers on gpu,cpu (default 1)",
    )
    worker.add_argument("--loglevel", default="info", help="Celery log level (default info)")
    worker.add_argument("--dry-run", action="store_true", help="print the worker commands; start none")
    worker.set_defaults(handler=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    """``dialsum worker``."""
    from tasks import worker

    return worker.main(args)


def add_flower_command(commands: argparse._SubParsersAction) -> None:
    """``dialsum flower`` (see tasks/flower.py)."""
    flower = commands.add_parser(
        "flower",
        help="Flower dashboard on the same broker, with basic auth",
        description="Run Flower on the broker of DIALSUM_BROKER_URL. Credentials: FLOWER_BASIC_AUTH=user:password from "
        "the environment, otherwise a generated password printed once.",
    )
    flower.add_argument("--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    flower.add_argument("--port", type=int, default=5555, help="port to listen on (default 5555)")
    flower.add_argument(
        "--no-auth-on-loopback",
        action="store_true",
        help="no authentication at all; only with a loopback --address (127.0.0.0/8 or ::1)",
    )
    flower.set_defaults(handler=cmd_flower)


def cmd_flower(args: argparse.Namespace) -> int:
    """``dialsum flower``."""
    from tasks import flower

    return flower.main(args)


def add_sweep_commands(commands: argparse._SubParsersAction) -> None:
    """``dialsum sweep``, ``sweep-status`` and ``report``."""
    sweep = commands.add_parser(
        "sweep",
        help="run a W&B-format sweep across the workers",
        description="Validate a W&B sweep config against the base config and submit its first --parallel trials. "
        "The command may exit at once: every trial that ends starts the next one on a worker.",
    )
    library_cli._add_config_arguments(sweep)
    sweep.add_argument("--sweep", required=True, help="W&B sweep YAML (method, metric, parameters, early_terminate)")
    sweep.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="trials running at once (default: one per worker consuming the training queue, counted again each "
        "time a trial ends)",
    )
    sweep.add_argument("--wait", action="store_true", help="follow the sweep until it ends and print the leaderboard")
    sweep.add_argument("--broker", help="broker URL (default: DIALSUM_BROKER_URL)")
    sweep.set_defaults(handler=cmd_sweep)

    status = commands.add_parser("sweep-status", help="a sweep's leaderboard (best first)")
    status.add_argument("sweep_id", nargs="?", help="a sweep id; all sweeps when omitted")
    status.add_argument("--broker", help="broker URL")
    status.set_defaults(handler=cmd_sweep_status)

    report = commands.add_parser("report", help="write a sweep's self-contained HTML report with plots")
    report.add_argument("sweep_id")
    report.add_argument("--out", help="HTML file (default: <artifact_root>/sweeps/<id>/report.html)")
    report.add_argument("--broker", help="broker URL")
    report.set_defaults(handler=cmd_report)


def cmd_sweep(args: argparse.Namespace) -> int:
    """``dialsum sweep``."""
    from pipeline.sweep import describe, load_sweep_config

    client = _client(args.broker)
    handle = client.submit_sweep(args.config, args.sweep, parallel=args.parallel, overrides=args.overrides)
    _warn_if_redis_forgets()
    from pipeline.config import ConfigManager

    print(describe(load_sweep_config(args.sweep, ConfigManager().load_config(args.config, overrides=args.overrides))))
    print(f"sweep {handle.id} submitted; follow it with: dialsum sweep-status {handle.id}")
    if args.wait:
        from pipeline.report import leaderboard_table

        print(leaderboard_table(handle.wait(progress=True)))
    return 0


def cmd_sweep_status(args: argparse.Namespace) -> int:
    """``dialsum sweep-status [SWEEP_ID]``."""
    from pipeline.report import leaderboard_table

    client = _client(args.broker)
    if not args.sweep_id:
        for status in client.list_sweeps():
            print(f"{status['sweep_id']:<18}{status['status']:<11}{status['trials']}")
        return 0
    handle = client.get_sweep(args.sweep_id)
    status = handle.status()
    print(f"sweep {handle.id}: {status['status']}, trials {status['trials']}")
    print(leaderboard_table(handle.leaderboard()))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``dialsum report SWEEP_ID``."""
    from pathlib import Path

    from pipeline.artifacts import sweeps_dir
    from pipeline.report import write_report
    from tasks.sweeps import read_sweep, sweep_summary

    handle = _client(args.broker).get_sweep(args.sweep_id)
    state = read_sweep(handle.id)
    out = (
        Path(args.out)
        if args.out
        else sweeps_dir(state["base_config"]["general"]["artifact_root"]) / handle.id / "report.html"
    )
    write_report(sweep_summary(state), handle.trials(), out)
    print(f"report: {out}")
    return 0


def add_metrics_command(commands: argparse._SubParsersAction) -> None:
    """``dialsum metrics`` (see tasks/metrics.py)."""
    metrics = commands.add_parser(
        "metrics",
        help="Prometheus metrics of the cluster: queue depth, runs and sweep trials by status",
        description="Serve /metrics for Prometheus: dialsum_queue_depth{queue}, dialsum_queue_unacked{queue}, "
        "dialsum_runs{status}, dialsum_trials{status}, dialsum_sweeps{status}, dialsum_broker_up, read from the "
        "broker (DIALSUM_BROKER_URL) at every scrape.",
    )
    metrics.add_argument("--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    metrics.add_argument("--port", type=int, default=9808, help="port to listen on (default 9808)")
    metrics.add_argument("--broker", help="broker URL (default: DIALSUM_BROKER_URL)")
    metrics.add_argument("--once", action="store_true", help="print the metrics once to stdout and exit")
    metrics.set_defaults(handler=cmd_metrics)


def cmd_metrics(args: argparse.Namespace) -> int:
    """``dialsum metrics``."""
    from tasks import metrics

    return metrics.main(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dialsum`` console script.

    A broker that cannot be reached, or that refuses the password, is an error message naming DIALSUM_BROKER_URL and
    what to change (exit status 2), not a traceback.
    """
    from kombu.exceptions import OperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    try:
        return library_cli.main(argv, parser=build_parser())
    except (RedisConnectionError, RedisTimeoutError, OperationalError) as error:
        from tasks.app import app
        from tasks.broker import broker_error_message

        print(f"error: {broker_error_message(error, app.conf.broker_url)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
