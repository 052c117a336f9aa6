"""Metadata extractors (the contract: tasks.metadata.extracts.Extractor): Athena and Tableau."""
