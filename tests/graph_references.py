"""Float64 references, hypothesis strategies and batches shared by the graph tests.

The references are written from the paper's equations with loops (Eq. 4-10); the concept
test files (test_distance, test_normalization, test_sample_graph, test_hashing,
test_patch_graph, test_memory) compare the library against them.
"""

from __future__ import annotations

import contextlib
import copy
import math

import hypothesis.strategies as st
import torch

from ccg_layers import LearnableSampleGraph, PatchHashGraph


def ref_distance(a, b):
    """Euclidean distance of two flattened samples, a plain loop in float64."""
    a, b = a.double().flatten().tolist(), b.double().flatten().tolist()
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


def ref_sample_graph_loss(features, graph, reduction="mean"):
    """Eq. 4: sum_{u,v} G(u, v) D(F_u, F_v) / n^2."""
    n = features.shape[0]
    terms = torch.zeros(n, n, dtype=torch.float64)
    for u in range(n):
        for v in range(n):
            terms[u, v] = float(graph[u, v]) * ref_distance(features[u], features[v])
    if reduction == "none":
        return terms
    return terms.sum() if reduction == "sum" else terms.sum() / (n * n)


def ref_normalize(logits, parametrization="softmax", pairs=False):
    """Row softmax over the partners v != u scaled by (n-1)/n, self-weight 1/n (or P*softmax)."""
    if parametrization == "free":
        return logits.double()
    x = logits.double().tolist()
    if pairs:
        P = len(x)
        z = sum(math.exp(t) for t in x)
        return torch.tensor([P * math.exp(t) / z for t in x], dtype=torch.float64)
    n = len(x)
    out = torch.zeros(n, n, dtype=torch.float64)
    for u in range(n):
        if n == 1:
            out[u, u] = 1.0
            continue
        z = sum(math.exp(x[u][v]) for v in range(n) if v != u)
        for v in range(n):
            out[u, v] = 1.0 / n if v == u else (n - 1) / n * math.exp(x[u][v]) / z
    return out


def ref_superpixel_pool(x, labels, m):
    """Mean over the label pixels of segment l of the value of the grid cell each pixel is in."""
    N, C, h, w = x.shape
    _, H0, W0 = labels.shape
    H, W = max(H0, h), max(W0, w)  # labels coarser than the grid are upsampled (nearest)
    labels = labels[:, [(r * H0) // H for r in range(H)]][:, :, [(c * W0) // W for c in range(W)]]
    pooled = torch.zeros(N, m, C, dtype=torch.float64)
    valid = torch.zeros(N, m, dtype=torch.bool)
    for i in range(N):
        for seg in range(m):
            acc, count = torch.zeros(C, dtype=torch.float64), 0
            for r in range(H):
                for c in range(W):
                    if int(labels[i, r, c]) == seg:
                        acc += x[i, :, (r * h) // H, (c * w) // W].double()
                        count += 1
            if count:
                pooled[i, seg] = acc / count
                valid[i, seg] = True
    return pooled, valid


def ref_hamming_popcount(a, b):
    """XOR/popcount of the codes packed into Python ints (bit k set where code k is +1)."""

    def pack(code):
        return sum(1 << k for k, v in enumerate(code.tolist()) if v > 0)

    A = a.reshape(-1, a.shape[-1])
    B = b.reshape(-1, b.shape[-1])
    out = torch.zeros(A.shape[0], B.shape[0], dtype=torch.float64)
    for i in range(A.shape[0]):
        for j in range(B.shape[0]):
            out[i, j] = bin(pack(A[i]) ^ pack(B[j])).count("1")
    return out


def ref_patch_scores(codes_a, codes_b, weight, bias):
    """Eq. 6-7 literally: the m x m Hamming graph (missing patch: bits/2), then W_l."""
    bits = codes_a.shape[-1]
    m = codes_a.shape[0]
    s = float(bias)
    for i in range(m):
        for j in range(m):
            if not codes_a[i].any() or not codes_b[j].any():
                dist = bits / 2
            else:
                dist = float(ref_hamming_popcount(codes_a[i : i + 1], codes_b[j : j + 1])[0, 0])
            s += float(weight[i, j]) * dist / bits
    return s


def gen(seed):
    return torch.Generator().manual_seed(seed)


@st.composite
def batches(draw, max_n=5, max_d=6):
    n = draw(st.integers(1, max_n))
    shape = (n, draw(st.integers(1, max_d)), draw(st.integers(1, 3)))
    g = gen(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(shape, generator=g, dtype=torch.float64) * draw(st.sampled_from([1e-3, 1, 1e3]))
    if n > 1 and draw(st.booleans()):
        x[-1] = x[0]  # an identical pair: D = 0 off the diagonal
    graph = torch.randn(n, n, generator=g, dtype=torch.float64)
    return x, graph


@st.composite
def patch_inputs(draw, max_n=4):
    n = draw(st.integers(1, max_n))
    C = draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    H, W = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    m = draw(st.integers(1, 5))
    bits = draw(st.integers(1, 12))
    g = gen(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(n, C, h, w, generator=g, dtype=torch.float64)
    labels = torch.randint(0, m, (n, H, W), generator=g)
    projection = torch.randn(C, bits, generator=g, dtype=torch.float64)
    weight = torch.randn(m, m, generator=g, dtype=torch.float64)
    bias = torch.randn((), generator=g, dtype=torch.float64)
    return x, labels, projection, weight, bias


def random_codes(shape, seed=0, dtype=torch.float64):
    g = gen(seed)
    return torch.randint(0, 2, shape, generator=g).to(dtype) * 2 - 1


def ref_normalize_with_memory(logits, valid):
    """Row u: self-weight 1/N (N the valid columns), (N-1)/N shared by a softmax over the
    valid partners v != u; 0 on invalid columns. Plain loops in float64."""
    x = logits.double().tolist()
    n, cols = len(x), len(x[0])
    out = torch.zeros(n, cols, dtype=torch.float64)
    N = sum(bool(v) for v in valid)
    for u in range(n):
        partners = [v for v in range(cols) if v != u and bool(valid[v])]
        z = sum(math.exp(x[u][v]) for v in partners)
        out[u, u] = 1.0 / N
        for v in partners:
            out[u, v] = (N - 1) / N * math.exp(x[u][v]) / z
    return out


def ref_memory_loss(features, graph, memory=None, reduction="mean"):
    """sum over anchors u and partners v (batch, then memory) of G(u, v) D(F_u, F_v) / n^2."""
    n = features.shape[0]
    partners = list(features) + ([] if memory is None else list(memory))
    terms = torch.zeros(n, len(partners), dtype=torch.float64)
    for u in range(n):
        for v, other in enumerate(partners):
            terms[u, v] = float(graph[u, v]) * ref_distance(features[u], other)
    if reduction == "none":
        return terms
    return terms.sum() if reduction == "sum" else terms.sum() / (n * n)


C, H, W, M, BITS = 8, 4, 4, 6, 16


def memory_batch(n, seed, channels=C):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, H, W, generator=g)
    labels = torch.randint(0, M, (n, 8, 8), generator=g)
    return x, labels


def memory_modules(memory_size=4, dtype=None, **kw):
    return (
        LearnableSampleGraph(
            in_channels=C, embed_dim=8, memory_size=memory_size, dtype=dtype, **kw
        ),
        PatchHashGraph(M, C, code_bits=BITS, memory_size=memory_size, dtype=dtype, **kw),
        PatchHashGraph(M, C, code_bits=BITS, memory_size=memory_size, dtype=dtype, **kw),
    )


@contextlib.contextmanager
def count_tensor_syncs():
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


def contrast_modules(memory_size=4, margin=1.5):
    return (
        LearnableSampleGraph(
            in_channels=C, embed_dim=8, memory_size=memory_size, contrast_margin=margin
        ),
        PatchHashGraph(M, C, code_bits=BITS, memory_size=memory_size, contrast_margin=margin),
        PatchHashGraph(M, C, code_bits=BITS, memory_size=memory_size, contrast_margin=margin),
    )


def resume_round_trip(make_modules, step, before, after):
    """Train ``make_modules()`` (modules with memories) with SGD through the seeds ``before``,
    save every state dict and the optimiser's, and train on through ``after``; then load the
    saved state into fresh modules (empty, unallocated queues), check that they hold it
    exactly, and train them through ``after``.

    Returns ``(saved, modules, resumed, want, got)``: the saved state dicts, the two sets of
    modules, and the losses of the two runs through ``after``, for the caller to compare.
    """

    def make():
        modules = make_modules()
        params = [p for m in modules for p in m.parameters()]
        return modules, torch.optim.SGD(params, lr=0.5)

    def run(modules, opt, seeds):
        losses = []
        for seed in seeds:
            opt.zero_grad()
            loss = step(modules, seed)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        return losses

    modules, opt = make()
    run(modules, opt, before)
    saved = copy.deepcopy(([m.state_dict() for m in modules], opt.state_dict()))
    want = run(modules, opt, after)
    resumed, opt2 = make()
    for module, state in zip(resumed, saved[0], strict=True):
        module.load_state_dict(state)
    opt2.load_state_dict(saved[1])
    for module, state in zip(resumed, saved[0], strict=True):
        loaded = module.state_dict()
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
    got = run(resumed, opt2, after)
    return saved[0], modules, resumed, want, got
