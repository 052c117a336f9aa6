"""metadata_sources.yaml: a source is named by its key, and errors are ``SourceConfigError``s. The bad
inputs and their messages: tests/test_bad_input.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.config_files import ConfigFileError
from tasks.metadata.sources import AthenaExtractorConfig, SourceConfigError, load_source, load_sources

ROOT = Path(__file__).resolve().parents[2]
ENTRY = (
    "{extractor: {kind: tableau, pat_pool_block: pool}, landing: {kind: local, root: /srv, landing_dir: out}}"
)


def test_the_projects_file_loads():
    sources = load_sources(ROOT / "metadata_sources.yaml")
    assert list(sources) == ["athena-prod", "tableau-prod"]
    athena = sources["athena-prod"]
    assert athena.name == "athena-prod"
    assert isinstance(athena.extractor, AthenaExtractorConfig)
    assert athena.extractor.workgroups == ["primary", "analysts"]
    assert (sources["tableau-prod"].hwm.store, sources["tableau-prod"].landing.kind) == ("file", "azure_blob")
    # The shipped sources are examples: their deployments are paused.
    assert [source.schedule.active for source in sources.values()] == [False, False]


def test_a_source_without_schedule_is_deployed_daily_at_two_utc_and_active(tmp_path):
    file = tmp_path / "metadata_sources.yaml"
    file.write_text(f"sources:\n  prod: {ENTRY}\n")
    schedule = load_source("prod", file).schedule
    assert (schedule.cron, schedule.timezone, schedule.active) == ("0 2 * * *", "UTC", True)


def test_each_source_is_named_by_its_key_so_two_never_share_a_high_water_mark(tmp_path):
    file = tmp_path / "metadata_sources.yaml"
    file.write_text(f"sources:\n  prod: {ENTRY}\n  prod_copy: {ENTRY}\n")
    assert [source.name for source in load_sources(file).values()] == ["prod", "prod_copy"]
    assert load_source("prod_copy", file).hwm.store == "variable"


def test_every_error_is_a_source_config_error_and_a_value_error(tmp_path):
    file = tmp_path / "metadata_sources.yaml"
    file.write_text(f"sources:\n  prod: {ENTRY}\n  prod: {ENTRY}\n")
    with pytest.raises(SourceConfigError, match=r", line 3, sources\.prod: duplicate key 'prod'") as raised:
        load_source("prod", file)
    assert isinstance(raised.value, ConfigFileError)
    assert isinstance(raised.value, ValueError)


def test_the_docs_name_every_key_a_source_entry_takes():
    """docs/metadata-collectors.md's table of keys stays the schema's: every field of every model."""
    from pathlib import Path
    from typing import get_args

    from tasks.metadata import sources

    doc = (Path(__file__).resolve().parents[2] / "docs" / "metadata-collectors.md").read_text()
    table = doc[doc.index("| Where | Key | Meaning |") : doc.index("Adding a source adds an entry here")]
    models = [
        sources.SourceEntry,
        sources.HwmConfig,
        sources.ScheduleConfig,
        *get_args(get_args(sources.ExtractorConfig)[0]),
        *get_args(get_args(sources.LandingConfig)[0]),
    ]
    missing = [
        f"{model.__name__}.{name}"
        for model in models
        for name in model.model_fields
        if name != "kind" and f"`{name}`" not in table
    ]
    assert missing == []
    kinds = [model.model_fields["kind"].annotation for model in models[3:]]
    assert all(f"kind: {get_args(kind)[0]}" in table for kind in kinds)
