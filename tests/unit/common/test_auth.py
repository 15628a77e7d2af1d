"""Token lookup, expiry, scope ranks and shop binding."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.common.auth import TokenRegistry, authorize, digest
from services.common.errors import PermissionDenied, Unauthenticated
from services.common.settings import TokenGrant

NOW = datetime(2026, 11, 22, tzinfo=UTC)


def registry(**overrides: object) -> TokenRegistry:
    grant = {"sha256": digest("secret"), "shops": ["s1"], "scopes": ["write"]} | overrides
    return TokenRegistry([TokenGrant.model_validate(grant)])


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "TOKEN_MISSING"),
        ("", "TOKEN_MISSING"),
        ("Basic abc", "TOKEN_MALFORMED"),
        ("Bearer ", "TOKEN_MALFORMED"),
        ("Bearer wrong", "TOKEN_UNKNOWN"),
    ],
)
def test_bad_headers_are_unauthenticated(header: str | None, reason: str) -> None:
    with pytest.raises(Unauthenticated) as caught:
        registry().authenticate(header, NOW)
    assert caught.value.reason == reason


def test_expired_token_is_unauthenticated_at_and_after_expiry() -> None:
    tokens = registry(expires_at="2026-11-22T00:00:00+00:00")
    with pytest.raises(Unauthenticated) as caught:
        tokens.authenticate("Bearer secret", NOW)
    assert caught.value.reason == "TOKEN_EXPIRED"


def test_expiry_without_offset_is_refused_at_load() -> None:
    with pytest.raises(ValueError, match="UTC offset"):
        registry(expires_at="2030-01-01T00:00:00")


def test_scheme_is_case_insensitive() -> None:
    assert registry().authenticate("bearer secret", NOW).shops == frozenset({"s1"})


@pytest.mark.parametrize(
    ("scopes", "needed", "allowed"),
    [
        (["read"], "read", True),
        (["read"], "write", False),
        (["write"], "read", True),
        (["write"], "admin", False),
        (["admin"], "write", True),
        (["read", "admin"], "admin", True),
    ],
)
def test_scopes_are_ranked(scopes: list[str], needed: str, allowed: bool) -> None:
    principal = registry(scopes=scopes).authenticate("Bearer secret", NOW)
    if allowed:
        authorize(principal, scope=needed, shop_id="s1")
    else:
        with pytest.raises(PermissionDenied):
            authorize(principal, scope=needed, shop_id="s1")


def test_shop_binding_and_wildcard() -> None:
    bound = registry().authenticate("Bearer secret", NOW)
    with pytest.raises(PermissionDenied):
        authorize(bound, scope="read", shop_id="s2")
    everywhere = registry(shops=["*"]).authenticate("Bearer secret", NOW)
    authorize(everywhere, scope="read", shop_id="s2")


def test_unknown_scope_is_refused_at_load() -> None:
    with pytest.raises(ValueError, match="unknown scopes"):
        registry(scopes=["superuser"])
