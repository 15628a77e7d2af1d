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


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"q": "q", "p": 3}', b'{"q": "q"}'])
def test_forged_tokens_with_a_valid_mac_are_invalid_argument(body: bytes) -> None:
    import base64
    import hashlib
    import hmac

    from services.common import paging

    mac = hmac.new(paging._TOKEN_KEY, body, hashlib.sha256).digest()[:12]
    with pytest.raises(InvalidArgument):
        decode_token(base64.urlsafe_b64encode(mac + body).decode(), query="q")


@pytest.mark.parametrize("value", ["7", None, True, 1.5])
def test_position_int_refuses_non_integers(value: object) -> None:
    from services.common.paging import position_int

    with pytest.raises(InvalidArgument):
        position_int({"before_id": value}, "before_id")
