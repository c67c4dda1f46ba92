"""Garbage-collector settings for the processes that stream rows (capture, apply)."""

from __future__ import annotations

import gc

# Allocations between two young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Fewer, cheaper garbage collections, for a process that streams rows.

    Every row change allocates a few dicts and objects, nearly all short-lived and free of
    cycles (reference counting frees them). At CPython's defaults a collection runs every 700
    allocations and the older generations are walked again and again while a large source
    transaction's batch is alive: a third of apply's time on a bulk transaction. ``freeze``
    moves everything alive at start-up (modules, configuration, library state) out of the
    collector's sight; the higher threshold lets short-lived rows die before a collection.
    The process owner calls this (the CLI), never a library import.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)
