"""PostgreSQL text values → Python values, by type OID, with psycopg's own loaders.

The log keeps values in PostgreSQL's text form; transforms want typed values. psycopg already
knows how to load every built-in type from text, so we ask its adapters instead of keeping a
hand-written table. Types it does not know (enums, domains of unknown base) stay ``str``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from psycopg import adapters, pq
from psycopg.adapt import Transformer

from replicator.errors import MalformedMessage

_Load = Callable[[bytes], Any]


class TextLoader:
    def __init__(self) -> None:
        self._tx = Transformer(adapters)
        self._cache: dict[int, _Load] = {}

    def _loader(self, oid: int) -> _Load:
        fn = self._cache.get(oid)
        if fn is None:
            fn = self._tx.get_loader(oid, pq.Format.TEXT).load
            self._cache[oid] = fn
        return fn

    def row(
        self, values: Mapping[str, str | None], columns: tuple[str, ...], oids: tuple[int, ...]
    ) -> dict[str, Any]:
        """Load one row image; columns absent from ``values`` (unchanged TOAST) stay absent."""
        out: dict[str, Any] = {}
        for col, oid in zip(columns, oids, strict=True):
            if col not in values:
                continue
            text = values[col]
            if text is None:
                out[col] = None
                continue
            try:
                out[col] = self._loader(oid)(text.encode())
            except Exception as exc:  # a loader's failure is bad data, never a crash
                raise MalformedMessage(
                    f"column {col!r}: cannot load {text[:60]!r} as type oid {oid}: {exc}"
                ) from None
        return out
