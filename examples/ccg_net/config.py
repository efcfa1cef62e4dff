"""Training configuration: one dataclass, two presets, and the command line that fills it.

``paper`` is the paper's setting on the real ChestX-ray14 (Sec. 4.2): ResNet-50 C5 at 512x512,
SGD with Nesterov momentum 0.9, lr 1e-3 divided by 10 every 4 epochs, 9 epochs, weight decay
1e-4, batch 2, no augmentation, the four losses of Eq. 11 with weight 0.25 each.

``demo`` runs the same pipeline on the embedded synthetic ChestX-ray14 with a small backbone and
input so that the whole of ``make demo`` (data, baseline, CCG, tables, figures) fits in a few
minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The datasets ``--dataset`` reads from ``--data-root`` (docs/data.md), with the name their
#: messages use. The synthetic twin (no ``--data-root``) is ChestX-ray14's.
DATASETS: dict[str, str] = {
    "chestxray14": "ChestX-ray14",
    "vindr-cxr": "VinDr-CXR",
    "rsna-pneumonia": "RSNA Pneumonia",
}


def dataset_class_names(dataset: str) -> tuple[str, ...]:
    """The classes of ``--dataset`` in the order of the head's outputs: the library's class
    lists (``CLASS_NAMES``, ``VINDR_CLASS_NAMES``, ``RSNA_CLASS_NAMES``), which its readers
    give as ``index.class_names``; known without reading the data (``predict`` needs them).

    Raises:
        ValueError: ``dataset`` is not one of :data:`DATASETS`.
    """
    from ccg_layers.datasets import CLASS_NAMES, RSNA_CLASS_NAMES, VINDR_CLASS_NAMES

    classes = {
        "chestxray14": CLASS_NAMES,
        "vindr-cxr": VINDR_CLASS_NAMES,
        "rsna-pneumonia": RSNA_CLASS_NAMES,
    }
    if dataset not in classes:
        raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    return tuple(classes[dataset])


# The rows of the paper's Table 4: which relation terms are on besides L_base.
ABLATIONS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "ik": ("ik",),
    "ir": ("ir",),
    "kr": ("kr",),
    "ir+ik": ("ir", "ik"),
    "ir+ik+kr": ("ir", "ik", "kr"),
}
LOSS_TERMS = ("base", "ir", "ik", "kr")
#: How the console, the figures and the docs name each term of :data:`LOSS_TERMS`.
TERM_LABELS = {"base": "L_base", "ir": "L_IR", "ik": "L_IK", "kr": "L_KR"}

#: The synthetic seed of the twin ``pretrain`` trains the backbone on: 0 is the demo's and the
#: study's data, 1 the study's independent test set, 2 the validation set its learning rates
#: were chosen on; 7 is none of them.
PRETRAIN_SEED = 7


@dataclass
class TrainConfig:
    """Every knob of a run; saved as ``config.json`` in the run directory."""

    preset: str = "paper"
    # data
    dataset: str = "chestxray14"  # which reader --data-root is read with (DATASETS)
    data_root: str | None = None  # None: the embedded synthetic dataset (generated on first use)
    synthetic_images: int = 400  # size of the synthetic dataset when data_root is None
    synthetic_seed: int = 0
    cache_dir: str = "runs/.cache"
    setting: str = "a"  # the paper's data settings (a), (b), (c) of Sec. 4.2
    fold: int = 0
    split_seed: int = 0
    patient_disjoint: bool = False
    train_split_file: str | None = None
    test_split_file: str | None = None
    vindr_combine: str = "merge"  # VinDr-CXR: how the radiologists' boxes are combined
    image_kind: str = "auto"  # VinDr-CXR, RSNA: which files are the images (DICOM first)
    frame_sizes: str | None = None  # VinDr-CXR: CSV of the DICOM sizes of resized copies
    image_size: int = 512
    num_classes: int = 14
    num_workers: int = -1  # DataLoader workers; -1: from the machine's cores (data.loader_options)
    cache_images: bool = False  # keep decoded training images in memory (small datasets)
    # model
    backbone: str = "resnet50"  # "resnet50" | "tiny"
    weights: str = "imagenet"  # "imagenet" (torchvision's cache) | a state-dict path | "none"
    tiny_widths: tuple[int, ...] = (16, 32, 64, 128)
    tiny_stride: int = 16  # output stride of the tiny backbone (8 or 16)
    head_channels: int = 512  # width of the first of the two 1x1 convolutions
    freeze_bn: bool = True  # batch 2 cannot estimate BatchNorm statistics: keep ImageNet's
    test_upsample: int = 2  # Sec. 3.7: feature map upsampling before the 1x1 convs at test time
    # losses (Eq. 11)
    losses: tuple[str, ...] = LOSS_TERMS
    w_base: float = 0.25
    w_ir: float = 0.25
    w_ik: float = 0.25
    w_kr: float = 0.25
    box_weight: float = 4.0  # beta_B of Eq. 1
    # Eq. 2's noisy-OR with Li et al. 2018's floor ([8], whose MIL loss the paper uses): each
    # cell's 1 - p is rescaled into [0.98, 1]; None is Eq. 2 as printed (docs/training.md)
    noisy_or_floor: float | None = 0.98
    head_bias_init: str = "prior"  # "prior": image-level noisy-OR starts at the class prior
    base_reduction: str = "sum"  # Eq. 3 sums L_base over images and classes; or "mean"
    num_patches: int = 16  # superpixels per image (m of Eq. 7)
    superpixel_size: int = 64  # labels are cached at this resolution
    superpixel_compactness: float = 0.1
    code_bits: int = 64
    # input-conditioned graphs (the weight of a pair computed from the two images) or the
    # paper's literal position-indexed matrix for L_IR (docs/graphs.md)
    graph_form: str = "conditioned"
    # cross-batch partner memory of every relation graph; -1: 8 where the batch alone would
    # leave a graph constant (the paper's batch of 2), else 0
    memory_size: int = -1
    # what the relation terms compare: "raw" the C5 maps as they are (the paper); "unit" each
    # map divided by its L2 norm (distances in [0, 2]: shrinking the features gains nothing)
    relation_features: str = "raw"
    # beyond the paper: "pull" is Eq. 4-10 as printed (every pair pulled together); "contrast"
    # pulls pairs of images that share a finding (or both have none) and pushes the others
    # apart up to --contrast-margin (docs/graphs.md, "Contrast-constrained form")
    relation_form: str = "pull"
    contrast_margin: float = 1.0  # in unit-map distances (needs --relation-features unit)
    kr_pairs: str = "half"  # L_KR pairs: "half" (i, i + n/2) or "all" (every pair)
    kr_scale: float | None = None  # None: 1/sqrt(C); 1.0 is the paper's literal P
    # 0: the paper's full C x C W_P of Eq. 8; D > 0: W_P = W_u^T W_v of rank D (cheaper)
    kr_qk_channels: int = 0
    # optimisation
    epochs: int = 9
    batch_size: int = 2  # per process; the graph losses span the global batch
    optimizer: str = "sgd"  # "sgd" (the paper: Nesterov momentum) | "adamw"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    lr_step_epochs: int = 4
    lr_gamma: float = 0.1
    # run
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    amp: str = "auto"  # "auto" (on for CUDA) | "on" | "off"
    threads: int = 0  # torch intra-op threads on CPU; 0 keeps torch's default
    output_dir: str = "runs"
    run_name: str | None = None
    checkpoint_every: int = 200  # steps between mid-epoch checkpoints (0: only at epoch ends)
    eval_every: int = 1  # epochs between evaluations on the test split (0: only at the end)
    progress: bool = True
    log_every: int = 50  # steps between reads of the loss terms (the step's only host sync)
    channels_last: bool = False  # NHWC memory format for the backbone (faster convs on GPUs)
    compile: bool = False  # torch.compile the model and the loss (the loss as one graph)
    max_test_images: int = 0  # 0: all
    num_figures: int = 8
    parallel_runs: int = 1  # the comparison (demo): train baseline and CCG side by side (<= 2)

    def enabled(self, term: str) -> bool:
        """Whether the loss term ``term`` is on."""
        return term in self.losses

    def to_json(self) -> str:
        """The resolved configuration as JSON."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of ``dataclasses.asdict`` (tuples come back from JSON lists).

        A key that is no option of this trainer is refused, all such keys named at once.

        A removed option (:data:`REMOVED_OPTIONS`) of a run's saved configuration is dropped at
        the value that left it off; at another value the run is refused (it was trained with
        it), naming the last commit that has the option.
        """
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names) - set(REMOVED_OPTIONS))
        if unknown:
            raise ValueError(
                f"the configuration has {', '.join(map(repr, unknown))}, unknown to this "
                "trainer (written by another version of it, or edited)"
            )
        kwargs = {}
        for k, v in d.items():
            if k in REMOVED_OPTIONS:
                off = REMOVED_OPTIONS[k]
                if off is None or v == off:
                    continue
                raise ValueError(
                    f"configuration key {k!r} is {v!r}: the run was made with "
                    f"--{k.replace('_', '-')}, an option removed after commit {LAST_WITH_REMOVED}; "
                    f"use that commit's trainer for this run"
                )
            kwargs[k] = tuple(v) if isinstance(v, list) else v
        return cls(**kwargs)


#: Options the trainer no longer has, with the value that left each off (``None``: any value,
#: a testing aid that changed no weight); a run directory from before their removal keeps
#: loading and resuming (:meth:`TrainConfig.from_dict`).
REMOVED_OPTIONS: dict[str, Any] = {
    "stop_after_steps": None,
    # research knobs whose study (docs/results.md) measured no gain: no user purpose
    "relation_start_epoch": 0,
    "graph_lr_mult": 1.0,
}
#: The last commit whose trainer has the options of :data:`REMOVED_OPTIONS`.
LAST_WITH_REMOVED = "4d6a716"

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # Tuned for the baseline on this 2-core CPU (docs/results.md, "Weak supervision"): a small
    # ResNet from random initialisation learns from image-level labels with 3000 images, the
    # head's bias from the class prior and Li et al.'s noisy-OR floor (defaults of both
    # presets), with the paper's SGD; the learning rate depends on the setting
    # (DEMO_LR_BY_SETTING). Every relation row gets the very same settings.
    "demo": {
        # the setting where the Table 4 study shows the relation terms' effect most clearly
        # (docs/results.md): no box in training
        "setting": "b",
        "synthetic_images": 3000,
        "backbone": "tiny",
        "weights": "none",
        "tiny_widths": (16, 32, 64, 64),
        "tiny_stride": 8,
        "freeze_bn": False,
        "image_size": 128,
        "head_channels": 64,
        "test_upsample": 2,
        "num_patches": 16,
        "superpixel_size": 32,
        # the recommended form of the relation terms (docs/training.md, "Which form to use"):
        # the contrast-constrained form on unit-normalised maps, the one form that never fell
        # below the baseline in the decisive study (docs/results.md); --preset paper keeps the
        # paper's literal pull-only form on raw maps
        "relation_form": "contrast",
        "relation_features": "unit",
        "batch_size": 8,
        "epochs": 6,
        "lr": 3e-3,  # in setting (b); 3e-4 in (a) and (c): DEMO_LR_BY_SETTING
        "lr_step_epochs": 4,
        "num_workers": 0,
        "cache_images": True,
        "threads": 1,
        "checkpoint_every": 0,
        "log_every": 20,
        "num_figures": 6,
        "parallel_runs": 2,
    },
}


#: The demo's learning rate per data setting when ``--lr`` is not given, tuned for the baseline
#: (docs/results.md, "Weak supervision"). L_base is Eq. 3's sum: where training images have
#: boxes, Eq. 1's term sums a BCE over every grid cell (x 4), and a batch's L_base is about 15x
#: that of the multiple-instance term alone (~350 against ~24 at the start), so settings (a) and
#: (c) take a 10x smaller rate than setting (b), which has no box.
DEMO_LR_BY_SETTING: dict[str, float] = {"a": 3e-4, "b": 3e-3, "c": 3e-4}


#: Options that change where a run writes, how it reports or how fast it runs, not what it
#: learns (the seed is among them: the study spans seeds).
RUN_ONLY_FIELDS = frozenset(
    {
        "seed",
        "output_dir",
        "run_name",
        "cache_dir",
        "data_root",
        "threads",
        "progress",
        "eval_every",
        "num_figures",
        "parallel_runs",
        "log_every",
        "checkpoint_every",
        "device",
        "num_workers",
        "cache_images",
        "compile",
        "channels_last",
        "deterministic",
        "amp",
    }
)


def differs_from_demo(cfg: TrainConfig) -> list[str]:
    """The options (as flags) in which ``cfg`` learns differently from ``--preset demo`` with its
    defaults in ``cfg.setting`` (the configuration docs/ablation-study.json was measured with);
    the CCG terms are the study's full model, ``--losses`` of the comparison's CCG run."""
    if cfg.preset != "demo":
        return ["--preset"]
    ref = TrainConfig(preset="demo", **PRESETS["demo"])
    ref.setting = cfg.setting
    ref.lr = DEMO_LR_BY_SETTING.get(cfg.setting, ref.lr)
    return [
        "--" + f.name.replace("_", "-")
        for f in dataclasses.fields(TrainConfig)
        if f.name not in RUN_ONLY_FIELDS
        and f.name not in ("preset", "losses")
        and getattr(cfg, f.name) != getattr(ref, f.name)
    ] + (["--losses"] if len(cfg.losses) > 1 and cfg.losses != LOSS_TERMS else [])


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {s!r}")


_NONE = "none"  # what an option of a ``float | None`` field gives for "none" (None = not given)


def _float_or_none(s: str) -> float | str:
    if s.lower() == _NONE:
        return _NONE
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or none, got {s!r}") from None


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


#: The relation terms' options (Eq. 4-10): they act only through L_IR, L_IK and L_KR (a run of
#: L_base alone, e.g. a pretraining run, does not depend on them).
RELATION_FIELDS: tuple[str, ...] = (
    "w_ir",
    "w_ik",
    "w_kr",
    "num_patches",
    "superpixel_size",
    "superpixel_compactness",
    "code_bits",
    "graph_form",
    "memory_size",
    "relation_features",
    "relation_form",
    "contrast_margin",
    "kr_pairs",
    "kr_scale",
    "kr_qk_channels",
)

#: The ``--help`` sections, in order, and the ``TrainConfig`` fields of each (every field but
#: ``preset`` is in one; tests/examples/test_console.py checks it).
OPTION_GROUPS: dict[str, tuple[str, ...]] = {
    "data": (
        "dataset",
        "data_root",
        "synthetic_images",
        "synthetic_seed",
        "cache_dir",
        "setting",
        "fold",
        "split_seed",
        "patient_disjoint",
        "train_split_file",
        "test_split_file",
        "vindr_combine",
        "image_kind",
        "frame_sizes",
        "image_size",
        "num_classes",
        "num_workers",
        "cache_images",
    ),
    "model": (
        "backbone",
        "weights",
        "tiny_widths",
        "tiny_stride",
        "head_channels",
        "head_bias_init",
        "freeze_bn",
        "test_upsample",
    ),
    "losses and relation terms (Eq. 1-11)": (
        "losses",
        "w_base",
        "box_weight",
        "noisy_or_floor",
        "base_reduction",
        *RELATION_FIELDS,
    ),
    "optimisation": (
        "epochs",
        "batch_size",
        "optimizer",
        "lr",
        "momentum",
        "nesterov",
        "weight_decay",
        "lr_step_epochs",
        "lr_gamma",
    ),
    "evaluation and report": ("eval_every", "max_test_images", "num_figures"),
    "run and output": (
        "seed",
        "deterministic",
        "device",
        "amp",
        "threads",
        "output_dir",
        "run_name",
        "checkpoint_every",
        "progress",
        "log_every",
        "channels_last",
        "compile",
        "parallel_runs",
    ),
}
#: Where a field missing from :data:`OPTION_GROUPS` is listed (none is; a new one shows here).
OTHER_OPTIONS = "other options"


def add_config_options(
    p: argparse.ArgumentParser, skip: tuple[str, ...] = ()
) -> dict[str, argparse._ArgumentGroup]:
    """Every ``TrainConfig`` field as an option, in the sections of :data:`OPTION_GROUPS`;
    the help shows its default in each preset.

    Returns:
        The sections by title, for a verb to add its own options to.
    """
    presets = {name: TrainConfig(preset=name, **values) for name, values in PRESETS.items()}
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,  # None: not given (paper), so that --resume sees only what was typed
        help="the defaults of every option below (default: paper). paper: ResNet-50 at 512, "
        "batch 2, SGD; its relation graphs are input-conditioned (a pair's weight computed "
        "from the two images) with an 8-image partner memory, since at a batch of 2 each image "
        "has one partner and a graph would stay constant (docs/training.md). demo: the "
        "synthetic twin, a small ResNet, batch 8, no memory needed",
    )
    groups = {title: p.add_argument_group(title) for title in OPTION_GROUPS}
    group_of = {name: title for title, names in OPTION_GROUPS.items() for name in names}
    defaults = TrainConfig()
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    order = [n for names in OPTION_GROUPS.values() for n in names if n in fields]
    order += [n for n in fields if n not in order]
    for f in (fields[n] for n in order):
        if f.name == "preset" or f.name in skip:
            continue
        title = group_of.get(f.name, OTHER_OPTIONS)
        if title not in groups:
            groups[title] = p.add_argument_group(title)
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        values = {name: _show(getattr(c, f.name)) for name, c in presets.items()}
        shown = (
            f"default: {values['paper']}"
            if len(set(values.values())) == 1
            else "; ".join(f"{name}: {v}" for name, v in values.items())
        )
        kw: dict[str, Any] = {"default": None, "dest": f.name}
        if isinstance(default, bool):
            kw["type"] = _parse_bool
            kw["metavar"] = "BOOL"
        elif isinstance(default, tuple):
            kw["type"] = str
            kw["metavar"] = "A,B,..."
        elif isinstance(default, int):
            kw["type"] = int
        elif f.name in ("kr_scale", "noisy_or_floor"):
            kw["type"] = _float_or_none
        elif isinstance(default, float):
            kw["type"] = float
        else:
            kw["type"] = str
        kw["help"] = f"{HELP.get(f.name, '')} ({shown})".strip()
        groups[title].add_argument(flag, **kw)
    return groups


HELP: dict[str, str] = {
    "dataset": "the dataset --data-root holds: chestxray14, vindr-cxr or rsna-pneumonia "
    "(docs/data.md)",
    "data_root": "the dataset's folder; None: the embedded synthetic ChestX-ray14 twin",
    "synthetic_images": "images of the synthetic dataset",
    "synthetic_seed": "seed the synthetic twin is generated from (a different twin per seed)",
    "cache_dir": "synthetic data and superpixel cache",
    "setting": "the paper's data setting a, b or c (Sec. 4.2)",
    "fold": "fold 0..4 of the setting",
    "split_seed": "seed of the setting's split into folds",
    "patient_disjoint": "drop the training images of patients who have a test image",
    "train_split_file": "an explicit training split, one image name per line (with "
    "--test-split-file; replaces the setting's split)",
    "test_split_file": "an explicit test split, one image name per line (with --train-split-file)",
    "vindr_combine": "VinDr-CXR: how the three radiologists' boxes are combined: merge (fused "
    "per finding), all, or single (one radiologist's reading)",
    "image_kind": "VinDr-CXR and RSNA: which files are the images: auto (DICOM first), dicom, "
    "png or jpeg",
    "frame_sizes": "VinDr-CXR PNG/JPEG copies that were resized: a CSV (image_id,width,height) "
    "of each original DICOM's size, the frame of its boxes (docs/data.md)",
    "image_size": "working size S (multiple of 32)",
    "num_classes": "classes of the head: the dataset's (ChestX-ray14 and VinDr-CXR 14, RSNA 1; "
    "the only value accepted; default: the dataset's)",
    "num_workers": "DataLoader workers (-1: from the machine)",
    "cache_images": "keep the decoded training images in memory",
    "backbone": "resnet50 or tiny",
    "tiny_widths": "the tiny backbone's four stage widths (each >= 8)",
    "tiny_stride": "the tiny backbone's output stride, 8 or 16",
    "head_channels": "width of the head's first 1x1 convolution (Sec. 3.2)",
    "freeze_bn": "keep the backbone's BatchNorm statistics fixed (a batch of 2 cannot estimate "
    "them)",
    "test_upsample": "upsampling of the feature map before the head at test time (Sec. 3.7), "
    "at most the backbone's stride",
    "w_base": "weight of L_base in Eq. 11 (> 0)",
    "w_ir": "weight of L_IR in Eq. 11",
    "w_ik": "weight of L_IK in Eq. 11",
    "w_kr": "weight of L_KR in Eq. 11",
    "box_weight": "beta_B of Eq. 1, the weight of the box term of L_base",
    "base_reduction": "L_base over images and classes: sum (Eq. 3) or mean",
    "num_patches": "superpixels per image, m of Eq. 7",
    "superpixel_size": "resolution the superpixels are computed and cached at",
    "superpixel_compactness": "SLIC's compactness",
    "code_bits": "bits of a patch's hash code (Eq. 6)",
    "kr_pairs": "L_KR's pairs: half (image i with i + n/2) or all (every pair of the batch)",
    "kr_scale": "scale of L_KR's attention logits (none: 1/sqrt(C); 1 is the paper's literal P)",
    "momentum": "SGD momentum (the paper: Nesterov 0.9)",
    "nesterov": "Nesterov momentum for SGD",
    "weight_decay": "weight decay",
    "lr_step_epochs": "epochs between learning-rate steps",
    "lr_gamma": "factor of each learning-rate step",
    "seed": "seed of the weights' initialisation and the data order",
    "deterministic": "deterministic algorithms only (bit-identical reruns; cudnn.benchmark off)",
    "threads": "torch's CPU threads (0: torch's default)",
    "eval_every": "epochs between evaluations on the test split (0: at the end only)",
    "progress": "progress bars of training and evaluation (the per-epoch line prints anyway)",
    "max_test_images": "evaluate on the first N test images only (0: all)",
    "weights": "backbone weights: imagenet (torchvision's cache), a file, none, or twin (the "
    "backbone pretrained on an independent synthetic twin by `pretrain`, made on first use)",
    "losses": "loss terms of Eq. 11, comma-separated, from base,ir,ik,kr",
    "epochs": "epochs to train",
    "batch_size": "images per process and step",
    "lr": "learning rate (demo: 3e-3 in setting b, 3e-4 in a and c)",
    "optimizer": "sgd (Nesterov, the paper) or adamw",
    "relation_features": "what the relation terms compare: raw C5 maps (the paper) or unit (each "
    "map divided by its L2 norm)",
    "relation_form": "pull (Eq. 4-10 as printed: every pair pulled together) or contrast (beyond "
    "the paper: pairs sharing a finding, or both without any, pulled; the others pushed apart "
    "up to --contrast-margin; needs --relation-features unit)",
    "contrast_margin": "the contrast form's margin, in distances between unit maps (in [0, 2])",
    "graph_form": "relation graphs: conditioned (a pair's weight from the two images) or "
    "positional (the paper's batch-slot matrix for L_IR)",
    "memory_size": "partner memory of the relation graphs (-1: 8 where the batch alone leaves "
    "a graph constant, as at the paper's batch of 2; else 0)",
    "kr_qk_channels": "L_KR's W_P: 0 the paper's full C x C matrix, D > 0 a rank-D W_u^T W_v "
    "(fewer FLOPs; docs/benchmarks.md)",
    "noisy_or_floor": "Li et al.'s floor on each cell's 1 - p in the noisy-OR (None: Eq. 2 as printed)",
    "head_bias_init": "the last conv's bias: prior (noisy-OR starts at the class prevalence) or a number",
    "device": "auto, cpu, cuda or cuda:N",
    "amp": "float16 autocast: auto (CUDA), on, off",
    "output_dir": "where run directories go",
    "run_name": "run directory name (default: preset-losses-time)",
    "checkpoint_every": "steps between mid-epoch checkpoints (0: epoch ends only)",
    "log_every": "steps between reads of the loss terms for the log and the bar",
    "channels_last": "NHWC memory format for the backbone",
    "compile": "torch.compile the model and the loss",
    "num_figures": "heatmap overlays in the report (0: no figure at all, the training curves "
    "included)",
    "parallel_runs": "the demo's comparison: 2 trains baseline and CCG side by side",
}


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration fields the command line set, as typed (argparse leaves the others
    ``None``; no default counts), in their fields' types; ``--ablation`` as ``losses``."""
    given: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if value == _NONE and f.name in ("kr_scale", "noisy_or_floor"):
            value = None
        if isinstance(f.default, tuple) or f.name in ("losses", "tiny_widths"):
            parts = [s.strip() for s in str(value).split(",") if s.strip()]
            value = tuple(int(s) for s in parts) if f.name == "tiny_widths" else tuple(parts)
        given[f.name] = value
    if getattr(args, "ablation", None) is not None:
        given["losses"] = ("base", *ABLATIONS[args.ablation])
    return given


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Preset defaults, then explicit options, then ``--ablation`` (if the parser has it)."""
    preset = getattr(args, "preset", None) or "paper"
    cfg = TrainConfig(preset=preset, **PRESETS[preset])
    given = given_options(args)
    for name, value in given.items():
        setattr(cfg, name, value)
    if preset == "demo" and "lr" not in given:
        cfg.lr = DEMO_LR_BY_SETTING.get(cfg.setting, cfg.lr)
    if "num_classes" not in given and cfg.dataset in DATASETS:
        cfg.num_classes = len(dataset_class_names(cfg.dataset))
    validate_config(cfg)
    return cfg


#: The options a resumed run may change (``train --resume RUN_DIR --epochs 12 --lr 1e-4``;
#: docs/training.md, "Resuming a run"): ``--epochs`` extends (or ends) a run, ``--lr`` restarts a
#: diverged one at a lower rate (the schedule's decay so far kept), and the others change where
#: and how fast a run goes and what it reports, not the weights it reaches. Every other option
#: is the run's: its model, data, split, losses, optimiser and seed are in the checkpoint.
RESUME_CHANGEABLE = frozenset(
    {
        "epochs",
        "lr",
        "progress",
        "threads",
        "num_workers",
        "eval_every",
        "checkpoint_every",
        "log_every",
        "num_figures",
    }
)

#: The options that are paths: made absolute in a run's config.json (``checkpoint.absolute_paths``)
#: and compared resolved on ``--resume``.
PATH_FIELDS = ("data_root", "cache_dir", "output_dir", "frame_sizes")
#: Where a new run goes; a resumed run is the directory ``--resume`` names, wherever it was
#: moved, so these are not compared (a run directory copied elsewhere resumes there).
RESUME_IGNORED = frozenset({"output_dir", "run_name"})


class ResumeOptionsError(ValueError):
    """Options given with ``--resume`` that differ from the run's and may not change."""


def resume_config(
    saved: TrainConfig, given: dict[str, Any], run_dir: str | Path | None = None
) -> TrainConfig:
    """The configuration of a resumed run: ``saved`` (its ``config.json``) with the options in
    ``given`` (:func:`given_options`) that differ from it, all of them in
    :data:`RESUME_CHANGEABLE`; folders compare as absolute paths; ``--output-dir`` and
    ``--run-name`` (:data:`RESUME_IGNORED`) name a new run's directory and are not compared.

    Raises:
        ResumeOptionsError: an option outside :data:`RESUME_CHANGEABLE` differs; the message
            lists each with the run's value and the given one.
        ValueError: a changed value is not allowed (:func:`validate_config`).
    """
    differ: dict[str, Any] = {}
    for name, value in given.items():
        if name in RESUME_IGNORED:
            continue
        if name in PATH_FIELDS and value is not None:
            value = str(Path(value).resolve())
        if value != getattr(saved, name):
            differ[name] = value
    fixed = [name for name in differ if name not in RESUME_CHANGEABLE]
    if fixed:
        listed = ", ".join(
            f"{_flag(n)} (run: {_show(getattr(saved, n))}, given: {_show(differ[n])})"
            for n in fixed
        )
        changeable = ", ".join(_flag(n) for n in sorted(RESUME_CHANGEABLE))
        raise ResumeOptionsError(
            f"--resume {run_dir or ''}: {listed} differ from the run's config.json and a resumed "
            f"run cannot change them; only {changeable} can (docs/training.md)"
        )
    cfg = dataclasses.replace(saved, **differ)
    validate_config(cfg)
    return cfg


MIN_TINY_WIDTH = 8
"""The narrowest stage of :class:`TinyResNet` (see its docstring for the torch crash below it)."""


def check_tiny_backbone(widths: tuple[int, ...], stride: int) -> None:
    """Raise ``ValueError`` naming the option unless ``widths``/``stride`` build a TinyResNet."""
    if len(widths) != 4:
        raise ValueError(f"--tiny-widths needs 4 stage widths, got {tuple(widths)}")
    narrow = [w for w in widths if w < MIN_TINY_WIDTH]
    if narrow:
        raise ValueError(
            f"--tiny-widths must all be >= {MIN_TINY_WIDTH}, got {tuple(widths)}: a stride-2 1x1 "
            f"convolution with fewer than {MIN_TINY_WIDTH} input channels crashes torch's CPU "
            "backward in channels_last (docs/training.md)"
        )
    if stride not in (8, 16):
        raise ValueError(f"--tiny-stride must be 8 or 16, got {stride}")


MAX_PATCH_LABELS = 256
"""Superpixel labels are cached as uint8 (``data.superpixel_labels``): at most 256 patches."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _need_int(cfg: TrainConfig, name: str, lo: int, allowed: str | None = None) -> None:
    v = getattr(cfg, name)
    if not (isinstance(v, int) and not isinstance(v, bool) and v >= lo):
        raise ValueError(f"{_flag(name)} must be {allowed or f'an integer >= {lo}'}, got {v!r}")


def _need_float(
    cfg: TrainConfig, name: str, *, positive: bool = False, below: float | None = None
) -> None:
    """A finite number, >= 0 (> 0 with ``positive``), and < ``below`` if given."""
    v = getattr(cfg, name)
    ok = _is_number(v) and math.isfinite(v) and (v > 0 if positive else v >= 0)
    if below is not None:
        ok = ok and v < below
    if not ok:
        allowed = "a finite number " + ("> 0" if positive else ">= 0")
        if below is not None:
            allowed = f"a number in {'(0' if positive else '[0'}, {below:g})"
        raise ValueError(f"{_flag(name)} must be {allowed}, got {v!r}")


def model_stride(cfg: TrainConfig) -> int:
    """Input pixels per cell of the model's grid (the C5 map): 32 for ResNet-50."""
    return cfg.tiny_stride if cfg.backbone == "tiny" else 32


def validate_config(cfg: TrainConfig) -> None:
    """Reject every bad value with one message naming the option, the value and what is allowed.

    Only values are checked here (no file is read); what depends on the dataset's size is
    checked by ``data.plan_split`` before any work.
    """
    from typing import get_args

    from ccg_layers.datasets import Combine, ImageKind

    bad = [t for t in cfg.losses if t not in LOSS_TERMS]
    if bad:
        raise ValueError(f"--losses: unknown terms {bad}; choose from {list(LOSS_TERMS)}")
    if "base" not in cfg.losses:
        raise ValueError("--losses must include 'base' (L_base is the only localising signal)")
    # data
    _need_int(cfg, "synthetic_images", 1)
    _need_int(cfg, "synthetic_seed", 0)
    if cfg.setting not in ("a", "b", "c"):
        raise ValueError(f"--setting must be a, b or c (paper Sec. 4.2), got {cfg.setting!r}")
    if not 0 <= cfg.fold < 5:
        raise ValueError(f"--fold must be in 0..4, got {cfg.fold}")
    _need_int(cfg, "split_seed", 0)
    if bool(cfg.train_split_file) != bool(cfg.test_split_file):
        raise ValueError("--train-split-file and --test-split-file go together")
    if cfg.image_size < 32 or cfg.image_size % 32:
        raise ValueError(f"--image-size must be a positive multiple of 32, got {cfg.image_size}")
    classes = dataset_class_names(cfg.dataset)  # names --dataset when it is not one of them
    name = DATASETS[cfg.dataset]
    if cfg.dataset != "chestxray14" and cfg.data_root is None:
        raise ValueError(
            f"--dataset {cfg.dataset} needs --data-root (the {name} folder): without "
            "--data-root the trainer uses the synthetic twin (--synthetic-images), which is "
            "ChestX-ray14's; use --dataset chestxray14 with it"
        )
    combines, kinds = get_args(Combine), get_args(ImageKind)
    if cfg.vindr_combine not in combines:
        raise ValueError(
            f"--vindr-combine must be one of {', '.join(combines)}, got {cfg.vindr_combine!r}"
        )
    if cfg.vindr_combine != "merge" and cfg.dataset != "vindr-cxr":
        raise ValueError(
            f"--vindr-combine {cfg.vindr_combine} is for --dataset vindr-cxr (the one dataset "
            f"with several radiologists' boxes), got --dataset {cfg.dataset}"
        )
    if cfg.image_kind not in kinds:
        raise ValueError(f"--image-kind must be one of {', '.join(kinds)}, got {cfg.image_kind!r}")
    if cfg.image_kind != "auto" and cfg.dataset == "chestxray14":
        raise ValueError(
            f"--image-kind {cfg.image_kind} is for --dataset vindr-cxr or rsna-pneumonia "
            "(ChestX-ray14's images are the PNG files its CSV names), got --dataset chestxray14"
        )
    if cfg.frame_sizes is not None and cfg.dataset != "vindr-cxr":
        raise ValueError(
            "--frame-sizes is for --dataset vindr-cxr (RSNA's and ChestX-ray14's boxes are in "
            f"a fixed 1024-pixel frame), got --dataset {cfg.dataset}"
        )
    if cfg.num_classes != len(classes):
        raise ValueError(
            f"--num-classes must be {len(classes)}, the classes of {name} (--dataset "
            f"{cfg.dataset}), got {cfg.num_classes}"
        )
    _need_int(cfg, "num_workers", -1, "-1 (from the machine's cores) or >= 0")
    # model
    if cfg.backbone not in ("resnet50", "tiny"):
        raise ValueError(f"--backbone must be resnet50 or tiny, got {cfg.backbone!r}")
    if cfg.backbone == "tiny":
        check_tiny_backbone(tuple(cfg.tiny_widths), cfg.tiny_stride)
    if cfg.weights == "twin" and cfg.data_root is not None:
        raise ValueError(
            "--weights twin pretrains on the synthetic twin, the stand-in for ImageNet where "
            f"there is none; with --data-root {cfg.data_root} pass --weights imagenet or a file"
        )
    _need_int(cfg, "head_channels", 1)
    # The test-time map has (image_size / stride * u)^2 cells: at u = stride it has one cell per
    # input pixel, and a finer bilinear upsampling adds no detail, only memory (1000 at 512 px
    # would be a 16000 x 16000 x 2048 map: 131 GB an image).
    stride = model_stride(cfg)
    if not (isinstance(cfg.test_upsample, int) and 1 <= cfg.test_upsample <= stride):
        raise ValueError(
            f"--test-upsample must be in 1..{stride}, got {cfg.test_upsample}: at {stride} "
            f"(the {cfg.backbone} backbone's stride) the test-time map already has one cell per "
            f"pixel of the {cfg.image_size}x{cfg.image_size} input; a finer one adds no detail"
        )
    # losses
    for name in ("w_ir", "w_ik", "w_kr", "box_weight"):
        _need_float(cfg, name)
    _need_float(cfg, "w_base", positive=True)
    floor = cfg.noisy_or_floor
    if floor is not None and not (_is_number(floor) and 0.0 <= floor < 1.0):
        raise ValueError(f"--noisy-or-floor must be in [0, 1) or none, got {floor!r}")
    if cfg.head_bias_init != "prior":
        try:
            bias = float(cfg.head_bias_init)
        except ValueError:
            bias = math.nan
        if not math.isfinite(bias):
            raise ValueError(
                f"--head-bias-init must be 'prior' or a number (finite), got {cfg.head_bias_init!r}"
            )
    if cfg.base_reduction not in ("sum", "mean"):
        raise ValueError(f"--base-reduction must be sum or mean, got {cfg.base_reduction!r}")
    _need_int(cfg, "superpixel_size", 1)
    if cfg.superpixel_size > cfg.image_size:
        raise ValueError(
            f"--superpixel-size must be at most --image-size {cfg.image_size}, got "
            f"{cfg.superpixel_size}: a superpixel map finer than the model's input adds nothing"
        )
    # SLIC cannot make more segments than the superpixel map has pixels, and the labels are
    # cached as uint8 (MAX_PATCH_LABELS values)
    most = min(MAX_PATCH_LABELS, cfg.superpixel_size**2)
    if not (isinstance(cfg.num_patches, int) and 1 <= cfg.num_patches <= most):
        raise ValueError(
            f"--num-patches must be in 1..{most}, got {cfg.num_patches}: SLIC cannot make more "
            f"segments than the {cfg.superpixel_size}x{cfg.superpixel_size} superpixel map "
            f"(--superpixel-size) has pixels, and the labels are stored as uint8 (at most "
            f"{MAX_PATCH_LABELS})"
        )
    _need_float(cfg, "superpixel_compactness", positive=True)
    _need_int(cfg, "code_bits", 1)
    if cfg.kr_pairs not in ("half", "all"):
        raise ValueError(f"--kr-pairs must be half or all, got {cfg.kr_pairs!r}")
    if cfg.kr_scale is not None and not (
        _is_number(cfg.kr_scale) and math.isfinite(cfg.kr_scale) and cfg.kr_scale > 0
    ):
        raise ValueError(f"--kr-scale must be none or a finite number > 0, got {cfg.kr_scale!r}")
    if cfg.kr_qk_channels < 0:
        raise ValueError(
            f"--kr-qk-channels must be 0 (the paper's full W_P) or a positive rank, "
            f"got {cfg.kr_qk_channels}"
        )
    if cfg.relation_features not in ("raw", "unit"):
        raise ValueError(f"--relation-features must be raw or unit, got {cfg.relation_features!r}")
    if cfg.relation_form not in ("pull", "contrast"):
        raise ValueError(f"--relation-form must be pull or contrast, got {cfg.relation_form!r}")
    margin = cfg.contrast_margin
    if not (_is_number(margin) and math.isfinite(margin) and margin > 0):
        raise ValueError(f"--contrast-margin must be a finite number > 0, got {margin!r}")
    if cfg.relation_form == "contrast" and cfg.relation_features != "unit":
        raise ValueError(
            "--relation-form contrast needs --relation-features unit (its margin is a distance "
            f"between unit maps; raw maps can undercut any margin), got {cfg.relation_features!r}"
        )
    if cfg.graph_form not in ("conditioned", "positional"):
        raise ValueError(f"--graph-form must be conditioned or positional, got {cfg.graph_form!r}")
    if cfg.memory_size < -1:
        raise ValueError(f"--memory-size must be -1 (auto) or >= 0, got {cfg.memory_size}")
    # optimisation
    _need_int(cfg, "epochs", 1)
    _need_int(cfg, "batch_size", 1)
    if cfg.optimizer not in ("sgd", "adamw"):
        raise ValueError(f"--optimizer must be sgd or adamw, got {cfg.optimizer!r}")
    _need_float(cfg, "lr", positive=True)
    _need_float(cfg, "momentum", below=1.0)
    if cfg.optimizer == "sgd" and cfg.nesterov and cfg.momentum == 0:
        raise ValueError("--momentum must be > 0 with --nesterov true (Nesterov needs momentum)")
    _need_float(cfg, "weight_decay")
    _need_int(cfg, "lr_step_epochs", 1, "an integer >= 1 (epochs between learning-rate steps)")
    _need_float(cfg, "lr_gamma", positive=True)
    # run
    _need_int(cfg, "seed", 0)
    if cfg.amp not in ("auto", "on", "off"):
        raise ValueError(f"--amp must be auto, on or off, got {cfg.amp!r}")
    _need_int(cfg, "threads", 0, "0 (torch's default) or a number of threads >= 1")
    _need_int(cfg, "checkpoint_every", 0, "0 (epoch ends only) or a number of steps >= 1")
    _need_int(cfg, "eval_every", 0, "0 (only at the end) or a number of epochs >= 1")
    _need_int(cfg, "log_every", 1)
    _need_int(cfg, "max_test_images", 0, "0 (all) or a number of images >= 1")
    _need_int(cfg, "num_figures", 0)
    _need_int(cfg, "parallel_runs", 1)


def load_config(run_dir: Path) -> TrainConfig:
    """The configuration saved in a run directory."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a run directory of train_ccg.py?")
    try:
        saved = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not a run configuration (not JSON: {err})") from None
    try:
        return TrainConfig.from_dict(saved)
    except ValueError as err:  # an unknown key, or a removed option at a value that trained
        raise ValueError(f"{path}: {err}") from None


__all__ = [
    "ABLATIONS",
    "DATASETS",
    "DEMO_LR_BY_SETTING",
    "LOSS_TERMS",
    "MIN_TINY_WIDTH",
    "OPTION_GROUPS",
    "PATH_FIELDS",
    "PRESETS",
    "PRETRAIN_SEED",
    "RESUME_CHANGEABLE",
    "ResumeOptionsError",
    "TrainConfig",
    "add_config_options",
    "check_tiny_backbone",
    "dataset_class_names",
    "given_options",
    "load_config",
    "model_stride",
    "resolve_config",
    "resume_config",
    "validate_config",
]
