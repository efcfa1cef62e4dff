"""ccg-layers: the relation layers of the Cross-chest Graph (CCG) as PyTorch modules.

The modules are re-exported here; their functional forms live in :mod:`ccg_layers.functional`.
"""

from ccg_layers import datasets, functional, metrics
from ccg_layers._validation import set_value_checks, value_checks_enabled
from ccg_layers.attention import CrossImageAttention
from ccg_layers.errors import CCGDTypeError, CCGInputError, CCGShapeError, CCGValueRangeError
from ccg_layers.graphs import LearnableSampleGraph, PatchHashGraph, all_gather_batch
from ccg_layers.losses import MILGridLoss
from ccg_layers.superpixels import superpixels, superpixels_from_files

__version__ = "0.1.0"

__all__ = [
    "CCGDTypeError",
    "CCGInputError",
    "CCGShapeError",
    "CCGValueRangeError",
    "CrossImageAttention",
    "LearnableSampleGraph",
    "MILGridLoss",
    "PatchHashGraph",
    "__version__",
    "all_gather_batch",
    "datasets",
    "functional",
    "metrics",
    "set_value_checks",
    "superpixels",
    "superpixels_from_files",
    "value_checks_enabled",
]
