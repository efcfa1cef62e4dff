"""CCG-Net, the reference trainer of ccg-layers (paper Sec. 3.2-3.7 and 4).

``python -m examples.ccg_net train|evaluate|predict|reproduce --help`` (or
``python examples/train_ccg.py``); see ``docs/training.md``. In one's own code,
:func:`load_model` turns a trainer checkpoint into a ready ``CCGNet`` and its configuration.
"""

from typing import Any

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    # imported on use: the command line checks the [examples] extra (torchvision) first
    if name == "load_model":
        from examples.ccg_net.checkpoint import load_model

        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
