"""The cross-batch memory of partners and the input-conditioned graphs (issue 10, library).

At the paper's batch of 2 each image has one partner in the batch, so every row of a graph is
a softmax over one logit: constant, and the graph parameters get no gradient. With the memory
filled every parameter of L_IR, L_IK and L_KR's patch graph learns; the graphs follow the
images (permutation), the memory is a FIFO that wraps around, and it is saved with the module.
"""

from __future__ import annotations

import contextlib
import copy

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

import ccg_layers
from ccg_layers import LearnableSampleGraph, PatchHashGraph
from ccg_layers.errors import CCGShapeError, CCGValueRangeError
from ccg_layers.functional import (
    conditioned_sample_graph_loss,
    graph_embedding,
    patch_codes,
    patch_hash_graph_loss,
    superpixel_pool,
)

C, H, W, M, BITS = 8, 4, 4, 6, 16


def _batch(n, seed, channels=C):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, H, W, generator=g)
    labels = torch.randint(0, M, (n, 8, 8), generator=g)
    return x, labels


def _modules(memory_size=4, dtype=None):
    return (
        LearnableSampleGraph(in_channels=C, embed_dim=8, memory_size=memory_size, dtype=dtype),
        PatchHashGraph(M, C, code_bits=BITS, memory_size=memory_size, dtype=dtype),
        PatchHashGraph(M, C, code_bits=BITS, memory_size=memory_size, dtype=dtype),
    )


def _step(lsg, ik, kr, seed):
    """One training step's relation terms at the paper's batch of 2 (one L_KR pair)."""
    x, labels = _batch(2, seed)
    x.requires_grad_()
    return lsg(x) + ik(x, labels) + kr(x[:1] * 1.5, labels[1:], x[1:] * 0.5, labels[:1])


# --------------------------------------------------------------------------- gradients at n = 2


def test_every_parameter_gets_a_gradient_at_batch_2_with_the_memory_filled():
    lsg, ik, kr = _modules()
    _step(lsg, ik, kr, 0)  # fills 2 of the 4 slots (no gradient needed)
    for module in (lsg, ik, kr):
        module.zero_grad()
    _step(lsg, ik, kr, 1).backward()
    params = {
        f"{name}.{p}": t
        for name, module in (("ir", lsg), ("ik", ik), ("kr", kr))
        for p, t in module.named_parameters()
    }
    assert sorted(params) == ["ik.weight", "ir.weight", "kr.weight"]  # no dead bias
    for name, t in params.items():
        assert t.grad is not None, name
        assert float(t.grad.abs().sum()) > 0, name


def test_without_memory_a_batch_of_2_leaves_every_graph_parameter_without_gradient():
    # why the memory exists: one partner per image, a softmax over one logit is constant
    lsg, ik, kr = _modules(memory_size=0)
    _step(lsg, ik, kr, 1).backward()
    for module in (lsg, ik, kr):
        for name, t in module.named_parameters():
            assert t.grad is not None, name
            assert float(t.grad.abs().sum()) == 0.0, name


def test_positional_form_at_batch_2_has_zero_gradient_and_conditioned_form_is_uniform_at_init():
    x, _ = _batch(3, 0)
    positional = LearnableSampleGraph(2, form="positional")
    positional(x[:2].requires_grad_()).backward()
    assert float(positional.weight.grad.abs().sum()) == 0.0
    conditioned = LearnableSampleGraph(in_channels=C)
    assert torch.equal(conditioned.graph(x), torch.full((3, 3), 1 / 3))


def test_initial_graphs_are_exactly_uniform_over_batch_and_filled_memory():
    lsg, ik, _ = _modules(memory_size=5)
    x, labels = _batch(3, 0)
    lsg(x)
    ik(x, labels)  # 3 of 5 slots filled
    y, labels_y = _batch(2, 1)
    want = torch.tensor([[0.2] * 5 + [0.0] * 2] * 2)  # N = 2 + 3 columns
    assert torch.equal(lsg.graph(y), want)
    assert torch.equal(ik.graph(y, labels_y), want)
    assert torch.equal(lsg.graph(y, use_memory=False), torch.full((2, 2), 0.5))


# --------------------------------------------------------------------------- permutation


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_graphs_follow_a_permutation_of_the_batch_and_the_loss_does_not_change(n, seed):
    lsg, ik, kr = _modules(memory_size=3, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (lsg, ik, kr):
            module.weight.normal_(generator=g)
    fill, fill_labels = _batch(3, seed + 1)
    lsg(fill.double())
    ik(fill.double(), fill_labels)
    kr(fill.double(), fill_labels, fill.double().flip(0), fill_labels.flip(0))
    for module in (lsg, ik, kr):
        module.eval()  # read-only: no enqueue between the two orders
    x, labels = _batch(n, seed + 2)
    x = x.double()
    perm = torch.randperm(n, generator=g)
    columns = torch.cat([perm, torch.arange(n, n + 3)])  # the memory columns stay in place
    G = lsg.graph(x)
    torch.testing.assert_close(lsg.graph(x[perm]), G[perm][:, columns], rtol=1e-12, atol=1e-12)
    Gk = ik.graph(x, labels)
    torch.testing.assert_close(ik.graph(x[perm], labels[perm]), Gk[perm][:, columns])
    tol = {"rtol": 1e-9, "atol": 1e-9}  # the Gram form rounds differently in another order
    torch.testing.assert_close(lsg(x[perm]), lsg(x), **tol)
    torch.testing.assert_close(ik(x[perm], labels[perm]), ik(x, labels), **tol)
    # pair form: permuting the pairs permutes the pair weights' rows
    xb, lb = x.flip(0), labels.flip(0)
    w = kr.graph(x, labels, xb, lb)
    torch.testing.assert_close(kr.graph(x[perm], labels[perm], xb[perm], lb[perm]), w[perm])
    torch.testing.assert_close(
        kr(x[perm], labels[perm], xb[perm], lb[perm]), kr(x, labels, xb, lb), **tol
    )


# --------------------------------------------------------------------------- the FIFO


def test_memory_wraps_around_as_a_fifo_of_the_latest_images():
    lsg = LearnableSampleGraph(in_channels=C, embed_dim=8, memory_size=5)
    seen = []
    for step, n in enumerate((2, 2, 3, 1, 4)):
        x, _ = _batch(n, step)
        lsg(x)
        seen.extend(x)
    # a loop FIFO: image i of the stream sits in slot i % 5; the last 5 images remain
    assert int(lsg.memory_count) == 5
    assert int(lsg.memory_pointer) == len(seen) % 5
    for i in range(len(seen) - 5, len(seen)):
        assert torch.equal(lsg.memory_features[i % 5], seen[i])
        torch.testing.assert_close(
            lsg.memory_embeddings[i % 5], graph_embedding(seen[i][None], lsg.projection)[0]
        )


def test_batch_larger_than_the_memory_keeps_its_last_images():
    ik = PatchHashGraph(M, C, code_bits=BITS, memory_size=3)
    x, labels = _batch(5, 0)
    ik(x, labels)
    # stream positions 2, 3, 4 in slots 2, 0, 1
    assert torch.equal(ik.memory_features, x[[3, 4, 2]])
    codes = patch_codes(x, labels, ik.projection, M).to(torch.int8)
    assert torch.equal(ik.memory_codes, codes[[3, 4, 2]])
    assert (int(ik.memory_pointer), int(ik.memory_count)) == (2, 3)


def test_pair_form_enqueues_both_maps_of_every_pair():
    kr = PatchHashGraph(M, C, code_bits=BITS, memory_size=8)
    x, labels = _batch(4, 0)
    kr(x[:2], labels[:2], x[2:], labels[2:])
    assert torch.equal(kr.memory_features[:4], x)
    assert int(kr.memory_count) == 4


def test_eval_mode_does_not_enqueue_and_reset_empties():
    lsg = LearnableSampleGraph(in_channels=C, memory_size=4).eval()
    x, _ = _batch(2, 0)
    lsg(x)
    assert lsg.memory_valid() is None
    lsg.train()(x)
    assert int(lsg.memory_count) == 2
    lsg.reset_memory()
    assert lsg.memory_valid() is None
    assert int(lsg.memory_count) == 0


def test_memory_is_detached_and_stored_in_memory_dtype():
    lsg = LearnableSampleGraph(in_channels=C, memory_size=4, memory_dtype=torch.float16)
    x, _ = _batch(2, 0)
    lsg(x.requires_grad_())
    assert lsg.memory_features.dtype == torch.float16
    assert not lsg.memory_features.requires_grad
    # cost per entry: one C x h x w map at 2 bytes
    assert lsg.memory_features[0].nbytes == C * H * W * 2


def test_module_equals_function_with_the_memory():
    lsg, ik, kr = _modules(memory_size=4)
    for seed in range(3):
        _step(lsg, ik, kr, seed)
    x, labels = _batch(2, 7)
    want = conditioned_sample_graph_loss(
        x,
        lsg.weight,
        lsg.projection,
        memory_features=lsg.memory_features,
        memory_embeddings=lsg.memory_embeddings,
        memory_valid=lsg.memory_valid(),
    )
    mem = {
        "memory_features": ik.memory_features,
        "memory_codes": ik.memory_codes,
        "memory_valid": ik.memory_valid(),
    }
    want_ik = patch_hash_graph_loss(x, labels, ik.projection, ik.weight, **mem)
    torch.testing.assert_close(lsg(x), want)
    torch.testing.assert_close(ik(x, labels), want_ik)


# --------------------------------------------------------------------------- resume


def test_state_dict_round_trip_with_a_filled_memory_gives_identical_losses():
    def make():
        modules = _modules(memory_size=3)
        params = [p for m in modules for p in m.parameters()]
        return modules, torch.optim.SGD(params, lr=0.5)

    def run(modules, opt, seeds):
        losses = []
        for seed in seeds:
            opt.zero_grad()
            loss = _step(*modules, seed)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        return losses

    modules, opt = make()
    run(modules, opt, range(4))  # the memory wrapped around already
    saved = copy.deepcopy(([m.state_dict() for m in modules], opt.state_dict()))
    assert all(int(m.memory_count) == 3 for m in modules)
    want = run(modules, opt, range(4, 8))
    resumed, opt2 = make()  # fresh modules: empty, unallocated queues
    for module, state in zip(resumed, saved[0], strict=True):
        module.load_state_dict(state)
    opt2.load_state_dict(saved[1])
    got = run(resumed, opt2, range(4, 8))
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(resumed, modules, strict=True):
        for key, value in b.state_dict().items():
            assert torch.equal(a.state_dict()[key], value), key


# --------------------------------------------------------------------------- host syncs


@contextlib.contextmanager
def _count_host_syncs():
    names = ("item", "__bool__", "__int__", "__float__", "__index__", "tolist", "nonzero")
    calls: list[str] = []
    saved = {name: torch.Tensor.__dict__.get(name) for name in names}

    def counting(name, fn):
        def wrapper(self, *args, **kwargs):
            calls.append(name)
            return fn(self, *args, **kwargs)

        return wrapper

    for name in names:
        setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    try:
        yield calls
    finally:
        for name, original in saved.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)


def _forward_backward_all():
    lsg, ik, kr = _modules(memory_size=4)
    positional = LearnableSampleGraph(4, form="positional")
    _step(lsg, ik, kr, 0)  # allocate and fill the queues before counting
    x, labels = _batch(3, 1)
    x.requires_grad_()
    with _count_host_syncs() as calls:
        loss = lsg(x) + ik(x, labels) + kr(x[:2], labels[:2], x[1:], labels[1:])
        loss = loss + positional(x) + superpixel_pool(x, labels, M)[0].sum()
        loss.backward()
    return calls


def test_zero_host_synchronisations_with_value_checks_off():
    with ccg_layers.set_value_checks(False):
        assert _forward_backward_all() == []
    # the counter works: with the checks on, the same step reads values back
    assert len(_forward_backward_all()) > 0


# --------------------------------------------------------------------------- bad input


def test_error_conditioned_form_without_in_channels():
    with pytest.raises(
        CCGValueRangeError,
        match=r"`in_channels` .* is required with form='conditioned', the default, got None; "
        r"pass form='positional'",
    ):
        LearnableSampleGraph(4)


def test_error_positional_form_with_memory_or_without_num_samples():
    with pytest.raises(CCGValueRangeError, match=r"`memory_size` must be 0 with form='positional'"):
        LearnableSampleGraph(4, form="positional", memory_size=2)
    with pytest.raises(CCGValueRangeError, match=r"`num_samples` is required with form='posit"):
        LearnableSampleGraph(form="positional")


def test_error_free_parametrisation_with_conditioned_form():
    with pytest.raises(CCGValueRangeError, match=r"only exists for form='positional'"):
        LearnableSampleGraph(in_channels=4, parametrization="free")


def test_error_bad_form_and_memory_size_and_memory_dtype():
    with pytest.raises(CCGValueRangeError, match=r"`form` must be one of .* got 'slots'"):
        LearnableSampleGraph(in_channels=4, form="slots")
    with pytest.raises(CCGValueRangeError, match=r"`memory_size` must be a non-negative int"):
        PatchHashGraph(4, 4, memory_size=-1)
    with pytest.raises(CCGValueRangeError, match=r"`memory_dtype` must be a floating"):
        PatchHashGraph(4, 4, memory_size=2, memory_dtype=torch.int8)


def test_error_conditioned_features_channels_name_in_channels():
    with pytest.raises(
        CCGShapeError,
        match=r"`features` must have in_channels=16 channels .* got shape \(2, 8, 4, 4\)",
    ):
        LearnableSampleGraph(in_channels=16)(torch.randn(2, 8, 4, 4))


def test_error_patch_hash_graph_features_channels_name_in_channels():
    x, labels = _batch(2, 0)  # 8 channels
    with pytest.raises(
        CCGShapeError,
        match=r"`features` must have in_channels=16 channels .* got shape \(2, 8, 4, 4\)",
    ):
        PatchHashGraph(M, 16)(x, labels)
    with pytest.raises(
        CCGShapeError,
        match=r"`hash_input` must have in_channels=16 channels .* got shape \(2, 8, 4, 4\)",
    ):
        PatchHashGraph(M, 16)(torch.randn(2, 3, 4, 4), labels, hash_input=x)


def test_error_patch_hash_graph_empty_batch_is_named():
    x, labels = _batch(2, 0)
    with pytest.raises(CCGShapeError, match=r"`features` must hold at least 1 sample"):
        PatchHashGraph(M, C)(x[:0], labels[:0])
    with pytest.raises(CCGShapeError, match=r"`features` must hold at least 1 sample"):
        PatchHashGraph(M, C)(x[:0], labels[:0], x[:0], labels[:0])
    with pytest.raises(CCGShapeError, match=r"`features` must hold at least 1 sample"):
        LearnableSampleGraph(in_channels=C)(x[:0])


def test_error_map_size_changes_while_the_memory_holds_maps():
    lsg = LearnableSampleGraph(in_channels=C, memory_size=4)
    lsg(torch.randn(2, C, 4, 4))
    with pytest.raises(
        CCGShapeError,
        match=r"`features` must have shape \(n, 8, 4, 4\) like the feature maps already in the "
        r"memory, got shape \(2, 8, 2, 2\) \(call `reset_memory\(\)`",
    ):
        lsg(torch.randn(2, C, 2, 2))
    lsg.reset_memory()
    lsg(torch.randn(2, C, 2, 2))


def test_error_graph_accessor_needs_features_in_conditioned_form():
    with pytest.raises(CCGShapeError, match=r"`features` \(n, C, \.\.\.\) are required"):
        LearnableSampleGraph(in_channels=C).graph(4)


@pytest.mark.slow
def test_modules_with_memory_compile_without_graph_breaks():
    def terms(lsg, ik, kr, x, labels):
        return lsg(x) + ik(x, labels) + kr(x[:1] * 1.5, labels[1:], x[1:] * 0.5, labels[:1])

    eager, compiled_modules = _modules(memory_size=3), _modules(memory_size=3)
    _step(*eager, 0)  # the queues are allocated by the first (eager) step
    _step(*compiled_modules, 0)
    compiled = torch.compile(terms, fullgraph=True, backend="aot_eager")
    for seed in (1, 2, 3):
        x, labels = _batch(2, seed)
        want = terms(*eager, x, labels)
        got = compiled(*compiled_modules, x.requires_grad_(), labels)
        torch.testing.assert_close(got, want)
        got.backward()
    for a, b in zip(compiled_modules, eager, strict=True):
        assert torch.equal(a.memory_features, b.memory_features)
        assert int(a.memory_pointer) == int(b.memory_pointer)
        assert a.weight.grad is not None


def test_error_loading_a_memory_of_another_size():
    lsg = LearnableSampleGraph(in_channels=C, memory_size=4)
    lsg(_batch(2, 0)[0])
    with pytest.raises(RuntimeError, match=r"the saved memory has 4 slots, this module has "):
        LearnableSampleGraph(in_channels=C, memory_size=3).load_state_dict(lsg.state_dict())


def test_error_conditioned_form_with_one_channel():
    with pytest.raises(CCGValueRangeError, match=r"`in_channels` must be >= 2 .* got 1"):
        LearnableSampleGraph(in_channels=1)


def test_conditioned_graph_with_memory_learns_to_prefer_partners_of_the_same_kind_at_batch_2():
    # two kinds of images (prototype + noise); batches of 2 drawn at random, as a shuffling
    # loader does; only the graph learns. With the memory the graph learns to put weight on
    # the partners of the same kind (their features are closer), which a position-indexed
    # matrix cannot express and which a batch of 2 without memory cannot learn at all.
    g = torch.Generator().manual_seed(0)
    prototypes = torch.randn(2, 16, 2, 2, generator=g) * 2

    def images(n):
        kinds = torch.randint(0, 2, (n,), generator=g)
        return prototypes[kinds] + torch.randn(n, 16, 2, 2, generator=g), kinds

    lsg = LearnableSampleGraph(in_channels=16, embed_dim=16, memory_size=8)
    opt = torch.optim.SGD(lsg.parameters(), lr=0.05)
    for _ in range(150):
        x, _ = images(2)
        opt.zero_grad()
        lsg(x).backward()
        opt.step()
    x, kinds = images(32)
    graph = lsg.graph(x, use_memory=False).detach()
    same = (kinds[:, None] == kinds[None, :]) & ~torch.eye(32, dtype=torch.bool)
    other = kinds[:, None] != kinds[None, :]
    # per image, the weight on one same-kind partner over the weight on one other-kind partner
    ratio = graph[same].mean() / graph[other].mean()
    assert float(ratio) > 3.0
    assert torch.equal(LearnableSampleGraph(in_channels=16).graph(x), torch.full((32, 32), 1 / 32))


def test_patch_graph_with_memory_learns_to_prefer_partners_of_the_same_kind_at_batch_2():
    # as above for L_IK's W_l: two kinds of images, fixed 2x2-block superpixels
    g = torch.Generator().manual_seed(0)
    prototypes = torch.randn(2, 16, 4, 4, generator=g) * 2
    blocks = torch.arange(4)[:, None] // 2 * 2 + torch.arange(4)[None, :] // 2

    def images(n):
        kinds = torch.randint(0, 2, (n,), generator=g)
        return prototypes[kinds] + torch.randn(n, 16, 4, 4, generator=g), kinds

    phg = PatchHashGraph(4, 16, code_bits=32, memory_size=8)
    opt = torch.optim.SGD(phg.parameters(), lr=0.05)
    for _ in range(150):
        x, _ = images(2)
        opt.zero_grad()
        phg(x, blocks.expand(2, 4, 4)).backward()
        opt.step()
    x, kinds = images(32)
    graph = phg.graph(x, blocks.expand(32, 4, 4), use_memory=False).detach()
    same = (kinds[:, None] == kinds[None, :]) & ~torch.eye(32, dtype=torch.bool)
    other = kinds[:, None] != kinds[None, :]
    assert float(graph[same].mean() / graph[other].mean()) > 3.0


# --------------------------------------------------------------------------- contrast form
# (beyond the paper): the modules with contrast_margin take the images' multi-hot labels, and
# the memory queues each partner's labels with its map


NC = 3  # findings per image in these tests


def _findings(n, seed):
    g = torch.Generator().manual_seed(1000 + seed)
    y = (torch.rand(n, NC, generator=g) < 0.4).float()
    y[0] = 0.0  # a "No finding" image in every batch
    return y


def _contrast_modules(memory_size=4, margin=1.5):
    return (
        LearnableSampleGraph(
            in_channels=C, embed_dim=8, memory_size=memory_size, contrast_margin=margin
        ),
        PatchHashGraph(M, C, code_bits=BITS, memory_size=memory_size, contrast_margin=margin),
        PatchHashGraph(M, C, code_bits=BITS, memory_size=memory_size, contrast_margin=margin),
    )


def _contrast_step(lsg, ik, kr, seed, n=2):
    x, labels = _batch(n, seed)
    y = _findings(n, seed)
    h = n // 2
    return (
        lsg(x, image_labels=y)
        + ik(x, labels, image_labels=y)
        + kr(x[:h], labels[:h], x[h:], labels[h:], image_labels=y[:h], image_labels_b=y[h:])
    )


def test_contrast_module_equals_function_with_the_memory():
    lsg, ik, kr = _contrast_modules(memory_size=4)
    for seed in range(3):
        _contrast_step(lsg, ik, kr, seed)
    x, labels = _batch(4, 7)
    y = _findings(4, 7)
    want = conditioned_sample_graph_loss(
        x,
        lsg.weight,
        lsg.projection,
        memory_features=lsg.memory_features,
        memory_embeddings=lsg.memory_embeddings,
        memory_valid=lsg.memory_valid(),
        image_labels=y,
        memory_image_labels=lsg.memory_image_labels,
        margin=1.5,
    )
    mem = {
        "memory_features": ik.memory_features,
        "memory_codes": ik.memory_codes,
        "memory_valid": ik.memory_valid(),
        "memory_image_labels": ik.memory_image_labels,
    }
    want_ik = patch_hash_graph_loss(
        x, labels, ik.projection, ik.weight, image_labels=y, margin=1.5, **mem
    )
    mem_kr = {
        "memory_features": kr.memory_features,
        "memory_codes": kr.memory_codes,
        "memory_valid": kr.memory_valid(),
        "memory_image_labels": kr.memory_image_labels,
    }
    want_kr = patch_hash_graph_loss(
        x[:2], labels[:2], kr.projection, kr.weight, features_b=x[2:], labels_b=labels[2:],
        image_labels=y[:2], image_labels_b=y[2:], margin=1.5, **mem_kr,
    )  # fmt: skip
    assert lsg.memory_image_labels.shape == (4, NC)
    torch.testing.assert_close(lsg(x, image_labels=y.bool()), want)  # bool labels work too
    torch.testing.assert_close(ik(x, labels, image_labels=y), want_ik)
    got_kr = kr(x[:2], labels[:2], x[2:], labels[2:], image_labels=y[:2], image_labels_b=y[2:])
    torch.testing.assert_close(got_kr, want_kr)
    # and it differs from the pull form (some pairs are unlike)
    assert not torch.allclose(want, conditioned_sample_graph_loss(
        x, lsg.weight, lsg.projection, memory_features=lsg.memory_features,
        memory_embeddings=lsg.memory_embeddings, memory_valid=lsg.memory_valid(),
    ))  # fmt: skip


def test_contrast_memory_keeps_the_labels_fifo_with_wrap_around():
    lsg = LearnableSampleGraph(in_channels=C, embed_dim=8, memory_size=5, contrast_margin=1.0)
    seen_x, seen_y = [], []
    for step, n in enumerate((2, 2, 3, 1, 4)):
        x, _ = _batch(n, step)
        y = _findings(n, step)
        lsg(x, image_labels=y)
        seen_x.extend(x)
        seen_y.extend(y)
    assert lsg.memory_image_labels.dtype == torch.float32
    for i in range(len(seen_x) - 5, len(seen_x)):
        assert torch.equal(lsg.memory_features[i % 5], seen_x[i])
        assert torch.equal(lsg.memory_image_labels[i % 5], seen_y[i])


def test_contrast_pair_form_enqueues_the_labels_of_both_images_of_every_pair():
    kr = PatchHashGraph(M, C, code_bits=BITS, memory_size=8, contrast_margin=1.0)
    x, labels = _batch(4, 0)
    y = _findings(4, 0)
    kr(x[:2], labels[:2], x[2:], labels[2:], image_labels=y[:2], image_labels_b=y[2:])
    assert torch.equal(kr.memory_features[:4], x)
    assert torch.equal(kr.memory_image_labels[:4], y)


def test_pull_modules_keep_no_label_queue_and_their_state_dict_keys():
    for module in _modules(memory_size=2):
        assert "memory_image_labels" not in module.state_dict()
    for module in _contrast_modules(memory_size=2):
        assert "memory_image_labels" in module.state_dict()


def test_contrast_state_dict_round_trip_with_a_filled_memory_gives_identical_losses():
    def make():
        modules = _contrast_modules(memory_size=3)
        params = [p for m in modules for p in m.parameters()]
        return modules, torch.optim.SGD(params, lr=0.5)

    def run(modules, opt, seeds):
        losses = []
        for seed in seeds:
            opt.zero_grad()
            loss = _contrast_step(*modules, seed, n=4)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        return losses

    modules, opt = make()
    run(modules, opt, range(3))  # wrapped around already
    saved = copy.deepcopy(([m.state_dict() for m in modules], opt.state_dict()))
    want = run(modules, opt, range(3, 6))
    resumed, opt2 = make()
    for module, state in zip(resumed, saved[0], strict=True):
        module.load_state_dict(state)
    opt2.load_state_dict(saved[1])
    assert torch.equal(resumed[0].memory_image_labels, saved[0][0]["memory_image_labels"])
    got = run(resumed, opt2, range(3, 6))
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_contrast_zero_host_synchronisations_with_value_checks_off():
    def step():
        lsg, ik, kr = _contrast_modules(memory_size=4)
        positional = LearnableSampleGraph(4, form="positional", contrast_margin=1.0)
        _contrast_step(lsg, ik, kr, 0)  # allocate and fill the queues before counting
        x, _labels = _batch(4, 1)
        y = _findings(4, 1)
        x.requires_grad_()
        with _count_host_syncs() as calls:
            loss = _contrast_step(lsg, ik, kr, 1, n=4) + positional(x, image_labels=y)
            loss.backward()
        return calls

    with ccg_layers.set_value_checks(False):
        assert step() == []
    assert len(step()) > 0  # with the checks on the labels' values are read back


@pytest.mark.parametrize("margin", [0, -0.5, float("nan"), float("inf"), "1.0", True])
def test_error_bad_contrast_margin(margin):
    with pytest.raises(CCGValueRangeError, match=r"`contrast_margin` must be a finite positive"):
        LearnableSampleGraph(in_channels=C, contrast_margin=margin)
    with pytest.raises(CCGValueRangeError, match=r"`contrast_margin` must be a finite positive"):
        PatchHashGraph(M, C, contrast_margin=margin)


def test_error_contrast_module_without_image_labels():
    lsg, ik, kr = _contrast_modules()
    x, labels = _batch(2, 0)
    y = _findings(2, 0)
    with pytest.raises(CCGShapeError, match=r"`image_labels` \(n, C\) multi-hot .* required"):
        lsg(x)
    with pytest.raises(CCGShapeError, match=r"`image_labels` \(n, C\) multi-hot .* required"):
        ik(x, labels)
    with pytest.raises(CCGShapeError, match=r"`image_labels_b` \(n, C\) multi-hot .* required"):
        kr(x[:1], labels[:1], x[1:], labels[1:], image_labels=y[:1])


def test_error_contrast_module_image_labels_wrong_shape():
    lsg, ik, _ = _contrast_modules()
    x, labels = _batch(2, 0)
    with pytest.raises(CCGShapeError, match=r"`image_labels`"):
        lsg(x, image_labels=torch.zeros(3, NC))
    with pytest.raises(CCGShapeError, match=r"`image_labels`"):
        ik(x, labels, image_labels=torch.zeros(2))


@pytest.mark.parametrize("bad", [0.5, float("nan"), float("inf"), -1.0])
def test_error_contrast_module_image_labels_not_multi_hot(bad):
    lsg, ik, _ = _contrast_modules()
    x, labels = _batch(2, 0)
    y = torch.zeros(2, NC)
    y[1, 2] = bad
    with pytest.raises(CCGValueRangeError, match=r"`image_labels` must hold multi-hot labels"):
        lsg(x, image_labels=y)
    with pytest.raises(CCGValueRangeError, match=r"`image_labels` must hold multi-hot labels"):
        ik(x, labels, image_labels=y)


def test_error_contrast_module_classes_change_while_the_memory_holds_labels():
    lsg, _, _ = _contrast_modules()
    x, _ = _batch(2, 0)
    lsg(x, image_labels=torch.zeros(2, NC))
    with pytest.raises(CCGShapeError, match=r"`image_labels`"):
        lsg(x, image_labels=torch.zeros(2, NC + 1))


def test_error_image_labels_without_contrast_margin():
    lsg, ik, _ = _modules()
    x, labels = _batch(2, 0)
    with pytest.raises(CCGValueRangeError, match=r"`image_labels` is only used with"):
        lsg(x, image_labels=torch.zeros(2, NC))
    with pytest.raises(CCGValueRangeError, match=r"`image_labels` is only used with"):
        ik(x, labels, image_labels=torch.zeros(2, NC))


def test_error_image_labels_b_without_pair_form():
    _, ik, _ = _contrast_modules()
    x, labels = _batch(2, 0)
    with pytest.raises(CCGShapeError, match=r"`image_labels_b` is only used in the pair form"):
        ik(x, labels, image_labels=torch.zeros(2, NC), image_labels_b=torch.zeros(2, NC))
