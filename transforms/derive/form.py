"""The SQL form of a plain Python converter, read from its code (``ast``; nothing is run).

:func:`derive` reads a converter's source and, where every construct in it has a SQL meaning
equal to Python's, gives a builder like a hand-written twin's (``Expr`` arguments → ``Expr``
with checks). What is understood:

- the body: a docstring, ``name = expr``, ``if cond: raise …`` (the row goes the Python way
  where ``cond`` holds: Python refuses it), ``if cond: return a`` and a final ``return``;
- integers (bigint columns and constants): ``+ - *``, unary ``-``, ``abs``, each guarded so a
  result outside bigint goes the Python way (Python's ints do not overflow, SQL's do);
- text: ``strip/lstrip/rstrip`` with literal characters (Python's no-argument form strips
  Unicode white space: only printable ASCII rows keep SQL then), ``lower/upper`` (printable
  ASCII only, under the C collation), ``len`` (code points both sides), ``+``, ``str()`` of an
  integer;
- comparisons (text under the C collation: code point order, as Python's), ``and/or/not``
  over booleans, ``a if c else b``;
- constants (literals, the module's and the bound instance's int/str/bool values) and calls of
  converters that have a SQL twin or a derived form themselves.

Anything else — division and ``%`` (they round differently), floats, Decimals, closures,
loops, a NULL argument — is not derived (:class:`Underived` says why) or sent the Python way by
a check. Derivation is only half of it: a derived form is used only once proved equal to its
function on the real server (replicator.derived), as the twins' property tests do.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transforms.sql_twins import (
    BOOL,
    INT,
    NOT_PLAIN_ASCII,
    TEXT,
    UNKNOWN,
    Check,
    Expr,
    NotCompilable,
    apply_twin,
    literal,
    twin_of,
)

BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
_DEPTH = 4  # how deep calls of other derivable converters are followed


@dataclass(frozen=True, slots=True)
class Derived:
    """A converter's SQL form, read from its code: :meth:`build` as a twin's builder."""

    fn: Callable[..., Any]
    params: tuple[str, ...]
    tree: ast.FunctionDef
    # The function's source and every constant it reads: a proof is of this text.
    fingerprint: str

    def build(self, *args: Expr) -> Expr:
        if len(args) != len(self.params):
            raise NotCompilable(f"takes {len(self.params)} argument(s), given {len(args)}")
        t = _Translator(self.fn, 0)
        # A NULL argument reaches the function only with convert_none (or several sources):
        # Python then decides (it may raise on None, SQL would give NULL).
        checks = tuple((f"({a.sql}) IS NULL", "a NULL argument (the Python way)") for a in args)
        env = {p: Expr(a.sql, a.type, a.checks) for p, a in zip(self.params, args, strict=True)}
        e = t.body(self.tree.body, env)
        return Expr(e.sql, e.type, (*checks, *e.checks))


@dataclass(frozen=True, slots=True)
class Underived:
    reason: str


def derive(fn: Callable[..., Any]) -> Derived | Underived:
    """``fn``'s SQL form, or why it has none."""
    try:
        return _derive(fn)
    except NotCompilable as e:
        return Underived(e.reason)


def _derive(fn: Callable[..., Any]) -> Derived:
    func = getattr(fn, "__func__", fn)
    bound = hasattr(fn, "__self__") and not inspect.isbuiltin(fn)
    if not inspect.isfunction(func):
        raise NotCompilable("not a Python function")
    if func.__closure__:
        raise NotCompilable("it reads variables of an enclosing function")
    try:
        source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError):
        raise NotCompilable("its source code is not available") from None
    tree = ast.parse(source).body[0]
    if not isinstance(tree, ast.FunctionDef):
        raise NotCompilable("a lambda or a class, not a def")
    a = tree.args
    if a.vararg or a.kwarg or a.kwonlyargs or a.posonlyargs or a.defaults:
        raise NotCompilable("only plain positional parameters without defaults")
    params = tuple(p.arg for p in a.args)[1 if bound else 0 :]
    # Fingerprint: the code and the constants it reads (a changed width is another function).
    consts = sorted(
        f"{n}={v!r}" for n, v in _constants(fn, tree).items() if isinstance(v, int | str)
    )
    digest = hashlib.sha256("\n".join([source, *consts]).encode()).hexdigest()[:16]
    return Derived(fn, params, tree, digest)


def _constants(fn: Callable[..., Any], tree: ast.FunctionDef) -> dict[str, Any]:
    func = getattr(fn, "__func__", fn)
    out: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in func.__globals__:
            out[node.id] = func.__globals__[node.id]
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            owner = getattr(fn, "__self__", None)
            if owner is not None and node.value.id == "self":
                out[f"self.{node.attr}"] = getattr(owner, node.attr, None)
    return out


def literals_of(d: Derived) -> list[Any]:
    """The constants the code holds: the proof's values are built around them."""
    out = [n.value for n in ast.walk(d.tree) if isinstance(n, ast.Constant)]
    out += [v for v in _constants(d.fn, d.tree).values() if isinstance(v, int | str)]
    return [v for v in out if isinstance(v, int | str) and not isinstance(v, bool)]


def _fits(x: str, lo: int, hi: int) -> str:
    return f"({x}) BETWEEN {lo} AND {hi}"


def _int_result(value: str, operands: Sequence[Expr]) -> Expr:
    """``value`` computed exactly in numeric, kept where it fits bigint (the Python path
    takes the rest: Python's int has no limit, a bigint column has)."""
    ok = _fits(value, BIGINT_MIN, BIGINT_MAX)
    checks = tuple(c for o in operands for c in o.checks)
    bad = (f"NOT ({ok})", "an integer result outside bigint")
    return Expr(f"(CASE WHEN {ok} THEN ({value})::bigint END)", INT, (*checks, bad))


def _const_int(e: Expr) -> int | None:
    if e.type == INT and e.sql.endswith("::bigint") and not e.checks:
        try:
            return int(e.sql[: -len("::bigint")])
        except ValueError:
            return None
    return None


def _range_for(op: str, c: int) -> tuple[int, int]:
    """The values of x for which ``x op c`` stays within bigint."""
    lo, hi = BIGINT_MIN, BIGINT_MAX
    if op == "+":
        return max(lo, lo - c), min(hi, hi - c)
    if op == "-":
        return max(lo, lo + c), min(hi, hi + c)
    if c == 0:
        return lo, hi
    if c > 0:
        return -((-lo) // c), hi // c
    return -((-hi) // c), lo // c


class _Translator:
    def __init__(self, fn: Callable[..., Any], depth: int) -> None:
        self.fn = fn
        self.func = getattr(fn, "__func__", fn)
        self.owner = getattr(fn, "__self__", None)
        self.depth = depth

    # ---- statements --------------------------------------------------------------------

    def body(self, stmts: Sequence[ast.stmt], env: dict[str, Expr]) -> Expr:
        env = dict(env)
        checks: list[Check] = []
        for i, s in enumerate(stmts):
            if i == 0 and isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant):
                continue  # the docstring
            if isinstance(s, ast.Assign) and len(s.targets) == 1:
                target = s.targets[0]
                if not isinstance(target, ast.Name):
                    raise NotCompilable(f"line {s.lineno}: only assignments to one name")
                env[target.id] = self.expr(s.value, env)
                continue
            if isinstance(s, ast.Return):
                if s.value is None:
                    raise NotCompilable(f"line {s.lineno}: returns nothing")
                return _with(self.expr(s.value, env), checks)
            if isinstance(s, ast.If) and not s.orelse and len(s.body) == 1:
                cond = self._bool(s.test, env)
                only = s.body[0]
                if isinstance(only, ast.Raise):
                    # Python refuses the row: the Python path dead-letters it with its reason.
                    checks.extend(cond.checks)
                    checks.append((cond.sql, f"the converter raises (line {only.lineno})"))
                    continue
                if isinstance(only, ast.Return) and only.value is not None:
                    then = self.expr(only.value, env)
                    rest = self.body(stmts[i + 1 :], env)
                    return _with(_case(cond, then, rest), checks)
            raise NotCompilable(f"line {s.lineno}: a {type(s).__name__} statement")
        raise NotCompilable("no return at the end")

    # ---- expressions -------------------------------------------------------------------

    def expr(self, node: ast.expr, env: Mapping[str, Expr]) -> Expr:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, float):
                raise NotCompilable(f"line {node.lineno}: a float constant")
            return literal(node.value)
        if isinstance(node, ast.Name):
            if node.id in env:
                return env[node.id]
            return self._global(node.id, node.lineno)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self" and self.owner:
                return self._constant(getattr(self.owner, node.attr, None), node)
            raise NotCompilable(f"line {node.lineno}: attribute {node.attr}")
        if isinstance(node, ast.BinOp):
            return self._binop(node, env)
        if isinstance(node, ast.UnaryOp):
            x = self.expr(node.operand, env)
            if isinstance(node.op, ast.Not):
                b = self._need_bool(x, node)
                return Expr(f"(NOT {b.sql})", BOOL, b.checks)
            if isinstance(node.op, ast.USub) and x.type == INT:
                return _int_result(f"-(({x.sql})::numeric)", [x])
            raise NotCompilable(f"line {node.lineno}: {type(node.op).__name__} of a {x.type}")
        if isinstance(node, ast.BoolOp):
            parts = [self._need_bool(self.expr(v, env), node) for v in node.values]
            op = " AND " if isinstance(node.op, ast.And) else " OR "
            checks = tuple(c for p in parts for c in p.checks)
            return Expr("(" + op.join(p.sql for p in parts) + ")", BOOL, checks)
        if isinstance(node, ast.Compare):
            return self._compare(node, env)
        if isinstance(node, ast.IfExp):
            cond = self._bool(node.test, env)
            return _case(cond, self.expr(node.body, env), self.expr(node.orelse, env))
        if isinstance(node, ast.Call):
            return self._call(node, env)
        raise NotCompilable(f"line {node.lineno}: {type(node).__name__} has no SQL form here")

    def _global(self, name: str, line: int) -> Expr:
        g = self.func.__globals__
        if name not in g:
            raise NotCompilable(f"line {line}: {name} is not a constant of the module")
        return self._constant(g[name], line)

    def _constant(self, value: Any, where: ast.AST | int) -> Expr:
        line = where if isinstance(where, int) else getattr(where, "lineno", 0)
        if isinstance(value, bool | int | str):
            return literal(value)
        raise NotCompilable(f"line {line}: reads a {type(value).__name__}, not a constant")

    def _bool(self, node: ast.expr, env: Mapping[str, Expr]) -> Expr:
        return self._need_bool(self.expr(node, env), node)

    @staticmethod
    def _need_bool(x: Expr, node: ast.AST) -> Expr:
        if x.type != BOOL:
            # Python's truth of a number or a string is not SQL's: only booleans are tested.
            raise NotCompilable(f"line {getattr(node, 'lineno', 0)}: tests a {x.type}, not a bool")
        return x

    def _binop(self, node: ast.BinOp, env: Mapping[str, Expr]) -> Expr:
        a, b = self.expr(node.left, env), self.expr(node.right, env)
        op = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}.get(type(node.op))
        if a.type == TEXT and b.type == TEXT and op == "+":
            return Expr(f"({a.sql} || {b.sql})", TEXT, (*a.checks, *b.checks))
        if a.type != INT or b.type != INT or op is None:
            raise NotCompilable(
                f"line {node.lineno}: {type(node.op).__name__} of {a.type} and {b.type}"
                " (only + - * of integers, + of text: / // % round unlike SQL)"
            )
        ca, cb = _const_int(a), _const_int(b)
        x, c = (a, cb) if cb is not None else (b, ca) if op != "-" else (a, None)
        if c is not None:
            # One operand a constant: a range test on the other keeps bigint arithmetic.
            lo, hi = _range_for(op, c)
            ok = _fits(x.sql, lo, hi)
            bad = (f"NOT ({ok})", "an integer result outside bigint")
            value = f"(CASE WHEN {ok} THEN ({a.sql}) {op} ({b.sql}) END)"
            return Expr(value, INT, (*a.checks, *b.checks, bad))
        return _int_result(f"({a.sql})::numeric {op} ({b.sql})::numeric", [a, b])

    def _compare(self, node: ast.Compare, env: Mapping[str, Expr]) -> Expr:
        ops = {ast.Eq: "=", ast.NotEq: "<>", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
        left = self.expr(node.left, env)
        parts: list[str] = []
        checks: list[Check] = list(left.checks)
        for op_node, right_node in zip(node.ops, node.comparators, strict=True):
            right = self.expr(right_node, env)
            op = ops.get(type(op_node))
            if op is None or left.type != right.type or left.type not in (INT, TEXT, BOOL):
                raise NotCompilable(
                    f"line {node.lineno}: {type(op_node).__name__} of {left.type} and {right.type}"
                )
            collate = ' COLLATE "C"' if left.type == TEXT else ""
            parts.append(f"({left.sql}){collate} {op} ({right.sql}){collate}")
            checks.extend(right.checks)
            left = right
        return Expr("(" + " AND ".join(parts) + ")", BOOL, tuple(checks))

    def _call(self, node: ast.Call, env: Mapping[str, Expr]) -> Expr:
        if node.keywords:
            raise NotCompilable(f"line {node.lineno}: a call with keyword arguments")
        args = [self.expr(a, env) for a in node.args]
        f = node.func
        g = self.func.__globals__
        if isinstance(f, ast.Attribute):
            name = f.value.id if isinstance(f.value, ast.Name) else ""
            owner = None if name in env else g.get(name)
            if not isinstance(owner, types.ModuleType):
                return self._method(f.attr, self.expr(f.value, env), args, node.lineno)
            target, label = getattr(owner, f.attr, None), f.attr  # module.function(...)
        elif isinstance(f, ast.Name):
            if f.id in ("len", "abs", "str") and f.id not in g and len(args) == 1:
                return _builtin(f.id, args[0], node.lineno)
            target, label = g.get(f.id), f.id
        else:
            raise NotCompilable(f"line {node.lineno}: a call of a computed function")
        if target is None or not callable(target):
            raise NotCompilable(f"line {node.lineno}: {label} is not a known function")
        if twin_of(target) is not None:
            return apply_twin(target, args)
        if self.depth >= _DEPTH:
            raise NotCompilable(f"line {node.lineno}: calls nested too deep")
        inner = derive(target)
        if isinstance(inner, Underived):
            raise NotCompilable(f"line {node.lineno}: {label}: {inner.reason}")
        t = _Translator(target, self.depth + 1)
        if len(args) != len(inner.params):
            raise NotCompilable(f"line {node.lineno}: {label} takes {len(inner.params)} arguments")
        return t.body(inner.tree.body, dict(zip(inner.params, args, strict=True)))

    @staticmethod
    def _method(name: str, x: Expr, args: list[Expr], line: int) -> Expr:
        if x.type != TEXT:
            raise NotCompilable(f"line {line}: .{name}() of a {x.type}")
        if name in ("strip", "lstrip", "rstrip"):
            fn = {"strip": "btrim", "lstrip": "ltrim", "rstrip": "rtrim"}[name]
            if not args:
                # Python strips Unicode white space; on printable ASCII that is the space.
                bad = (f"({x.sql}) ~ '{NOT_PLAIN_ASCII}'", f".{name}() of text not plain ASCII")
                return Expr(f"{fn}({x.sql}, ' ')", TEXT, (*x.checks, bad))
            (chars,) = args
            if chars.type != TEXT:
                raise NotCompilable(f"line {line}: .{name}() of a {chars.type}")
            return Expr(f"{fn}({x.sql}, {chars.sql})", TEXT, (*x.checks, *chars.checks))
        if name in ("lower", "upper") and not args:
            # Python folds every script; under the C collation SQL folds ASCII alone.
            bad = (f"({x.sql}) ~ '{NOT_PLAIN_ASCII}'", f".{name}() of text not plain ASCII")
            return Expr(f'{name}(({x.sql}) COLLATE "C")', TEXT, (*x.checks, bad))
        raise NotCompilable(f"line {line}: str.{name}() has no derived form")


def _builtin(name: str, x: Expr, line: int) -> Expr:
    if name == "len" and x.type == TEXT:
        return Expr(f"char_length({x.sql})", INT, x.checks)
    if name == "abs" and x.type == INT:
        return _int_result(f"abs(({x.sql})::numeric)", [x])
    if name == "str" and x.type == INT:
        return Expr(f"({x.sql})::text", TEXT, x.checks)
    raise NotCompilable(f"line {line}: {name}() of a {x.type}")


def _case(cond: Expr, then: Expr, other: Expr) -> Expr:
    types = {then.type, other.type} - {UNKNOWN}
    if len(types) > 1:
        raise NotCompilable(f"the branches give a {then.type} and a {other.type}")
    # Each branch's checks hold only where Python takes that branch.
    checks = (
        *cond.checks,
        *((f"({cond.sql}) AND ({c})", r) for c, r in then.checks),
        *((f"NOT ({cond.sql}) AND ({c})", r) for c, r in other.checks),
    )
    typ = types.pop() if types else UNKNOWN
    return Expr(f"(CASE WHEN {cond.sql} THEN {then.sql} ELSE {other.sql} END)", typ, checks)


def _with(e: Expr, checks: list[Check]) -> Expr:
    if not checks:
        return e
    # A row Python refuses earlier must not have the value computed (it could fail).
    ok = " AND ".join(f"NOT ({c})" for c, _ in checks)
    return Expr(f"(CASE WHEN {ok} THEN {e.sql} END)", e.type, (*checks, *e.checks))
