"""The cross-batch memory of partners (issue 10): memory_enqueue_, and the memory of the graph modules.

At the paper's batch of 2 each image has one partner in the batch, so every row of a graph is
a softmax over one logit: constant, and the graph parameters get no gradient. With the memory
filled every parameter of L_IR, L_IK and L_KR's patch graph learns; the graphs follow the
images (permutation), the memory is a FIFO that wraps around, and it is saved with the module."""

from __future__ import annotations

import copy

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

import ccg_layers
from ccg_layers import LearnableSampleGraph, PatchHashGraph, RelationGraphs
from ccg_layers.errors import CCGDTypeError, CCGShapeError, CCGValueRangeError
from ccg_layers.functional import (
    conditioned_sample_graph_loss,
    graph_embedding,
    memory_enqueue_,
    patch_codes,
    patch_hash_graph_loss,
    superpixel_pool,
)
from tests.graph_references import (
    BITS,
    C,
    H,
    M,
    W,
    contrast_modules,
    count_tensor_syncs,
    memory_batch,
    memory_modules,
    resume_round_trip,
)


def _step(lsg, ik, kr, seed):
    """One training step's relation terms at the paper's batch of 2 (one L_KR pair)."""
    x, labels = memory_batch(2, seed)
    x.requires_grad_()
    return lsg(x) + ik(x, labels) + kr(x[:1] * 1.5, labels[1:], x[1:] * 0.5, labels[:1])


def _forward_backward_all():
    lsg, ik, kr = memory_modules(memory_size=4)
    positional = LearnableSampleGraph(4, form="positional")
    _step(lsg, ik, kr, 0)  # allocate and fill the queues before counting
    x, labels = memory_batch(3, 1)
    x.requires_grad_()
    with count_tensor_syncs() as calls:
        loss = lsg(x) + ik(x, labels) + kr(x[:2], labels[:2], x[1:], labels[1:])
        loss = loss + positional(x) + superpixel_pool(x, labels, M)[0].sum()
        loss.backward()
    return calls


@given(st.integers(1, 5), st.lists(st.integers(1, 7), min_size=1, max_size=6))
def test_memory_enqueue_is_a_fifo_with_wrap_around(size, batch_sizes):
    queue = torch.zeros(size, 2)
    codes = torch.zeros(size, 1, dtype=torch.int8)
    pointer, count = torch.tensor(0), torch.tensor(0)
    slots = [None] * size  # loop reference: write one entry after the other
    ref_ptr, seen = 0, 0
    for b in batch_sizes:
        entries = torch.arange(seen, seen + b, dtype=torch.float32)
        memory_enqueue_(
            [queue, codes],
            pointer,
            count,
            [entries[:, None].expand(b, 2), (entries[:, None] % 100).to(torch.int8)],
        )
        for e in entries.tolist():
            slots[ref_ptr] = e
            ref_ptr = (ref_ptr + 1) % size
        seen += b
        filled = [i for i, s in enumerate(slots) if s is not None]
        assert int(pointer) == ref_ptr
        assert int(count) == len(filled)
        for i in filled:
            assert float(queue[i, 0]) == slots[i] == float(queue[i, 1])
            assert int(codes[i, 0]) == int(slots[i]) % 100


def test_memory_enqueue_detaches_and_casts():
    queue = torch.zeros(2, 3, dtype=torch.float16)
    x = torch.randn(1, 3, requires_grad=True)
    memory_enqueue_([queue], torch.tensor(1), torch.tensor(0), [x])
    assert not queue.requires_grad
    assert torch.equal(queue[1], x.detach().half()[0])


def test_error_memory_enqueue_entry_shape():
    with pytest.raises(CCGShapeError, match=r"`entries\[0\]` must have shape \(n, 3\) .*\(2, 4\)"):
        memory_enqueue_([torch.zeros(2, 3)], torch.tensor(0), torch.tensor(0), [torch.zeros(2, 4)])


def test_error_memory_enqueue_pointer_not_integer():
    with pytest.raises(CCGDTypeError, match=r"`pointer` must have a int dtype"):
        memory_enqueue_(
            [torch.zeros(2, 3)], torch.tensor(0.0), torch.tensor(0), [torch.zeros(1, 3)]
        )


def test_every_parameter_gets_a_gradient_at_batch_2_with_the_memory_filled():
    lsg, ik, kr = memory_modules()
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
    lsg, ik, kr = memory_modules(memory_size=0)
    _step(lsg, ik, kr, 1).backward()
    for module in (lsg, ik, kr):
        for name, t in module.named_parameters():
            assert t.grad is not None, name
            assert float(t.grad.abs().sum()) == 0.0, name


def test_initial_graphs_are_exactly_uniform_over_batch_and_filled_memory():
    lsg, ik, _ = memory_modules(memory_size=5)
    x, labels = memory_batch(3, 0)
    lsg(x)
    ik(x, labels)  # 3 of 5 slots filled
    y, labels_y = memory_batch(2, 1)
    want = torch.tensor([[0.2] * 5 + [0.0] * 2] * 2)  # N = 2 + 3 columns
    assert torch.equal(lsg.graph(y), want)
    assert torch.equal(ik.graph(y, labels_y), want)
    assert torch.equal(lsg.graph(y, use_memory=False), torch.full((2, 2), 0.5))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_graphs_follow_a_permutation_of_the_batch_and_the_loss_does_not_change(n, seed):
    lsg, ik, kr = memory_modules(memory_size=3, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (lsg, ik, kr):
            module.weight.normal_(generator=g)
    fill, fill_labels = memory_batch(3, seed + 1)
    lsg(fill.double())
    ik(fill.double(), fill_labels)
    kr(fill.double(), fill_labels, fill.double().flip(0), fill_labels.flip(0))
    for module in (lsg, ik, kr):
        module.eval()  # read-only: no enqueue between the two orders
    x, labels = memory_batch(n, seed + 2)
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


def test_memory_wraps_around_as_a_fifo_of_the_latest_images():
    lsg = LearnableSampleGraph(in_channels=C, embed_dim=8, memory_size=5)
    seen = []
    for step, n in enumerate((2, 2, 3, 1, 4)):
        x, _ = memory_batch(n, step)
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
    x, labels = memory_batch(5, 0)
    ik(x, labels)
    # stream positions 2, 3, 4 in slots 2, 0, 1
    assert torch.equal(ik.memory_features, x[[3, 4, 2]])
    codes = patch_codes(x, labels, ik.projection, M).to(torch.int8)
    assert torch.equal(ik.memory_codes, codes[[3, 4, 2]])
    assert (int(ik.memory_pointer), int(ik.memory_count)) == (2, 3)


def test_pair_form_enqueues_both_maps_of_every_pair():
    kr = PatchHashGraph(M, C, code_bits=BITS, memory_size=8)
    x, labels = memory_batch(4, 0)
    kr(x[:2], labels[:2], x[2:], labels[2:])
    assert torch.equal(kr.memory_features[:4], x)
    assert int(kr.memory_count) == 4


def test_eval_mode_does_not_enqueue_and_reset_empties():
    lsg = LearnableSampleGraph(in_channels=C, memory_size=4).eval()
    x, _ = memory_batch(2, 0)
    lsg(x)
    assert lsg.memory_valid() is None
    lsg.train()(x)
    assert int(lsg.memory_count) == 2
    lsg.reset_memory()
    assert lsg.memory_valid() is None
    assert int(lsg.memory_count) == 0


def test_memory_is_detached_and_stored_in_memory_dtype():
    lsg = LearnableSampleGraph(in_channels=C, memory_size=4, memory_dtype=torch.float16)
    x, _ = memory_batch(2, 0)
    lsg(x.requires_grad_())
    assert lsg.memory_features.dtype == torch.float16
    assert not lsg.memory_features.requires_grad
    # cost per entry: one C x h x w map at 2 bytes
    assert lsg.memory_features[0].nbytes == C * H * W * 2


def test_module_equals_function_with_the_memory():
    lsg, ik, kr = memory_modules(memory_size=4)
    for seed in range(3):
        _step(lsg, ik, kr, seed)
    x, labels = memory_batch(2, 7)
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


def test_state_dict_round_trip_with_a_filled_memory_gives_identical_losses():
    # four steps of two images into queues of three: the memory wrapped around already
    saved, modules, resumed, want, got = resume_round_trip(
        lambda: memory_modules(memory_size=3),
        lambda m, seed: _step(*m, seed),
        range(4),
        range(4, 8),
    )
    assert all(int(state["memory_count"]) == 3 for state in saved)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(resumed, modules, strict=True):
        for key, value in b.state_dict().items():
            assert torch.equal(a.state_dict()[key], value), key


def test_zero_host_synchronisations_with_value_checks_off():
    with ccg_layers.set_value_checks(False):
        assert _forward_backward_all() == []
    # the counter works: with the checks on, the same step reads values back
    assert len(_forward_backward_all()) > 0


def test_error_bad_form_and_memory_size_and_memory_dtype():
    with pytest.raises(CCGValueRangeError, match=r"`form` must be one of .* got 'slots'"):
        LearnableSampleGraph(in_channels=4, form="slots")
    with pytest.raises(CCGValueRangeError, match=r"`memory_size` must be a non-negative int"):
        PatchHashGraph(4, 4, memory_size=-1)
    with pytest.raises(CCGDTypeError, match=r"`memory_dtype` must be a floating"):
        PatchHashGraph(4, 4, memory_size=2, memory_dtype=torch.int8)


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


@pytest.mark.slow
@pytest.mark.parametrize("defer", [False, True])
def test_modules_with_memory_compile_without_graph_breaks(defer):
    def terms(lsg, ik, kr, x, labels):
        return lsg(x) + ik(x, labels) + kr(x[:1] * 1.5, labels[1:], x[1:] * 0.5, labels[:1])

    eager = memory_modules(memory_size=3)
    compiled_modules = memory_modules(memory_size=3, defer_enqueue=defer)
    modules = torch.nn.ModuleList(compiled_modules)
    _step(*eager, 0)  # the queues are allocated by the first (eager) step
    _step(*compiled_modules, 0)
    ccg_layers.commit_memories(modules)  # deferred: enqueued after the backward; else a no-op
    compiled = torch.compile(terms, fullgraph=True, backend="aot_eager")
    for seed in (1, 2, 3):
        x, labels = memory_batch(2, seed)
        want = terms(*eager, x, labels)
        got = compiled(*compiled_modules, x.requires_grad_(), labels)
        torch.testing.assert_close(got, want)
        got.backward()
        ccg_layers.commit_memories(modules)
    for a, b in zip(compiled_modules, eager, strict=True):
        assert torch.equal(a.memory_features, b.memory_features)
        assert int(a.memory_pointer) == int(b.memory_pointer)
        assert a.weight.grad is not None


def test_error_loading_a_memory_of_another_size():
    lsg = LearnableSampleGraph(in_channels=C, memory_size=4)
    lsg(memory_batch(2, 0)[0])
    with pytest.raises(RuntimeError, match=r"the saved memory has 4 slots, this module has "):
        LearnableSampleGraph(in_channels=C, memory_size=3).load_state_dict(lsg.state_dict())


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


def test_pull_modules_keep_no_label_queue_and_their_state_dict_keys():
    for module in memory_modules(memory_size=2):
        assert "memory_image_labels" not in module.state_dict()
    for module in contrast_modules(memory_size=2):
        assert "memory_image_labels" in module.state_dict()


# ------------------------------------------------------- the enqueue deferred past the backward


def _deferred_pair(memory_size=3):
    """The three memory modules and RelationGraphs, enqueuing in the forward and deferred."""
    now = [
        *memory_modules(memory_size),
        RelationGraphs(C, M, embed_dim=8, code_bits=BITS, memory_size=memory_size),
    ]
    later = [
        *memory_modules(memory_size, defer_enqueue=True),
        RelationGraphs(
            C, M, embed_dim=8, code_bits=BITS, memory_size=memory_size, defer_enqueue=True
        ),
    ]
    return now, later


def _all_terms(lsg, ik, kr, joint, seed):
    x, labels = memory_batch(2, seed)
    x.requires_grad_()
    l_ir, l_ik = joint(x, labels)
    loss = _step(lsg, ik, kr, seed) + l_ir + 2.0 * l_ik
    return loss, x


def test_deferred_enqueue_gives_the_same_losses_gradients_and_memory_after_commit():
    now, later = _deferred_pair()
    for seed in range(5):  # 10 images through memories of 3: the queues wrap around
        loss_now, x_now = _all_terms(*now, seed)
        loss_later, x_later = _all_terms(*later, seed)
        assert torch.equal(loss_now, loss_later)
        loss_now.backward()
        loss_later.backward()
        torch.testing.assert_close(x_later.grad, x_now.grad, rtol=0, atol=0)
        for a in later:  # kept, not yet in the memory
            assert a._pending is not None
        ccg_layers.commit_memories(torch.nn.ModuleList(later))
        for a, b in zip(later, now, strict=True):
            assert a._pending is None
            for name, buf in b.named_buffers():
                assert torch.equal(dict(a.named_buffers())[name], buf), name
            for (name, p), q in zip(b.named_parameters(), a.parameters(), strict=True):
                assert torch.equal(q.grad, p.grad), name


def test_deferred_forward_reads_the_memory_itself_and_the_default_a_copy():
    # the backward of the deferred forward needs the very queue it read: changing it in place
    # before the backward is caught by autograd. The default forward read a copy, so its own
    # in-place enqueue (and any other change) leaves its backward intact.
    for defer in (True, False):
        lsg, _, _ = memory_modules(3, defer_enqueue=defer)
        _step(lsg, *memory_modules(3)[1:], 0).backward()
        ccg_layers.commit_memories(lsg)
        x, _ = memory_batch(2, 1)
        loss = lsg(x.requires_grad_())
        lsg.memory_features.add_(1.0)
        if defer:
            with pytest.raises(RuntimeError, match="modified by an inplace operation"):
                loss.backward()
        else:
            loss.backward()
            assert torch.isfinite(x.grad).all()


def test_an_eval_forward_reads_the_memory_without_a_copy():
    # no enqueue follows an eval-mode forward, so it needs no copy of the queue
    lsg, _, _ = memory_modules(3)
    _step(lsg, *memory_modules(3)[1:], 0)
    lsg.eval()
    (maps, *_) = lsg.memory_inputs()
    assert maps is lsg.memory_features
    lsg.train()
    assert lsg.memory_inputs()[0] is not lsg.memory_features


def test_error_two_deferred_training_forwards_without_commit():
    lsg, ik, _ = memory_modules(3, defer_enqueue=True)
    x, labels = memory_batch(2, 0)
    lsg(x)
    ik(x, labels)
    with pytest.raises(
        RuntimeError,
        match=r"LearnableSampleGraph\(defer_enqueue=True\): a "
        r"training forward must be followed by `commit_memory\(\)`",
    ):
        lsg(x)
    with pytest.raises(RuntimeError, match=r"PatchHashGraph\(defer_enqueue=True\)"):
        ik(x, labels)
    ik.commit_memory()
    ik(x, labels)  # committed: the next forward is fine


def test_deferred_commit_without_a_forward_eval_reset_and_load_keep_nothing_pending():
    lsg, _, _ = memory_modules(3, defer_enqueue=True)
    lsg.commit_memory()  # nothing pending: a no-op
    assert lsg.memory_valid() is None
    x, _ = memory_batch(2, 0)
    lsg.eval()
    lsg(x)  # eval mode keeps nothing
    assert lsg._pending is None
    lsg.train()
    lsg(x)
    lsg.reset_memory()
    assert lsg._pending is None
    lsg(x)
    lsg.commit_memory()
    state = copy.deepcopy(lsg.state_dict())
    lsg(memory_batch(2, 1)[0])
    lsg.load_state_dict(state)  # the batch kept before the load is dropped with the old state
    lsg.commit_memory()
    assert int(lsg.memory_count) == 2


def test_commit_memories_reaches_nested_modules_and_leaves_the_others():
    lsg, ik, _ = memory_modules(3, defer_enqueue=True)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ModuleDict({"a": lsg, "b": ik}))
    x, labels = memory_batch(2, 0)
    lsg(x)
    ik(x, labels)
    ccg_layers.commit_memories(model)
    assert int(lsg.memory_count) == int(ik.memory_count) == 2


@pytest.mark.parametrize("cls", ["sample", "patch", "joint"])
def test_error_defer_enqueue_not_a_bool(cls):
    make = {
        "sample": lambda: LearnableSampleGraph(in_channels=C, defer_enqueue="yes"),
        "patch": lambda: PatchHashGraph(M, C, defer_enqueue=1),
        "joint": lambda: RelationGraphs(C, M, defer_enqueue=None),
    }[cls]
    with pytest.raises(CCGValueRangeError, match=r"`defer_enqueue` must be True or False, got "):
        make()


# --------------------------------------------------------------------------- validation gaps


def _enqueue(pointer=0, count=0, memory=None, entries=None):
    memory = [torch.zeros(3, 1)] if memory is None else memory
    entries = [torch.ones(2, 1)] if entries is None else entries
    memory_enqueue_(memory, torch.tensor(pointer), torch.tensor(count), entries)


@pytest.mark.parametrize("pointer", [3, 5, -1])
def test_error_memory_enqueue_pointer_out_of_range(pointer):
    with pytest.raises(
        CCGValueRangeError,
        match=rf"`pointer` must be in \[0, 3\) for a memory of S=3 slots, got {pointer}\.",
    ):
        _enqueue(pointer=pointer)


@pytest.mark.parametrize("count", [-4, 4])
def test_error_memory_enqueue_count_out_of_range(count):
    with pytest.raises(
        CCGValueRangeError,
        match=rf"`count` must be in \[0, 3\] for a memory of S=3 slots, got {count}\.",
    ):
        _enqueue(count=count)


def test_memory_enqueue_pointer_unchecked_with_value_checks_off():
    with ccg_layers.set_value_checks(False):
        _enqueue(pointer=5)


def test_memory_enqueue_full_count_is_valid():
    _enqueue(pointer=2, count=3)


def test_error_memory_enqueue_memory_is_a_tensor():
    with pytest.raises(
        CCGDTypeError,
        match=r"`memory` must be a list or tuple of tensors \(one per queue\), got Tensor",
    ):
        memory_enqueue_(torch.zeros(3, 1), torch.tensor(0), torch.tensor(0), [torch.ones(2, 1)])


def test_error_memory_enqueue_entries_none():
    with pytest.raises(
        CCGDTypeError, match=r"`entries` must be a list or tuple of tensors .*got NoneType"
    ):
        memory_enqueue_([torch.zeros(3, 1)], torch.tensor(0), torch.tensor(0), None)


def test_error_memory_enqueue_no_queue():
    with pytest.raises(
        CCGShapeError, match=r"`memory` must hold at least one queue, got an empty sequence"
    ):
        memory_enqueue_([], torch.tensor(0), torch.tensor(0), [])


def test_error_memory_enqueue_entries_count_differs():
    with pytest.raises(
        CCGShapeError, match=r"`entries` must hold one tensor per queue of `memory` \(1\), got 2"
    ):
        _enqueue(entries=[torch.ones(2, 1), torch.ones(2, 1)])


def test_error_memory_enqueue_scalar_queue():
    with pytest.raises(
        CCGShapeError,
        match=r"`memory\[0\]` must have shape \(S, \.\.\.\) with S >= 1 slots, "
        r"got shape \(\)",
    ):
        _enqueue(memory=[torch.tensor(0.0)], entries=[torch.ones(2)])


def test_error_memory_enqueue_scalar_entry():
    with pytest.raises(
        CCGShapeError,
        match=r"`entries\[0\]` must have shape \(n, 1\) with n the batch size, got shape \(\)",
    ):
        _enqueue(entries=[torch.tensor(1.0)])


def test_error_memory_enqueue_second_entry_other_batch_size():
    with pytest.raises(
        CCGShapeError, match=r"`entries\[1\]` must have shape \(n, 1\) with n=2 like `entries\[0\]`"
    ):
        _enqueue(
            memory=[torch.zeros(3, 1), torch.zeros(3, 1)],
            entries=[torch.ones(2, 1), torch.ones(1, 1)],
        )


def test_memory_enqueue_stores_nan_entries_as_given():
    queue = torch.zeros(3, 1)
    _enqueue(memory=[queue], entries=[torch.full((1, 1), float("nan"))])
    assert queue[0].isnan().all()


@pytest.mark.parametrize("module", ["x", None])
def test_error_commit_memories_not_a_module(module):
    with pytest.raises(
        CCGDTypeError, match=r"`module` must be a torch.nn.Module \(e.g. the model\), got "
    ):
        ccg_layers.commit_memories(module)
