"""The training step on the CPU as a GPU would run it: no host synchronisation between log
points, the data path in uint8, CUDA-only breakages shown where the CPU can show them."""

from __future__ import annotations

import itertools

import pytest
import torch

from examples.ccg_net import checkpoint as ckpt
from examples.ccg_net import engine
from examples.ccg_net.config import PRESETS, validate_config
from examples.ccg_net.data import Collate, build_data, grid_size
from examples.ccg_net.engine import Progress, build_trainee, make_optimizer, train_one_epoch
from examples.ccg_net.model import FrozenBatchNorm2dCast, build_model
from examples.ccg_net.runs import DeviceError, select_device, train
from tests.host_sync import count_host_syncs


def test_the_step_reads_nothing_back_between_log_points(make_config):
    cfg = make_config(log_every=100, checkpoint_every=0)
    data = build_data(cfg)
    data.sampler.set_epoch(0)
    batches = list(data.train_loader)  # collated beforehand: only the trainer's step is counted
    assert len(batches) == 7
    trainee = build_trainee(cfg, world=1)
    opt, _ = make_optimizer(cfg, trainee)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    at_fetch = []
    with count_host_syncs() as counts:

        def feed():
            for b in batches:
                at_fetch.append(sum(counts.values()))
                yield b

        log = train_one_epoch(trainee, opt, scaler, feed(), torch.device("cpu"), cfg, Progress())
        at_fetch.append(sum(counts.values()))
    per_step = [b - a for a, b in itertools.pairwise(at_fetch)]
    # step 1 runs the value checks; steps 2..6 read nothing; the last one is the log point
    assert per_step[0] > 0
    assert per_step[1:-1] == [0] * 5, per_step
    assert per_step[-1] >= 1
    assert set(log.means) == {"base", "ir", "ik", "kr", "loss"}


def test_the_loader_ships_uint8_images_and_builds_grid_targets_in_the_collate(make_config):
    cfg = make_config()
    data = build_data(cfg)
    data.sampler.set_epoch(0)
    batch = next(iter(data.train_loader))
    assert batch["image"].dtype == torch.uint8
    assert batch["image"].shape == (cfg.batch_size, 1, cfg.image_size, cfg.image_size)
    g = grid_size(cfg)
    assert batch["grid"].shape == (cfg.batch_size, 14, g, g)
    assert torch.equal(batch["box_mask"], batch["has_box"])
    assert batch["superpixels"].dtype == torch.uint8
    assert isinstance(data.train_loader.collate_fn, Collate)  # runs in the workers
    # the model normalises on its device: the same logits as from the normalised float image
    from ccg_layers.datasets import normalize_radiographs

    model = build_model("tiny", "none", head_channels=8, tiny_stride=8).eval()
    a, _ = model(batch["image"])
    b, _ = model(normalize_radiographs(batch["image"]))
    torch.testing.assert_close(a, b)


def test_resume_reads_the_rng_states_on_the_cpu_whatever_the_device(make_config, monkeypatch):
    # On a GPU, map_location=device put the RNG ByteTensors on the GPU and
    # torch.set_rng_state raised TypeError: the checkpoint is read on the CPU.
    cfg = make_config(run_name="r", epochs=1, losses=("base",))
    run = train(cfg).run_dir
    seen = {}
    real_load = ckpt.load

    def recording_load(path, map_location="cpu"):
        seen["map_location"] = map_location
        return real_load(path, map_location=map_location)

    real_set = torch.set_rng_state

    def strict_set(state):
        assert state.device.type == "cpu"
        assert state.dtype == torch.uint8
        seen["rng"] = True
        return real_set(state)

    monkeypatch.setattr(ckpt, "load", recording_load)
    monkeypatch.setattr(torch, "set_rng_state", strict_set)
    train(cfg, resume_dir=run)
    assert seen == {"map_location": "cpu", "rng": True}


def test_each_process_takes_the_gpu_of_its_local_rank(make_config, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device(make_config(device="cuda:0"), local_rank=1, world=2) == torch.device(
        "cuda", 1
    )
    assert select_device(make_config(device="cuda"), local_rank=3, world=4) == torch.device(
        "cuda", 3
    )
    assert select_device(make_config(device="cuda:1"), local_rank=0, world=1) == torch.device(
        "cuda", 1
    )
    assert select_device(make_config(device="auto"), local_rank=1, world=2) == torch.device(
        "cuda", 1
    )


def test_cuda_without_a_gpu_is_a_device_error(make_config, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA GPU is visible"):
        select_device(make_config(device="cuda"))
    with pytest.raises(DeviceError, match="not a device"):
        select_device(make_config(device="gpu"))


def test_frozen_batchnorm_keeps_float16_activations_under_autocast():
    from torchvision.ops import FrozenBatchNorm2d

    model = build_model("resnet50", "none", head_channels=8, freeze_bn=True)
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen
    assert all(isinstance(m, FrozenBatchNorm2dCast) for m in frozen)
    dtypes = set()
    hooks = [m.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype)) for m in frozen]
    with torch.autocast("cpu", dtype=torch.float16):
        model(torch.zeros(1, 1, 64, 64, dtype=torch.uint8))
    for h in hooks:
        h.remove()
    assert dtypes == {torch.float16}
    # and the same values as torchvision's in float32
    x = torch.randn(2, 4, 3, 3)
    ref = FrozenBatchNorm2d(4)
    ref.running_mean.uniform_()
    ref.running_var.uniform_(0.5, 2)
    ref.weight.uniform_()
    ref.bias.uniform_()
    mine = FrozenBatchNorm2dCast(4)
    mine.load_state_dict(ref.state_dict())
    torch.testing.assert_close(mine(x), ref(x))


# The backbone users run on the CPU: the demo preset's tiny widths (the test config's narrower
# ones are the minimum the trainer accepts).
USER_WIDTHS = PRESETS["demo"]["tiny_widths"]


@pytest.mark.slow
def test_compiled_model_and_loss_train_to_finite_weights(make_config):
    cfg = make_config(
        run_name="compiled", epochs=1, compile=True, log_every=2, tiny_widths=USER_WIDTHS
    )
    run = train(cfg)
    state = ckpt.load(run.run_dir / "checkpoints" / "last.pt")
    assert state["global_step"] == 7
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert "_orig_mod" not in "".join(state["model"])  # the checkpoint keys are unchanged


def test_compile_parts_is_used_after_the_checked_first_step(make_config, monkeypatch):
    calls = []

    def fake_compile(fn, **kwargs):
        calls.append(kwargs.get("fullgraph", False))

        def run(*args, **kw):
            calls.append("compiled-call")
            return fn(*args, **kw)

        return run

    monkeypatch.setattr(engine.torch, "compile", fake_compile)
    train(make_config(run_name="c", epochs=1, losses=("base",), compile=True))
    assert calls[:2] == [False, True]  # the model, then the loss as one graph
    # 7 steps: the first (value checks on) eager, the 6 others through model and loss
    assert calls.count("compiled-call") == 2 * 6


def test_channels_last_runs_the_backbone_in_nhwc(make_config):
    cfg = make_config(
        run_name="nhwc", epochs=1, losses=("base",), channels_last=True, tiny_widths=USER_WIDTHS
    )
    run = train(cfg)
    state = ckpt.load(run.run_dir / "checkpoints" / "last.pt")
    conv = state["model"]["backbone.stem.0.weight"]
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


# torch 2.14.1's oneDNN 3.12 crashes (SIGSEGV or abort) in the backward of a stride-2 1x1
# convolution with 2-7 input channels in channels_last, with one thread, on its AVX2 kernels
# (the ones it picks on AMD EPYC CPUs without AVX-512). ONEDNN_MAX_CPU_ISA=AVX2 makes oneDNN use
# those kernels on any x86-64 CPU (elsewhere it is ignored), so the test below runs the path of
# those machines everywhere.
def _avx2_env() -> dict[str, str]:
    import os

    return dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", OMP_NUM_THREADS="1")


@pytest.mark.parametrize("option", ["channels_last", "compile"])
def test_channels_last_and_compile_train_on_avx2_kernels_with_one_thread(
    option, tiny_root, tmp_path
):
    # The narrowest backbone the trainer accepts, in a fresh process on the AVX2 kernels with
    # one thread: the configuration that died with SIGSEGV before the width rule.
    import subprocess
    import sys

    from .trainer_helpers import ROOT

    script = (
        "import sys; from pathlib import Path\n"
        "from tests.examples.trainer_helpers import tiny_config\n"
        "from examples.ccg_net.runs import train\n"
        f"cfg = tiny_config(Path(sys.argv[1]), Path(sys.argv[2]), epochs=1, losses=('base',),"
        f" {option}=True)\n"
        "train(cfg)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tiny_root), str(tmp_path)],
        env=_avx2_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "runs").is_dir()


@pytest.mark.parametrize("widths", [(4, 8, 8, 8), (8, 7, 8, 8), (8, 8, 8, 2)])
def test_a_tiny_width_below_8_is_an_error_naming_the_option(make_config, widths):
    with pytest.raises(ValueError, match=r"--tiny-widths must all be >= 8"):
        validate_config(make_config(tiny_widths=widths))
    with pytest.raises(ValueError, match=r"--tiny-widths must all be >= 8"):
        build_model("tiny", "none", tiny_widths=widths, tiny_stride=8)
