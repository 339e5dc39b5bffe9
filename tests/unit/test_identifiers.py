"""Identifiers are printable ASCII without space (metering.api.validation)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from metering.api.validation import _printable_ascii

# The rule as a regex (\Z, not $: "$" also matches before a trailing newline).
ID_RE = re.compile(r"^[\x21-\x7e]+\Z")


def test_every_character_up_to_latin_1_is_judged_as_the_regex_judges_it() -> None:
    for code in range(0x180):
        value = f"a{chr(code)}b"
        assert _printable_ascii(value) == bool(ID_RE.match(value)), hex(code)
    assert not _printable_ascii("abc\n")


@given(st.text(min_size=1, max_size=40))
def test_agrees_with_the_regex(value: str) -> None:
    assert _printable_ascii(value) == bool(ID_RE.match(value))
