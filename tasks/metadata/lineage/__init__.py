"""Lineage and usage: SQL lineage with sqlglot (``sql``), Athena's views and query history (``athena``),
Tableau's Metadata API (``tableau``), and OpenLineage events (``openlineage``).

The files and their columns: docs/metadata-extracts.md ("Lineage and usage").
"""
