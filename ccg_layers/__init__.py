"""ccg-layers: the relation layers of the Cross-chest Graph (CCG) as PyTorch modules.

One file per concept holds its functions and its module together (``docs/index.md`` maps each
equation of the paper to its file); the modules are re-exported here, the functions in
:mod:`ccg_layers.functional`.
"""

from ccg_layers import datasets, functional, metrics
from ccg_layers.attention import CrossImageAttention
from ccg_layers.config import set_value_checks, value_checks_enabled
from ccg_layers.distributed import all_gather_batch
from ccg_layers.errors import CCGDTypeError, CCGInputError, CCGShapeError, CCGValueRangeError
from ccg_layers.memory import commit_memories
from ccg_layers.mil import MILGridLoss
from ccg_layers.patch_graph import PatchHashGraph
from ccg_layers.relation_graphs import RelationGraphs
from ccg_layers.sample_graph import LearnableSampleGraph
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
    "RelationGraphs",
    "__version__",
    "all_gather_batch",
    "commit_memories",
    "datasets",
    "functional",
    "metrics",
    "set_value_checks",
    "superpixels",
    "superpixels_from_files",
    "value_checks_enabled",
]
