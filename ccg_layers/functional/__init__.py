"""Functional core of ccg-layers: every computation as a typed function.

Learnable tensors are arguments, so the functions compose with any parametrisation;
the modules in :mod:`ccg_layers` hold the parameters and call these.
"""

from ccg_layers.functional.attention import (
    cross_image_attention,
    get_fused_attn,
    multi_head_cross_image_attention,
    partner_attention,
    set_fused_attn,
    use_fused_path,
)
from ccg_layers.functional.boxes import (
    boxes_to_grid,
    boxes_to_grid_targets,
    maps_to_boxes,
    xywh_to_xyxy,
)
from ccg_layers.functional.graphs import (
    alike_pairs,
    conditioned_graph_logits,
    conditioned_sample_graph_loss,
    contrast_distances,
    graph_embedding,
    hamming_distance,
    hash_codes,
    memory_enqueue_,
    normalize_graph,
    paired_sample_loss,
    pairwise_distance,
    patch_codes,
    patch_graph_logits,
    patch_hash_graph,
    patch_hash_graph_loss,
    sample_graph,
    sample_graph_loss,
    superpixel_pool,
)
from ccg_layers.functional.mil import log_noisy_or, mil_grid_loss

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
    "sample_graph",
    "sample_graph_loss",
    "set_fused_attn",
    "superpixel_pool",
    "use_fused_path",
    "xywh_to_xyxy",
]
