"""Deterministic target ids for rows that have no id of their own on the legacy side.

Target keys must follow from the source key alone (no look-ups on the hot path), so the
credential account and the membership get name-based (v5) UUIDs. The namespaces are fixed
forever: changing one would re-key every migrated row.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from transforms.sql_twins import takes_key_text

ACCOUNT_NAMESPACE = uuid.UUID("19c336c5-5283-4155-8068-8bdab5d52b14")
MEMBER_NAMESPACE = uuid.UUID("34700378-310b-4f0f-a0e7-d31d20144bbe")


# The SHA-1 state after each namespace, copied for every name (hashing the namespace again per
# row cost a tenth of the function).
_AFTER_NAMESPACE: dict[uuid.UUID, Any] = {}


def uuid5_text(namespace: uuid.UUID, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))`` without the UUID objects: a third of the time, and a
    backfill computes one per migrated user and membership."""
    base = _AFTER_NAMESPACE.get(namespace)
    if base is None:
        base = _AFTER_NAMESPACE[namespace] = hashlib.sha1(namespace.bytes, usedforsecurity=False)
    sha = base.copy()
    sha.update(name.encode("utf-8"))
    h = bytearray(sha.digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50  # version 5
    h[8] = (h[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def uuid_text(value: uuid.UUID | str) -> str:
    """``str(value)``: for a UUID, its bytes printed in C (uuid.py formats it in Python, which
    was half of a membership id's cost); anything else as str() prints it."""
    if type(value) is uuid.UUID:
        x = value.bytes.hex()
        return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"
    return str(value)


@takes_key_text
def credential_account_id(user_id: uuid.UUID) -> str:
    """The id of the Better-Auth ``account`` row holding a legacy user's password hash."""
    return uuid5_text(ACCOUNT_NAMESPACE, uuid_text(user_id))


@takes_key_text
def member_id(organization_id: uuid.UUID, user_id: uuid.UUID) -> str:
    """The ``member`` id of a legacy membership (composite key organization_id + user_id).

    Not reversible by design: the reverse reads ``organization_id``/``user_id`` from the row
    (which needs REPLICA IDENTITY FULL on the target's ``member`` for deletes).
    """
    return uuid5_text(MEMBER_NAMESPACE, f"{uuid_text(organization_id)}/{uuid_text(user_id)}")
