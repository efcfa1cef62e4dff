"""Can a small CNN learn to localize the synthetic lesions in ~2 minutes of CPU?

Trains a 5-layer CNN (16 x 16 grid head, MILGridLoss: per-cell BCE where a class has a box,
noisy-OR elsewhere) on setting "a", fold 0 of the synthetic demo dataset (800 images by default) at 128 x 128, for a
fixed wall-clock budget, then compares its localization accuracy at T(IoU) = 0.1 / 0.3 / 0.5
with a fixed prior map (per class, the cells covered by more than half of the training boxes,
or the single most covered cell) on the test part and on 150 fresh images (another seed).

    python benchmarks/synthetic_learnability.py [--seconds 120] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ccg_layers import MILGridLoss
from ccg_layers.datasets import (
    BOXED_CLASSES,
    CLASS_NAMES,
    ChestXray14,
    chestxray14_splits,
    collate_chestxray14,
    ensure_synthetic_dataset,
    read_chestxray14,
)
from ccg_layers.functional import boxes_to_grid_targets
from ccg_layers.metrics import format_localization_table, localization_accuracy

S, G = 128, 16
BOXED = [CLASS_NAMES.index(c) for c in BOXED_CLASSES]


def load(root: Path, names: list[str] | None) -> dict:
    ds = ChestXray14(root, names, image_size=S)
    return dict(collate_chestxray14([ds[i] for i in range(len(ds))]))


def grid_targets(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    grid, _ = boxes_to_grid_targets(
        batch["boxes"],
        batch["box_image_index"],
        batch["box_class"],
        num_images=batch["image"].shape[0],
        num_classes=14,
        image_size=S,
        grid_size=G,
    )
    return grid, batch["has_box"]


def model() -> nn.Module:
    def block(i: int, o: int, s: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(i, o, 3, s, 1), nn.BatchNorm2d(o), nn.ReLU())

    return nn.Sequential(
        block(3, 24, 2), block(24, 48, 2), block(48, 64, 2), block(64, 64, 1), block(64, 64, 1),
        nn.Conv2d(64, 14, 1),
    )  # fmt: skip


def evaluate(maps: torch.Tensor, batch: dict) -> torch.Tensor:
    return localization_accuracy(
        maps, batch["boxes"], batch["box_image_index"], batch["box_class"],
        image_size=(S, S), thresholds=(0.1, 0.3, 0.5),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--num-images", type=int, default=800)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp())
    root = ensure_synthetic_dataset(tmp / "demo", args.num_images, 0, image_size=512)
    fresh = ensure_synthetic_dataset(tmp / "fresh", 150, 1, image_size=512)
    index = read_chestxray14(root)
    split = chestxray14_splits(index, "a", 0)
    train, test = load(root, split["train"]), load(root, split["test"])
    fresh_all = load(fresh, None)
    fresh_ann = read_chestxray14(fresh).annotated
    fresh_names = [n for n, a in zip(fresh_all["names"], fresh_ann.tolist(), strict=True) if a]
    held = load(fresh, fresh_names)
    grid, has_box = grid_targets(train)
    # the fixed prior: cells covered by more than half of the class's training boxes
    cover = grid.sum(0) / has_box.sum(0).clamp(min=1)[:, None, None]
    prior = (cover > 0.5).float()
    top = cover.flatten(1).argmax(1)
    prior.flatten(1)[torch.arange(14), top] = 1.0  # never empty
    net, loss_fn = model(), MILGridLoss(box_weight=4.0)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    n, steps, start = len(train["names"]), 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        idx = torch.randint(0, n, (16,))
        logits = net(train["image"][idx])
        loss = loss_fn(logits, train["labels"][idx], grid[idx], has_box[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    net.eval()
    print(f"{steps} steps of batch 16 in {time.perf_counter() - start:.0f} s; "
          f"train {n} images ({int(has_box.any(1).sum())} annotated)")  # fmt: skip
    train_ann = [n for n, b in zip(train["names"], has_box.any(1).tolist(), strict=True) if b]
    seen = load(root, train_ann)
    for name, batch in (
        ("training images with boxes", seen),
        ("test part (setting a, fold 0)", test),
        ("150 fresh images, annotated", held),
    ):
        with torch.no_grad():
            maps = torch.sigmoid(net(batch["image"]))
        prior_maps = prior.expand(len(batch["names"]), -1, -1, -1)
        for label, acc in (
            ("CNN", evaluate(maps, batch)),
            ("fixed prior", evaluate(prior_maps, batch)),
        ):
            print(f"\n{name}: {label}, {len(batch['names'])} images, {len(batch['boxes'])} boxes")
            print(format_localization_table(acc, (0.1, 0.3, 0.5)))


if __name__ == "__main__":
    main()
