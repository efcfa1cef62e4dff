"""The functional namespace of ccg-layers: every computation as a typed function.

Re-exports only: each function lives with its concept, in the file of its module (see
``docs/index.md``). Learnable tensors are arguments, so the functions compose with any
parametrisation; the modules in :mod:`ccg_layers` hold the parameters and call these.
"""

from ccg_layers.attention import (
    cross_image_attention,
    multi_head_cross_image_attention,
    partner_attention,
    use_fused_path,
)
from ccg_layers.boxes import boxes_to_grid, boxes_to_grid_targets, maps_to_boxes, xywh_to_xyxy
from ccg_layers.config import get_fused_attn, set_fused_attn
from ccg_layers.contrast import alike_pairs, contrast_distances
from ccg_layers.distance import paired_sample_loss, pairwise_distance, sample_graph_loss
from ccg_layers.hashing import hamming_distance, hash_codes, patch_codes, superpixel_pool
from ccg_layers.memory import memory_enqueue_
from ccg_layers.mil import log_noisy_or, mil_grid_loss
from ccg_layers.normalization import normalize_graph
from ccg_layers.patch_graph import patch_graph_logits, patch_hash_graph, patch_hash_graph_loss
from ccg_layers.relation_graphs import relation_graph_losses
from ccg_layers.sample_graph import (
    conditioned_graph_logits,
    conditioned_sample_graph_loss,
    graph_embedding,
    sample_graph,
)

__all__ = [
    "alike_pairs",
    "boxes_to_grid",
    "boxes_to_grid_targets",
    "conditioned_graph_logits",
    "conditioned_sample_graph_loss",
    "contrast_distances",
    "cross_image_attention",
    "get_fused_attn",
    "graph_embedding",
    "hamming_distance",
    "hash_codes",
    "log_noisy_or",
    "maps_to_boxes",
    "memory_enqueue_",
    "mil_grid_loss",
    "multi_head_cross_image_attention",
    "normalize_graph",
    "paired_sample_loss",
    "pairwise_distance",
    "partner_attention",
    "patch_codes",
    "patch_graph_logits",
    "patch_hash_graph",
    "patch_hash_graph_loss",
    "relation_graph_losses",
    "sample_graph",
    "sample_graph_loss",
    "set_fused_attn",
    "superpixel_pool",
    "use_fused_path",
    "xywh_to_xyxy",
]
