"""CCG-Net, the reference trainer of ccg-layers (paper Sec. 3.2-3.7 and 4).

Run ``python examples/train_ccg.py --help`` (or ``python -m examples.ccg_net``); see
``docs/training.md``.
"""
