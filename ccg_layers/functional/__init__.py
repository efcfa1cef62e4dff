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
from ccg_layers.functional.mil import boxes_to_grid, log_noisy_or, mil_grid_loss, xywh_to_xyxy

__all__ = [
    "boxes_to_grid",
    "cross_image_attention",
    "get_fused_attn",
    "log_noisy_or",
    "mil_grid_loss",
    "multi_head_cross_image_attention",
    "partner_attention",
    "set_fused_attn",
    "use_fused_path",
    "xywh_to_xyxy",
]
