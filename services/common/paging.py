"""AIP-158 paging: page size rules and opaque, tamper-evident page tokens.

The MAC key is in the source, so tokens resist accidents, not a determined
forger; decoding therefore never trusts what it reads (every field is checked).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from services.common.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# Tokens are opaque and signed so a client cannot hand-craft a cursor; the key
# only needs to be stable across replicas, not secret from operators.
_TOKEN_KEY = b"loyalty-page-token-v1"


def page_size(requested: int) -> int:
    """0 means the default; negative is invalid; above the maximum is clamped."""
    if requested < 0:
        raise InvalidArgument([FieldViolation("page_size", "must not be negative")])
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts, bound to the query it came from."""

    query: str
    position: dict[str, Any]


def encode_token(cursor: Cursor) -> str:
    body = json.dumps({"q": cursor.query, "p": cursor.position}, separators=(",", ":"), sort_keys=True).encode()
    mac = hmac.new(_TOKEN_KEY, body, hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")


def decode_token(token: str, *, query: str) -> dict[str, Any] | None:
    """Returns the position of a token made for `query`, None for the first page."""
    if not token:
        return None
    bad = InvalidArgument([FieldViolation("page_token", "is not a token this list returned")])
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError as exc:
        raise bad from exc
    mac, body = raw[:12], raw[12:]
    if not hmac.compare_digest(mac, hmac.new(_TOKEN_KEY, body, hashlib.sha256).digest()[:12]):
        raise bad
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise bad from exc
    if not isinstance(data, dict) or not isinstance(data.get("p"), dict):
        raise bad
    if data.get("q") != query:
        raise InvalidArgument([FieldViolation("page_token", "belongs to a different query")])
    position: dict[str, Any] = data["p"]
    return position


def position_int(position: dict[str, Any], key: str) -> int:
    """An integer from a decoded position; a forged position is INVALID_ARGUMENT, not a crash."""
    value = position.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument([FieldViolation("page_token", "is not a token this list returned")])
    return value
