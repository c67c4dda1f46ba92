"""Schema drift (issue #31): DDL captured in the stream and judged through the mapping.

- :mod:`.trigger` — the event trigger on the source that emits each DDL command as a
  transactional logical message (prefix ``replicator.ddl``), installed by the pipeline's setup
  and removed by ``teardown``;
- :mod:`.judge` — pure: a change's verdict (safe, compatible, needs a mapping change) with the
  mapping line, table, column and fix;
- :mod:`.store` — ``replicator.schema_changes`` on the target: one row per change with its LSN,
  time, verdict and resolution; what blocks a cutover;
- :mod:`.recorder` — what apply does with a DDL record (and ``drift.apply_ddl``), the Relation
  fallback where no trigger could be installed, the DDL a switch's window must not contain;
- :mod:`.target_watch` — the target's own migrations while the forward stream runs.
"""
