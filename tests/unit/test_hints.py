"""Every command and flag a hint tells the operator to use exists in the CLI.

A hint is the ``hint=`` of an error or a finding; a command reference is any text naming
`` `replicator <command> ...` `` in backticks. Flags of other programs are written inside
backticks that start with that program's name (`` `kafka-acls.sh --add ...` ``) and are not ours.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import typer.main

from replicator.cli import app

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(ROOT / "replicator").rglob("*.py"), *(ROOT / "connectors").rglob("*.py")])
FLAG = re.compile(r"(?<![\w-])--?[a-zA-Z][\w-]*")
BACKTICKED = re.compile(r"`([^`]*)`")


def _commands() -> dict[tuple[str, ...], set[str]]:
    """Command path -> its options (with the global ones)."""
    root = typer.main.get_command(app)
    out: dict[tuple[str, ...], set[str]] = {}

    def walk(cmd: Any, path: tuple[str, ...], inherited: set[str]) -> None:
        opts = set(inherited) | {"--help"}
        for p in cmd.params:
            opts |= set(p.opts) | set(p.secondary_opts)
        out[path] = opts
        for name, sub in getattr(cmd, "commands", {}).items():  # a group's commands
            walk(sub, (*path, name), opts if not path else inherited)

    walk(root, (), set())
    return out


def _text(node: ast.AST) -> str | None:
    """A string literal's text; an f-string's with its replacement fields as ``<>``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "<>" for v in node.values)
    return None


def _hints_and_texts() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    hints, texts = [], []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.keyword) and node.arg == "hint":
                text = _text(node.value)
                if text is not None:
                    hints.append((where, text))
            text = _text(node)
            if text is not None and "`replicator " in text:
                texts.append((where, text))
    return hints, texts


COMMANDS = _commands()
HINTS, TEXTS = _hints_and_texts()
ALL_FLAGS = set().union(*COMMANDS.values())


def _ours(hint: str) -> str:
    """The hint without the backticked commands of other programs."""
    return BACKTICKED.sub(lambda m: m.group(0) if m.group(1).startswith("replicator") else "", hint)


def test_the_scan_finds_the_hints() -> None:
    assert len(HINTS) > 30 and len(TEXTS) > 5
    assert ("--force" in ALL_FLAGS) and ("--dry-run" in COMMANDS[("cutover",)])


def test_every_flag_a_hint_names_exists() -> None:
    missing = [
        f"{where}: {flag} in {hint!r}"
        for where, hint in HINTS
        for flag in FLAG.findall(_ours(hint))
        if flag not in ALL_FLAGS
    ]
    assert not missing, "\n".join(missing)


def test_every_command_a_text_names_exists_with_its_flags() -> None:
    wrong = []
    for where, text in TEXTS:
        for ref in BACKTICKED.findall(text):
            words = ref.split()
            if not words or words[0] != "replicator":
                continue
            path: tuple[str, ...] = ()
            for w in words[1:]:
                if (*path, w) not in COMMANDS:
                    break
                path = (*path, w)
            if not path:
                wrong.append(f"{where}: no command in `{ref}`")
                continue
            wrong += [
                f"{where}: `{ref}`: replicator {' '.join(path)} has no {flag}"
                for flag in FLAG.findall(ref)
                if flag not in COMMANDS[path]
            ]
    assert not wrong, "\n".join(wrong)


def test_the_check_catches_a_flag_that_does_not_exist() -> None:
    hint = "run `replicator capture` once with the default --prepare to create it"
    assert [f for f in FLAG.findall(_ours(hint)) if f not in ALL_FLAGS] == ["--prepare"]
