"""The layout of the package (issue 17): one concept per file, functional re-exports only, no
private name of ccg_layers imported from another file, and each module's forward validating
each input once (in the public function it calls).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import torch

from ccg_layers import LearnableSampleGraph, PatchHashGraph, set_value_checks
from tests.validation_counter import count_checks, repeated

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ccg_layers"
MAX_LINES = 800


def _python_files() -> list[Path]:
    files = []
    for folder in ("ccg_layers", "examples", "benchmarks", "tests"):
        files.extend(sorted((ROOT / folder).rglob("*.py")))
    return files


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_names(path: Path) -> list[str]:
    return [hit.split()[-1] for hit in _private_imports(path, str(path))]


def _private_imports(path: Path, shown: str | None = None) -> list[str]:
    """``from ccg_layers... import _x``, ``import ccg_layers._x``, and the same with a module path."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    in_package = path.is_relative_to(PACKAGE)
    where = shown if shown is not None else str(path.relative_to(ROOT))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            ours = module == "ccg_layers" or module.startswith("ccg_layers.")
            if node.level and in_package:
                ours = True
            if not ours:
                continue
            parts = [p for p in module.split(".") if p]
            names = parts + [alias.name for alias in node.names]
            found += [f"{where}:{node.lineno} {n}" for n in names if _private(n)]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "ccg_layers" or alias.name.startswith("ccg_layers."):
                    parts = alias.name.split(".")
                    found += [f"{where}:{node.lineno} {n}" for n in parts if _private(n)]
    return found


def test_no_private_name_of_ccg_layers_is_imported_anywhere():
    found = [hit for path in _python_files() for hit in _private_imports(path)]
    assert found == []


def test_the_private_import_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from ccg_layers.distance import _pairwise\n"
        "import ccg_layers._hidden\n"
        "from ccg_layers import __version__\n"
    )
    hits = _private_names(bad)
    assert hits == ["_pairwise", "_hidden"]


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_no_file_of_the_package_is_over_800_lines(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines"


def test_functional_is_a_namespace_of_re_exports():
    """``ccg_layers.functional`` defines nothing: one ``__init__`` of imports and ``__all__``."""
    folder = PACKAGE / "functional"
    assert sorted(p.name for p in folder.glob("*.py")) == ["__init__.py"]
    tree = ast.parse((folder / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, ast.ImportFrom):
            continue
        assert isinstance(node, ast.Assign), ast.dump(node)
        assert [t.id for t in node.targets if isinstance(t, ast.Name)] == ["__all__"]


def test_functional_is_the_same_objects_as_the_concept_files():
    """``ccg_layers.functional`` only re-exports: each of its functions lives in a concept file."""
    functional = importlib.import_module("ccg_layers.functional")
    for name in functional.__all__:
        obj = getattr(functional, name)
        assert obj.__module__.startswith("ccg_layers."), name
        assert not obj.__module__.startswith("ccg_layers.functional"), (name, obj.__module__)


# --------------------------------------------------------------------------- validated once

C, M = 8, 4


def _labels(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, M, (n, 8, 8), generator=g)


def _assert_once(calls, inputs):
    assert repeated(calls) == {}
    for name in inputs:
        assert calls[("check_tensor", name)] == 1, (name, dict(calls))


@pytest.mark.parametrize("checks", [True, False])
def test_learnable_sample_graph_validates_each_input_once(checks):
    graph = LearnableSampleGraph(in_channels=C, memory_size=4)
    graph(torch.randn(2, C, 4, 4))  # fills the memory: the next call has partners
    with set_value_checks(checks), count_checks() as calls:
        graph(torch.randn(3, C, 4, 4))
    inputs = ["features", "weight", "projection", "memory_features", "memory_embeddings"]
    _assert_once(calls, [*inputs, "memory_valid"])
    assert calls[("check_finite_through_distances", "distances")] == 1
    with count_checks() as calls:
        graph.graph(torch.randn(3, C, 4, 4))
    _assert_once(calls, ["features", "weight", "projection", "memory_embeddings"])


def test_learnable_sample_graph_positional_validates_each_input_once():
    graph = LearnableSampleGraph(4, form="positional")
    with count_checks() as calls:
        graph(torch.randn(3, 5))
    # the module's own weight is normalised by the kernel, not validated as an input
    _assert_once(calls, ["features", "graph"])
    assert all(name != "logits" for _, name in calls)


@pytest.mark.parametrize("pair_form", [False, True])
@pytest.mark.parametrize("hash_input", [False, True])
def test_patch_hash_graph_validates_each_input_once(pair_form, hash_input):
    graph = PatchHashGraph(M, C, code_bits=16, memory_size=6)
    x, labels = torch.randn(2, C, 4, 4), _labels(2)
    graph(x, labels)  # fills the memory
    kwargs = {}
    names = ["features", "labels", "projection", "weight", "memory_features", "memory_codes"]
    names.append("memory_valid")
    if hash_input:
        kwargs["hash_input"] = torch.randn(2, C, 8, 8)
        names.append("hash_input")
    args = [x, labels]
    if pair_form:
        args += [torch.randn(2, C, 4, 4), _labels(2, 1)]
        names += ["features_b", "labels_b"]
        if hash_input:
            kwargs["hash_input_b"] = torch.randn(2, C, 8, 8)
            names.append("hash_input_b")
    with count_checks() as calls:
        graph(*args, **kwargs)
    _assert_once(calls, names)
    assert calls[("check_index", "labels")] == 1
    assert calls[("check_finite_through_distances", "distances")] == 1


def test_patch_hash_graph_accessor_validates_each_input_once():
    graph = PatchHashGraph(M, C, code_bits=16)
    with count_checks() as calls:
        graph.graph(torch.randn(3, C, 4, 4), _labels(3))
    _assert_once(calls, ["hash_input", "labels", "projection", "weight"])


def test_the_counter_sees_a_repeated_check():
    """The counting can fail: a function that validates its input twice is caught."""
    validation = importlib.import_module("ccg_layers.validation")
    with count_checks() as calls:
        validation.check_tensor(torch.zeros(1), "x")
        validation.check_batch(torch.zeros(1), "x")
    assert repeated(calls) == {("check_tensor", "x"): 2}


@pytest.mark.parametrize("pair_form", [False, True])
def test_contrast_forms_validate_each_input_once(pair_form):
    """The contrast form (image labels, the label queue) keeps the rule: each input once."""
    y = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    sample = LearnableSampleGraph(in_channels=C, memory_size=4, contrast_margin=1.0)
    patch = PatchHashGraph(M, C, code_bits=16, memory_size=6, contrast_margin=1.0)
    x, labels = torch.randn(2, C, 4, 4), _labels(2)
    sample(x, image_labels=y)  # fill the memories
    patch(x, labels, image_labels=y)
    with count_checks() as calls:
        sample(torch.randn(2, C, 4, 4), image_labels=y)
    names = ["features", "image_labels", "memory_image_labels", "memory_features"]
    _assert_once(calls, names)
    assert calls[("check_finite_through_distances", "distances")] == 1
    args, kwargs = [x, labels], {"image_labels": y}
    if pair_form:
        args += [torch.randn(2, C, 4, 4), _labels(2, 1)]
        kwargs["image_labels_b"] = y.flip(0)
    with count_checks() as calls:
        patch(*args, **kwargs)
    names = ["features", "labels", "image_labels", "memory_image_labels", "memory_codes"]
    _assert_once(calls, names + (["features_b", "labels_b", "image_labels_b"] if pair_form else []))


def _private_trainer_imports(path: Path) -> list[str]:
    """``from examples.ccg_net... import _x`` and, inside examples/ccg_net, ``from .x import _y``:
    the reference trainer keeps the package's rule (issue 19)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    in_trainer = path.is_relative_to(ROOT / "examples" / "ccg_net")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            ours = module == "examples.ccg_net" or module.startswith("examples.ccg_net.")
            if not (ours or (node.level and in_trainer)):
                continue
            names = [p for p in module.split(".") if p] + [a.name for a in node.names]
            found += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if _private(n)]
    return found


def test_no_private_name_of_the_trainer_is_imported_from_another_file():
    found = [hit for path in _python_files() for hit in _private_trainer_imports(path)]
    assert found == []
