"""Data for the trainer: ChestX-ray14 (real or the embedded synthetic twin), the paper's splits,
superpixels cached once per image, batches with grid targets, and the trivial prior.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

import ccg_layers
from ccg_layers.datasets import (
    BOX_FRAME,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ChestXray14,
    ChestXray14Index,
    chestxray14_splits,
    collate_chestxray14,
    read_chestxray14,
    read_split_files,
    split_summary,
)
from ccg_layers.functional import boxes_to_grid

from .checkpoint import save_atomic
from .config import TrainConfig

_log = logging.getLogger("ccg_net")


def dataset_root(cfg: TrainConfig) -> Path:
    """The dataset folder: ``--data-root``, or the synthetic dataset (generated on first use)."""
    if cfg.data_root is not None:
        return Path(cfg.data_root)
    from ccg_layers.datasets import ensure_synthetic_dataset

    root = (
        Path(cfg.cache_dir)
        / f"synthetic-chestxray14-n{cfg.synthetic_images}-s{cfg.synthetic_seed}-{cfg.image_size}px"
    )
    t0 = time.perf_counter()
    existed = root.is_dir()
    ensure_synthetic_dataset(
        root, cfg.synthetic_images, cfg.synthetic_seed, image_size=cfg.image_size
    )
    if not existed:
        print(
            f"generated the synthetic ChestX-ray14 ({cfg.synthetic_images} images, "
            f"{cfg.image_size}px) in {root} in {time.perf_counter() - t0:.1f} s"
        )
    return root


@dataclass
class SplitData:
    """Everything the trainer needs from the data side."""

    index: ChestXray14Index
    split: dict[str, list[str]]
    summary: dict[str, Any]
    train: Dataset[dict[str, Any]]
    test: ChestXray14


def load_split(cfg: TrainConfig) -> tuple[ChestXray14Index, dict[str, list[str]], dict[str, Any]]:
    """Read the index and make the paper's split (or read explicit split files)."""
    root = dataset_root(cfg)
    index = read_chestxray14(root)
    if cfg.train_split_file or cfg.test_split_file:
        if not (cfg.train_split_file and cfg.test_split_file):
            raise ValueError("--train-split-file and --test-split-file go together")
        split = read_split_files(cfg.train_split_file, cfg.test_split_file, index)
        source = {"train_split_file": cfg.train_split_file, "test_split_file": cfg.test_split_file}
    else:
        split = chestxray14_splits(
            index,
            cfg.setting,  # type: ignore[arg-type]
            cfg.fold,
            seed=cfg.split_seed,
            patient_disjoint=cfg.patient_disjoint,
        )
        source = {
            "setting": cfg.setting,
            "fold": cfg.fold,
            "seed": cfg.split_seed,
            "patient_disjoint": cfg.patient_disjoint,
        }
    if cfg.max_test_images:
        split["test"] = split["test"][: cfg.max_test_images]
    summary = {**source, "root": str(root), **split_summary(index, split)}
    return index, split, summary


# --------------------------------------------------------------------------- superpixels


def _superpixel_key(cfg: TrainConfig, index: ChestXray14Index, names: list[str]) -> str:
    h = hashlib.sha256()
    h.update(str(index.root).encode())
    h.update("\n".join(names).encode())
    h.update(
        json.dumps([cfg.num_patches, cfg.superpixel_size, cfg.superpixel_compactness]).encode()
    )
    return h.hexdigest()[:16]


def superpixel_cache(
    cfg: TrainConfig, index: ChestXray14Index, names: list[str], *, is_main: bool = True
) -> Tensor:
    """SLIC labels ``(N, s, s)`` uint8 of every image in ``names``, computed once and cached.

    The labels (``cfg.num_patches`` per image, see :func:`ccg_layers.superpixels`) are computed
    at ``cfg.superpixel_size`` from the image itself and stored in ``cfg.cache_dir`` keyed by
    the dataset, the image list and the parameters; later runs (and resumed runs) load them.
    Only the main process computes; the others wait for the file (see ``engine``).
    """
    if cfg.num_patches > 256:
        raise ValueError(f"--num-patches must be at most 256 for the cache, got {cfg.num_patches}")
    path = Path(cfg.cache_dir) / f"superpixels-{_superpixel_key(cfg, index, names)}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)["labels"]
    if not is_main:
        raise FileNotFoundError(f"superpixel cache {path} was not written by the main process")
    t0 = time.perf_counter()
    ds = ChestXray14(index, names, image_size=cfg.superpixel_size, normalize=False)
    loader = DataLoader(
        ds,
        batch_size=64,
        num_workers=cfg.num_workers,
        collate_fn=collate_chestxray14,
        generator=torch.Generator(),  # leaves the global RNG alone
    )
    out = torch.empty(len(names), cfg.superpixel_size, cfg.superpixel_size, dtype=torch.uint8)
    start = 0
    for batch in loader:
        gray = batch["image"][:, 0]
        labels = ccg_layers.superpixels(
            gray,
            cfg.num_patches,
            compactness=cfg.superpixel_compactness,
            work_size=cfg.superpixel_size,
        )
        out[start : start + len(gray)] = torch.as_tensor(labels).to(torch.uint8)
        start += len(gray)
    save_atomic({"labels": out, "names": names}, path)
    print(
        f"superpixels: {len(names)} images x {cfg.num_patches} patches in "
        f"{time.perf_counter() - t0:.1f} s, cached in {path}"
    )
    return out


_IMAGE_MEMO: dict[tuple[str, tuple[str, ...], int], Tensor] = {}


class TrainSet(Dataset[dict[str, Any]]):
    """The training ``ChestXray14`` plus the cached superpixel labels of each sample.

    With ``in_memory`` the decoded images are kept in memory (float16 gray, loaded once), for
    small datasets such as the demo's, where decoding would dominate the step time; the samples
    are identical up to float16 rounding of the gray values.
    """

    def __init__(
        self,
        base: ChestXray14,
        labels: Tensor | None,
        *,
        in_memory: bool = False,
        num_workers: int = 0,
    ) -> None:
        self.base = base
        self.labels = labels
        self.images: Tensor | None = None
        if in_memory:
            key = (str(base.index.root), tuple(base.image_names), base.image_size)
            if key not in _IMAGE_MEMO:
                _IMAGE_MEMO.clear()
                _IMAGE_MEMO[key] = self._decode_all(base, num_workers)
            self.images = _IMAGE_MEMO[key]
            self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
            self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    @staticmethod
    def _decode_all(base: ChestXray14, num_workers: int) -> Tensor:
        raw = ChestXray14(base.index, base.image_names, image_size=base.image_size, normalize=False)
        loader = DataLoader(
            raw,
            batch_size=32,
            num_workers=num_workers,
            collate_fn=collate_chestxray14,
            generator=torch.Generator(),
        )
        return torch.cat([b["image"][:, 0].half() for b in loader])

    def __len__(self) -> int:
        return len(self.base)

    def _sample(self, i: int) -> dict[str, Any]:
        if self.images is None:
            return dict(self.base[i])
        # the sample without decoding the PNG: the same fields as ChestXray14.__getitem__
        sample: dict[str, Any] = dict(self.base.targets(i))
        gray = self.images[i].float()
        sample["image"] = (gray.expand(3, -1, -1) - self._mean) / self._std
        return sample

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self._sample(i)
        if self.labels is not None:
            sample["superpixels"] = self.labels[sample["index"]]
        return sample


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """``collate_chestxray14`` plus the stacked superpixel labels when present."""
    batch: dict[str, Any] = dict(collate_chestxray14(samples))  # type: ignore[arg-type]
    if "superpixels" in samples[0]:
        batch["superpixels"] = torch.stack([s["superpixels"] for s in samples]).long()
    return batch


def grid_targets(batch: dict[str, Any], num_classes: int, image_size: int, grid: int) -> Tensor:
    """``(B, K, g, g)`` float: the union of each image's class-k boxes rasterised on the grid."""
    b = batch["image"].shape[0]
    out = torch.zeros(b, num_classes, grid, grid)
    boxes = batch["boxes"]
    if len(boxes):
        cells = boxes_to_grid(boxes, (image_size, image_size), (grid, grid)).float()
        out.index_put_((batch["box_image_index"], batch["box_class"]), cells, accumulate=True)
    return out.clamp_(max=1.0)


def test_boxes(ds: ChestXray14) -> tuple[Tensor, Tensor, Tensor]:
    """Boxes of the test images in the flat layout of ``localization_accuracy`` (working size)."""
    index = ds.index
    rows = ds.rows  # the index row of each dataset position
    pos_of_row = torch.full((len(index),), -1, dtype=torch.long)
    pos_of_row[rows] = torch.arange(len(rows))
    pos = pos_of_row[index.box_image_index]
    keep = pos >= 0
    boxes = index.boxes[keep] * (ds.image_size / BOX_FRAME)
    return boxes, pos[keep], index.box_class[keep]


def trivial_prior(
    index: ChestXray14Index, train_names: list[str], image_size: int, grid: int = 64
) -> Tensor:
    """``(K, grid, grid)``: the training set's mean box mask per class (the trivial prior).

    For each class, the average over the training images with a box of that class of the
    indicator of the union of its boxes, on a ``grid x grid`` raster of the image; a class with
    no training box gets an all-zero map.
    """
    k = index.labels.shape[1]
    rows = torch.tensor([index.position(n) for n in train_names], dtype=torch.long)
    in_train = torch.zeros(len(index), dtype=torch.bool)
    in_train[rows] = True
    keep = in_train[index.box_image_index]
    boxes = index.boxes[keep] * (grid / BOX_FRAME)
    img, cls = index.box_image_index[keep], index.box_class[keep]
    # pixel-centre membership, like the metric
    centres = torch.arange(grid, dtype=torch.float32) + 0.5
    in_x = (boxes[:, 0:1] <= centres) & (centres < boxes[:, 2:3])
    in_y = (boxes[:, 1:2] <= centres) & (centres < boxes[:, 3:4])
    masks = (in_y[:, :, None] & in_x[:, None, :]).float()  # (M, g, g)
    union = torch.zeros(len(index), k, grid, grid)
    union.index_put_((img, cls), masks, accumulate=True)
    union.clamp_(max=1.0)
    has = torch.zeros(len(index), k, dtype=torch.bool)
    has[img, cls] = True
    counts = has.sum(0).float()
    prior = union.sum(0) / counts.clamp(min=1.0)[:, None, None]
    del image_size
    return prior


def build_data(cfg: TrainConfig, *, is_main: bool = True, barrier: Any = None) -> SplitData:
    """Index, split, train dataset (with superpixels if a patch-graph term is on), test dataset."""
    index, split, summary = load_split(cfg)
    need_sp = cfg.enabled("ik") or cfg.enabled("kr")
    labels = None
    if need_sp:
        if is_main:
            labels = superpixel_cache(cfg, index, split["train"])
        if barrier is not None:
            barrier()
        if not is_main:
            labels = superpixel_cache(cfg, index, split["train"], is_main=False)
    train = TrainSet(
        ChestXray14(index, split["train"], image_size=cfg.image_size),
        labels,
        in_memory=cfg.cache_images,
        num_workers=cfg.num_workers,
    )
    test = ChestXray14(index, split["test"], image_size=cfg.image_size)
    return SplitData(index, split, summary, train, test)


def epoch_order(n: int, epoch: int, seed: int, multiple: int) -> Tensor:
    """The data order of an epoch: a permutation seeded by ``(seed, epoch)``, padded (by
    wrapping) to a multiple of the global batch so every process takes the same number of
    full batches. Depends on nothing else, so a resumed run replays it exactly.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g)
    total = math.ceil(n / multiple) * multiple
    if total > n:
        order = torch.cat([order, order[: total - n]])
    return order
