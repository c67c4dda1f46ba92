"""What a backfill by COPY payloads and compiled transforms could reach, measured in the database
alone (issue #17, part 3, not built yet): the legacy rows of every MCP table whose forward
transform compiles whole are copied (binary COPY) into an unlogged staging table on the target,
then written into the target table with one ``INSERT … SELECT <compiled expressions> … ON
CONFLICT`` (and, for comparison, a plain ``INSERT … SELECT``).

The limit is the target-shaped ceiling of bench.backfill: a binary COPY of the same target rows
into an empty copy of the target table, timed in the same run. No Kafka, no apply: the ratio says
how much of the ceiling the database-side work leaves for the rest of the pipeline.

    python -m bench.compiled_load [--quick]
"""

from __future__ import annotations

import io
from typing import Any

import psycopg

from bench.harness import Timer, bench_env, emit, log, parse_args, peak_rss_mb
from bench.validate import _url
from replicator.validate.sql import qualified, source_columns
from transforms.compile import CompiledTable, compile_table
from transforms.mcp_manager import MAPPING
from transforms.mcp_manager.generate import generate
from transforms.mcp_manager.legacy import create_legacy_schema
from transforms.mcp_manager.target_schema import apply_target_schema
from transforms.sql_twins import ident


def _types(
    conn: psycopg.Connection[Any], table: str, *, enum_as_text: bool = False
) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod), (SELECT typtype FROM pg_type"
        " WHERE oid = atttypid) FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
        " AND NOT attisdropped ORDER BY attnum",
        (table,),
    ).fetchall()
    # An enum of the legacy side is staged as its label text (its type is not on the target).
    return [(str(n), "text" if k == "e" and enum_as_text else str(t)) for n, t, k in rows]


def _copy_out(conn: psycopg.Connection[Any], query: str) -> bytes:
    buf = io.BytesIO()
    with conn.cursor().copy(f"COPY ({query}) TO STDOUT (FORMAT binary)") as cp:
        for chunk in cp:
            buf.write(chunk)
    return buf.getvalue()


def _copy_in(conn: psycopg.Connection[Any], table: str, cols: list[str], data: bytes) -> None:
    with conn.cursor().copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN (FORMAT binary)") as cp:
        cp.write(data)


def _one_table(
    lc: psycopg.Connection[Any], tc: psycopg.Connection[Any], c: CompiledTable
) -> dict[str, float]:
    (tg,) = c.targets
    ttypes = dict(_types(tc, tg.table))
    ltypes = _types(lc, c.source, enum_as_text=True)
    out: dict[str, float] = {}
    with Timer() as read:
        data = _copy_out(lc, f"SELECT * FROM {qualified(c.source)}")
    out["read_s"] = read.seconds
    cols = ", ".join(f"{ident(n)} {t}" for n, t in ltypes)
    tc.execute(f"CREATE UNLOGGED TABLE stage ({cols})")
    with Timer() as stage:
        _copy_in(tc, "stage", [ident(n) for n, _ in ltypes], data)
    out["stage_s"] = stage.seconds
    written = tg.key + tg.columns + tg.insert_only
    names = [ident(n) for n, _ in written]
    values = [f"({e.sql})::{ttypes[n]}" for n, e in written]
    keys = ", ".join(ident(n) for n, _ in tg.key)
    update = ", ".join(f"{ident(n)} = EXCLUDED.{ident(n)}" for n, _ in tg.columns)
    where = f"({c.reject_sql}) IS NULL" + (f" AND ({tg.when})" if tg.when else "")
    insert = (
        f"INSERT INTO {qualified(tg.table)} ({', '.join(names)}) SELECT {', '.join(values)}"
        f" FROM stage WHERE {where}"
    )
    with Timer() as upsert:
        n = tc.execute(f"{insert} ON CONFLICT ({keys}) DO UPDATE SET {update}").rowcount
    out["upsert_s"] = upsert.seconds
    tc.execute(f"TRUNCATE {qualified(tg.table)} CASCADE")  # its children: still empty
    with Timer() as plain:
        tc.execute(insert)
    out["plain_insert_s"] = plain.seconds
    shaped = _copy_out(tc, f"SELECT {', '.join(names)} FROM {qualified(tg.table)}")
    tc.execute(f"CREATE TABLE ceiling (LIKE {qualified(tg.table)} INCLUDING ALL)")
    with Timer() as ceiling:
        _copy_in(tc, "ceiling", names, shaped)
    out["ceiling_s"] = ceiling.seconds
    out["rows"] = n
    tc.execute("DROP TABLE stage, ceiling")
    return out


def main() -> dict[str, Any]:
    args = parse_args("compiled_load", __doc__ or "")
    scale = 2 if args.quick else 20
    with bench_env() as env:
        log(f"generating scale {scale}…")
        create_legacy_schema(_url(env.legacy))
        apply_target_schema(_url(env.target))
        generate(_url(env.legacy), scale=scale, seed=1, create_schema=False)
        totals: dict[str, float] = {}
        tables: dict[str, str] = {}
        with (
            psycopg.connect(env.legacy.conninfo(), autocommit=True) as lc,
            psycopg.connect(env.target.conninfo(), autocommit=True) as tc,
        ):
            tc.execute("SET session_replication_role = replica")  # as apply: no FK triggers
            for source, t in MAPPING.forward.tables.items():
                c = compile_table(t, source_columns(lc, source))
                if not isinstance(c, CompiledTable):
                    tables[source] = f"python: {c.reason}"
                    continue
                if len(c.targets) != 1 or c.targets[0].patch:
                    tables[source] = "python: a split or a patch (not measured here)"
                    continue
                got = _one_table(lc, tc, c)
                tables[source] = f"sql: {int(got['rows'])} rows"
                for k, v in got.items():
                    totals[k] = totals.get(k, 0.0) + v
        compiled_s = totals["stage_s"] + totals["upsert_s"]
        log(f"tables: {tables}")
        return emit(
            "compiled_load_rows_per_s",
            value=totals["rows"] / compiled_s,
            unit="rows/s",
            limit=totals["rows"] / totals["ceiling_s"],
            goal="a backfill at >= 0.7 of the target-shaped COPY ceiling (issue #17)",
            scale=scale,
            rows=int(totals["rows"]),
            read_s=round(totals["read_s"], 3),
            stage_s=round(totals["stage_s"], 3),
            upsert_s=round(totals["upsert_s"], 3),
            plain_insert_s=round(totals["plain_insert_s"], 3),
            ceiling_s=round(totals["ceiling_s"], 3),
            ratio_plain_insert=round(
                totals["ceiling_s"] / (totals["stage_s"] + totals["plain_insert_s"]), 3
            ),
            tables=tables,
            peak_rss_mb=round(peak_rss_mb(), 1),
        )


if __name__ == "__main__":
    main()
