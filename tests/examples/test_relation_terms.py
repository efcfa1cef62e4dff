"""The relation terms through the trainer's loss (CCGLoss built from a TrainConfig).

Issue 10: at the paper's batch of 2 the trainer must leave no relation graph constant (the
partner memory, on by default there), warn once when a configuration does, keep the paper's
position-indexed matrix reachable, and compute relation terms that do not depend on the order
of the batch.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import ccg_layers
from examples.ccg_net.cli import build_parser
from examples.ccg_net.config import PRESETS, TrainConfig, resolve_config
from examples.ccg_net.engine import build_trainee
from examples.ccg_net.losses import CCGLoss, resolve_memory_size

from .trainer_helpers import tiny_config

C, GRID, M = 16, 4, 4  # feature channels, C5 grid side, superpixels per image


def _config(**overrides: object) -> TrainConfig:
    """The paper preset (batch 2, all four losses, memory auto) at a tiny patch count."""
    cfg = TrainConfig(num_patches=M, code_bits=16)
    return dataclasses.replace(cfg, **overrides)  # type: ignore[arg-type]


def _superpixels(n: int, g: torch.Generator) -> torch.Tensor:
    """Hand-made (n, 8, 8) labels with M = 4 segments each: the quadrants, their borders moved
    per image so that the segments differ in size and position between images."""
    labels = torch.empty(n, 8, 8, dtype=torch.long)
    rows, cols = torch.randint(2, 7, (n,), generator=g), torch.randint(2, 7, (n,), generator=g)
    r = torch.arange(8)
    for i in range(n):
        top = (r < rows[i])[:, None]
        left = (r < cols[i])[None, :]
        labels[i] = torch.where(top, torch.where(left, 0, 1), torch.where(left, 2, 3))
    return labels


def _batch(n: int, seed: int, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 14, GRID, GRID, generator=g, dtype=dtype)
    feats = torch.randn(n, C, GRID, GRID, generator=g, dtype=dtype)
    # images of two kinds (a shared offset pattern), so pooled descriptors and codes vary
    kind = torch.randn(2, C, 1, 1, generator=g, dtype=dtype)
    feats = feats + 2 * kind[torch.randint(0, 2, (n,), generator=g)]
    labels = (torch.rand(n, 14, generator=g) < 0.3).to(dtype)
    box_mask = torch.zeros(n, 14, dtype=torch.bool)
    box_mask[0, 3] = True
    labels[box_mask] = 1.0
    grid = torch.zeros(n, 14, GRID, GRID, dtype=dtype)
    grid[0, 3, 1:3, 0:2] = 1.0
    return logits, feats, labels, grid, box_mask, _superpixels(n, g)


def _fill_memory(criterion: CCGLoss, steps: int, n: int = 2) -> None:
    """Training-mode forwards of fresh batches: each enqueues its maps into every memory
    (after the forward, as the trainer's step does after its backward)."""
    criterion.train()
    for s in range(steps):
        criterion(*_batch(n, 100 + s))
        ccg_layers.commit_memories(criterion)


# --------------------------------------------------------------------------- gradients at n = 2


def test_every_relation_parameter_learns_at_the_papers_batch_of_2_with_the_memory_filled():
    criterion = CCGLoss(_config(), C, global_batch=2)
    assert criterion.memory_size == 8  # auto: the batch of 2 alone leaves the graphs constant
    # 2 images a step into the one queue of L_IR and L_IK; the pair form of L_KR enqueues both
    # maps of its one pair: 4 steps fill both queues of 8
    _fill_memory(criterion, 4)
    assert len(criterion.memories) == 2
    for module in criterion.memories:
        valid = module.memory_valid()
        assert valid is not None, module
        assert bool(valid.all()), module
    logits, feats, labels, grid, box_mask, sp = _batch(2, 0)
    feats.requires_grad_(True)
    criterion.zero_grad()
    out = criterion(logits, feats, labels, grid, box_mask, sp)
    out["loss"].backward()
    params = list(criterion.named_parameters())
    assert {n for n, _ in params} == {
        "graphs.sample_graph.weight",
        "graphs.patch_graph.weight",
        "kr_attention.weight",
        "kr_graph.weight",
    }
    for name, p in params:
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_ir_and_ik_over_one_memory_equal_two_modules_with_memories_of_their_own():
    # what the trainer did before issue 17: L_IR and L_IK each queued the same maps
    criterion = CCGLoss(_config(), C, global_batch=2)
    ir = ccg_layers.LearnableSampleGraph(in_channels=C, memory_size=8)
    ik = ccg_layers.PatchHashGraph(M, C, code_bits=16, memory_size=8)
    for s in range(6):  # past a full queue of 8
        batch = _batch(2, 100 + s)
        out = criterion(*batch)
        feats, sp = batch[1], batch[5]
        torch.testing.assert_close(out["ir"], ir(feats), rtol=0, atol=0)
        torch.testing.assert_close(out["ik"], ik(feats, sp), rtol=0, atol=0)
        ccg_layers.commit_memories(criterion)
    # and a checkpoint of that layout (keys ir.*, ik.*) loads into the shared memory exactly
    old = {k: v for k, v in criterion.state_dict().items() if not k.startswith("graphs.")}
    old |= {f"ir.{k}": v for k, v in ir.state_dict().items()}
    old |= {f"ik.{k}": v for k, v in ik.state_dict().items()}
    fresh = CCGLoss(_config(), C, global_batch=2)
    fresh.load_state_dict(old)
    assert fresh.state_dict().keys() == criterion.state_dict().keys()
    for key, value in criterion.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_without_the_memory_the_graph_parameters_get_exactly_zero_gradient_at_batch_2():
    # the failure the memory fixes, through the same loss: one partner per image, softmax 1
    with pytest.warns(UserWarning, match="stay constant"):
        criterion = CCGLoss(_config(memory_size=0), C, global_batch=2)
    logits, feats, labels, grid, box_mask, sp = _batch(2, 0)
    criterion(logits, feats.requires_grad_(True), labels, grid, box_mask, sp)["loss"].backward()
    for name, graph in (
        ("ir", criterion.sample_graph),
        ("ik", criterion.patch_graph),
        ("kr", criterion.kr_graph),
    ):
        assert graph is not None, name
        grad = graph.weight.grad
        assert grad is not None, name
        assert torch.count_nonzero(grad) == 0, name
    assert criterion.kr_attention is not None
    assert criterion.kr_attention.weight.grad.abs().sum() > 0  # W_P learns through D anyway


# --------------------------------------------------------------------------- memory size, warning


def test_auto_memory_is_8_at_the_papers_batch_of_2_and_0_at_the_demos_batch_of_8():
    paper = TrainConfig()
    demo = TrainConfig(preset="demo", **PRESETS["demo"])
    assert (paper.memory_size, demo.memory_size) == (-1, -1)
    assert resolve_memory_size(paper, paper.batch_size) == 8
    assert resolve_memory_size(demo, demo.batch_size) == 0
    # batch 1 on each of 2 processes is the paper's global batch of 2
    assert resolve_memory_size(paper, 2 * 1) == 8
    # L_IR / L_IK alone: constant up to a global batch of 2 (one partner per image)
    ir_only = dataclasses.replace(paper, losses=("base", "ir"))
    assert [resolve_memory_size(ir_only, n) for n in (1, 2, 3, 4)] == [8, 8, 0, 0]
    # L_KR alone ("half" pairs): constant while the batch makes a single pair
    kr_only = dataclasses.replace(paper, losses=("base", "kr"))
    assert [resolve_memory_size(kr_only, n) for n in (2, 3, 4)] == [8, 8, 0]
    kr_all = dataclasses.replace(kr_only, kr_pairs="all")
    assert [resolve_memory_size(kr_all, n) for n in (2, 3)] == [8, 0]
    # the baseline has no graph; an explicit size is kept
    assert resolve_memory_size(dataclasses.replace(paper, losses=("base",)), 2) == 0
    assert resolve_memory_size(dataclasses.replace(paper, memory_size=3), 2) == 3
    assert resolve_memory_size(dataclasses.replace(demo, memory_size=5), 8) == 5


def test_the_memory_size_reaches_every_graph_module_of_the_loss():
    criterion = CCGLoss(_config(), C, global_batch=2)
    # L_IR and L_IK share one memory (ccg_layers.RelationGraphs); L_KR's graph has its own
    assert criterion.graphs is not None
    assert (criterion.ir, criterion.ik) == (None, None)
    assert criterion.memories == (criterion.graphs, criterion.kr_graph)
    assert [m.memory_size for m in criterion.memories] == [8, 8]
    inner = (criterion.graphs.sample_graph, criterion.graphs.patch_graph)
    assert [m.memory_size for m in inner] == [0, 0]  # no second copy of the maps
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at batch 8 without a memory
        criterion = CCGLoss(_config(batch_size=8), C, global_batch=8)
    assert len(criterion.memories) == 2
    assert [m.memory_size for m in criterion.memories] == [0, 0]
    for name in ("memory_features", "memory_pointer"):  # and nothing to save
        assert not any(k.endswith(name) for k in criterion.state_dict())


def test_memory_size_flag_parses():
    cfg = resolve_config(build_parser().parse_args(["train", "--memory-size", "0"]))
    assert cfg.memory_size == 0
    cfg = resolve_config(build_parser().parse_args(["train", "--memory-size", "16"]))
    assert resolve_memory_size(cfg, 2) == 16
    with pytest.raises(ValueError, match="--memory-size must be -1"):
        resolve_config(build_parser().parse_args(["train", "--memory-size", "-2"]))


def test_memory_size_0_at_batch_2_warns_once_naming_every_constant_graph():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        criterion = CCGLoss(_config(memory_size=0), C, global_batch=2)
        for s in range(3):  # the forwards do not warn again
            criterion(*_batch(2, s))
    messages = [str(w.message) for w in seen if issubclass(w.category, UserWarning)]
    assert len(messages) == 1, messages
    msg = messages[0]
    for graph in ("L_IR's sample graph", "L_IK's patch-hash graph", "L_KR's patch-hash graph"):
        assert graph in msg
    assert "global batch of 2" in msg
    assert "--memory-size 0" in msg
    assert "--memory-size -1" in msg  # and how to fix it


def test_warning_names_only_the_graphs_left_constant():
    # L_KR alone at batch 4 ("half": 2 pairs): nothing constant, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CCGLoss(_config(losses=("base", "kr"), memory_size=0), C, global_batch=4)
    # a global batch of 3: L_IR and L_IK have 2 partners per image, L_KR ("half") one pair
    with pytest.warns(UserWarning, match="stay constant") as seen:
        CCGLoss(_config(memory_size=0), C, global_batch=3)
    (msg,) = [str(w.message) for w in seen]
    assert "L_KR's patch-hash graph" in msg
    assert "L_IR" not in msg
    assert "L_IK" not in msg
    # the positional form cannot use the memory: at batch 2 only L_IR stays constant
    with pytest.warns(UserWarning, match="stay constant") as seen:
        criterion = CCGLoss(_config(graph_form="positional"), C, global_batch=2)
    (msg,) = [str(w.message) for w in seen]
    assert "L_IR's sample graph" in msg
    assert "--graph-form positional" in msg
    assert "L_IK" not in msg
    assert "L_KR" not in msg
    assert criterion.ik is not None
    assert criterion.ik.memory_size == 8


def test_the_memory_holds_float16_maps_under_float16_autocast():
    # the trainer's step runs the model and the loss under float16 autocast with AMP: the
    # queues take the features' dtype, 1 MiB per 2048x16x16 map instead of 2 (docs/training.md)
    cfg = tiny_config(Path("unused"), Path("unused"), batch_size=2)
    trainee = build_trainee(cfg, world=1)
    images = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    labels, grid = torch.zeros(2, 14), torch.zeros(2, 14, 8, 8)
    box_mask = torch.zeros(2, 14, dtype=torch.bool)
    sp = torch.randint(0, cfg.num_patches, (2, 16, 16))
    with torch.autocast("cpu", dtype=torch.float16):
        trainee(images, labels, grid, box_mask, sp)
    ccg_layers.commit_memories(trainee)  # as the step does after its backward
    state = trainee.criterion.state_dict()
    channels = trainee.model.feature_channels
    for module in ("graphs", "kr_graph"):  # L_IR and L_IK's one memory, L_KR's
        maps = state[f"{module}.memory_features"]
        assert maps.dtype == torch.float16, module
        assert maps.shape == (8, channels, 8, 8), module
        assert maps[:2].abs().sum() > 0, module  # the batch (L_KR: its pair's two maps)
    assert state["graphs.memory_embeddings"].dtype == torch.float32
    assert state["graphs.memory_codes"].dtype == torch.int8


# --------------------------------------------------------------------------- graph form


def test_graph_form_positional_keeps_the_papers_n_by_n_matrix():
    cfg = resolve_config(build_parser().parse_args(["train", "--graph-form", "positional"]))
    assert cfg.graph_form == "positional"
    with pytest.warns(UserWarning, match="L_IR's sample graph"):
        criterion = CCGLoss(dataclasses.replace(cfg, num_patches=M, code_bits=16), C, 2)
    ir = criterion.ir
    assert ir is not None
    assert (ir.form, ir.memory_size) == ("positional", 0)
    assert criterion.state_dict()["ir.weight"].shape == (2, 2)  # G[u, v] of the batch slots
    torch.testing.assert_close(ir.graph(2), torch.full((2, 2), 0.5))  # the paper's 1/n
    # L_IR = sum_uv G(u, v) D(F_u, F_v) / n^2 with that matrix
    logits, feats, labels, grid, box_mask, sp = _batch(2, 0)
    out = criterion(logits, feats, labels, grid, box_mask, sp)
    d = ((feats[0] - feats[1]) ** 2).sum().sqrt()
    torch.testing.assert_close(out["ir"], 2 * 0.5 * d / 4)
    # the default is the input-conditioned form: a bilinear weight on image descriptors
    conditioned = CCGLoss(_config(), C, 2).sample_graph
    assert conditioned is not None
    assert conditioned.form == "conditioned"
    assert conditioned.weight.shape == (conditioned.embed_dim, conditioned.embed_dim)


def test_graph_form_flag_rejects_other_values():
    with pytest.raises(ValueError, match="--graph-form must be conditioned or positional"):
        resolve_config(build_parser().parse_args(["train", "--graph-form", "slots"]))


def test_kr_qk_channels_gives_a_low_rank_w_p_whose_factors_both_learn():
    criterion = CCGLoss(_config(kr_qk_channels=4), C, global_batch=2)
    att = criterion.kr_attention
    assert att is not None
    assert att.weight is None  # no full C x C W_P
    assert att.weight_u.shape == (4, C)
    assert att.weight_v.shape == (4, C)
    _fill_memory(criterion, 4)
    logits, feats, labels, grid, box_mask, sp = _batch(2, 0)
    criterion.zero_grad()
    criterion(logits, feats.requires_grad_(True), labels, grid, box_mask, sp)["loss"].backward()
    for p in (att.weight_u, att.weight_v, criterion.kr_graph.weight):
        assert p.grad is not None
        assert p.grad.abs().sum() > 0
    # the default is the paper's full matrix
    full = CCGLoss(_config(), C, global_batch=2).kr_attention
    assert full is not None
    assert full.weight.shape == (C, C)


def test_kr_qk_channels_flag_is_checked():
    args = build_parser().parse_args(["train", "--kr-qk-channels", "256"])
    assert resolve_config(args).kr_qk_channels == 256
    with pytest.raises(ValueError, match="--kr-qk-channels must be 0"):
        resolve_config(build_parser().parse_args(["train", "--kr-qk-channels", "-1"]))


def test_unit_relation_features_make_the_relation_terms_blind_to_the_features_scale():
    # "unit": each map divided by its norm, so shrinking every feature lowers no relation
    # term; "raw" (the paper): every relation term is a distance, linear in the scale
    logits, feats, labels, grid, box_mask, sp = _batch(4, 0)

    def terms(form: str, scale: float) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        criterion = CCGLoss(_config(relation_features=form, memory_size=0), C, global_batch=4)
        criterion.eval()
        return criterion(logits, feats * scale, labels, grid, box_mask, sp)

    unit, unit_small = terms("unit", 1.0), terms("unit", 0.01)
    raw, raw_small = terms("raw", 1.0), terms("raw", 0.01)
    for k in ("ir", "ik", "kr"):
        assert 0 < unit[k] <= 2.0, k  # weighted means of distances between unit maps
    for k in ("ir", "ik"):  # (L_KR's attention sees the maps as they are: its softmax does not)
        torch.testing.assert_close(unit_small[k], unit[k], rtol=1e-4, atol=0.0)
    for k in ("ir", "ik"):
        torch.testing.assert_close(raw_small[k], 0.01 * raw[k], rtol=1e-4, atol=0.0)


def test_unit_maps_have_norm_1_and_keep_the_dtype():
    from examples.ccg_net.losses import unit_maps

    x = torch.randn(3, 5, 4, 4, dtype=torch.float64) * torch.tensor([1e-3, 1.0, 1e3]).double().view(
        3, 1, 1, 1
    )
    y = unit_maps(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y.flatten(1).norm(dim=1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(y * x.flatten(1).norm(dim=1).view(3, 1, 1, 1), x)


def test_relation_features_flag_is_checked():
    args = build_parser().parse_args(["train", "--relation-features", "unit"])
    assert resolve_config(args).relation_features == "unit"
    assert TrainConfig().relation_features == "raw"  # the paper's distances by default
    with pytest.raises(ValueError, match="--relation-features must be raw or unit"):
        resolve_config(build_parser().parse_args(["train", "--relation-features", "cosine"]))


# --------------------------------------------------------------------------- permutation


def _trained_like(criterion: CCGLoss, seed: int) -> None:
    """Random non-zero graph and attention weights: graphs far from the uniform 1/n."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        modules = (criterion.sample_graph, criterion.patch_graph)
        for m in (*modules, criterion.kr_attention, criterion.kr_graph):
            assert m is not None
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)


@pytest.mark.slow
@given(
    half=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    fill=st.integers(0, 3),
    data=st.data(),
)
def test_relation_terms_do_not_depend_on_the_order_of_the_batch(half, seed, fill, data):
    """loss(X[pi]) == loss(X) for every term, the memory filled or not.

    L_IR and L_IK see all pairs of the batch: any permutation. L_KR ("half") pairs image i with
    image i + n/2, so a permutation keeps its pairs when it moves the pairs as units (the same
    sigma on both halves); a pair is ordered (u attends to v through W_P, the patch graph of
    F'_u against F'_v), so the two images of a pair keep their roles.
    """
    n = 2 * half
    cfg = _config(batch_size=n, memory_size=4)
    criterion = CCGLoss(cfg, C, global_batch=n).double()
    _trained_like(criterion, seed)
    criterion.train()
    for s in range(fill):  # float64 batches of the same size into the memory
        criterion(*_batch(n, 1000 + seed + s, torch.float64))
        ccg_layers.commit_memories(criterion)
    criterion.eval()  # reads the memory, enqueues nothing: both orders see the same partners
    batch = _batch(n, seed, torch.float64)
    ref = criterion(*batch)

    pi_all = torch.tensor(data.draw(st.permutations(range(n))))
    sigma = torch.tensor(data.draw(st.permutations(range(half))))
    pi_pairs = torch.cat([sigma, sigma + half])
    got_all = criterion(*(t[pi_all] for t in batch))
    got_pairs = criterion(*(t[pi_pairs] for t in batch))
    for term in ("base", "ir", "ik"):
        torch.testing.assert_close(got_all[term], ref[term], rtol=1e-10, atol=1e-12)
    for term in ("base", "ir", "ik", "kr", "loss"):
        torch.testing.assert_close(got_pairs[term], ref[term], rtol=1e-10, atol=1e-12)
    # ... and the graphs follow the images: G(X[pi]) = pi G(X) pi^T (the memory columns stay)
    ir, ik = criterion.sample_graph, criterion.patch_graph
    assert ir is not None
    assert ik is not None
    feats, sp = batch[1], batch[5]
    for graph, p in (
        (ir.graph(feats), ir.graph(feats[pi_all])),
        (ik.graph(feats, sp), ik.graph(feats[pi_all], sp[pi_all])),
    ):
        expected = torch.cat([graph[pi_all][:, pi_all], graph[pi_all, n:]], dim=1)
        torch.testing.assert_close(p, expected, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- contrast form
# --relation-form contrast (beyond the paper): the graphs pull images that share a finding (or
# both have none) and push the others apart up to --contrast-margin


def _contrast_config(**overrides: object) -> TrainConfig:
    kw: dict[str, object] = {
        "relation_form": "contrast",
        "relation_features": "unit",
        "contrast_margin": 0.7,
        "memory_size": 3,
    }
    kw.update(overrides)
    return _config(**kw)


def test_relation_form_and_margin_reach_every_graph_module():
    contrast = CCGLoss(_contrast_config(), C, global_batch=4)
    pull = CCGLoss(_config(memory_size=3), C, global_batch=4)
    for criterion, margin in ((contrast, 0.7), (pull, None)):
        graphs = (criterion.sample_graph, criterion.patch_graph, criterion.kr_graph)
        for graph in (*graphs, *criterion.memories):
            assert graph is not None
            assert graph.contrast_margin == margin
        # the memories (L_IR and L_IK's one, L_KR's) keep the labels in the checkpoint
        assert criterion.memories == (criterion.graphs, criterion.kr_graph)
        for memory in criterion.memories:
            assert ("memory_image_labels" in memory.state_dict()) == (margin is not None)


def test_contrast_passes_the_image_labels_of_the_batch_and_of_each_kr_pair():
    import copy

    from examples.ccg_net.losses import kr_pairs, unit_maps

    criterion = CCGLoss(_contrast_config(), C, global_batch=4)
    _fill_memory(criterion, 3, n=4)
    twin = copy.deepcopy(criterion)
    logits, feats, labels, grid, box_mask, sp = _batch(4, 9)
    out = criterion(logits, feats, labels, grid, box_mask, sp)
    rel = unit_maps(feats)
    assert twin.graphs is not None
    want_ir, want_ik = twin.graphs(rel, sp, image_labels=labels)
    torch.testing.assert_close(out["ir"], want_ir)
    torch.testing.assert_close(out["ik"], want_ik)
    u, v = kr_pairs(4, "half")
    fu, fv = twin.kr_attention(feats[u], feats[v])
    want_kr = twin.kr_graph(
        unit_maps(fu), sp[v], unit_maps(fv), sp[u], image_labels=labels[u], image_labels_b=labels[v]
    )
    torch.testing.assert_close(out["kr"], want_kr)
    for memory in criterion.memories:  # the memories queued the labels with the maps
        queued = memory.memory_image_labels
        assert queued.shape == (3, 14)
        assert queued.sum() > 0


def test_contrast_with_every_pair_alike_equals_the_pull_form():
    # every image with the same finding: s = 1 for every pair, batch and memory alike
    pull = CCGLoss(_config(relation_features="unit", memory_size=3), C, global_batch=4)
    contrast = CCGLoss(_contrast_config(), C, global_batch=4)
    contrast.load_state_dict(pull.state_dict(), strict=False)
    for step in range(3):
        logits, feats, labels, grid, box_mask, sp = _batch(4, 20 + step)
        labels = torch.zeros_like(labels)
        labels[:, 5] = 1.0
        box_mask = torch.zeros_like(box_mask)
        a = pull(logits, feats, labels, grid, box_mask, sp)
        b = contrast(logits, feats, labels, grid, box_mask, sp)
        ccg_layers.commit_memories(pull)
        ccg_layers.commit_memories(contrast)
        for k in ("base", "ir", "ik", "kr", "loss"):
            assert torch.equal(a[k], b[k]), (step, k)


# the pull form's terms before the contrast form existed (commit 970d54b, computed with
# that code): --relation-form pull must keep them
PULL_BEFORE = {
    "raw": [
        {"ir": 7.5422482491, "ik": 7.5422482491, "kr": 37.7791519165, "loss": 37.7397384644},
        {"ir": 7.2958879471, "ik": 7.2958879471, "kr": 35.6605911255, "loss": 34.6711578369},
        {"ir": 7.8583555222, "ik": 7.8583555222, "kr": 37.1417503357, "loss": 37.0475463867},
    ],
    "unit": [
        {"ir": 0.2054944634, "ik": 0.2054944634, "kr": 1.0799815655, "loss": 24.8965702057},
        {"ir": 0.2262403667, "ik": 0.2262403667, "kr": 1.1116154194, "loss": 22.4990882874},
        {"ir": 0.266469717, "ik": 0.266469717, "kr": 1.2668440342, "loss": 24.2828788757},
    ],
}


@pytest.mark.parametrize("features", ["raw", "unit"])
def test_pull_runs_keep_the_loss_values_from_before_the_contrast_form(features):
    torch.manual_seed(0)
    cfg = _config(memory_size=3, relation_features=features)
    assert cfg.relation_form == "pull"
    criterion = CCGLoss(cfg, C, global_batch=4)
    for step, want in enumerate(PULL_BEFORE[features]):
        out = criterion(*_batch(4, 50 + step))
        ccg_layers.commit_memories(criterion)
        for k, value in want.items():
            assert float(out[k].detach()) == pytest.approx(value, rel=1e-6, abs=1e-9), (step, k)


def test_relation_form_and_contrast_margin_flags_parse():
    assert TrainConfig().relation_form == "pull"  # the paper's literal form by default
    # --preset paper keeps it; --preset demo runs the recommended contrast form (docs/training.md)
    assert PRESETS["paper"].get("relation_form", "pull") == "pull"
    assert (PRESETS["demo"]["relation_form"], PRESETS["demo"]["relation_features"]) == (
        "contrast",
        "unit",
    )
    args = build_parser().parse_args(
        [
            "train",
            "--relation-form",
            "contrast",
            "--relation-features",
            "unit",
            "--contrast-margin",
            "0.5",
        ]
    )
    cfg = resolve_config(args)
    assert (cfg.relation_form, cfg.contrast_margin) == ("contrast", 0.5)
    assert TrainConfig.from_dict(json_round_trip(cfg)) == cfg


def json_round_trip(cfg: TrainConfig) -> dict:
    import json

    return json.loads(cfg.to_json())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--relation-form", "push"], "--relation-form must be pull or contrast, got 'push'"),
        (["--contrast-margin", "0"], "--contrast-margin must be a finite number > 0, got 0.0"),
        (["--contrast-margin", "-1"], "--contrast-margin must be a finite number > 0, got -1.0"),
        (["--contrast-margin", "nan"], "--contrast-margin must be a finite number > 0, got nan"),
        (["--contrast-margin", "inf"], "--contrast-margin must be a finite number > 0, got inf"),
        (
            ["--relation-form", "contrast"],
            "--relation-form contrast needs --relation-features unit",
        ),
    ],
)
def test_relation_form_and_contrast_margin_bad_values_are_one_line_errors(argv, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        resolve_config(build_parser().parse_args(["train", *argv]))
    assert "\n" not in str(info.value)


def test_tiny_training_run_with_the_contrast_form_finishes_with_finite_weights(make_config):
    from examples.ccg_net import checkpoint as ckpt
    from examples.ccg_net.config import load_config
    from examples.ccg_net.runs import train

    cfg = make_config(
        relation_form="contrast",
        relation_features="unit",
        contrast_margin=0.5,
        batch_size=2,
        epochs=1,
        num_figures=0,
        run_name="contrast",
    )
    run_dir = train(cfg).run_dir
    assert load_config(run_dir) == cfg  # config.json round trip
    state = ckpt.load(run_dir / "checkpoints" / "last.pt")
    for name, value in state["model"].items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), name
    for memory in ("graphs", "kr_graph"):
        queued = state["criterion"][f"{memory}.memory_image_labels"]
        assert queued.shape == (8, 14), memory  # the auto memory of the batch of 2
    for graph in ("graphs.sample_graph", "graphs.patch_graph", "kr_graph"):
        assert torch.isfinite(state["criterion"][f"{graph}.weight"]).all(), graph
        assert state["criterion"][f"{graph}.weight"].abs().sum() > 0, graph


# ------------------------------------------------- the literal form without boxes (issue 20)


def _warnings_of_a_run(make_config, **overrides):
    import warnings

    from examples.ccg_net.runs import train

    cfg = make_config(epochs=1, **overrides)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train(cfg)
    return [str(w.message) for w in seen if "literal form" in str(w.message)]


def test_the_literal_form_without_boxes_warns_once_with_the_measured_collapse(make_config):
    msgs = _warnings_of_a_run(make_config, setting="b")
    assert len(msgs) == 1
    assert "collapsed every image's features" in msgs[0]
    assert "full model minus baseline at T(IoU)=0.1: -0.69" in msgs[0]  # the study's record
    assert "Which form to use" in msgs[0]


@pytest.mark.parametrize(
    "overrides",
    [
        {"setting": "a"},  # boxes in training
        {"setting": "b", "losses": ("base",)},  # no relation term
        {"setting": "b", "relation_features": "unit"},
        {"setting": "b", "relation_features": "unit", "relation_form": "contrast"},
    ],
)
def test_no_collapse_warning_where_the_study_measured_none(make_config, overrides):
    assert _warnings_of_a_run(make_config, **overrides) == []
