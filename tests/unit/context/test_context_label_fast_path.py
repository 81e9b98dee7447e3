"""sanitize_label's fast path for values that need no cleaning gives what the full cleaning gives."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from exporter.context.owner.labels import _cleaned, sanitize_label

ASCII = st.text(alphabet=st.characters(max_codepoint=127), max_size=80)


@settings(max_examples=500, deadline=None)
@given(ASCII, st.integers(min_value=2, max_value=70))
@example("root", 64)
@example("x" * 64, 64)  # exactly the bound: kept whole
@example("x" * 65, 64)  # one over: cut
@example("two  spaces", 64)
@example(" leading", 64)
@example("trailing ", 64)
@example("tab\there", 64)
@example("del\x7fchar", 64)
@example("", 64)
def test_the_fast_path_agrees_with_the_full_cleaning(value: str, max_length: int) -> None:
    assert sanitize_label(value, max_length) == _cleaned(value, max_length)


def test_clean_values_come_back_as_the_same_object() -> None:
    # The point of the fast path: no new string for the common case.
    value = "python train.py --epochs 10"
    assert sanitize_label(value, 128) is value
