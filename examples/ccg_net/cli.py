"""Command line of the CCG-Net trainer: ``python -m examples.ccg_net train|evaluate|predict|
reproduce|pretrain`` (without a verb: the help, exit 2; ``python examples/train_ccg.py ...``
without a verb trains).

Every user error (a bad value, a missing file or extra, no CUDA, an unwritable output folder, a
broken image of the split, a damaged or mismatched checkpoint, a run directory in use or a full
disk) is one ``error: ...`` line and exit code 2; a non-finite loss or weights is exit code 3;
``predict`` exits with 1 when it skipped an input it could not read (named on its own line).
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ccg_layers.datasets import DatasetFormatError

from .config import (
    ABLATIONS,
    DATASETS,
    PRETRAIN_SEED,
    TrainConfig,
    add_config_options,
    dataset_class_names,
    resolve_config,
)

# (torchvision, tqdm and matplotlib, the ``[examples]`` extra, are imported only after the
# check in ``_check_extras``, so that a missing one is an error line, not an ImportError)

VERBS = ("train", "evaluate", "predict", "reproduce", "pretrain")
#: The ``--help`` sections (``config.OPTION_GROUPS``) that the verbs' own options join.
LOSS_GROUP, RUN_GROUP = "losses and relation terms (Eq. 1-11)", "run and output"


class UsageError(Exception):
    """A user error: reported as one ``error: ...`` line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (``error: ...``) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    """The four verbs and their options."""
    p = Parser(
        prog="python -m examples.ccg_net",
        description="Train, evaluate and run CCG-Net (Cross-chest Graph) on ChestX-ray14, its "
        "embedded synthetic twin, VinDr-CXR or RSNA Pneumonia (--dataset). See docs/training.md "
        "and docs/data.md.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="{train,evaluate,predict,reproduce,pretrain}")

    t = verbs.add_parser(
        "train",
        help="train a model (the demo preset also trains the baseline)",
        usage="%(prog)s [--preset demo|paper] [options]",
    )
    groups = add_config_options(t)
    groups[LOSS_GROUP].add_argument(
        "--ablation",
        choices=list(ABLATIONS),
        default=None,
        help="a row of the paper's Table 4 (L_base plus the named relation terms); "
        "overrides --losses",
    )
    groups[RUN_GROUP].add_argument(
        "--resume", metavar="RUN_DIR", default=None, help="continue RUN_DIR exactly"
    )
    groups[RUN_GROUP].add_argument(
        "--compare-baseline",
        action="store_true",
        help="also train the baseline and report both beside the reference maps (the demo "
        "preset does this unless --ablation is given)",
    )

    e = verbs.add_parser("evaluate", help="evaluate a checkpoint on its test split")
    e.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint file or a run directory")
    e.add_argument("--data-root", default=None, help="the dataset, if it moved since training")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")

    r = verbs.add_parser("predict", help="heatmaps, probabilities and boxes for radiographs")
    r.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="PNG/JPEG files or folders")
    r.add_argument("--checkpoint", required=True, help="a checkpoint file or a run directory")
    r.add_argument("--out", required=True, help="folder for the JSON files and overlays")
    r.add_argument("--threshold", type=float, default=0.5, help="probability threshold (0.5)")
    r.add_argument("--batch-size", type=int, default=8, help="images per forward pass (8)")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    r.add_argument("--no-overlays", action="store_true", help="write only the JSON files")

    f = verbs.add_parser(
        "reproduce",
        help="every fold of a setting, mean ± std beside the paper",
        usage="%(prog)s [--folds A,B,...] [--preset demo|paper] [options]",
    )
    add_config_options(f, skip=("fold",))["data"].add_argument(
        "--folds",
        default=None,
        metavar="A,B,...",
        help="folds to run (default: all of the setting)",
    )

    w = verbs.add_parser(
        "pretrain",
        help="a backbone pretrained on an independent synthetic twin's image-level labels "
        "(a --weights file; stands in for ImageNet)",
        usage="%(prog)s [--preset demo] [--out FILE] [options]",
    )
    groups = add_config_options(
        w,
        skip=(
            "fold",
            "setting",
            "losses",
            "weights",
            "run_name",
            # the pretraining twin is ChestX-ray14's, whatever the run's dataset
            "dataset",
            "vindr_combine",
            "image_kind",
            "frame_sizes",
        ),
    )
    groups[RUN_GROUP].add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="where to write the backbone's state dict (default: "
        "<output-dir>/pretrained/<preset>-twin-s<seed>.pt); reused if it is up to date",
    )
    groups["data"].add_argument(
        "--pretrain-seed",
        type=int,
        default=PRETRAIN_SEED,
        help=f"synthetic seed of the pretraining twin (default: {PRETRAIN_SEED}; 0 is the demo's "
        "data, 1 the study's test set, 2 its validation set)",
    )
    return p


def _with_verb(argv: Sequence[str], default_verb: str | None = None) -> list[str]:
    """The command line with its verb first. ``python -m examples.ccg_net`` needs one;
    ``train_ccg.py`` (``default_verb="train"``) takes ``--preset demo`` (no verb) to mean
    ``train`` and ``--evaluate CKPT`` to mean ``evaluate``."""
    argv = list(argv)
    if argv and (not argv[0].startswith("-") or argv[0] in ("-h", "--help")):
        return argv  # a verb (or a mistyped one, for argparse to name)
    if default_verb is None:
        return argv  # no verb: main prints the help or names the missing verb
    if "--evaluate" in argv:
        i = argv.index("--evaluate")
        out = ["evaluate", *argv[i + 1 : i + 2]]
        for flag in ("--data-root", "--device"):
            if flag in argv:
                j = argv.index(flag)
                out += argv[j : j + 2]
        return out
    return [default_verb, *argv]


def _check_extras(cfg: TrainConfig | None, *, figures: bool, progress: bool = False) -> None:
    """The ``[examples]`` extra's packages this command will use, checked before any work."""
    need = ["torchvision"]
    if progress or (cfg is not None and cfg.progress):
        need.append("tqdm")
    if figures:
        need.append("matplotlib")
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(
            f"{' and '.join(missing)} not installed: install the trainer's extra with "
            "pip install -e '.[examples]' (or pass --progress false / --num-figures 0)"
        )


def _check_writable(option: str, folder: Path) -> None:
    """A folder this command will create or write into, checked before any work: it (or, if
    it does not exist yet, the nearest folder above it that does) must be a folder this
    process can write to."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{option} {folder} is a file, not a folder")
    here = folder.absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise UsageError(f"{option} {folder}: {here} is a file, so the folder cannot be made")
    if not os.access(here, os.W_OK | os.X_OK):
        where = "" if here == folder.absolute() else f" ({here}, where it would be made)"
        raise UsageError(
            f"{option} {folder} is not writable{where}: pass a folder you can write to"
        )


def _check_outputs(cfg: TrainConfig, resume: str | None = None) -> None:
    if resume:  # a resumed run writes into its own directory, not into --output-dir
        _check_writable("--resume", Path(resume))
    else:
        _check_writable("--output-dir", Path(cfg.output_dir))
    _check_writable("--cache-dir", Path(cfg.cache_dir))  # the twin, superpixels, file checks
    if cfg.data_root is not None and not Path(cfg.data_root).is_dir():
        raise UsageError(
            f"--data-root {cfg.data_root}: no such folder (the {DATASETS[cfg.dataset]} folder)"
        )


def _config(args: argparse.Namespace) -> TrainConfig:
    try:
        cfg = resolve_config(args)
    except ValueError as err:
        raise UsageError(str(err)) from None
    _check_ready(cfg)
    return cfg


def _check_ready(cfg: TrainConfig, resume: str | None = None) -> None:
    """Before any work: the folders written to and read from, and the extras the run needs."""
    _check_outputs(cfg, resume)
    _check_extras(cfg, figures=cfg.num_figures > 0)


def _check_splits(cfg: TrainConfig, folds: Sequence[int]) -> None:
    """Before any work: the backbone's weights (they need no data), then the split of each fold
    against the dataset's size and the batch (the synthetic twin's split is drawn without
    generating it)."""
    from .data import plan_split
    from .model import resolve_weights

    if cfg.weights != "twin":  # "twin" is made on first use (pretrain)
        resolve_weights(cfg.weights, cfg.backbone)  # WeightsNotFoundError: one line, exit 2

    world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's processes share a step
    try:
        plan_split(cfg, world, tuple(folds))
    except ValueError as err:
        raise UsageError(str(err)) from None


def run(args: argparse.Namespace) -> int:
    """Carry out one parsed command."""
    if args.verb == "evaluate":
        _check_extras(None, figures=True, progress=True)
        from .runs import evaluate_checkpoint

        _, text, out_dir = evaluate_checkpoint(
            args.checkpoint, data_root=args.data_root, device=args.device
        )
        print(text)
        print(f"written to {out_dir}")
        return 0
    if args.verb == "predict":
        return _predict(args)
    if args.verb == "pretrain":
        cfg = _config(args)
        from .pretrain import pretrain

        try:
            pretrain(cfg, Path(args.out) if args.out else None, args.pretrain_seed)
        except ValueError as err:
            raise UsageError(str(err)) from None
        return 0
    if args.verb == "reproduce":
        folds = None
        if args.folds:
            try:
                folds = tuple(int(x) for x in args.folds.split(","))
            except ValueError:
                raise UsageError(
                    f"--folds takes fold numbers like 0,1,2, got {args.folds!r}"
                ) from None
            if any(not 0 <= k < 5 for k in folds):
                raise UsageError(f"--folds must be in 0..4, got {args.folds}")
        cfg = _config(args)
        from .reproduce import default_folds
        from .runs import reproduce

        _check_splits(cfg, folds or default_folds(cfg.setting))

        print(f"reproduction in {reproduce(cfg, folds)}")
        return 0
    if args.resume:
        return _resume(args)
    cfg = _config(args)
    from .checkpoint import check_run_name
    from .runs import compare, train

    try:
        check_run_name(cfg)  # a name that holds a run: refused before any work
    except ValueError as err:
        raise UsageError(str(err)) from None
    _check_splits(cfg, (cfg.fold,))
    if args.compare_baseline or (cfg.preset == "demo" and args.ablation is None):
        run_dir = compare(cfg)
    else:
        run_dir = train(cfg).run_dir
    print(f"run directory: {run_dir}")
    return 0


def _resume(args: argparse.Namespace) -> int:
    """``train --resume RUN_DIR [options]``: the run's configuration, with the options typed
    that may change (``RESUME_CHANGEABLE``); any other that differs is an error listing them."""
    from .config import given_options, load_config, resume_config

    if args.compare_baseline:
        raise UsageError("--compare-baseline cannot be combined with --resume (it resumes one run)")
    changes = given_options(args)
    try:
        cfg = resume_config(load_config(Path(args.resume)), changes, args.resume)
    except ValueError as err:
        raise UsageError(str(err)) from None
    _check_ready(cfg, args.resume)
    from .runs import train

    run_dir = train(cfg, resume_dir=args.resume, changes=changes).run_dir
    print(f"run directory: {run_dir}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    """``predict``: exit 0 when every input was predicted, 1 when some could not be read (each
    named on its own ``error:`` line, the others predicted, all in ``summary.csv``)."""
    _check_extras(None, figures=not args.no_overlays)
    from .checkpoint import load_model
    from .predict import SUMMARY_FILE, OutputError, Prediction, find_images, predict
    from .runs import select_device

    if not 0 < args.threshold < 1:
        raise UsageError(f"--threshold must be in (0, 1), got {args.threshold}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    paths = find_images(args.inputs)
    out = Path(args.out)
    _check_writable("--out", out)
    model, cfg = load_model(args.checkpoint)
    if cfg.data_root is None:
        print(
            f"note: {args.checkpoint} was trained on the synthetic ChestX-ray14 twin (no "
            "--data-root), not on radiographs: its findings on real images mean nothing",
            file=sys.stderr,
        )
    device = select_device(TrainConfig(device=args.device))

    def report(res: Prediction) -> None:
        if res.record is None:
            print(f"error: {res.image}: {res.error} (skipped)", file=sys.stderr)
            return
        findings = res.record["findings"]
        found = ", ".join(f"{f['class']} {f['probability']:.2f}" for f in findings) or "-"
        print(f"{res.image}: {found}")

    try:
        results = predict(
            model.to(device),
            cfg.image_size,
            paths,
            out,
            threshold=args.threshold,
            batch_size=args.batch_size,
            overlays=not args.no_overlays,
            on_result=report,
            class_names=dataset_class_names(cfg.dataset),
        )
    except OutputError as err:
        raise UsageError(str(err)) from None
    failed = sum(res.record is None for res in results)
    print(f"written to {out} ({SUMMARY_FILE}: {len(results) - failed} predicted, {failed} failed)")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None, *, default_verb: str | None = None) -> int:
    """Parse, run, and turn user errors into one ``error: ...`` line (exit 2).

    Without a verb: the help (no argument at all) or an error line naming the missing verb,
    exit 2, unless ``default_verb`` (``train_ccg.py``: ``train``) stands in for it.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    argv = _with_verb(argv, default_verb)
    if not argv:
        parser.print_help()
        return 2
    if argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        print(
            f"error: a verb must come first ({', '.join(VERBS)}), got {argv[0]} "
            f"(see {parser.prog} --help)",
            file=sys.stderr,
        )
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0) or a usage error, already printed (2)
        return int(done.code or 0)
    try:
        return run(args)
    except UsageError as err:
        return _error(err)
    except Exception as err:
        from .checkpoint import CheckpointError, RunDirError, RunLockedError, WriteError
        from .engine import NonFiniteLossError
        from .runs import DeviceError

        if isinstance(err, NonFiniteLossError):
            print(f"error: {err}", file=sys.stderr)
            return 3
        # WeightsNotFoundError is a FileNotFoundError
        if isinstance(
            err,
            CheckpointError
            | DeviceError
            | FileNotFoundError
            | DatasetFormatError
            | RunLockedError
            | RunDirError
            | WriteError,
        ):
            return _error(err)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f"cannot write {err.filename}: " if err.filename else ""
            return _error(OSError(f"{where}{err.strerror or err}"))
        raise


def _error(err: Exception) -> int:
    lines = str(err).strip().splitlines()
    print(f"error: {' '.join(line.strip() for line in lines)}", file=sys.stderr)
    return 2
