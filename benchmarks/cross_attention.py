"""Time and peak memory of CrossImageAttention's reference and fused paths (forward + backward).

    python benchmarks/cross_attention.py                 # the grid of issue 3
    python benchmarks/cross_attention.py --hw 256 1024   # a subset (C=256, heads=8)
    python benchmarks/cross_attention.py --hw 16384 --batch 1 --heads 1 --no-paper-case
                                                         # 16384 positions, both paths in memory

Pair mode on a batch of B=2 image pairs (the paper's batch size) with square maps, HW_u = HW_v:
C=256 with heads=8 (a torchvision FPN level, low-rank W_P = W_q^T W_k, qk_channels=256) for
HW in {256, 1024, 4096, 16384}, and the paper's case C=2048, heads=1 (full W_P), HW=256. Each
row runs ``fused=False`` (reference: materialises P), ``fused=True`` (SDPA) and ``fused=None``
(what the automatic choice picks) in the same process, so the ratios compare like with like.

Time: wall time of forward + backward of both outputs (``torch.autograd.backward`` with random
output gradients), after one untimed run; the three paths run interleaved ``--repeats`` times
(once for HW > 4096) and each keeps its fastest run, the least disturbed by other processes.

Peak memory: the CPU allocator's own accounting, read from ``torch.profiler`` with
``profile_memory=True``: every allocation and free is recorded with the running total of
allocated bytes, and the peak is the maximum of that total during one forward + backward minus
the total allocated before it (inputs and parameters). It counts every tensor and workspace that
PyTorch allocates (including the saved activations for backward) and nothing else (no Python
objects, no allocator caching, which the CPU allocator does not do). On CUDA it is
``torch.cuda.max_memory_allocated`` minus the memory allocated before the call.

The reference path is not run where the score tensors would not fit: P and its two softmaxes
(kept for backward) take ``3 * B * heads * HW^2 * 4`` bytes, which is compared with
``--max-ref-gib``; the table then shows that estimate instead of a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ccg_layers import CrossImageAttention
from ccg_layers.functional import use_fused_path

GIB = 2**30


def peak_bytes(fn: Callable[[], None], device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    mem = [
        e["args"]
        for e in events
        if e.get("name") == "[memory]" and e["args"].get("Device Type", 0) == 0
    ]
    if not mem:
        return 0
    base = mem[0]["Total Allocated"] - mem[0]["Bytes"]
    return max(m["Total Allocated"] for m in mem) - base


def time_s(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def run_case(
    channels: int, heads: int, hw: int, batch: int, device: torch.device, args: argparse.Namespace
) -> dict[str, object]:
    side = round(hw**0.5)
    g = torch.Generator().manual_seed(0)
    fu = torch.randn(batch, channels, side, side, generator=g).to(device).requires_grad_()
    fv = torch.randn(batch, channels, side, side, generator=g).to(device).requires_grad_()
    gu = torch.randn(batch, channels, side, side, generator=g).to(device)
    gv = torch.randn(batch, channels, side, side, generator=g).to(device)
    layer = CrossImageAttention(channels, heads=heads, device=device)
    row: dict[str, object] = {"C": channels, "heads": heads, "HW": hw, "B": batch}
    auto = use_fused_path(None, device, batch * heads, hw, hw)
    row["auto"] = "fused" if auto else "reference"
    ref_bytes = 3 * batch * heads * hw * hw * 4
    repeats = args.repeats if hw <= 4096 else 1
    steps: dict[str, Callable[[], None]] = {}
    for name, fused in (("reference", False), ("fused", True), ("auto", None)):
        runs_reference = fused is False or (fused is None and not auto)
        if runs_reference and ref_bytes > args.max_ref_gib * GIB:
            row[f"{name}_s"] = None
            row[f"{name}_mib"] = None
            continue

        def step(fused: bool | None = fused) -> None:
            layer.fused = fused
            fu.grad = fv.grad = None
            layer.zero_grad(set_to_none=True)
            a, b = layer(fu, fv)
            torch.autograd.backward([a, b], [gu, gv])

        row[f"{name}_mib"] = peak_bytes(step, device) / 2**20  # doubles as the warm-up run
        steps[name] = step
    # Interleave the paths and keep each one's fastest run: on a shared machine the minimum is
    # the least disturbed measurement, and interleaving exposes all paths to the same load.
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(time_s(step, device))
    for name in steps:
        row[f"{name}_s"] = min(times[name])
    print(f"  measured C={channels} heads={heads} HW={hw}", file=sys.stderr)
    row["ref_estimate_mib"] = ref_bytes / 2**20
    return row


def fmt(x: object, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def ratio(a: object, b: object) -> str:
    if a is None or b is None or not b:
        return "n/a"
    return f"{float(a) / float(b):.2f}"  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hw", type=int, nargs="*", default=[256, 1024, 4096, 16384])
    parser.add_argument("--no-paper-case", action="store_true")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=8, help="heads of the C=256 rows")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-ref-gib", type=float, default=6.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cases = [(256, args.heads, hw) for hw in args.hw]
    if not args.no_paper_case:
        cases.append((2048, 1, 256))
    rows = [run_case(c, h, hw, args.batch, device, args) for c, h, hw in cases]

    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    else:
        machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(
        f"# cross_image_attention forward+backward, float32, B={args.batch}, {machine}, "
        f"torch {torch.__version__}"
    )
    print(
        "| C | heads | HW | ref time (s) | fused time (s) | auto time (s) [choice] | "
        "ref / fused time | auto / best time | ref peak (MiB) | fused peak (MiB) | "
        "ref / fused peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref_mib = r["reference_mib"]
        ref_cell = fmt(ref_mib, ".1f")
        if ref_mib is None:
            ref_cell = f"not run (≥ {float(r['ref_estimate_mib']):.0f} est.)"  # type: ignore[arg-type]
        times = [t for t in (r["reference_s"], r["fused_s"]) if t is not None]
        best = min(times) if times else None  # type: ignore[type-var]
        peak_ratio = ratio(ref_mib, r["fused_mib"])
        if ref_mib is None:
            peak_ratio = f"≥ {ratio(r['ref_estimate_mib'], r['fused_mib'])} (est.)"
        print(
            f"| {r['C']} | {r['heads']} | {r['HW']} | {fmt(r['reference_s'], '.4f')} | "
            f"{fmt(r['fused_s'], '.4f')} | {fmt(r['auto_s'], '.4f')} [{r['auto']}] | "
            f"{ratio(r['reference_s'], r['fused_s'])} | {ratio(r['auto_s'], best)} | "
            f"{ref_cell} | {fmt(r['fused_mib'], '.1f')} | {peak_ratio} |"
        )


if __name__ == "__main__":
    main()
