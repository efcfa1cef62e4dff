"""Benchmark of the graph losses and of the superpixel pipeline (issue 4).

1. Superpixel throughput: 1024x1024 8-bit PNG files -> exact, ordered SLIC labels, decode
   included (``superpixels_from_files``, no cache), images/s for num_workers in {0, 2}; plus
   SLIC alone on a real 512x512 radiograph at 128x128 and at 512x512.
2. Time of each relation loss (forward + backward) for n in {2, 16, 64} feature maps of
   (2048, 16, 16) with m = 64 patches, against the ResNet-50 (C5) forward at 512x512 for the
   same batch, for scale.
3. The cross-batch memory at the paper's batch of 2 (issue 10): time of each relation loss
   (training mode: forward against the memory, enqueue, backward) for memory sizes
   K in {0, 8, 32}, and the bytes the queues hold.

Run from the repository root:  python benchmarks/graphs.py  [--quick] [--only ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from skimage.io import imread, imsave
from skimage.segmentation import slic
from skimage.transform import resize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure this checkout, not an installed copy

from ccg_layers import LearnableSampleGraph, PatchHashGraph, superpixels_from_files  # noqa: E402
from ccg_layers.functional import pairwise_distance  # noqa: E402

NIH = sorted((ROOT / "tests" / "data" / "nih").glob("*.png"))


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall-clock seconds."""
    return timed_cpu(fn, repeats, warmup)[0]


def timed_cpu(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Median wall-clock seconds and mean CPU seconds of this process (all its threads).

    The CPU time is what a call costs whatever else runs on the machine; the wall time on a
    loaded machine also contains the waiting.
    """
    for _ in range(warmup):
        fn()
    times = []
    c0 = time.process_time()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), (time.process_time() - c0) / repeats


def make_pngs(directory: Path, count: int) -> list[Path]:
    """1024x1024 8-bit radiograph-like PNGs: the real samples upscaled, shifted and noised."""
    rng = np.random.default_rng(0)
    bases = [resize(imread(p).astype(np.float32), (1024, 1024), order=1) for p in NIH]
    paths = []
    for i in range(count):
        img = np.roll(bases[i % len(bases)], rng.integers(-40, 41, size=2), axis=(0, 1))
        img = img * rng.uniform(0.85, 1.15) + rng.normal(0, 3, img.shape)
        path = directory / f"cxr{i:03d}.png"
        imsave(path, np.clip(img, 0, 255).astype(np.uint8), check_contrast=False)
        paths.append(path)
    return paths


def bench_superpixels(count: int) -> None:
    print("\n### Superpixels: 1024x1024 8-bit PNG -> 64 exact ordered labels (128x128 SLIC)\n")
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_pngs(Path(tmp), count)
        print("| num_workers | images | wall s | images/s (wall) | CPU ms / image |")
        print("|---|---|---|---|---|")
        for workers in (0, 2):
            superpixels_from_files(paths[:2], 64, num_workers=workers)  # warm-up (imports)
            c0, t0 = time.process_time(), time.perf_counter()
            labels = superpixels_from_files(paths, 64, num_workers=workers)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            assert labels.shape == (count, 128, 128)
            print(
                f"| {workers} | {count} | {dt:.2f} | {count / dt:.1f} | {cpu / count * 1e3:.1f} |"
            )
        c0, t0 = time.process_time(), time.perf_counter()
        superpixels_from_files(paths, 64, num_workers=2, max_num_iter=5)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(
            f"| 2, max_num_iter=5 | {count} | {dt:.2f} | {count / dt:.1f} | "
            f"{cpu / count * 1e3:.1f} |"
        )
        cache = Path(tmp) / "cache"
        superpixels_from_files(paths, 64, num_workers=2, cache_dir=cache)
        t0 = time.perf_counter()
        superpixels_from_files(paths, 64, num_workers=0, cache_dir=cache)
        dt = time.perf_counter() - t0
        print(f"| cache hit, 0 | {count} | {dt:.3f} | {count / dt:.0f} | |")

    img = imread(NIH[0]).astype(np.float32) / 255.0  # real 512x512 radiograph
    small = img.reshape(128, 4, 128, 4).mean((1, 3))
    t128 = timed(lambda: slic(small, 64, compactness=0.1, channel_axis=None, start_label=0), 10)
    t512 = timed(lambda: slic(img, 64, compactness=0.1, channel_axis=None, start_label=0), 3)
    print("\n| SLIC alone on a real radiograph, 64 segments | ms |")
    print("|---|---|")
    print(f"| at 128x128 (work_size=128) | {t128 * 1e3:.1f} |")
    print(f"| at 512x512 (work_size=None) | {t512 * 1e3:.1f} |")


def bench_losses(sizes: list[int], repeats: int) -> None:
    from torchvision.models import resnet50

    print("\n### Relation losses, forward + backward, C=2048 at 16x16, m=64\n")
    print("ms of wall time (median), CPU ms of this process in brackets.\n")
    backbone = torch.nn.Sequential(*list(resnet50(weights=None).children())[:-2]).eval()
    print(
        "| n | L_IR LearnableSampleGraph (conditioned) | L_IK PatchHashGraph (n x n) | "
        "L_KR patch graph (n pairs) | L_IR + L_IK sharing D | ResNet-50 forward 512x512 | "
        "(L_IR + L_IK + L_KR) / forward |"
    )
    print("|---|---|---|---|---|---|---|")
    lsg_mod = LearnableSampleGraph(in_channels=2048)
    phg_mod = PatchHashGraph(64, 2048, code_bits=64)
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        feats = torch.relu(torch.randn(n, 2048, 16, 16, generator=g)).requires_grad_()
        attended_a = torch.randn(n, 2048, 16, 16, generator=g).requires_grad_()
        attended_b = torch.randn(n, 2048, 16, 16, generator=g).requires_grad_()
        labels = torch.randint(0, 64, (n, 128, 128), generator=g)  # cached 128x128 labels
        labels_b = labels.roll(1, 0)

        def ir(f: torch.Tensor = feats) -> None:
            lsg_mod(f).backward()

        def ik(f: torch.Tensor = feats, la: torch.Tensor = labels) -> None:
            phg_mod(f, la).backward()

        def kr(
            a: torch.Tensor = attended_a,
            b: torch.Tensor = attended_b,
            la: torch.Tensor = labels,
            lb: torch.Tensor = labels_b,
        ) -> None:
            phg_mod(a, la, b, lb).backward()

        def shared(f: torch.Tensor = feats, la: torch.Tensor = labels, n: int = n) -> None:
            dist = pairwise_distance(f)
            graphs = lsg_mod.graph(f) + phg_mod.graph(f, la)
            ((graphs * dist).sum() / n**2).backward()

        results = [timed_cpu(fn, repeats) for fn in (ir, ik, kr, shared)]
        images = torch.randn(n, 3, 512, 512)
        with torch.no_grad():
            t_bb, c_bb = timed_cpu(lambda x=images: backbone(x), 1 if n >= 16 else repeats, 0)
        total = sum(r[0] for r in results[:3])
        cells = " | ".join(f"{w * 1e3:.1f} ({c * 1e3:.0f})" for w, c in results)
        print(
            f"| {n} | {cells} | {t_bb * 1e3:.0f} ({c_bb * 1e3:.0f}) | {100 * total / t_bb:.1f}% |"
        )


def bench_memory(sizes: list[int], repeats: int) -> None:
    print("\n### Memory of partners at n = 2 (paper batch), C=2048 at 16x16, m=64, float32\n")
    print("ms of wall time (median) per training step of the term, CPU ms in brackets.\n")
    print(
        "| memory K | L_IR (conditioned) | L_IK (n x n) | L_KR pair form (1 pair) | "
        "queues held (3 modules) |"
    )
    print("|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 64, (2, 128, 128), generator=g)
    for k in sizes:
        lsg = LearnableSampleGraph(in_channels=2048, memory_size=k)
        ik = PatchHashGraph(64, 2048, code_bits=64, memory_size=k)
        kr = PatchHashGraph(64, 2048, code_bits=64, memory_size=k)

        def batch() -> torch.Tensor:
            return torch.relu(torch.randn(2, 2048, 16, 16, generator=g)).requires_grad_()

        for _ in range(max(1, k // 2 + 1)):  # fill the queues first
            f = batch()
            lsg(f)
            ik(f, labels)
            kr(f[:1], labels[1:], f[1:], labels[:1])

        def ir(lsg: LearnableSampleGraph = lsg) -> None:
            lsg(batch()).backward()

        def ik_step(ik: PatchHashGraph = ik) -> None:
            ik(batch(), labels).backward()

        def kr_step(kr: PatchHashGraph = kr) -> None:
            f = batch()
            kr(f[:1], labels[1:], f[1:], labels[:1]).backward()

        def data() -> None:
            batch()

        base_w, base_c = timed_cpu(data, repeats)  # drawing the batch, subtracted
        cells = " | ".join(
            f"{(w - base_w) * 1e3:.1f} ({(c - base_c) * 1e3:.0f})"
            for w, c in (timed_cpu(fn, repeats) for fn in (ir, ik_step, kr_step))
        )
        held = sum(b.nbytes for m in (lsg, ik, kr) for b in m.buffers()) - sum(
            m.projection.nbytes for m in (lsg, ik, kr)
        )
        print(f"| {k} | {cells} | {held / 2**20:.1f} MiB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="n in {2, 16}, fewer images")
    parser.add_argument("--only", choices=["superpixels", "losses", "memory"], help="run one part")
    args = parser.parse_args()
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, no GPU used; "
        f"load average at start {os.getloadavg()[0]:.1f}."
    )
    if args.only in (None, "superpixels"):
        bench_superpixels(16 if args.quick else 64)
    if args.only in (None, "losses"):
        bench_losses([2, 16] if args.quick else [2, 16, 64], repeats=3 if args.quick else 5)
    if args.only in (None, "memory"):
        bench_memory([0, 8] if args.quick else [0, 8, 32], repeats=3 if args.quick else 7)
    print(f"\nLoad average at the end: {os.getloadavg()[0]:.1f}.")


if __name__ == "__main__":
    main()
