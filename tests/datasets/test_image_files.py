"""``ccg_layers.datasets.image_files``: ``name_list``, the one list-of-names formatter of the
library's and the trainer's messages; ``repeated_names``, the one duplicate check of the
datasets; ``check_image_kind``, the check of the readers' ``images``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccg_layers import CCGValueRangeError
from ccg_layers.datasets.image_files import (
    check_image_kind,
    check_reader_options,
    locate_images,
    name_list,
    repeated_names,
)

_names = st.lists(st.text(alphabet="abcxyz_.0123", min_size=1, max_size=6), max_size=12)


@given(
    names=_names, shown=st.integers(1, 8), quote=st.booleans(), sep=st.sampled_from([", ", "; "])
)
def test_names_the_first_shown_and_counts_the_rest(
    names: list[str], shown: int, quote: bool, sep: str
) -> None:
    text = name_list(names, shown, quote=quote, sep=sep)
    listed = [repr(n) if quote else n for n in names[:shown]]
    rest = len(names) - shown
    assert text == sep.join(listed) + (f" and {rest} more" if rest > 0 else "")


def test_examples() -> None:
    assert name_list(["a", "b", "c", "d"], 2) == "a, b and 2 more"
    assert name_list(["a", "b"], 2) == "a, b"
    assert name_list([]) == ""
    assert name_list(["a.png", "b.png"], quote=True, sep="; ") == "'a.png'; 'b.png'"


@given(names=_names)
def test_repeated_names_are_those_standing_twice_in_first_repeat_order(names: list[str]) -> None:
    repeated = repeated_names(names)
    assert set(repeated) == {n for n, k in Counter(names).items() if k > 1}
    second = {n: i for i, n in reversed(list(enumerate(names))) if names[:i].count(n)}
    assert repeated == sorted(repeated, key=second.__getitem__)


def test_repeated_names_examples() -> None:
    assert repeated_names(["a", "b", "b", "c", "a", "b"]) == ["b", "a"]
    assert repeated_names(iter(["x", "x"])) == ["x"]
    assert repeated_names([]) == []


def test_check_image_kind_returns_a_kind() -> None:
    assert [check_image_kind(k) for k in ("auto", "dicom", "png", "jpeg")] == [
        "auto",
        "dicom",
        "png",
        "jpeg",
    ]


@pytest.mark.parametrize("images", ["tiff", "PNG", None, 1])
def test_a_bad_image_kind_is_named_by_every_check(images: object, tmp_path: Path) -> None:
    match = rf"`images` must be one of 'auto', 'dicom', 'png', 'jpeg', got {images!r}\."
    with pytest.raises(CCGValueRangeError, match=match):
        check_image_kind(images)
    with pytest.raises(CCGValueRangeError, match=match):
        check_reader_options(images, None, False)
    with pytest.raises(CCGValueRangeError, match=match):
        locate_images(tmp_path, ["a"], images)  # type: ignore[arg-type]
