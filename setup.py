"""The one build step pyproject.toml cannot say: an editable install maps the trainer too.

``pip install -e ".[examples]"``, the documented install for the reference trainer
(docs/training.md), maps ``examples.ccg_net`` to this checkout besides ``ccg_layers``, so a
script in any directory can ``from examples.ccg_net import load_model``. A regular install and
the wheel hold ``ccg_layers`` alone (tests/test_packaging.py): like torchvision's
``references/``, the trainer is not shipped. Every other setting lives in pyproject.toml.
"""

from setuptools import setup
from setuptools.command.editable_wheel import editable_wheel

#: The trainer's package, importable from anywhere after an editable install only.
TRAINER = "examples.ccg_net"


class EditableWithTrainer(editable_wheel):
    """``editable_wheel`` that also maps :data:`TRAINER` (``examples`` stays a namespace)."""

    def run(self) -> None:
        """Add the trainer to the packages of the editable install, then build it."""
        packages = list(self.distribution.packages or [])
        if TRAINER not in packages:
            self.distribution.packages = [*packages, TRAINER]
        super().run()


setup(cmdclass={"editable_wheel": EditableWithTrainer})
