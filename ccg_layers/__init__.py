"""ccg-layers: the relation layers of the Cross-chest Graph (CCG) as PyTorch modules.

The modules are re-exported here; their functional forms live in :mod:`ccg_layers.functional`.
"""

from ccg_layers import datasets, functional, metrics
from ccg_layers.attention import CrossImageAttention
from ccg_layers.errors import CCGDTypeError, CCGInputError, CCGShapeError, CCGValueRangeError
from ccg_layers.losses import MILGridLoss

__version__ = "0.1.0"

__all__ = [
    "CCGDTypeError",
    "CCGInputError",
    "CCGShapeError",
    "CCGValueRangeError",
    "CrossImageAttention",
    "MILGridLoss",
    "__version__",
    "datasets",
    "functional",
    "metrics",
]
