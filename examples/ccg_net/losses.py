"""The CCG objective (paper Eq. 11): L_all = w1 L_base + w2 L_IR + w3 L_IK + w4 L_KR.

* L_base (Eq. 1-3): :class:`ccg_layers.MILGridLoss` on the class-wise logit maps.
* L_IR (Eq. 4): :class:`ccg_layers.LearnableSampleGraph` on the batch's C5 feature maps.
* L_IK (Eq. 5-7): :class:`ccg_layers.PatchHashGraph` on the C5 feature maps, its patches the
  cached SLIC superpixels of the input images.
* L_KR (Eq. 8-10): :class:`ccg_layers.CrossImageAttention` (pair mode) on pairs (u, v) of the
  batch (:func:`kr_pairs`), then the patch-hash graph on the attended maps F'_u (v's layout, v's patches) and
  F'_v (u's layout, u's patches).

Under ``torch.distributed`` the feature maps (and superpixel labels) of all processes are
gathered with gradients before the relation terms, so the graphs span the global batch; every
process computes the same relation terms, and DDP's gradient averaging then gives exactly the
gradient of the single-process loss on the concatenated batch (each rank's slice receives the
sum of all ranks' gradients through ``all_gather``'s backward, divided by the world size by
DDP).
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor, nn

import ccg_layers

from .config import TrainConfig


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def unit_maps(x: Tensor) -> Tensor:
    """Each sample of ``x`` ``(n, ...)`` divided by its L2 norm (taken in float32 at least)."""
    norm = torch.linalg.vector_norm(
        x.flatten(1), dim=1, dtype=torch.promote_types(x.dtype, torch.float32)
    )
    return x / norm.clamp_min(1e-12).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


def kr_pairs(n: int, mode: str, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """The image pairs (u, v) of L_KR in a (global) batch of ``n``.

    ``"half"``: u = i, v = i + n // 2 for i < n // 2, so each image is in at most one pair and,
    under DDP, pairs join images of different processes; with the paper's batch of 2 it is the
    single pair (0, 1). ``"all"``: every unordered pair, n (n - 1) / 2 of them (the attention
    cost grows with n^2).
    """
    if mode == "all":
        u, v = torch.triu_indices(n, n, offset=1, device=device)
        return u, v
    if mode != "half":
        raise ValueError(f"--kr-pairs must be half or all, got {mode!r}")
    u = torch.arange(n // 2, device=device)
    return u, u + n // 2


def kr_pair_count(n: int, mode: str) -> int:
    """How many L_KR pairs a (global) batch of ``n`` makes (:func:`kr_pairs`)."""
    return n * (n - 1) // 2 if mode == "all" else n // 2


def resolve_memory_size(cfg: TrainConfig, global_batch: int) -> int:
    """``--memory-size``; -1 (auto): 8 partners wherever the batch alone leaves a graph constant.

    A graph row is a softmax over an image's partners: with one partner (a global batch of 2 for
    L_IR and L_IK, a single pair for L_KR) it is 1 whatever its logits, and the graph's
    parameters get no gradient. The memory adds partners (detached maps of recent batches).
    """
    if cfg.memory_size >= 0:
        return cfg.memory_size
    constant = ((cfg.enabled("ir") or cfg.enabled("ik")) and global_batch <= 2) or (
        cfg.enabled("kr") and kr_pair_count(global_batch, cfg.kr_pairs) <= 1
    )
    return 8 if constant else 0


def warn_constant_graphs(cfg: TrainConfig, global_batch: int, memory: int) -> None:
    """Warn (once per run) when a relation graph has nothing to learn in this configuration."""
    dead = []
    if cfg.enabled("ir") and global_batch <= 2 and (cfg.graph_form == "positional" or memory == 0):
        dead.append("L_IR's sample graph")
    if cfg.enabled("ik") and global_batch <= 2 and memory == 0:
        dead.append("L_IK's patch-hash graph")
    if cfg.enabled("kr") and kr_pair_count(global_batch, cfg.kr_pairs) <= 1 and memory == 0:
        dead.append("L_KR's patch-hash graph")
    if dead:
        warnings.warn(
            f"with a global batch of {global_batch}, --graph-form {cfg.graph_form} and "
            f"--memory-size {memory}, {', '.join(dead)} stay constant (one partner per image: "
            "the softmax over partners is 1) and their parameters get no gradient; use "
            "--memory-size -1 (auto) or a larger batch.",
            UserWarning,
            stacklevel=3,
        )


def warn_literal_form_without_boxes(cfg: TrainConfig, train_annotated: int) -> None:
    """Warn (once) when the paper's literal relation terms train without a single box.

    In the Table 4 study on the synthetic twin (docs/results.md) they collapsed every image's
    features to one point in setting (b) and the model learned nothing; the message quotes the
    measured gap from the study's record (docs/ablation-study.json).
    """
    relation = any(cfg.enabled(t) for t in ("ir", "ik", "kr"))
    literal = cfg.relation_form == "pull" and cfg.relation_features == "raw"
    if not (relation and literal and train_annotated == 0):
        return
    from .report import read_study

    measured = ""
    try:
        row = read_study()["settings"]["b"]["ir+ik+kr"]
        d = row["minus_baseline"]["T=0.1"]
        measured = (
            f" (full model minus baseline at T(IoU)=0.1: {d['mean']:+.3f} ± {d['ci95']:.3f} over "
            f"{d['n']} seeds, AUC {row['auc']['mean']:.2f})"
        )
    except (KeyError, TypeError):  # no study recorded: the warning without the numbers
        pass
    warnings.warn(
        "the relation terms in the paper's literal form (--relation-form pull, "
        "--relation-features raw) are training without any box (setting b): on the synthetic "
        f"twin they collapsed every image's features and the model learned nothing{measured}; "
        "docs/training.md, 'Which form to use', gives the measured alternatives.",
        UserWarning,
        stacklevel=2,
    )


def _one_memory_for_ir_and_ik(
    module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *args: object
) -> None:
    """Read a checkpoint written before L_IR and L_IK shared one memory (``ir.*``, ``ik.*``).

    Their parameters become those of :attr:`CCGLoss.graphs`' two graph modules; the maps, the
    pointer and the count of L_IR's queue become the shared queue's, with L_IK's codes (both
    queues held the same maps, enqueued at the same steps); L_IK's copy of the maps is dropped.
    """
    if getattr(module, "graphs", None) is None or f"{prefix}ir.weight" not in state_dict:
        return
    for key in [k for k in state_dict if k.startswith((f"{prefix}ir.", f"{prefix}ik."))]:
        term, name = key[len(prefix) :].split(".", 1)
        value = state_dict.pop(key)
        if not name.startswith("memory_"):
            graph = "sample_graph" if term == "ir" else "patch_graph"
            state_dict[f"{prefix}graphs.{graph}.{name}"] = value
        elif term == "ir" or name == "memory_codes":
            state_dict[f"{prefix}graphs.{name}"] = value


class CCGLoss(nn.Module):
    """Eq. 11 with each term switchable (``cfg.losses``); holds the learnable graph parameters.

    ``forward(logits, features, labels, grid, box_mask, superpixels)`` returns a dict with the
    weighted total under ``"loss"`` and each unweighted term (``"base"``, ``"ir"``, ``"ik"``,
    ``"kr"``) for logging.
    """

    def __init__(self, cfg: TrainConfig, feature_channels: int, global_batch: int) -> None:
        super().__init__()
        self.weights = {"base": cfg.w_base, "ir": cfg.w_ir, "ik": cfg.w_ik, "kr": cfg.w_kr}
        self.kr_pairs = cfg.kr_pairs
        self.terms = tuple(t for t in ("base", "ir", "ik", "kr") if cfg.enabled(t))
        # Eq. 3 sums over the images and classes ("sum"); "mean" divides by N*K.
        self.base = ccg_layers.MILGridLoss(
            box_weight=cfg.box_weight,
            reduction=cfg.base_reduction,
            noisy_or_floor=cfg.noisy_or_floor,
        )
        self.base_reduction = cfg.base_reduction
        self.unit = cfg.relation_features == "unit"
        # --relation-form contrast (beyond the paper): the graphs take the image-level labels
        self.contrast = cfg.relation_form == "contrast"
        margin = cfg.contrast_margin if self.contrast else None
        memory = resolve_memory_size(cfg, global_batch)
        self.memory_size = memory
        warn_constant_graphs(cfg, global_batch, memory)
        # L_IR and L_IK on the same maps (input-conditioned sample graph): one partner memory
        # for both (ccg_layers.RelationGraphs: one enqueue, one copy, the distances once)
        shared = cfg.enabled("ir") and cfg.enabled("ik") and cfg.graph_form == "conditioned"
        self.graphs = (
            ccg_layers.RelationGraphs(
                feature_channels,
                cfg.num_patches,
                code_bits=cfg.code_bits,
                memory_size=memory,
                defer_enqueue=True,  # enqueued after the backward: no copy of the memory
                contrast_margin=margin,
            )
            if shared
            else None
        )
        self.ir = (
            ccg_layers.LearnableSampleGraph(
                # the positional form is an n x n matrix; the conditioned one takes any batch
                global_batch if cfg.graph_form == "positional" else None,
                in_channels=feature_channels,
                form=cfg.graph_form,  # type: ignore[arg-type]
                memory_size=memory if cfg.graph_form == "conditioned" else 0,
                defer_enqueue=True,
                contrast_margin=margin,
            )
            if cfg.enabled("ir") and not shared
            else None
        )

        def patch_graph() -> ccg_layers.PatchHashGraph:  # L_IK's, and L_KR's on F'
            return ccg_layers.PatchHashGraph(
                cfg.num_patches,
                feature_channels,
                code_bits=cfg.code_bits,
                memory_size=memory,
                defer_enqueue=True,
                contrast_margin=margin,
            )

        self.ik = patch_graph() if cfg.enabled("ik") and not shared else None
        self.register_load_state_dict_pre_hook(_one_memory_for_ir_and_ik)
        if cfg.enabled("kr"):
            self.kr_attention: nn.Module | None = ccg_layers.CrossImageAttention(
                feature_channels,
                qk_channels=cfg.kr_qk_channels or None,  # 0: the paper's full C x C W_P
                mode="pair",
                scale=cfg.kr_scale,
            )
            self.kr_graph: nn.Module | None = patch_graph()
        else:
            self.kr_attention = self.kr_graph = None

    @property
    def needs_superpixels(self) -> bool:
        return self.graphs is not None or self.ik is not None or self.kr_graph is not None

    @property
    def sample_graph(self) -> ccg_layers.LearnableSampleGraph | None:
        """L_IR's graph module (its parameters), alone or inside :attr:`graphs`."""
        return self.graphs.sample_graph if self.graphs is not None else self.ir

    @property
    def patch_graph(self) -> ccg_layers.PatchHashGraph | None:
        """L_IK's graph module (its parameters), alone or inside :attr:`graphs`."""
        return self.graphs.patch_graph if self.graphs is not None else self.ik

    @property
    def memories(self) -> tuple[nn.Module, ...]:
        """The modules that keep a partner memory: :attr:`graphs` (or L_IR's and L_IK's own),
        and L_KR's patch-hash graph."""
        mods = (self.graphs, self.ir, self.ik, self.kr_graph)
        return tuple(m for m in mods if m is not None)

    def forward(
        self,
        logits: Tensor,
        features: Tensor,
        labels: Tensor,
        grid: Tensor,
        box_mask: Tensor,
        superpixels: Tensor | None = None,
    ) -> dict[str, Tensor]:
        base = self.base(logits, labels, grid, box_mask)
        if self.base_reduction == "sum":
            # DDP averages the gradients of the processes; scaling each process's sum by the
            # world size makes that average the gradient of the sum over the global batch.
            base = base * _world()
        out: dict[str, Tensor] = {"base": base}
        if len(self.terms) > 1:
            feats = ccg_layers.all_gather_batch(features)
            sp = ccg_layers.all_gather_batch(superpixels) if superpixels is not None else None
            rel = unit_maps(feats) if self.unit else feats
            # the contrast form's image-level labels, gathered like the features
            y = {"image_labels": ccg_layers.all_gather_batch(labels)} if self.contrast else {}
            if self.graphs is not None:
                out["ir"], out["ik"] = self.graphs(rel, sp, **y)
            if self.ir is not None:
                out["ir"] = self.ir(rel, **y)
            if self.ik is not None:
                out["ik"] = self.ik(rel, sp, **y)
            if self.kr_attention is not None and self.kr_graph is not None:
                out["kr"] = self._kr(feats, sp, y.get("image_labels"))
        relation = [self.weights[k] * v for k, v in out.items() if k != "base"]
        total = self.weights["base"] * base
        if relation:
            total = total + sum(relation)
        out["loss"] = total
        return out

    def _kr(self, feats: Tensor, sp: Tensor | None, image_labels: Tensor | None = None) -> Tensor:
        n = feats.shape[0]
        if n < 2:
            return feats.sum() * 0.0
        u, v = kr_pairs(n, self.kr_pairs, feats.device)
        assert self.kr_attention is not None
        assert self.kr_graph is not None
        assert sp is not None
        fu_att, fv_att = self.kr_attention(feats[u], feats[v])
        if self.unit:  # the attention sees the maps as they are, the graph compares unit maps
            fu_att, fv_att = unit_maps(fu_att), unit_maps(fv_att)
        # F'_u lives on v's grid (v's patches), F'_v on u's grid.
        if image_labels is None:
            return self.kr_graph(fu_att, sp[v], features_b=fv_att, labels_b=sp[u])
        # contrast form: the pair's alike-ness from the findings of images u and v
        return self.kr_graph(
            fu_att,
            sp[v],
            features_b=fv_att,
            labels_b=sp[u],
            image_labels=image_labels[u],
            image_labels_b=image_labels[v],
        )
