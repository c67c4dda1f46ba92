"""The parity file (``parity.toml``): named pairs of reads, the legacy SQL and the target SQL
that answer the same question, with where their parameters come from, how to compare them and
the goals the target must meet. Parsed and checked here, before any database is asked, so a
bad file is named with its pair and never half-runs (docs/parity.md)."""

from __future__ import annotations

import importlib
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replicator.errors import ConfigError

COMPARES = ("set", "ordered", "count")
DEFAULT_MAX_RATIO = 1.1
DEFAULT_MAX_MS = 500.0
# Below this target p50 the ratio goal is not judged: a read that fast is the round trip's
# time, and a ratio of two such figures is noise on a busy machine.
DEFAULT_MIN_MS = 1.0
DEFAULT_SAMPLES = 20

_NAMED = re.compile(r"%\((\w+)\)s")
_POSITIONAL = re.compile(r"(?<!%)%s")
_CALL = re.compile(r"^\s*([\w.:]+)\s*(?:\(\s*([\w\s,]*)\)\s*)?$")
_PAIR_KEYS = {
    "name", "legacy", "target", "params", "samples", "compare", "columns", "target_params",
    "project", "max_ratio", "max_ms", "min_ms",
}  # fmt: skip
_TOP_KEYS = {"pair", "max_ratio", "max_ms", "min_ms", "runs"}

Converter = Callable[..., Any]


@dataclass(frozen=True)
class Call:
    """A converter applied to named values: ``fn(a, b)`` in the file, ``fn`` alone takes the
    value of the key it is written under."""

    text: str
    fn: Converter
    args: tuple[str, ...]

    def __call__(self, row: Mapping[str, Any]) -> Any:
        return self.fn(*(row[a] for a in self.args))


@dataclass
class Pair:
    name: str
    legacy: str
    target: str
    params: str | None = None  # a legacy query: each row is one parameter set
    samples: int = DEFAULT_SAMPLES
    compare: str = "set"
    columns: list[str] | None = None
    target_params: dict[str, Call] = field(default_factory=dict)
    project: dict[str, Call] = field(default_factory=dict)
    max_ratio: float = DEFAULT_MAX_RATIO
    max_ms: float = DEFAULT_MAX_MS
    min_ms: float = DEFAULT_MIN_MS

    def args(self, side: str, values: Mapping[str, Any]) -> dict[str, Any] | tuple[Any, ...] | None:
        """The query's arguments: named placeholders take the values by name, ``%s`` ones in
        the params query's column order. The target's go through ``target_params`` first.
        None without parameters: a lone ``%`` in the SQL (a LIKE pattern) stays as written."""
        if not values:
            return None
        if side == "target" and self.target_params:
            values = {**values, **{k: c(values) for k, c in self.target_params.items()}}
        sql = self.legacy if side == "legacy" else self.target
        if _NAMED.search(sql):
            return dict(values)
        return tuple(values.values())


@dataclass
class ParityFile:
    path: Path
    pairs: list[Pair]
    runs: int = 20


def _fail(path: Path, what: str, hint: str) -> ConfigError:
    return ConfigError(f"{path}: {what}", hint=hint)


def resolve(ref: str) -> Converter:
    """``name`` (from transforms.converters), or ``module:attribute`` (a mapping's own)."""
    module, _, attr = ref.rpartition(":") if ":" in ref else ("transforms.converters", "", ref)
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise LookupError(f"no converter {ref!r} ({exc})") from exc
    if not callable(fn):
        raise LookupError(f"{ref!r} is not callable")
    return fn  # type: ignore[no-any-return]


def _call(text: Any, key: str) -> Call:
    m = _CALL.match(text) if isinstance(text, str) else None
    if m is None:
        raise LookupError(f"{key} = {text!r} is not `converter` or `converter(column, …)`")
    args = tuple(a.strip() for a in (m.group(2) or "").split(",") if a.strip())
    return Call(text, resolve(m.group(1)), args or (key,))


def placeholders(sql: str) -> tuple[set[str], int]:
    """The named placeholders of a query and how many positional ones it has."""
    return set(_NAMED.findall(sql)), len(_POSITIONAL.findall(sql.replace("%%", "")))


def check_arity(pair: Pair, side: str, columns: list[str]) -> str | None:
    """Why the ``side`` query cannot take a parameter set of ``columns``, or None."""
    sql = pair.legacy if side == "legacy" else pair.target
    names, positional = placeholders(sql)
    have = list(columns) + [k for k in pair.target_params if side == "target" and k not in columns]
    if names and positional:
        return f"the {side} query mixes %s and %(name)s placeholders"
    if names - set(have):
        missing = ", ".join(sorted(names - set(have)))
        return f"the {side} query wants {missing}, which the parameters ({', '.join(have) or 'none'}) lack"
    if not names and positional != len(columns):
        return (
            f"the {side} query has {positional} %s placeholder(s) but each parameter set has "
            f"{len(columns)} value(s) ({', '.join(columns) or 'no params query'})"
        )
    return None


def _pair(path: Path, raw: Any, i: int, top: Mapping[str, Any]) -> Pair:
    label = f"pair #{i + 1}" + (f" {raw.get('name')!r}" if isinstance(raw, dict) else "")
    if not isinstance(raw, dict):
        raise _fail(path, f"{label} is not a table", "write each pair as a [[pair]] table")
    unknown = sorted(set(raw) - _PAIR_KEYS)
    if unknown:
        raise _fail(
            path,
            f"{label}: unknown key(s) {', '.join(unknown)}",
            f"the keys of a pair are {', '.join(sorted(_PAIR_KEYS))}",
        )
    for key in ("name", "legacy", "target"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise _fail(path, f"{label}: `{key}` is missing", f"give the pair a `{key}` string")
    compare = raw.get("compare", "set")
    if compare not in COMPARES:
        raise _fail(
            path, f"{label}: compare = {compare!r}", f"compare is one of {', '.join(COMPARES)}"
        )
    columns = raw.get("columns")
    if columns is not None and not (
        isinstance(columns, list) and all(isinstance(c, str) for c in columns)
    ):
        raise _fail(path, f"{label}: `columns` is not a list of names", 'columns = ["id", "email"]')
    calls: dict[str, dict[str, Call]] = {}
    for key in ("target_params", "project"):
        table = raw.get(key, {})
        if not isinstance(table, dict):
            raise _fail(
                path, f"{label}: `{key}` is not a table", f'[pair.{key}] id = "uuid_to_text"'
            )
        try:
            calls[key] = {k: _call(v, k) for k, v in table.items()}
        except LookupError as exc:
            raise _fail(
                path,
                f"{label}: {key}: {exc}",
                "name a function of transforms.converters or `module:function` of your mapping",
            ) from exc
    goals: dict[str, float] = {}
    for key, default in (
        ("max_ratio", DEFAULT_MAX_RATIO),
        ("max_ms", DEFAULT_MAX_MS),
        ("min_ms", DEFAULT_MIN_MS),
    ):
        value = raw.get(key, top.get(key, default))
        floor = 0 if key == "min_ms" else 1e-9  # min_ms = 0: judge the ratio at any speed
        if not isinstance(value, int | float) or isinstance(value, bool) or value < floor:
            raise _fail(path, f"{label}: {key} = {value!r}", f"{key} is a number above 0")
        goals[key] = float(value)
    samples = raw.get("samples", DEFAULT_SAMPLES)
    if not isinstance(samples, int) or samples < 1:
        raise _fail(path, f"{label}: samples = {samples!r}", "samples is a whole number ≥ 1")
    params = raw.get("params")
    if params is not None and not isinstance(params, str):
        raise _fail(path, f"{label}: `params` is not a query", 'params = "SELECT id FROM …"')
    pair = Pair(
        name=raw["name"],
        legacy=raw["legacy"],
        target=raw["target"],
        params=params,
        samples=samples,
        compare=compare,
        columns=columns,
        target_params=calls["target_params"],
        project=calls["project"],
        max_ratio=goals["max_ratio"],
        max_ms=goals["max_ms"],
        min_ms=goals["min_ms"],
    )
    if params is None:  # no parameters: the queries must not want any
        for side in ("legacy", "target"):
            problem = check_arity(pair, side, [])
            if problem:
                raise _fail(path, f"{label}: {problem}", "add a `params` query, or drop them")
    return pair


def parse(path: Path, text: str) -> ParityFile:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(path, f"not valid TOML: {exc}", "fix the syntax at the line named") from exc
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise _fail(
            path,
            f"unknown key(s) {', '.join(unknown)}",
            "the file holds max_ratio, max_ms, runs and [[pair]] tables",
        )
    pairs_raw = raw.get("pair", [])
    if not isinstance(pairs_raw, list) or not pairs_raw:
        raise _fail(path, "no [[pair]] in the file", "add at least one [[pair]] (docs/parity.md)")
    pairs = [_pair(path, p, i, raw) for i, p in enumerate(pairs_raw)]
    seen: set[str] = set()
    for p in pairs:
        if p.name in seen:
            raise _fail(path, f"two pairs are named {p.name!r}", "give each pair its own name")
        seen.add(p.name)
    runs = raw.get("runs", 20)
    if not isinstance(runs, int) or runs < 1:
        raise _fail(path, f"runs = {runs!r}", "runs is a whole number ≥ 1")
    return ParityFile(path, pairs, runs)


def load(path: Path) -> ParityFile:
    try:
        text = path.read_text()
    except OSError as exc:
        raise _fail(
            path,
            f"cannot read the parity file ({exc.strerror})",
            "write one beside replicator.toml (docs/parity.md) or pass --file",
        ) from exc
    return parse(path, text)
