"""Validation in the databases: compiled transforms turned into checksums both servers compute.

``plan`` writes the SQL of a group of target tables, ``groups`` runs a group's comparison by
bucket checksums, ``keys`` compares chosen source keys (``--fast``, the cutover's verify),
``passes`` spreads a run's groups over two session pairs, ``catalog`` reads each server's
catalog once.
"""
