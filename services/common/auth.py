"""Bearer-token authentication and shop/scope authorization.

Tokens are stored as SHA-256 digests (they are random, high-entropy strings, so
a fast digest is the right tool and a dictionary lookup by digest leaks nothing
useful about a token). Each token is
bound to shop ids ("*" = every shop) and scopes; scopes are ordered
read < write < admin, so a higher scope includes the lower ones.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from services.common.errors import PermissionDenied, Unauthenticated
from services.common.settings import TokenGrant

SCOPE_RANK = {"read": 1, "write": 2, "admin": 3}
ALL_SHOPS = "*"


@lru_cache(maxsize=1024)  # every call presents its token: the few a process sees are hashed once
def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "lt_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    name: str
    shops: frozenset[str]
    rank: int
    expires_at: datetime | None

    def may_access(self, shop_id: str) -> bool:
        return ALL_SHOPS in self.shops or shop_id in self.shops


class TokenRegistry:
    """The tokens a process accepts, keyed by digest."""

    def __init__(self, grants: list[TokenGrant]) -> None:
        self._by_digest: dict[str, Principal] = {}
        for grant in grants:
            expires = datetime.fromisoformat(grant.expires_at) if grant.expires_at else None
            if expires is not None and expires.tzinfo is None:
                raise ValueError(f"token {grant.name or grant.sha256[:8]}: expires_at needs a UTC offset")
            self._by_digest[grant.sha256] = Principal(
                name=grant.name or grant.sha256[:8],
                shops=frozenset(grant.shops),
                rank=max(SCOPE_RANK[s] for s in grant.scopes),
                expires_at=expires,
            )

    def authenticate(self, authorization: str | None, now: datetime) -> Principal:
        if not authorization:
            raise Unauthenticated(
                "missing bearer token: send metadata 'authorization: Bearer <token>'", reason="TOKEN_MISSING"
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(
                "malformed authorization metadata: expected 'Bearer <token>'", reason="TOKEN_MALFORMED"
            )
        principal = self._by_digest.get(digest(token.strip()))
        if principal is None:
            raise Unauthenticated("unknown bearer token", reason="TOKEN_UNKNOWN")
        if principal.expires_at is not None and now >= principal.expires_at:
            raise Unauthenticated("bearer token has expired", reason="TOKEN_EXPIRED")
        return principal


def authorize(principal: Principal, *, scope: str, shop_id: str) -> None:
    if principal.rank < SCOPE_RANK[scope]:
        raise PermissionDenied(
            f"token lacks the '{scope}' scope this method needs",
            reason="SCOPE_MISSING",
            metadata={"required_scope": scope},
        )
    if not principal.may_access(shop_id):
        raise PermissionDenied(
            f"token is not valid for shop {shop_id!r}", reason="SHOP_FORBIDDEN", metadata={"shop_id": shop_id}
        )
