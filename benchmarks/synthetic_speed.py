"""Speed of the synthetic ChestX-ray14 generator (images/s), rendering alone and with PNG writing.

    python benchmarks/synthetic_speed.py [--num-images 60] [--sizes 512 1024]

Prints a Markdown table; docs/benchmarks.md records one run with the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import torch

from ccg_layers.datasets import generate_synthetic_chestxray14, render_synthetic_image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-images", type=int, default=60)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, numpy {np.__version__}; load average {os.getloadavg()[0]:.1f}"
    )
    print(
        "| image size | render only (images/s) | render + PNG + CSV (images/s) "
        "| CPU time per image, render + PNG + CSV (ms) |"
    )
    print("|---|---|---|---|")
    labels = [[], ["Nodule"], ["Effusion", "Atelectasis"], ["Cardiomegaly"], ["Pneumonia", "Edema"]]
    for size in args.sizes:
        render_synthetic_image([], {}, image_size=size, seed=0)  # warm-up
        start = time.perf_counter()
        for i in range(args.num_images):
            render_synthetic_image(labels[i % len(labels)], {}, image_size=size, seed=i)
        render = args.num_images / (time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as tmp:
            start, cpu = time.perf_counter(), time.process_time()
            generate_synthetic_chestxray14(tmp, args.num_images, seed=0, image_size=size)
            full = args.num_images / (time.perf_counter() - start)
            cpu_ms = (time.process_time() - cpu) / args.num_images * 1e3
        print(f"| {size} | {render:.1f} | {full:.1f} | {cpu_ms:.1f} |")


if __name__ == "__main__":
    main()
