"""Two workers on one host: started separately (two `dialsum worker --gpus none`) against one launcher with two.

Before tasks/host.py, two separately started workers each sized torch's thread pool to every core of the machine:
two tiny runs through such a pair took 827 s, through one `dialsum worker --gpus none --cpu-workers 2` 173 s (4.8x,
issue 13). Now every worker on a host registers in a host-local registry and each task takes the host's cores divided
by the registered workers. This runs two real tiny trainings (config/tiny.yaml, built-in sample data) through each
setup on a private redis-server, alternating the setups, and reports makespan(separate) / makespan(one launcher).
Target: <= 1.15.

    python bench/shared_host.py [--quick] [--repeats N]
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from benchlib import REPO, WORK_DIR, alternate, median, parse_args, print_table, verdict, write_results
from cluster import free_port

TARGET = 1.15
ONE_LAUNCHER, SEPARATE = "one launcher, --cpu-workers 2", "two launchers started separately"


def _configs(directory: Path, steps: int) -> list[Path]:
    """Two tiny runs (seeds 1 and 2) on the built-in sample data, in ``directory``."""
    from pipeline.config import ConfigManager
    from pipeline.sample_data import write_sample_data

    data = directory / "data"
    write_sample_data(data, n_train=600, n_dev=40, n_test=20)
    paths = []
    for seed in (1, 2):
        config = ConfigManager().load_config(REPO / "config" / "tiny.yaml")
        config["general"].update(seed=seed, artifact_root=str(directory / "artifacts"))
        config["data"].update(
            sample_data=False,
            train_path=str(data / "train.csv"),
            val_path=str(data / "dev.csv"),
            test_path=str(data / "test.csv"),
        )
        config["training"].update(max_steps=steps, eval_steps=steps, save_steps=steps)
        path = directory / f"seed{seed}.yaml"
        ConfigManager().save_config(config, path)
        paths.append(path)
    return paths


def makespan(setup: str, steps: int) -> float:
    """Seconds from submitting two tiny runs until both completed, on a fresh redis and fresh workers."""
    directory = WORK_DIR / "shared_host" / uuid.uuid4().hex[:8]
    directory.mkdir(parents=True)
    configs = _configs(directory, steps)
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    env = {**os.environ, "DIALSUM_BROKER_URL": url, "DIALSUM_HOST_REGISTRY": str(directory / "registry")}
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
    )
    commands = (
        [["worker", "--gpus", "none", "--cpu-workers", "2"]]
        if setup == ONE_LAUNCHER
        else [["worker", "--gpus", "none"], ["worker", "--gpus", "none"]]
    )
    log = open(directory / "workers.log", "w")
    launchers = []
    try:
        for command in commands:
            launchers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tasks.cli", *command], cwd=REPO, env=env, stdout=log, stderr=log
                )
            )
            time.sleep(3)  # "in another terminal, a moment later"
        _wait_for_workers(env, 2)
        start = time.time()
        submitted = [
            subprocess.Popen(
                [sys.executable, "-m", "tasks.cli", "submit", "--config", str(config), "--wait"],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for config in configs
        ]
        codes = [process.wait(timeout=3600) for process in submitted]
        seconds = time.time() - start
        if codes != [0, 0]:
            raise RuntimeError(f"{setup}: runs exited {codes}; see {directory / 'workers.log'}")
        return seconds
    finally:
        for launcher in launchers:
            launcher.send_signal(signal.SIGTERM)
        for launcher in launchers:
            launcher.wait(timeout=120)
        redis.terminate()
        redis.wait(timeout=30)
        log.close()


def _wait_for_workers(env: dict[str, str], count: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "tasks.app", "inspect", "ping", "--timeout", "3"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        ).stdout
        if answer.count(": OK") >= count:
            return
        time.sleep(1)
    raise RuntimeError(f"{count} workers did not answer ping within {timeout:.0f} s")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], repeats=2)
    steps = 20 if args.quick else 150
    seconds = alternate(
        {setup: (lambda setup=setup: makespan(setup, steps)) for setup in (ONE_LAUNCHER, SEPARATE)}, args.repeats
    )
    ratio = median(seconds[SEPARATE]) / median(seconds[ONE_LAUNCHER])
    print_table(
        f"Two tiny runs of {steps} steps through two workers on this host; median of {args.repeats}",
        ["setup", "makespan s", "ratio to one launcher", "target", ""],
        [
            [ONE_LAUNCHER, f"{median(seconds[ONE_LAUNCHER]):.1f}", "1.000", "", ""],
            [
                SEPARATE,
                f"{median(seconds[SEPARATE]):.1f}",
                f"{ratio:.3f}",
                f"<= {TARGET}",
                verdict(ratio, TARGET, False),
            ],
        ],
    )
    write_results("shared_host", args, {"steps": steps, "makespan_seconds": seconds, "ratio": ratio, "target": TARGET})


if __name__ == "__main__":
    main()
