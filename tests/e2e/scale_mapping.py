"""A reshaping mapping for the scale-out e2e (tests/e2e/test_scale_out_order.py), used as
``tests.e2e.scale_mapping:MAPPING``: ``account_user`` (keyed by the partition key ``org`` and
``id``) becomes ``app_user``; ``login``, keyed by its own id and so routed apart, patches the
password into the user row it belongs to (a cross-table N→1 merge); ``journal`` is copied."""

from __future__ import annotations

from transforms.api import MappingSet
from transforms.declarative import Target, direction, table_mapping

USER = table_mapping(
    "public.account_user",
    [Target("public.app_user", key={"org": "org", "id": "id"}, columns={"email": "email"})],
    source_key=("org", "id"),
)
LOGIN = table_mapping(
    "public.login",
    [
        Target(
            "public.app_user",
            key={"org": "user_org", "id": "user_id"},
            columns={"password": "password"},
            patch=True,
            on_delete="ignore",  # its user's delete removes the row
        )
    ],
    source_key=("id",),
)
JOURNAL = table_mapping(
    "public.journal",
    [Target("public.journal", key={"id": "id"}, columns={"what": "what"})],
    source_key=("id",),
)
BACK = table_mapping(
    "public.app_user",
    [Target("public.account_user", key={"org": "org", "id": "id"}, columns={"email": "email"})],
    source_key=("org", "id"),
)

MAPPING = MappingSet(
    "scale", forward=direction(USER, LOGIN, JOURNAL), reverse=direction(BACK, JOURNAL)
)
