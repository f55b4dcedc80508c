"""API tokens that expire: `Authorization: Token <key>` is refused HXO_TOKEN_TTL_DAYS after the
token was issued (401 `token_expired`); a revoked (deleted) token is refused like any unknown
key (401 `not_authenticated`).

A leaked CI token then stops working by itself. `token_for(user)` is how every place that hands
out tokens (the token endpoint, `manage.py hxo_user --token`) gets one: it replaces an
expired token rather than returning a key that would be refused.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

from hxo_site import codes


def token_ttl() -> timedelta:
    return timedelta(days=settings.HXO_TOKEN_TTL_DAYS)


def token_expires_at(token: Token) -> datetime:
    return token.created + token_ttl()


def token_expired(token: Token) -> bool:
    return timezone.now() >= token_expires_at(token)


def token_for(user: Any) -> Token:
    """The user's live token: the existing one, or a new key when it has expired."""
    with transaction.atomic():
        token, created = Token.objects.select_for_update().get_or_create(user=user)
        if not created and token_expired(token):
            token.delete()
            token = Token.objects.create(user=user)
    return token


class ExpiringTokenAuthentication(TokenAuthentication):
    """DRF's TokenAuthentication, refusing tokens older than HXO_TOKEN_TTL_DAYS."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Token]:
        # Keys are 40 hex digits. Anything else is refused before the lookup: a NUL in the
        # header would otherwise reach PostgreSQL, which fails the query (a 500).
        if len(key) > 64 or not key.isascii() or not key.isalnum():
            raise exceptions.AuthenticationFailed("Invalid token.")
        user, token = super().authenticate_credentials(key)
        if token_expired(token):
            raise exceptions.AuthenticationFailed(
                "The token has expired; obtain a new one (POST /api/v1/auth/token/).",
                code=codes.TOKEN_EXPIRED,
            )
        return user, token
