"""EAP-IG attribution cost on the real SmolLM2: seconds and peak memory per example.

For IOI test prompts (clean vs ABC-corrupted, ~15 tokens) and MWE persona prompts (the same item
under a positive vs a negative system description, ~60-70 tokens), the script runs
``interventions.methods.eap.eap_ig.eap_ig`` with ``--steps`` integration steps, block-level and per-head
(q/k/v) inputs, at batch sizes 1 and 8, on the same ``--examples`` examples, and prints one table:

* ``s/example`` -- wall-clock seconds of the attribution divided by the number of examples;
* ``fwd s/example`` -- one plain forward pass of the same batches (``logit_difference`` under
  ``no_grad``, median of 3, timed right before each batch's attribution);
* ``ratio`` -- attribution seconds / forward seconds, to compare with the paper's accounting of
  ``m`` forward + ``m`` backward passes at ~2 forwards each plus the 2 recording forwards,
  ``3m + 2`` forward-equivalents per example;
* ``peak MB`` -- peak resident set size (RSS) of the process during the attribution minus its RSS
  just before it, per call (a batch): ``VmHWM`` from ``/proc/self/status``, reset to the current
  RSS before each measurement by writing 5 to ``/proc/self/clear_refs``.  glibc's dynamic mmap
  threshold is pinned (``mallopt``) and ``malloc_trim`` runs before each reset, so freed tensors
  go back to the OS and the next measurement starts from a clean baseline.

    nice -n 10 .venv/bin/python bench/bench_eap.py [--steps 5] [--examples 8] [--threads 1]

On a machine shared with other CPU-heavy jobs use ``--threads 1``: with more threads than free
cores, the threads of each operation wait for one another and both timings become erratic.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from datamodules.base import ContrastiveDataModule, ContrastiveExample
from datamodules.ioi import IOIDataModule
from datamodules.mwe import MWEDataModule
from interventions.core.backbone import load_backbone
from interventions.core.sites import model_dims
from interventions.methods.eap.eap_ig import eap_ig, logit_difference

_LIBC = ctypes.CDLL("libc.so.6")
_M_MMAP_THRESHOLD = -3


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def peak_rss_delta_mb(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), peak RSS during fn - RSS before fn, in MB)``."""
    _LIBC.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status_kb("VmRSS")
    out = fn()
    return out, (_status_kb("VmHWM") - before) / 1024


@dataclass
class Batch:
    """One batch of clean/corrupted prompts with their answers."""

    clean: torch.Tensor
    corrupted: torch.Tensor
    mask: torch.Tensor
    corrupted_mask: torch.Tensor
    target: torch.Tensor
    foil: torch.Tensor


def batches(
    dm: ContrastiveDataModule, examples: list[ContrastiveExample], size: int
) -> list[Batch]:
    """``examples`` collated (left padding) in batches of ``size``."""
    out = []
    for i in range(0, len(examples), size):
        b = dm.collator(examples[i : i + size])
        out.append(
            Batch(
                b["input_ids"],
                b["corrupted_input_ids"],
                b["attention_mask"],
                b["corrupted_attention_mask"],
                b["correct_id"],
                b["wrong_id"],
            )
        )
    return out


def attribute(model: nn.Module, b: Batch, steps: int, per_head: bool) -> None:
    eap_ig(
        model,
        b.clean,
        b.corrupted,
        b.target,
        b.foil,
        clean_mask=b.mask,
        corrupted_mask=b.corrupted_mask,
        steps=steps,
        per_head_inputs=per_head,
    )


@torch.no_grad()
def forward(model: nn.Module, b: Batch) -> None:
    logit_difference(model, b.clean, b.mask, b.target, b.foil)


def measure(
    model: nn.Module, data: list[Batch], steps: int, per_head: bool
) -> tuple[float, float, float]:
    """``(attribution s, forward s, max peak MB over calls)`` summed over the batches of ``data``;
    each batch's forward (median of 3) is timed right before its attribution, so that a load
    from other jobs that changes during the run affects both sides alike."""
    seconds, fwd_seconds, peak = 0.0, 0.0, 0.0
    for b in data:
        fwd = []
        for _ in range(3):
            t0 = time.perf_counter()
            forward(model, b)
            fwd.append(time.perf_counter() - t0)
        fwd_seconds += statistics.median(fwd)
        t0 = time.perf_counter()
        _, mb = peak_rss_delta_mb(lambda b=b: attribute(model, b, steps, per_head))
        seconds += time.perf_counter() - t0
        peak = max(peak, mb)
    return seconds, fwd_seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--behavior", default="extraversion", help="MWE persona behaviour")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _LIBC.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)  # large tensors: mmap'd, returned on free

    model, _ = load_backbone("smollm2-135m-instruct")
    dims = model_dims(model)
    ioi = IOIDataModule(num_train=0, num_val=0, num_test=args.examples, facts="standard")
    ioi.setup()
    mwe = MWEDataModule(behavior=args.behavior, contrast="system", max_examples=4 * args.examples)
    mwe.setup()
    sets = {
        "IOI": (ioi, ioi.test_examples[: args.examples]),
        f"MWE {args.behavior}": (mwe, mwe.train_examples[: args.examples]),
    }
    print(
        f"SmolLM2-135M-Instruct: {dims.num_layers} layers, {dims.num_heads} heads, "
        f"{dims.num_kv_heads} kv heads; steps m = {args.steps}; {args.examples} examples per set; "
        f"{torch.get_num_threads()} threads"
    )
    attribute(model, batches(*sets["IOI"], 1)[0], 1, True)  # warm-up

    paper = 3 * args.steps + 2
    header = (
        f"{'prompts':<18} {'tokens':>7} {'inputs':<9} {'batch':>5} {'s/example':>10} "
        f"{'fwd s/ex':>9} {'ratio':>7} {'paper':>6} {'peak MB':>8}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for name, (dm, examples) in sets.items():
        lengths = [dm.token_length(ex.prompt) for ex in examples]
        tokens = f"{min(lengths)}-{max(lengths)}" if min(lengths) != max(lengths) else lengths[0]
        for per_head in (False, True):
            for size in (1, 8):
                data = batches(dm, examples, size)
                seconds, fwd, peak = measure(model, data, args.steps, per_head)
                n = len(examples)
                row = (
                    f"{name:<18} {tokens!s:>7} {'per-head' if per_head else 'block':<9} "
                    f"{size:>5} {seconds / n:>10.3f} {fwd / n:>9.4f} {seconds / fwd:>7.1f} "
                    f"{paper:>6} {peak:>8.0f}"
                )
                rows.append(row)
                print(row, flush=True)
    print(
        f"\npaper = forward-equivalents per example, 3m + 2 with m = {args.steps} (m forwards + m "
        "backwards at ~2 forwards + 2 recording forwards); ratio = attribution s / forward s of "
        "the same batches; peak MB = peak RSS increase during one eap_ig call (max over calls)."
    )
    print(f"load average while running: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
