"""`replicator web` as the people watching a cutover see it: headless Chromium on the page.

A pipeline runs with a writer on legacy; the page's lag number changes and its chart gets
points; a legacy row whose key holds ``<script>`` is dead-lettered and its key is shown as
text (no script runs); after a cutover, its steps are listed with their times and the write
pause. The browser is Debian's ``chromium``, driven by Playwright (its own browser download is
not used). A screenshot is left in ``.state/web.png`` (docs/web.png is a copy of one).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cli import ROOT, Background, run_cli
from tests.support import Env, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EVIL = "<script>window.__xss = 1</script>"
ITEM = "CREATE TABLE item (id text PRIMARY KEY, title text NOT NULL)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: deploy/local/bootstrap.sh installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def _writer(env: Env, stop: threading.Event) -> None:
    with env.legacy_conn() as c:
        i = 0
        while not stop.is_set():
            c.execute("INSERT INTO item VALUES (%s, 'row')", (f"w{i}",))
            i += 1
            time.sleep(0.02)


def test_the_page_shows_lag_history_dead_letters_as_text_and_the_cutover(
    env: Env, tmp_path: Path, browser: Any
) -> None:
    with env.legacy_conn() as c:
        c.execute(ITEM)
        c.execute("INSERT INTO item SELECT 'seed' || g, 'seed' FROM generate_series(1, 100) g")
    with env.target_conn() as c:
        c.execute(ITEM)
        c.execute("ALTER TABLE item ADD CONSTRAINT no_markup CHECK (position('<' in id) = 0)")
    port = _free_port()
    vars_ = {
        **env.env_vars(),
        "REPLICATOR_MAPPING": "tests.e2e.web_mapping:MAPPING",
        "REPLICATOR_CAPTURE__HEARTBEAT_INTERVAL_S": "0.3",
        "REPLICATOR_CUTOVER__MAX_LAG_S": "5",
        "REPLICATOR_WEB__INTERVAL_S": "0.5",
    }
    stop = threading.Event()
    writer = threading.Thread(target=_writer, args=(env, stop), daemon=True)
    with (
        Background(["run"], vars_, tmp_path / "run.log") as run,
        Background(["web", "--port", str(port)], vars_, tmp_path / "web.log") as web,
    ):
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        wait_for(lambda: _answers(port), 30, what="the web server")
        page.goto(f"http://127.0.0.1:{port}/")

        # The lag number is there, then changes while a writer runs.
        lag = page.locator("#e2e-lag")
        wait_for(lambda: re.fullmatch(r"[\d.]+ s", lag.text_content() or ""), 60, what="a lag")
        writer.start()
        seen = {lag.text_content()}
        wait_for(lambda: seen.add(lag.text_content()) or len(seen) >= 3, 30, what="lag to move")
        # The chart has points (the history is polled every few seconds).
        chart = page.locator("#chart")
        wait_for(lambda: int(chart.get_attribute("data-points") or 0) >= 2, 30, what="points")
        assert page.locator("#chart canvas").count() >= 1

        # A legacy value with markup, refused by the target: its dead letter shows it as text.
        with env.legacy_conn() as c:
            c.execute("INSERT INTO item VALUES (%s, 'evil')", (EVIL,))
        wait_for(lambda: page.locator("#dlq-count").text_content() == "1", 30, what="a letter")
        page.click("#dlq-link")
        letters = page.locator("#dlq-list")
        wait_for(lambda: EVIL in (letters.text_content() or ""), 30, what="the letter's key")
        assert page.evaluate("window.__xss") is None
        assert page.locator("#dlq-list script").count() == 0
        assert "no_markup" in (letters.text_content() or "")  # the reason, as the target said it

        # Clear the way for a cutover: stop writing, let the target take the row and replay
        # its letter, validate; cut over.
        stop.set()
        writer.join()
        # A rename of a column the mapping reads: the drift panel says it blocks the cutover and
        # how to fix it; renamed back, `drift resolve` clears it (docs/drift.md).
        with env.legacy_conn() as c:
            c.execute("ALTER TABLE item RENAME COLUMN title TO heading")
        drift = page.locator("#drift tbody")
        wait_for(lambda: "BLOCKS CUTOVER" in (drift.text_content() or ""), 30, what="drift")
        shown = drift.text_content() or ""
        assert "needs_mapping_change" in shown and "public.item.title reads" in shown, shown
        assert "heading" in shown  # the fix names the column it may read now
        with env.legacy_conn() as c:
            c.execute("ALTER TABLE item RENAME COLUMN heading TO title")
        wait_for(lambda: drift.locator("tr").count() == 2, 30, what="the rename back")
        r = run_cli(["drift", "resolve"], vars_)
        assert r.returncode == 0, r.stdout + r.stderr
        wait_for(lambda: "resolved" in (drift.text_content() or ""), 30, what="resolved")
        with env.target_conn() as c:
            c.execute("ALTER TABLE item DROP CONSTRAINT no_markup")
        for args in (["dlq", "replay", "--all"], ["validate"]):
            r = run_cli(args, vars_)
            assert r.returncode == 0, r.stdout + r.stderr
        wait_for(lambda: page.locator("#verdict").text_content() == "READY", 30, what="ready")
        r = run_cli(["cutover", "--yes", "--json"], vars_)
        assert r.returncode == 0, r.stdout + r.stderr
        outcome = json.loads(r.stdout)

        # Its steps appear with their times, as the command measured them, and the pause.
        steps = page.locator("#journal tbody tr")
        n = len(outcome["steps"])
        wait_for(lambda: steps.count() == n, 30, what="the cutover's steps on the page")
        rows = [
            [c.strip() for c in steps.nth(i).locator("td").all_text_contents()] for i in range(n)
        ]
        names = [r[0] for r in rows]
        assert names == [s["name"] for s in outcome["steps"]], names
        assert {"preflight", "fence", "drain", "verify", "switch"} <= set(names), names
        for (name, started, duration, result, _), step in zip(rows, outcome["steps"], strict=True):
            assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", started), (name, started)
            assert abs(_ms(duration) - step["seconds"] * 1000) < 0.1, (name, duration, step)
            assert result == "ok", name
        summary = page.locator("#run-summary").text_content() or ""
        shown = re.search(r"write pause ([\d,.]+ ms)", summary)
        assert "switched" in summary and shown, summary
        # The page derives the pause from the journal's times (fence committed → switch done).
        assert abs(_ms(shown[1]) - outcome["pause_s"] * 1000) < 50, (summary, outcome)
        wait_for(
            lambda: "target → legacy" in (page.locator("#direction").text_content() or ""),
            30,
            what="the new direction",
        )
        # The rollback verdict agrees with the validation card beside it (it said "no
        # validation has run" while the card said "clean").
        reasons = page.locator("#reasons").text_content() or ""
        assert "no validation" not in reasons and "no backfill" not in reasons, reasons
        assert "clean" in (page.locator("#validation").text_content() or "")
        # The page follows the pipeline into the new direction; the replayed letter is gone.
        wait_for(lambda: re.fullmatch(r"[\d.]+ s", lag.text_content() or ""), 30, what="rev lag")
        assert (letters.text_content() or "").strip() == "none"
        shot = ROOT / ".state" / "web.png"
        shot.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
    for proc in (run, web):
        assert "Traceback" not in proc.output(), proc.output()


def _ms(text: str) -> float:
    return float(text.removesuffix(" ms").replace(",", ""))


def _answers(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_the_backfill_table_fits_its_card_at_1400_px(browser: Any) -> None:
    """The MCP mapping's tables, Python paths and million-row counts at 1400 px wide: every
    column of the backfill table (name, path, numbers, bar) lies inside its card. No database:
    the page is served over a state set by hand."""
    import orjson

    from replicator.config import Settings
    from replicator.web.server import WebApp, _Handler, _Server

    tables = [
        {
            "table": f"public.{n}",
            "rows_total": 1_250_000,
            "rows_applied": 1_250_000,
            "status": "applied",
            "path": "python: a per-row subquery",
        }
        for n in ("organization_member_invitation", "mcp_server_configuration", "user")
    ]
    state = {
        "sampled_at": time.time(),
        "sample_ms": 1.0,
        "interval_s": 1.0,
        "rates": {},
        "status": {
            "pipeline": "p",
            "direction": "fwd",
            "ready": False,
            "reasons": [],
            "unreachable": [],
            "source": None,
            "kafka": None,
            "target": {
                "backfill": {
                    "status": "loading",
                    "set_aside": [
                        {
                            "table": "public.user",
                            "kind": "index",
                            "name": "user_email_idx",
                            "backfill_status": "loading",
                        }
                    ],
                }
            },
        },
        "details": {
            "backfill_tables": tables,
            "runs": [],
            "problems": [],
            # The validation card: verified-through points, a table found different with its
            # key, and the last repair with what it left.
            "verified": {
                "public.user": {
                    "verified_at": "2026-12-07T10:00:00+00:00",
                    "age_s": 30.0,
                    "outcome": "clean",
                    "differences": 0,
                    "keys": [],
                    "pass": {"began_at": "x", "ranges": 4, "rows": 1_200, "after": "u9"},
                },
                "public.organization": {
                    "verified_at": None,
                    "age_s": None,
                    "outcome": "different",
                    "differences": 1,
                    "keys": [{"key": {"id": "org-7"}}],
                },
            },
            "repair": {
                "id": "repair-abc",
                "age_s": 5.0,
                "counts": {"repaired": 3, "still_different": 0, "refused": 1},
                "actions": [
                    {
                        "result": "refused",
                        "table": "public.user",
                        "key": {"id": "u1"},
                        "reason": "legacy rows collide",
                    }
                ],
            },
        },
    }
    app = WebApp(Settings())
    app.sampler._state = orjson.dumps(state)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.app = app
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        rows = page.locator("#backfill tbody tr")
        wait_for(lambda: rows.count() == 3, 10, what="the backfill rows")
        overflow = page.evaluate(
            """() => {
              const card = document.getElementById('backfill').closest('.card').getBoundingClientRect();
              return [...document.querySelectorAll('#backfill td, #backfill th, #backfill .bar')]
                .filter((c) => { const r = c.getBoundingClientRect();
                                 return r.right > card.right + 0.5 || r.left < card.left - 0.5; })
                .map((c) => c.textContent || c.className);
            }"""
        )
        assert overflow == [], f"cut off at 1400 px: {overflow}"
        assert "1,250,000" in (rows.nth(0).text_content() or "")
        verified = page.locator("#verified").text_content() or ""
        assert "public.user: verified through" in verified, verified
        assert "pass under way: 4 ranges, 1,200 rows checked" in verified, verified
        assert "public.organization: different (1)" in verified and "org-7" in verified
        repaired = page.locator("#last-repair").text_content() or ""
        assert "last repair repair-abc" in repaired and "repaired 3" in repaired, repaired
        assert "refused: public.user" in repaired and "collide" in repaired
        aside = page.locator("#set-aside").text_content() or ""
        assert "set aside on public.user: index user_email_idx" in aside, aside
    finally:
        server.shutdown()
        server.server_close()
