"""CCG-Net, the reference trainer of ccg-layers (paper Sec. 3.2-3.7 and 4).

``python -m examples.ccg_net train|evaluate|predict|reproduce --help`` (or
``python examples/train_ccg.py``); see ``docs/training.md``. In one's own code,
:func:`load_model` turns a trainer checkpoint into a ready ``CCGNet`` and its configuration.
"""

from examples.ccg_net.checkpoint import load_model

__all__ = ["load_model"]
