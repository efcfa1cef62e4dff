"""Train / evaluate CCG-Net: ``python examples/train_ccg.py --preset demo`` (what `make demo`
runs), ``--preset paper --data-root /path/to/ChestX-ray14`` for the paper's setting. Without a
verb this script trains (``python -m examples.ccg_net`` needs one).

See docs/training.md for every setting, torchrun, and the ablation flags.
"""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # for `examples.ccg_net`

from examples.ccg_net.cli import main

if __name__ == "__main__":
    sys.exit(main(default_verb="train"))
