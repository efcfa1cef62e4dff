"""Images per second through the trainer's training loader, per DataLoader worker count.

The images are 1024x1024 8-bit PNGs in the real ChestX-ray14 format (the synthetic generator
at 1024, written once to ``--root``); the loader is the trainer's own
(``examples.ccg_net.data.build_data``: ``ChestXray14`` decoding and resizing to the working
size, 1-channel uint8 samples, grid targets built by ``Collate`` in the workers, the exact-resume
batch sampler). ``--image-size`` is the working size (the paper's 512). For comparison the same
loader also runs with the dataset's ``output="imagenet"`` form (3-channel ImageNet-normalised
float32, what the loader shipped before): the bytes per image it moves are 12x larger.

    python benchmarks/data_loading.py                       # workers 0, 1, 2
    python benchmarks/data_loading.py --workers 0,2,4 --images 128
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))

from ccg_layers.datasets import ensure_synthetic_dataset  # noqa: E402
from examples.ccg_net.config import TrainConfig  # noqa: E402
from examples.ccg_net.data import build_data  # noqa: E402


def images_per_s(cfg: TrainConfig, imagenet: bool, epochs: int) -> tuple[float, int, float]:
    """Images per second over ``epochs`` passes (after one warm-up batch), bytes per image, and
    this process's CPU milliseconds per image (all the work when there are no workers)."""
    data = build_data(cfg)
    assert data.train is not None
    assert data.sampler is not None
    assert data.train_loader is not None
    if imagenet:
        data.train.base.output = "imagenet"
    n, nbytes = 0, 0
    data.sampler.set_epoch(0)
    it = iter(data.train_loader)
    next(it)  # start the workers
    t0, c0 = time.perf_counter(), time.process_time()
    for batch in it:
        n += len(batch["names"])
        nbytes = batch["image"][0].numel() * batch["image"].element_size()
    for epoch in range(1, epochs):
        data.sampler.set_epoch(epoch)
        for batch in data.train_loader:
            n += len(batch["names"])
    cpu_ms = 1000 * (time.process_time() - c0) / n
    return n / (time.perf_counter() - t0), nbytes, cpu_ms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="runs/.cache/bench-synthetic-1024")
    p.add_argument("--images", type=int, default=96, help="images in the synthetic dataset")
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    root = Path(args.root)
    t0 = time.perf_counter()
    ensure_synthetic_dataset(root, args.images, 0, image_size=1024)
    print(f"dataset: {args.images} PNGs of 1024x1024 in {root} ({time.perf_counter() - t0:.1f} s)")
    base = TrainConfig(
        data_root=str(root),
        cache_dir=str(root.parent),
        image_size=args.image_size,
        batch_size=args.batch_size,
        losses=("base",),  # no superpixels: the loader alone
        setting="b",  # every unannotated image trains
        weights="none",
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}; working size {args.image_size}, batch {args.batch_size}"
    )
    print()
    print(
        "| workers | uint8 1-channel images/s | CPU ms/image (main process) | bytes/image "
        "| ImageNet float32 images/s | bytes/image |"
    )
    print("|---|---|---|---|---|---|")
    for w in (int(x) for x in args.workers.split(",")):
        cfg = dataclasses.replace(base, num_workers=w)
        rate, size, cpu = images_per_s(cfg, False, args.epochs)
        rate_f, size_f, _ = images_per_s(cfg, True, args.epochs)
        print(f"| {w} | {rate:.1f} | {cpu:.1f} | {size} | {rate_f:.1f} | {size_f} |")


if __name__ == "__main__":
    main()
