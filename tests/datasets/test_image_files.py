"""``ccg_layers.datasets.image_files.name_list``: the one list-of-names formatter of the library's
and the trainer's messages."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ccg_layers.datasets.image_files import name_list

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
