"""Deterministic target ids for rows that have no id of their own on the legacy side.

Target keys must follow from the source key alone (no look-ups on the hot path), so the
credential account and the membership get name-based (v5) UUIDs. The namespaces are fixed
forever: changing one would re-key every migrated row.
"""

from __future__ import annotations

import uuid

ACCOUNT_NAMESPACE = uuid.UUID("19c336c5-5283-4155-8068-8bdab5d52b14")
MEMBER_NAMESPACE = uuid.UUID("34700378-310b-4f0f-a0e7-d31d20144bbe")


def credential_account_id(user_id: uuid.UUID) -> str:
    """The id of the Better-Auth ``account`` row holding a legacy user's password hash."""
    return str(uuid.uuid5(ACCOUNT_NAMESPACE, str(user_id)))


def member_id(organization_id: uuid.UUID, user_id: uuid.UUID) -> str:
    """The ``member`` id of a legacy membership (composite key organization_id + user_id).

    Not reversible by design: the reverse reads ``organization_id``/``user_id`` from the row
    (which needs REPLICA IDENTITY FULL on the target's ``member`` for deletes).
    """
    return str(uuid.uuid5(MEMBER_NAMESPACE, f"{organization_id}/{user_id}"))
