"""Secrets given as files (a mounted Kubernetes or Docker secret), read once at start.

Each secret setting ``x`` has a twin ``x_file``: a path whose content becomes ``x``. Giving both
is an error (which one wins would be a guess). A file's content is never echoed: errors name the
setting and the path only. Certificate and key paths are checked for readability at start too,
so a wrong mount fails ``replicator check`` with its name rather than a TLS error later.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, SecretStr


class Masked(str):
    """A secret handed to a library that wants ``str``: its ``repr`` (what a library's debug
    log of its configuration prints) is masked; the value itself is the secret."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"

    @staticmethod
    def of(secret: SecretStr) -> Masked | None:
        value = secret.get_secret_value()
        return Masked(value) if value else None


def read_secret_files(model: BaseModel, pairs: dict[str, str]) -> None:
    """For each ``secret -> secret_file`` pair with the file set, read it into the secret."""
    for secret, file_field in pairs.items():
        path: str = getattr(model, file_field)
        if not path:
            continue
        if getattr(model, secret).get_secret_value():
            raise ValueError(f"{secret} and {file_field} are both set: give one of them")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ValueError(f"{file_field} {path} cannot be read ({reason})") from None
        # A secret file usually ends with a newline (echo, kubectl create secret --from-file).
        value = text.removesuffix("\n").removesuffix("\r")
        if not value:
            raise ValueError(f"{file_field} {path} is empty")
        setattr(model, secret, SecretStr(value))


def check_readable(model: BaseModel, fields: list[str], skip: set[str] | None = None) -> None:
    """Certificate and key paths must name readable files."""
    for name in fields:
        path: str = getattr(model, name)
        if not path or path in (skip or set()):
            continue
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise ValueError(f"{name} {path} is not a readable file")
