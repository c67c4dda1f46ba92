"""Reusable column converters for mappings.

A converter is a pure function of the source value(s). It signals a value outside the target's
domain by raising ``ValueError`` (or ``TypeError``); the table mapping turns that into a
:class:`replicator.errors.TransformError` naming the table, key and column, so converters stay
free of error plumbing.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Hashable, Mapping
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

K = TypeVar("K", bound=Hashable)
V = TypeVar("V", bound=Hashable)


def uuid_to_text(value: uuid.UUID) -> str:
    """A legacy UUID as the canonical lower-case text id that the target uses."""
    if not isinstance(value, uuid.UUID):
        raise TypeError(f"expected a UUID, got {type(value).__name__}")
    return str(value)


def text_to_uuid(value: str) -> uuid.UUID:
    """A target text id back to a UUID.

    Only the canonical form (``str(uuid.UUID(...))``) is accepted: ``uuid.UUID`` also parses
    upper-case, braces and ``urn:uuid:`` forms, and two target ids collapsing onto one legacy id
    would silently merge rows.
    """
    if isinstance(value, uuid.UUID):
        return value
    try:
        parsed = uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f"{value!r} is not a UUID (ids must be UUIDs to go back)") from None
    if str(parsed) != value:
        raise ValueError(f"{value!r} is not a canonical lower-case UUID")
    return parsed


def to_utc(value: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken as UTC (the legacy app wrote UTC)."""
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def utc_to_naive(value: datetime) -> datetime:
    """The reverse twin of :func:`to_utc`, for a legacy ``timestamp`` (without time zone)
    column that holds UTC wall times: an aware datetime becomes the naive UTC time (a naive one
    is taken as UTC already and passes as it is). ``utc_to_naive(to_utc(n)) == n`` for naive
    ``n``, and ``to_utc(utc_to_naive(a)) == a`` for aware ``a``."""
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=None)
    return value.astimezone(UTC).replace(tzinfo=None)


class LocalTimestamps:
    """A legacy ``timestamp`` (without time zone) column holding wall times of ``zone``
    (``"Europe/Berlin"``), not UTC: :meth:`to_utc` for the forward mapping, :meth:`from_utc`
    for the reverse.

    Where the zone turns its clocks back, one hour of wall times happens twice and the column
    cannot tell which: :meth:`to_utc` takes the first, so a value written on the target in the
    second comes back an hour early after a round trip through the legacy column. Wall times
    the zone skips (clocks forward) cannot have been written by a clock in the zone:
    :meth:`to_utc` refuses them (the row is dead-lettered) rather than guess.
    """

    __slots__ = ("zone",)

    def __init__(self, zone: str) -> None:
        try:
            self.zone = ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(f"unknown time zone {zone!r}") from e

    def to_utc(self, value: datetime) -> datetime:
        """A naive wall time of the zone → an aware UTC datetime (an aware one is converted)."""
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is not None and value.utcoffset() is not None:
            return value.astimezone(UTC)
        local = value.replace(tzinfo=self.zone, fold=0)
        out = local.astimezone(UTC)
        if out.astimezone(self.zone).replace(tzinfo=None) != value.replace(fold=0):
            raise ValueError(
                f"{value.isoformat()} does not exist in {self.zone.key} (clocks went forward)"
            )
        return out

    def from_utc(self, value: datetime) -> datetime:
        """An aware datetime → the naive wall time of the zone (a naive one is taken as UTC)."""
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(self.zone).replace(tzinfo=None, fold=0)


def sha256_hex_to_base64url(value: str) -> str:
    """A SHA-256 digest as a FastAPI backend stores it (``hashlib.sha256(key).hexdigest()``) →
    as Better-Auth's API-key plugin stores and looks it up: base64url, no padding. The same
    digest of the same key, so a migrated key keeps verifying."""
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ValueError(
            "not a SHA-256 hex digest (64 lower-case hex characters): Better-Auth could not "
            "verify this key"
        )
    return base64.urlsafe_b64encode(bytes.fromhex(value)).rstrip(b"=").decode()


def base64url_to_sha256_hex(value: str) -> str:
    """The inverse of :func:`sha256_hex_to_base64url` (a key created on the target, going back)."""
    if not isinstance(value, str) or not _B64URL43.fullmatch(value):
        raise ValueError("not a SHA-256 digest in base64url (43 characters, no padding)")
    return base64.urlsafe_b64decode(value + "=").hex()


_HEX64 = re.compile(r"[0-9a-f]{64}")
# 32 bytes in base64url: 42 characters, then one whose last two bits are zero.
_B64URL43 = re.compile(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]")


def negate(value: bool) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean, got {type(value).__name__}")
    return not value


def jsonb_safe(value: Any) -> Any:
    """Pass a JSON value through, rejecting what ``jsonb`` refuses but ``json`` accepts.

    A legacy ``json`` column stores its text as given; ``jsonb`` rejects ``\\u0000`` in strings
    and keys. Catching it here dead-letters the row with a reason instead of failing a batch.
    """
    try:
        # orjson writes a NUL as the escape \u0000: absent from its output, absent from the value
        # (the common case, at C speed). Present, it may also be an escaped backslash followed by
        # "u0000": the walk below decides. orjson refuses some values (ints beyond 64 bits).
        if b"\\u0000" not in orjson.dumps(value):
            return value
    except TypeError:
        pass
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise ValueError("JSON contains a NUL character (\\u0000), which jsonb rejects")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


class ValueMap(Generic[K, V]):
    """A closed value mapping (e.g. an enum rename), with its inverse for the reverse direction.

    A value outside the mapping raises ``ValueError`` rather than passing through, so that a new
    enum member on the source dead-letters instead of writing a value the target does not know.
    """

    __slots__ = ("_forward", "name")

    def __init__(self, mapping: Mapping[K, V], *, name: str = "value") -> None:
        self._forward: dict[K, V] = dict(mapping)
        self.name = name

    def __call__(self, value: K) -> V:
        try:
            return self._forward[value]
        except (KeyError, TypeError):
            allowed = ", ".join(repr(k) for k in self._forward)
            raise ValueError(f"{self.name} {value!r} is not one of {allowed}") from None

    def inverse(self) -> ValueMap[V, K]:
        """The reverse mapping; only an injective mapping has one."""
        back: dict[V, K] = {}
        for k, v in self._forward.items():
            if v in back:
                raise ValueError(f"{self.name}: {back[v]!r} and {k!r} both map to {v!r}")
            back[v] = k
        return ValueMap(back, name=self.name)
