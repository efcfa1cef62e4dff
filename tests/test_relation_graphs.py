"""One partner memory for L_IR and L_IK (RelationGraphs, relation_graph_losses): the same losses
and gradients as the two graph modules with their own memories, one queue, one enqueue, the
distances computed once, a bit-identical resume, no host synchronisation with value checks off.
"""

from __future__ import annotations

import copy

import pytest
import torch

import ccg_layers
from ccg_layers import LearnableSampleGraph, PatchHashGraph, RelationGraphs
from ccg_layers.errors import CCGDTypeError, CCGShapeError, CCGValueRangeError
from ccg_layers.functional import (
    conditioned_sample_graph_loss,
    patch_hash_graph_loss,
    relation_graph_losses,
)
from tests.host_sync import count_host_syncs
from tests.validation_counter import count_checks, repeated

C, M, BITS, NC = 6, 5, 16, 3


def _batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, C, 4, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, M, (n, 8, 8), generator=g)
    y = torch.rand(n, NC, generator=g) < 0.4
    return x, labels, y


def _pair(memory_size=4, margin=None):
    kw = {"dtype": torch.float64, "contrast_margin": margin}
    joint = RelationGraphs(C, M, embed_dim=8, code_bits=BITS, memory_size=memory_size, **kw)
    ir = LearnableSampleGraph(in_channels=C, embed_dim=8, memory_size=memory_size, **kw)
    ik = PatchHashGraph(M, C, code_bits=BITS, memory_size=memory_size, **kw)
    with torch.no_grad():  # learned weights, the same in both
        for w in (joint.sample_graph.weight, ir.weight):
            w.copy_(torch.linspace(-1, 1, 64, dtype=torch.float64).reshape(8, 8))
        for w in (joint.patch_graph.weight, ik.weight):
            w.copy_(torch.linspace(1, -1, M * M, dtype=torch.float64).reshape(M, M))
    return joint, ir, ik


@pytest.mark.parametrize("margin", [None, 0.8])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_function_equals_the_two_loss_functions_exactly(margin, reduction):
    x, labels, y = _batch(3, 0)
    mx, mlabels, my = _batch(4, 1)
    joint, _, _ = _pair()
    sw, sp = joint.sample_graph.weight.detach(), joint.sample_graph.projection
    pw, pp = joint.patch_graph.weight.detach(), joint.patch_graph.projection
    from ccg_layers.functional import graph_embedding, patch_codes

    valid = torch.tensor([True, True, False, True])
    mem = {"memory_features": mx, "memory_valid": valid}
    contrast = {} if margin is None else {"image_labels": y, "memory_image_labels": my}
    contrast = {**contrast, "margin": margin} if margin is not None else contrast
    mz, mc = graph_embedding(mx, sp), patch_codes(mx, mlabels, pp, M)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    l_ir, l_ik = relation_graph_losses(
        xa, labels, sw, sp, pw, pp, memory_embeddings=mz, memory_codes=mc, reduction=reduction,
        **mem, **contrast,
    )  # fmt: skip
    want_ir = conditioned_sample_graph_loss(
        xb, sw, sp, memory_embeddings=mz, reduction=reduction, **mem, **contrast
    )
    want_ik = patch_hash_graph_loss(
        xb, labels, pp, pw, memory_codes=mc, reduction=reduction, **mem, **contrast
    )
    assert torch.equal(l_ir, want_ir)
    assert torch.equal(l_ik, want_ik)
    (l_ir.sum() + 2 * l_ik.sum()).backward()
    (want_ir.sum() + 2 * want_ik.sum()).backward()
    # one distance matrix: its backward sums the two graphs' weights first (rounding only)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("margin", [None, 1.5])
def test_module_equals_the_two_modules_with_their_own_memories(margin):
    joint, ir, ik = _pair(memory_size=3, margin=margin)
    for seed in range(5):  # the queue wraps around
        x, labels, y = _batch(2, seed)
        contrast = {} if margin is None else {"image_labels": y}
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        l_ir, l_ik = joint(xa, labels, **contrast)
        want_ir, want_ik = ir(xb, **contrast), ik(xb, labels, **contrast)
        assert torch.equal(l_ir, want_ir)
        assert torch.equal(l_ik, want_ik)
        (l_ir + l_ik).backward()
        (want_ir + want_ik).backward()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-12, atol=1e-14)
        assert torch.equal(joint.sample_graph.weight.grad, ir.weight.grad)
        assert torch.equal(joint.patch_graph.weight.grad, ik.weight.grad)
    # one queue holds what the two held: each map once
    assert torch.equal(joint.memory_features, ir.memory_features)
    assert torch.equal(joint.memory_features, ik.memory_features)
    assert torch.equal(joint.memory_embeddings, ir.memory_embeddings)
    assert torch.equal(joint.memory_codes, ik.memory_codes)
    assert int(joint.memory_pointer) == int(ir.memory_pointer) == 10 % 3
    if margin is not None:
        assert torch.equal(joint.memory_image_labels, ir.memory_image_labels)
    names = {n for n, _ in joint.named_buffers()}
    assert not any(n.startswith(("sample_graph.memory", "patch_graph.memory")) for n in names)


def test_the_distances_are_computed_once_for_both_graphs(monkeypatch):
    import ccg_layers.distance as distance

    calls = []
    real = distance.distance_matrix
    monkeypatch.setattr(distance, "distance_matrix", lambda *a: calls.append(1) or real(*a))
    joint, _, _ = _pair()
    joint(*_batch(2, 0)[:2])
    joint(*_batch(2, 1)[:2])  # with the memory
    assert len(calls) == 2


def test_state_dict_round_trip_gives_identical_losses():
    def make():
        joint = _pair(memory_size=3)[0]
        return joint, torch.optim.SGD(joint.parameters(), lr=0.5)

    def run(joint, opt, seeds):
        out = []
        for seed in seeds:
            opt.zero_grad()
            x, labels, _ = _batch(2, seed)
            loss = sum(joint(x.requires_grad_(), labels))
            loss.backward()
            opt.step()
            out.append(loss.detach())
        return out

    joint, opt = make()
    run(joint, opt, range(4))
    saved = copy.deepcopy((joint.state_dict(), opt.state_dict()))
    want = run(joint, opt, range(4, 8))
    resumed, opt2 = make()
    resumed.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    got = run(resumed, opt2, range(4, 8))
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    for key, value in joint.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_eval_mode_does_not_enqueue_and_reset_empties():
    joint = _pair(memory_size=3)[0]
    joint(*_batch(2, 0)[:2])
    joint.eval()
    joint(*_batch(2, 1)[:2])
    assert int(joint.memory_count) == 2
    joint.reset_memory()
    assert joint.memory_valid() is None


def test_zero_host_synchronisations_with_value_checks_off():
    joint = _pair(memory_size=3, margin=1.0)[0]
    x, labels, y = _batch(2, 0)
    joint(x, labels, image_labels=y)
    x, labels, y = _batch(3, 1)
    with ccg_layers.set_value_checks(False), count_host_syncs() as syncs:
        sum(joint(x.requires_grad_(), labels, image_labels=y)).backward()
    assert sum(syncs.values()) == 0, syncs
    with count_host_syncs() as syncs:  # the counter works: with the checks on, values are read
        sum(joint(x, labels, image_labels=y)).backward()
    assert sum(syncs.values()) > 0


def test_each_input_validated_once():
    joint = _pair(memory_size=3, margin=1.0)[0]
    x, labels, y = _batch(2, 0)
    joint(x, labels, image_labels=y)
    with count_checks() as calls:
        joint(x, labels, image_labels=y)
    assert repeated(calls) == {}
    for name in ("features", "labels", "image_labels", "memory_features", "memory_embeddings"):
        assert calls[("check_tensor", name)] == 1, name
    assert calls[("check_finite_through_distances", "distances")] == 1


def test_error_memory_given_in_part():
    joint = _pair()[0]
    x, labels, _ = _batch(2, 0)
    args = (
        joint.sample_graph.weight,
        joint.sample_graph.projection,
        joint.patch_graph.weight,
        joint.patch_graph.projection,
    )
    with pytest.raises(CCGShapeError, match=r"`memory_features`, `memory_embeddings` and"):
        relation_graph_losses(x, labels, *args, memory_features=x)


def test_error_memory_features_count_differs_from_codes():
    joint = _pair()[0]
    x, labels, _ = _batch(2, 0)
    sw, sp = joint.sample_graph.weight, joint.sample_graph.projection
    pw, pp = joint.patch_graph.weight, joint.patch_graph.projection
    memory = {
        "memory_features": x,  # 2 maps
        "memory_embeddings": torch.zeros(1, 8, dtype=torch.float64),
        "memory_codes": torch.zeros(1, M, BITS, dtype=torch.float64),
    }
    with pytest.raises(
        CCGShapeError, match=r"`memory_features` must hold K=1 maps like `memory_codes`, got shape"
    ):
        relation_graph_losses(x, labels, sw, sp, pw, pp, **memory)


def test_error_names_the_projection_of_each_graph():
    joint = _pair()[0]
    x, labels, _ = _batch(2, 0)
    sw, sp = joint.sample_graph.weight, joint.sample_graph.projection
    pw, pp = joint.patch_graph.weight, joint.patch_graph.projection
    with pytest.raises(CCGShapeError, match=r"rows of `sample_projection`"):
        relation_graph_losses(x, labels, sw, sp[:4], pw, pp)
    with pytest.raises(CCGShapeError, match=r"rows of `patch_projection`"):
        relation_graph_losses(x, labels, sw, sp, pw, pp[:4])
    with pytest.raises(CCGShapeError, match=r"`patch_weight` must have"):
        relation_graph_losses(x, labels, sw, sp, pw[:, :2], pp)


def test_error_map_size_changes_while_the_memory_holds_maps():
    joint = _pair()[0]
    joint(*_batch(2, 0)[:2])
    with pytest.raises(CCGShapeError, match=r"`features` must have shape \(n, 6, 4, 4\)"):
        joint(torch.randn(2, C, 2, 2, dtype=torch.float64), _batch(2, 0)[1])


def test_distributed_flag_without_process_group_equals_local():
    joint, _, _ = _pair(memory_size=3, margin=1.0)
    gathered = copy.deepcopy(joint)
    gathered.distributed = True
    for seed in range(3):
        x, labels, y = _batch(2, seed)
        want = joint(x, labels, image_labels=y)
        got = gathered(x, labels, image_labels=y)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert torch.equal(joint.memory_image_labels, gathered.memory_image_labels)


# --------------------------------------------------------------------------- bad input (audit)


@pytest.mark.parametrize("flag", ["x", 1, None])
def test_error_return_entries_not_a_bool(flag):
    joint = _pair()[0]
    x, labels, _ = _batch(2, 0)
    sw, sp = joint.sample_graph.weight, joint.sample_graph.projection
    pw, pp = joint.patch_graph.weight, joint.patch_graph.projection
    with pytest.raises(
        CCGValueRangeError, match=rf"`return_entries` must be True or False, got {flag!r}"
    ):
        relation_graph_losses(x, labels, sw, sp, pw, pp, return_entries=flag)


@pytest.mark.parametrize("flag", ["x", 1, None])
def test_error_module_distributed_not_a_bool(flag):
    with pytest.raises(
        CCGValueRangeError, match=rf"`distributed` must be True or False, got {flag!r}"
    ):
        RelationGraphs(C, M, distributed=flag)


def test_error_module_defer_enqueue_not_a_bool():
    with pytest.raises(CCGValueRangeError, match=r"`defer_enqueue` must be"):
        RelationGraphs(C, M, defer_enqueue="x")


@pytest.mark.parametrize("seed", ["a", True, None])
def test_error_module_seed_not_an_int(seed):
    with pytest.raises(CCGValueRangeError, match=rf"`seed` must be an int, got {seed!r}"):
        RelationGraphs(C, M, seed=seed)


@pytest.mark.parametrize("dtype", [torch.int64, "float32"])
def test_error_module_dtype_not_floating(dtype):
    with pytest.raises(
        CCGDTypeError, match=rf"`dtype` must be a floating torch.dtype or None, got {dtype!r}"
    ):
        RelationGraphs(C, M, dtype=dtype)
