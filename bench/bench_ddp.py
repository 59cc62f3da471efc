"""Two processes (DDP, gloo on CPU) against one, in one run: wall time and identical results.

For three computed jobs on the real SmolLM2-135M-Instruct, each run once with
``--trainer.devices 1`` and once with ``--trainer.strategy ddp --trainer.devices 2``, back to
back, through ``train.py fit`` (process start and model load included), each with a cold cache:

* ``caa``: the CAA vectors and the per-layer sweep of one MWE behaviour (``configs/mwe/caa_sweep.yaml``);
* ``austeer``: the AUSteer momentum statistics of a BoolQ pool and its search
  (``configs/commonsense/austeer_ffn_boolq.yaml``);
* ``w2s``: the W2S data pipeline (CAA vectors, sweeps, labels, embeddings) and the predictor
  (``configs/mwe/w2s_caa.yaml``).

It prints the seconds of each side, the ratio 2-process / 1-process, and the largest
difference of the computed numbers (vectors, statistics, sweep).  On a machine with N cores a
single process already uses all of them for its matrix products, so on CPU the ratio shows the
overhead of sharding; on several GPUs each process has its own device.

    python bench/bench_ddp.py [--jobs caa austeer w2s] [--out runs/bench_ddp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from interventions.edits import load_intervention  # noqa: E402
from interventions.reporting.artifacts import numbers  # noqa: E402
from interventions.reporting.run_folder import resolve_run  # noqa: E402

JOBS = {
    "caa": (
        "configs/mwe/caa_sweep.yaml",
        ["--data.max_examples=60", "--data.behavior=myopic-reward"],
        "sweep_cache_dir",
    ),
    "austeer": (
        "configs/commonsense/austeer_ffn_boolq.yaml",
        [
            "--data.pool_size=64",
            "--data.num_val=16",
            "--data.max_test=16",
            "--model.k_grid=[1,10]",
            "--model.alpha_grid=[1.0,10.0]",
        ],
        "cache_dir",
    ),  # fmt: skip
    "w2s": (
        "configs/mwe/w2s_caa.yaml",
        [
            "--data.max_examples=60",
            "--data.behavior=myopic-reward",
            "--data.ood_variants=[]",
            "--trainer.max_epochs=20",
        ],
        "sweep_cache_dir",
    ),  # fmt: skip
}


def fit(config: str, run: Path, args: list[str], devices: int) -> float:
    cmd = [
        sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / config),
        f"--trainer.default_root_dir={run}", "--trainer.logger=false",
        "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu", *args,
    ]  # fmt: skip
    if devices > 1:
        cmd += ["--trainer.strategy=ddp", f"--trainer.devices={devices}"]
    env = dict(os.environ, WANDB_MODE="disabled")
    if devices > 1:  # split the cores between the processes instead of oversubscribing them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // devices))
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{run}: exit {out.returncode}\n{out.stderr[-3000:]}")
    return seconds


def largest_difference(one: Path, two: Path) -> float:
    one, two = resolve_run(one), resolve_run(two)  # the latest version_N of each
    a, b = (json.loads((run / "metrics.json").read_text()) for run in (one, two))
    if "summary" in a:  # W2S: the pipeline's numbers (the predictor trains on other batches)
        a, b = a["summary"], b["summary"]
    a, b = numbers(a), numbers(b)
    keys = [k for k in a if "seconds" not in k and "time" not in k and k in b]
    diff = max((abs(a[k] - b[k]) for k in keys), default=0.0)
    if (one / "intervention").is_dir():
        ea, eb = load_intervention(one / "intervention"), load_intervention(two / "intervention")
        for pa, pb in zip(ea.parameters(), eb.parameters(), strict=True):
            diff = max(diff, float((pa - pb).detach().abs().max()))
    return diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    parser.add_argument("--out", default="runs/bench_ddp")
    args = parser.parse_args()
    out = Path(args.out)
    rows = []
    for job in args.jobs:
        config, extra, cache_flag = JOBS[job]
        seconds = {}
        for devices in (1, 2):
            run = out / f"{job}-{devices}"
            shutil.rmtree(run, ignore_errors=True)
            cache = [f"--model.{cache_flag}={run / 'cache'}"]
            seconds[devices] = fit(config, run, [*extra, *cache], devices)
        diff = largest_difference(out / f"{job}-1", out / f"{job}-2")
        rows.append((job, seconds[1], seconds[2], seconds[2] / seconds[1], diff))
        print(f"{job}: 1 process {seconds[1]:.1f} s, 2 processes {seconds[2]:.1f} s", flush=True)
    print(f"\n{torch.get_num_threads()} threads, {os.cpu_count()} cores")
    print("| job | 1 process (s) | 2 processes (s) | ratio 2 / 1 | largest difference |")
    print("|---|---|---|---|---|")
    for job, s1, s2, ratio, diff in rows:
        print(f"| {job} | {s1:.1f} | {s2:.1f} | {ratio:.2f} | {diff:.2e} |")


if __name__ == "__main__":
    main()
