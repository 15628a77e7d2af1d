"""AIP-158 page sizes and tokens."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.common.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Cursor, decode_token, encode_token, page_size


def test_page_size_rules() -> None:
    assert page_size(0) == DEFAULT_PAGE_SIZE
    assert page_size(7) == 7
    assert page_size(MAX_PAGE_SIZE + 1) == MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument):
        page_size(-1)


@given(query=st.text(max_size=50), position=st.dictionaries(st.text(max_size=10), st.integers(), max_size=3))
def test_token_round_trips(query: str, position: dict[str, int]) -> None:
    assert decode_token(encode_token(Cursor(query, position)), query=query) == position


def test_empty_token_is_first_page() -> None:
    assert decode_token("", query="q") is None


def test_tampered_token_is_refused() -> None:
    token = encode_token(Cursor("q", {"before_id": 10}))
    forged = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(InvalidArgument):
        decode_token(forged, query="q")


@given(st.text(max_size=200))
def test_garbage_tokens_are_invalid_argument_never_a_crash(garbage: str) -> None:
    with contextlib.suppress(InvalidArgument):
        decode_token(garbage, query="q")
