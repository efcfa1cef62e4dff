"""The package builds into a wheel that imports without the repository."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import ccg_layers

ROOT = Path(__file__).resolve().parents[1]


def test_public_api_is_flat_and_declared():
    for name in ccg_layers.__all__:
        assert hasattr(ccg_layers, name), name
    for name in ccg_layers.functional.__all__:
        assert callable(getattr(ccg_layers.functional, name)), name


@pytest.mark.slow
def test_wheel_builds_and_imports_outside_the_repo(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("ccg_layers-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ccg_layers/py.typed" in names
    assert not any(n.startswith(("tests/", "examples/", "benchmarks/")) for n in names)
    licenses = [n for n in names if ".dist-info/" in n and "LICENSE" in n.rsplit("/", 1)[-1]]
    assert len(licenses) == 1, names  # the MIT license text ships in the wheel
    assert "MIT License" in zipfile.ZipFile(wheel).read(licenses[0]).decode()
    meta = next(n for n in names if n.endswith("METADATA"))
    requires = [
        line.split(" ", 1)[1]
        for line in zipfile.ZipFile(wheel).read(meta).decode().splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert sorted(r.split(">")[0].split("=")[0].strip() for r in requires) == [
        "einops",
        "numpy",
        "scikit-image",
        "torch",
    ]
    # A pure-Python wheel is a zip that Python imports directly: run from an empty folder with
    # only the wheel on the path, so nothing of the repository can be picked up.
    code = "import ccg_layers, ccg_layers.functional as F; print(ccg_layers.__file__)"
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(wheel)!r}); {code}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(wheel) in out.stdout


def test_minimum_versions_tested_by_make_test_min_are_the_declared_lower_bounds():
    """constraints-min.txt (installed by `make test-min`) pins each dependency's lower bound."""
    import re

    text = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)\]", text, re.S | re.M)
    assert deps is not None
    declared = dict(re.findall(r'"([A-Za-z0-9_.-]+)>=([0-9.]+)[^"]*"', deps.group(1)))
    pinned = dict(
        re.findall(
            r"^([A-Za-z0-9_.-]+)==([0-9.]+)", (ROOT / "constraints-min.txt").read_text(), re.M
        )
    )
    assert set(declared) == {"torch", "numpy", "einops", "scikit-image"}
    assert {name: pinned.get(name) for name in declared} == declared
