"""A pretrained starting point on the synthetic twin, standing in for ImageNet (``pretrain``).

The paper's ResNet-50 starts from ImageNet weights (Sec. 3.7); the twin's tiny backbone has no
such weights, and at random initialisation every image's C5 map is nearly the same. ``pretrain``
trains the backbone, with the baseline's head and L_base alone, on the *image-level labels* of
an independent twin (synthetic seed :data:`PRETRAIN_SEED`, which no study split, demo, test set
or validation set uses), in setting (b) (no box), and writes the backbone's state dict: a file
``--weights`` accepts. The choice (supervised on image-level labels rather than
self-supervised) and what it stands for are in docs/training.md, "A pretrained starting point".

The file is cached: a second call with the same learning configuration returns it at once (its
``.json`` sidecar records the configuration, the source run and the run's AUC).

    python -m examples.ccg_net pretrain --preset demo      # runs/pretrained/demo-twin-s7.pt
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from .config import PRETRAIN_SEED, RELATION_FIELDS, RUN_ONLY_FIELDS, TrainConfig


def pretrain_config(cfg: TrainConfig, seed: int = PRETRAIN_SEED) -> TrainConfig:
    """The run that pretrains ``cfg``'s backbone: the baseline (L_base alone) in setting (b) on
    the twin with synthetic seed ``seed``, from random weights, at ``cfg``'s other settings
    (the learning rate is ``cfg``'s: the demo's rate for setting (b) unless ``--lr`` is given)."""
    return dataclasses.replace(
        cfg,
        data_root=None,
        synthetic_seed=seed,
        setting="b",
        fold=0,
        losses=("base",),
        weights="none",
        # a directory of its own per pretraining (a run name is never reused: a pretraining of
        # another configuration, or one started at once by another process, is another run)
        run_name=f"pretrain-{cfg.preset}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
        eval_every=0,
        num_figures=0,
    )


def default_output(cfg: TrainConfig, seed: int = PRETRAIN_SEED) -> Path:
    """``<output_dir>/pretrained/<preset>-twin-s<seed>.pt``."""
    return Path(cfg.output_dir) / "pretrained" / f"{cfg.preset}-twin-s{seed}.pt"


def _learning_key(cfg: TrainConfig) -> dict[str, Any]:
    """What decides the weights: every option but where and how fast the run goes and the
    relation terms' options (a pretraining run has none)."""
    skip = (RUN_ONLY_FIELDS - {"seed"}) | set(RELATION_FIELDS)
    return {k: v for k, v in json.loads(cfg.to_json()).items() if k not in skip}


def cached(out: Path, pcfg: TrainConfig) -> bool:
    """Whether ``out`` holds the weights of exactly this pretraining configuration.

    An option the recorded configuration does not name (one added to the trainer after the file
    was written) counts as equal when it has its default value, which is how the older trainer
    ran.
    """
    meta = out.with_suffix(".json")
    if not (out.is_file() and meta.is_file()):
        return False
    try:
        recorded = json.loads(meta.read_text())["config"]
    except (ValueError, KeyError, TypeError):
        return False
    defaults = json.loads(TrainConfig().to_json())
    return all(recorded.get(k, defaults.get(k)) == v for k, v in _learning_key(pcfg).items())


def pretrain(cfg: TrainConfig, out: Path | None = None, seed: int = PRETRAIN_SEED) -> Path:
    """Pretrain ``cfg``'s backbone on the twin with synthetic seed ``seed``; returns the file.

    Raises:
        ValueError: ``seed`` is the seed of ``cfg``'s own data (the weights must come from an
            independent twin).
    """
    if cfg.data_root is None and seed == cfg.synthetic_seed:
        raise ValueError(
            f"--pretrain-seed must differ from --synthetic-seed ({cfg.synthetic_seed}): the "
            "weights come from an independent twin"
        )
    pcfg = pretrain_config(cfg, seed)
    out = Path(out) if out is not None else default_output(cfg, seed)
    if cached(out, pcfg):
        print(f"pretrained weights (cached): {out}", flush=True)
        return out
    from . import checkpoint as ckpt
    from .runs import train

    print(
        f"pretraining the {cfg.backbone} backbone on the image-level labels of the synthetic "
        f"twin with seed {seed} ({pcfg.synthetic_images} images, setting b, L_base alone, "
        f"{pcfg.epochs} epochs)",
        flush=True,
    )
    run = train(pcfg)
    state = ckpt.load(run.run_dir / "checkpoints" / "last.pt")
    backbone = {
        k.removeprefix("backbone."): v
        for k, v in state["model"].items()
        if k.startswith("backbone.")
    }
    ckpt.save_atomic(backbone, out)
    results = json.loads((run.run_dir / "results.json").read_text())
    meta = {
        "config": _learning_key(pcfg),
        "source_run": str(run.run_dir),
        "results": results.get("methods", {}),
    }
    ckpt.write_text(out.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    print(f"pretrained weights: {out} (pass --weights {out})", flush=True)
    return out


def twin_weights(cfg: TrainConfig) -> Path:
    """``--weights twin``: the file ``pretrain --preset <cfg.preset>`` writes (made now, once,
    if it is not there): pretrained with seed 0 and, for the demo, the demo's rate of setting
    (b), whatever the run's own seed, setting and rate, so every run of a comparison or a study
    starts from the same file."""
    from .config import DEMO_LR_BY_SETTING

    base = dataclasses.replace(cfg, seed=0, weights="none")
    if cfg.preset == "demo":
        base.lr = DEMO_LR_BY_SETTING["b"]
    return pretrain(base)


__all__ = [
    "PRETRAIN_SEED",
    "cached",
    "default_output",
    "pretrain",
    "pretrain_config",
    "twin_weights",
]
