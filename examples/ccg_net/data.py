"""Data for the trainer: the dataset of ``--dataset`` (ChestX-ray14, real or the embedded
synthetic twin, VinDr-CXR or RSNA Pneumonia), the paper's splits, superpixels cached once per
image, ready datasets and loaders (1-channel uint8 images, grid targets built in the loader's
workers), and the fixed reference maps (the trivial prior).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

import ccg_layers
from ccg_layers.boxes import rejected_boxes
from ccg_layers.datasets import (
    ChestXray14,
    ChestXray14FormatError,
    ChestXray14Index,
    DatasetIndex,
    RadiographDataset,
    boxes_at_size,
    collate_chestxray14,
    dataset_splits,
    dicom_frame_size,
    read_chestxray14,
    read_frame_sizes,
    read_rsna_pneumonia,
    read_split_files,
    read_vindr_cxr,
    split_summary,
)
from ccg_layers.datasets.dicom import is_dicom
from ccg_layers.datasets.image_files import name_list
from ccg_layers.functional import boxes_to_grid_targets

from .config import TrainConfig, model_stride


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


def read_index(cfg: TrainConfig, root: str | os.PathLike[str]) -> DatasetIndex:
    """The index of the ``--dataset`` in ``root``, read with that dataset's reader and the
    options it takes (``--vindr-combine``, ``--image-kind``)."""
    if cfg.dataset == "vindr-cxr":
        return read_vindr_cxr(
            root,
            combine=cfg.vindr_combine,  # type: ignore[arg-type]  # validate_config checked it
            images=cfg.image_kind,  # type: ignore[arg-type]
            frame_sizes=None if cfg.frame_sizes is None else read_frame_sizes(cfg.frame_sizes),
        )
    if cfg.dataset == "rsna-pneumonia":
        return read_rsna_pneumonia(root, images=cfg.image_kind)  # type: ignore[arg-type]
    return read_chestxray14(root)


def make_dataset(index: DatasetIndex, names: list[str], image_size: int) -> RadiographDataset:
    """The ``Dataset`` of the images ``names``: :class:`~ccg_layers.datasets.ChestXray14` on a
    ChestX-ray14 index (PNG files, its messages), else
    :class:`~ccg_layers.datasets.RadiographDataset` (DICOM, PNG or JPEG)."""
    if isinstance(index, ChestXray14Index):
        return ChestXray14(index, names, image_size=image_size)
    return RadiographDataset(index, names, image_size=image_size)


def make_split(
    cfg: TrainConfig, index: DatasetIndex
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """The paper's split of ``index`` for ``cfg`` (or the explicit split files), with
    ``--max-test-images`` applied, and what it was made from."""
    if cfg.train_split_file or cfg.test_split_file:
        if not (cfg.train_split_file and cfg.test_split_file):
            raise ValueError("--train-split-file and --test-split-file go together")
        split = read_split_files(cfg.train_split_file, cfg.test_split_file, index)
        source: dict[str, Any] = {
            "train_split_file": cfg.train_split_file,
            "test_split_file": cfg.test_split_file,
        }
    else:
        split = dataset_splits(
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
    return split, source


def check_split(
    cfg: TrainConfig, index: DatasetIndex, split: dict[str, list[str]], world: int | None
) -> None:
    """Raise ``ValueError`` naming the option when the split cannot be trained or evaluated: no
    test image, no training image, or (``world`` given: the processes that share a step) a
    global batch larger than the training images (an epoch could not fill one step)."""
    where = (
        "the split files"
        if cfg.train_split_file
        else f"setting {cfg.setting}" + (f", fold {cfg.fold}" if cfg.setting != "b" else "")
    )
    sizes = f"{len(split['train'])} training and {len(split['test'])} test images"
    if not split["test"] or (world is not None and not split["train"]):
        if cfg.train_split_file:
            raise ValueError(
                f"--train-split-file {cfg.train_split_file} / --test-split-file "
                f"{cfg.test_split_file}: {sizes}; both need images"
            )
        if cfg.data_root is None:
            raise ValueError(
                f"--synthetic-images {cfg.synthetic_images} is too few for {where}: its split "
                f"has {sizes} ({int(index.annotated.sum())} of the {len(index)} images have a "
                "box; the test side holds boxed images only); give more images (the demo "
                "uses 3000)"
            )
        raise ValueError(f"--data-root {cfg.data_root}: {where} has {sizes}; both need images")
    if world is not None and cfg.batch_size * world > len(split["train"]):
        per = f" x {world} processes" if world > 1 else ""
        raise ValueError(
            f"--batch-size {cfg.batch_size}{per} is more than the {len(split['train'])} "
            f"training images of {where}: at most {len(split['train']) // world} (one step "
            "takes --batch-size images per process)"
        )


def plan_split(
    cfg: TrainConfig, world: int | None = 1, folds: tuple[int, ...] | None = None
) -> dict[int, dict[str, list[str]]]:
    """:func:`check_split` before any work: the split of each fold (default: ``cfg.fold``)
    ``cfg`` will train on, made without generating the synthetic dataset
    (:func:`~ccg_layers.datasets.synthetic_index`) or writing anything."""
    if cfg.data_root is None:
        from ccg_layers.datasets import synthetic_index

        index = synthetic_index(cfg.synthetic_images, cfg.synthetic_seed)
    else:
        index = read_index(cfg, cfg.data_root)
    splits = {}
    for fold in (cfg.fold,) if folds is None else folds:
        fold_cfg = dataclasses.replace(cfg, fold=fold)
        split, _ = make_split(fold_cfg, index)
        check_split(fold_cfg, index, split, world)
        splits[fold] = split
    return splits


def load_split(
    cfg: TrainConfig, *, world: int | None = None
) -> tuple[DatasetIndex, dict[str, list[str]], dict[str, Any]]:
    """Read the index and make the paper's split (or read explicit split files), checked by
    :func:`check_split` (the training side too when ``world`` is given)."""
    root = dataset_root(cfg)
    index = read_index(cfg, root)
    split, source = make_split(cfg, index)
    check_split(cfg, index, split, world)
    summary = {**source, "root": str(root), **split_summary(index, split)}
    return index, split, summary


# --------------------------------------------------------------------------- file checks


class DataFileError(ChestXray14FormatError):
    """An image file or a box of the split that the run cannot use, named with its path (a
    :class:`~ccg_layers.datasets.ChestXray14FormatError`: the command line's one ``error:``
    line)."""


#: Bump when what :func:`check_image_files` checks changes: older cache entries are redone.
FILE_CHECK_VERSION = 1


def _file_check_cache(cache_dir: Path, root: Path) -> Path:
    """The cache of :func:`check_image_files` for the dataset folder ``root``."""
    ident = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return cache_dir / "file-checks" / f"{ident}.json"


def image_problem(err: BaseException) -> str:
    """What a Pillow error on opening or reading an image file says about the file, in words
    (for one line naming the file)."""
    if isinstance(err, UnidentifiedImageError):
        return "not an image Pillow can read"
    if isinstance(err, Image.DecompressionBombError):
        return f"too large to decode ({err})"
    if isinstance(err, OSError) and err.errno is not None:  # the file system's reason
        return err.strerror or str(err)
    return f"damaged (truncated or overwritten?): {err}"  # Pillow's decoding errors


#: The errors Pillow raises for a file it cannot read (SyntaxError: a "broken PNG file").
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
#: The errors reading a DICOM file raises: no pydicom (the ``dicom`` extra), not DICOM, no
#: Rows/Columns, no decoder for its transfer syntax.
DICOM_ERRORS = (ImportError, OSError, ValueError)


def dicom_problem(err: BaseException, path: Path) -> str:
    """What a :data:`DICOM_ERRORS` error says about ``path``, without the path the library's
    message starts with (for one line naming the file)."""
    return str(err).removeprefix(f"{path}: ")


def _check_one(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file whose header and chunks Pillow reads without
    error, without decoding it (``Image.verify``: every PNG chunk and its CRC, so a truncated
    or overwritten file fails; about 15x cheaper than decoding a 1024-pixel PNG). A DICOM file
    (VinDr-CXR, RSNA) is checked by its header (pydicom reads it and its ``Rows``/``Columns``).

    Raises:
        ValueError: What is wrong with the file, in words (:func:`image_problem`).
    """
    if is_dicom(path):
        try:
            return dicom_frame_size(path)
        except DICOM_ERRORS as err:
            raise ValueError(dicom_problem(err, path)) from None
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
    except IMAGE_ERRORS as err:
        raise ValueError(image_problem(err)) from None
    return size


def check_image_files(
    paths: list[Path],
    *,
    root: Path,
    cache_dir: Path | None,
    what: str = "image",
    at_least: int | None = None,
    is_main: bool = True,
) -> set[tuple[int, int]]:
    """Check, before any work, that every image file opens and is whole; their sizes.

    Each file's header is read and its data checked without decoding (:func:`_check_one`);
    a passing file is remembered in ``<cache_dir>/file-checks/`` (one JSON file per dataset
    folder ``root``, keyed by the file's name under it, its modification time and size), so a
    later run opens only new or changed files.

    Args:
        paths: The image files.
        root: The dataset folder (the cache's names are relative to it).
        cache_dir: The trainer's cache folder, or ``None`` for no cache.
        what: What the files are, for the message ("training image").
        at_least: If given, each image must also be at least this many pixels on a side
            (SLIC's working copy of every training image is ``--superpixel-size`` square).
        is_main: Whether this process writes the cache (the main one under DDP).

    Returns:
        The ``(width, height)`` sizes of the files.

    Raises:
        DataFileError: Naming the files that cannot be used (the first three, and how many
            more) and what is wrong with each.
    """
    cache = None if cache_dir is None else _file_check_cache(Path(cache_dir), root)
    known: dict[str, list[int]] = {}
    if cache is not None and cache.is_file():
        try:
            saved = json.loads(cache.read_text())
            if saved.get("version") == FILE_CHECK_VERSION:
                known = saved["files"]
        except (ValueError, KeyError, AttributeError):  # unreadable: check every file again
            known = {}
    checked = dict(known)
    bad: list[str] = []
    sizes: set[tuple[int, int]] = set()
    for path in paths:
        key = os.path.relpath(path, root)
        try:
            st = path.stat()
        except OSError as err:
            bad.append(f"{path}: {err.strerror}")
            continue
        entry = known.get(key)
        if entry is not None and entry[:2] == [st.st_mtime_ns, st.st_size]:
            size = (entry[2], entry[3])
        else:
            try:
                size = _check_one(path)
            except ValueError as err:
                bad.append(f"{path}: {err}")
                continue
            checked[key] = [st.st_mtime_ns, st.st_size, *size]
        sizes.add((int(size[0]), int(size[1])))
        if at_least is not None and min(size) < at_least:
            bad.append(
                f"{path}: {size[0]}x{size[1]} pixels, but with L_IK or L_KR every training "
                f"image must be at least --superpixel-size {at_least} pixels on a side (SLIC "
                "runs on its square working copy)"
            )
    if cache is not None and is_main and checked != known:
        from .checkpoint import write_text

        text = json.dumps({"version": FILE_CHECK_VERSION, "files": checked}, sort_keys=True)
        write_text(cache, text)
    if bad:
        raise DataFileError(
            f"{len(bad)} {what}(s) cannot be used: {name_list(bad, sep='; ')} (replace or "
            "remove them from the label CSV)"
        )
    return sizes


def check_split_boxes(index: DatasetIndex, names: list[str]) -> None:
    """Every box of the images ``names`` must overlap its image's frame (``index.image_sizes``:
    ChestX-ray14's 1024-pixel frame of ``BBox_List_2017.csv`` whatever the size of the PNG,
    the DICOM's pixels for VinDr-CXR, RSNA's 1024-pixel frame).

    Raises:
        DataFileError: Naming the image, the class and the box of the first few that do not.
    """
    rows = torch.zeros(len(index), dtype=torch.bool)
    rows[torch.tensor([index.position(n) for n in names], dtype=torch.long)] = True
    mine = rows[index.box_image_index].nonzero().flatten()  # the boxes of these images
    image = index.box_image_index[mine]
    frame = index.image_sizes[image]  # (width, height) of each box's image
    boxes = index.boxes[mine]
    bad = []
    frames = set()
    for j in rejected_boxes(boxes, frame[:, 1], frame[:, 0]).nonzero().flatten().tolist():
        i, (w, h) = int(image[j]), frame[j].tolist()
        x1, y1, x2, y2 = boxes[j].tolist()
        frames.add(f"{w}x{h}")
        bad.append(
            f"{index.images[i]} {index.class_names[int(index.box_class[mine[j]])]} box "
            f"x={x1:g} y={y1:g} w={x2 - x1:g} h={y2 - y1:g}"
        )
    if bad:
        where = index.root if index.root is not None else "the index"
        what = (
            "BBox_List_2017.csv"
            if isinstance(index, ChestXray14Index)
            else f"the {index.dataset_name} labels"
        )
        frame_of = f"the {frames.pop()} frame" if len(frames) == 1 else "their images' frames"
        raise DataFileError(
            f"{where}: {len(bad)} box(es) of {what} lie wholly outside {frame_of} of the boxes: "
            f"{name_list(bad, sep='; ')}"
        )


def check_data_files(
    cfg: TrainConfig,
    index: DatasetIndex,
    test: RadiographDataset,
    train: RadiographDataset | None,
    *,
    is_main: bool = True,
) -> bool:
    """The fast pass before any work: the test (and training) images open and are whole (the
    training images at least ``--superpixel-size`` on a side when SLIC runs on them), and
    their boxes lie in the frame (:func:`check_image_files`, :func:`check_split_boxes`).

    Returns:
        Whether every training image is square (``True`` without a training set).
    """
    root = index.root if index.root is not None else Path(".")
    cache = Path(cfg.cache_dir)
    square = True
    for ds, what in ((test, "test image"), (train, "training image")):
        if ds is None:
            continue
        slic = ds is train and (cfg.enabled("ik") or cfg.enabled("kr"))
        sizes = check_image_files(
            ds.paths,
            root=root,
            cache_dir=cache,
            what=what,
            at_least=cfg.superpixel_size if slic else None,
            is_main=is_main,
        )
        check_split_boxes(index, ds.image_names)
        if ds is train:
            square = all(w == h for w, h in sizes)
    return square


# --------------------------------------------------------------------------- superpixels


def superpixel_labels(
    cfg: TrainConfig,
    paths: list[Path],
    *,
    workers: int = 0,
    is_main: bool = True,
    all_square: bool = True,
) -> Tensor:
    """SLIC labels ``(N, s, s)`` uint8 of the image files, computed once per image and cached.

    :func:`ccg_layers.superpixels_from_files` at ``cfg.superpixel_size`` with
    ``cfg.num_patches`` segments, cached per file in ``<cache_dir>/superpixels`` (keyed by the
    file and the parameters): later runs, resumed runs and the other DDP processes read them.
    Unless ``all_square``, each image is resized to ``s x s`` first (``square=True``), as the
    dataset resizes it to ``S x S``, so the labels cover the training image (most VinDr-CXR
    radiographs are not square); square images give the same labels either way.
    """
    t0 = time.perf_counter()
    labels = ccg_layers.superpixels_from_files(
        paths,
        cfg.num_patches,
        compactness=cfg.superpixel_compactness,
        work_size=cfg.superpixel_size,
        num_workers=workers,
        cache_dir=Path(cfg.cache_dir) / "superpixels",
        square=not all_square,
    ).to(torch.uint8)
    if is_main and time.perf_counter() - t0 > 1.0:
        print(
            f"superpixels: {len(paths)} images x {cfg.num_patches} patches in "
            f"{time.perf_counter() - t0:.1f} s (cached in {Path(cfg.cache_dir) / 'superpixels'})"
        )
    return labels


# --------------------------------------------------------------------------- datasets


_IMAGE_MEMO: dict[tuple[str, tuple[str, ...], int], Tensor] = {}


class TrainSet(Dataset[dict[str, Any]]):
    """The training ``RadiographDataset`` (1-channel uint8 images) plus each sample's superpixels.

    With ``in_memory`` the decoded images are kept in memory (uint8, loaded once), for small
    datasets such as the demo's, where decoding would dominate the step time; the samples are
    identical to the decoded ones.
    """

    def __init__(
        self,
        base: RadiographDataset,
        superpixels: Tensor | None,
        *,
        in_memory: bool = False,
        num_workers: int = 0,
    ) -> None:
        self.base = base
        self.superpixels = superpixels
        self.images: Tensor | None = None
        if in_memory:
            key = (str(base.index.root), tuple(base.image_names), base.image_size)
            if key not in _IMAGE_MEMO:
                _IMAGE_MEMO.clear()
                loader = DataLoader(
                    base,
                    batch_size=32,
                    num_workers=num_workers,
                    collate_fn=collate_chestxray14,
                    generator=torch.Generator(),  # leaves the global RNG alone
                )
                _IMAGE_MEMO[key] = torch.cat([b["image"] for b in loader])
            self.images = _IMAGE_MEMO[key]

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.images is None:
            sample: dict[str, Any] = dict(self.base[i])
        else:  # the same fields as ChestXray14.__getitem__, without decoding the PNG
            sample = dict(self.base.targets(i))
            sample["image"] = self.images[i]
        if self.superpixels is not None:
            sample["superpixels"] = self.superpixels[i]
        return sample


def grid_size(cfg: TrainConfig) -> int:
    """The side of the model's grid (the C5 map) at the working size."""
    return cfg.image_size // model_stride(cfg)


@dataclass
class Collate:
    """Batches samples (in the loader's workers): ``collate_chestxray14`` plus, with
    ``grid_size``, the grid targets ``grid`` (B, K, g, g) and ``box_mask`` (B, K) of L_base, and
    the stacked ``superpixels`` (B, s, s) uint8 when the samples have them."""

    num_classes: int
    image_size: int
    grid_size: int | None = None

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = dict(collate_chestxray14(samples))  # type: ignore[arg-type]
        if self.grid_size is not None:
            batch["grid"], batch["box_mask"] = boxes_to_grid_targets(
                batch["boxes"],
                batch["box_image_index"],
                batch["box_class"],
                num_images=len(samples),
                num_classes=self.num_classes,
                image_size=self.image_size,
                grid_size=self.grid_size,
            )
        if "superpixels" in samples[0]:
            batch["superpixels"] = torch.stack([s["superpixels"] for s in samples])
        return batch


#: The batch entries a training step moves to the device.
STEP_KEYS = ("image", "labels", "grid", "box_mask", "superpixels")


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
    """The step's tensors of ``batch`` on ``device`` (``non_blocking``: from pinned memory the
    copy overlaps the previous step)."""
    return {k: batch[k].to(device, non_blocking=True) for k in STEP_KEYS if k in batch}


class EpochBatchSampler(Sampler[list[int]]):
    """This process's batches of an epoch, from a given step on (exact, resumable order).

    The order is :func:`epoch_order` of ``(seed, epoch)``, cut into global batches of
    ``batch_size * world``; process ``rank`` takes its slice of each. ``set_epoch(epoch,
    start_step)`` picks the epoch and where to start (a resumed run restarts mid-epoch).
    """

    def __init__(self, n: int, batch_size: int, *, rank: int = 0, world: int = 1, seed: int = 0):
        self.n, self.batch_size, self.rank, self.world, self.seed = n, batch_size, rank, world, seed
        self.steps = math.ceil(n / (batch_size * world))
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.steps - self.start_step

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_order(self.n, self.epoch, self.seed, self.batch_size * self.world)
        mine = order.view(self.steps, self.world, self.batch_size)[self.start_step :, self.rank]
        yield from mine.tolist()


def loader_options(cfg: TrainConfig, device: torch.device, world: int = 1) -> dict[str, Any]:
    """DataLoader workers, prefetch, pinned memory and persistent workers for this machine.

    ``--num-workers -1`` (auto) takes the CPU cores of this process's share of the machine
    minus one for the main process, at most 8.
    """
    workers = cfg.num_workers
    if workers < 0:
        workers = max(0, min(8, (os.cpu_count() or 1) // world - 1))
    opts: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        opts.update(persistent_workers=True, prefetch_factor=4)
    return opts


@dataclass
class Data:
    """The index, split and ready datasets and loaders of a run."""

    index: DatasetIndex
    split: dict[str, list[str]]
    summary: dict[str, Any]
    test: RadiographDataset
    test_loader: DataLoader[Any]
    train: TrainSet | None = None
    train_loader: DataLoader[Any] | None = None
    sampler: EpochBatchSampler | None = None


def build_data(
    cfg: TrainConfig,
    *,
    device: torch.device | None = None,
    rank: int = 0,
    world: int = 1,
    barrier: Any = None,
    with_train: bool = True,
) -> Data:
    """Index and split, the training set (with superpixels if a patch-graph term is on) and
    the test set, with their loaders (the training loader's order set by ``data.sampler``)."""
    device = device or torch.device("cpu")
    index, split, summary = load_split(cfg, world=world if with_train else None)
    opts = loader_options(cfg, device, world)
    test = make_dataset(index, split["test"], cfg.image_size)
    test_loader = DataLoader(
        test,
        batch_size=max(cfg.batch_size, 8),
        collate_fn=Collate(cfg.num_classes, cfg.image_size),
        shuffle=False,
        generator=torch.Generator(),  # leaves the global RNG alone
        **opts,
    )
    data = Data(index, split, summary, test, test_loader)
    base = make_dataset(index, split["train"], cfg.image_size) if with_train else None
    all_square = check_data_files(cfg, index, test, base, is_main=rank == 0)  # before any work
    if base is None:
        return data
    labels = None
    if cfg.enabled("ik") or cfg.enabled("kr"):
        workers = max(1, opts["num_workers"])
        if rank == 0:
            labels = superpixel_labels(cfg, base.paths, workers=workers, all_square=all_square)
        if barrier is not None:
            barrier()  # the others read the cache the main process has just filled
        if rank != 0:
            labels = superpixel_labels(
                cfg, base.paths, workers=workers, is_main=False, all_square=all_square
            )
    data.train = TrainSet(base, labels, in_memory=cfg.cache_images, num_workers=opts["num_workers"])
    data.sampler = EpochBatchSampler(
        len(base), cfg.batch_size, rank=rank, world=world, seed=cfg.seed
    )
    data.train_loader = DataLoader(
        data.train,
        batch_sampler=data.sampler,
        collate_fn=Collate(cfg.num_classes, cfg.image_size, grid_size(cfg)),
        generator=torch.Generator().manual_seed(cfg.seed),
        **opts,
    )
    return data


def test_boxes(ds: RadiographDataset) -> tuple[Tensor, Tensor, Tensor]:
    """Boxes of the test images in the flat layout of ``localization_accuracy``, scaled from
    each image's frame to the working size (:func:`~ccg_layers.datasets.boxes_at_size`)."""
    index = ds.index
    rows = ds.rows  # the index row of each dataset position
    pos_of_row = torch.full((len(index),), -1, dtype=torch.long)
    pos_of_row[rows] = torch.arange(len(rows))
    pos = pos_of_row[index.box_image_index]
    keep = pos >= 0
    boxes = boxes_at_size(index, ds.image_size)[keep]
    return boxes, pos[keep], index.box_class[keep]


def trivial_prior(
    index: DatasetIndex, train_names: list[str], image_size: int, grid: int = 64
) -> Tensor:
    """``(K, grid, grid)``: the training set's mean box mask per class (the trivial prior).

    For each class, the average over the training images with a box of that class of the
    indicator of the union of its boxes, on a ``grid x grid`` raster of the image (each box
    scaled from its image's frame, :func:`~ccg_layers.datasets.boxes_at_size`); a class with
    no training box gets an all-zero map.
    """
    k = index.labels.shape[1]
    rows = torch.tensor([index.position(n) for n in train_names], dtype=torch.long)
    in_train = torch.zeros(len(index), dtype=torch.bool)
    in_train[rows] = True
    keep = in_train[index.box_image_index]
    boxes = boxes_at_size(index, grid)[keep]
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


def reference_maps(
    index: DatasetIndex, split: dict[str, list[str]], cfg: TrainConfig
) -> dict[str, Tensor]:
    """The fixed maps every table shows beside the models: name -> ``(N_test, K, h, w)``.

    ``"Prior"``: the training set's mean box mask per class (:func:`trivial_prior`), the
    same map for every test image; it needs training boxes, so in setting (b) it is empty.
    ``"Whole image"``: the whole image as every class's region, a reference that needs no
    box at all (its IoU with a box is the box's share of the image); the models must beat it
    in every setting, and setting (b) has only this one.
    """
    prior = trivial_prior(index, split["train"], cfg.image_size)
    n, k = len(split["test"]), prior.shape[0]
    return {
        "Prior": prior[None].expand(n, -1, -1, -1),
        "Whole image": torch.ones(1, 1, 1, 1).expand(n, k, 1, 1),
    }


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
