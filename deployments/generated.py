"""Generated sections of ``prefect.yaml``: deployments written from a configuration file between two
marker comments, shared by ``deployments.domains`` (``tableau_domains.yaml``) and
``deployments.metadata`` (``metadata_sources.yaml``).

A section is one ``- <<: *<anchor>`` entry per configured item, in the configuration's order; the rest
of ``prefect.yaml`` (its comments included) is left as it is. Each command rewrites its section, or
with ``--check`` changes nothing and exits 1 while the section is out of date (the tests run it).
The same sections, with the same entries, are in ``prefect.docker.yaml`` beside it (the Docker work
pool's deployments, ``deployments.docker``), whose ``definitions`` give the anchors their entrypoint
and work pool: each command writes and checks both files.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from deployments.docker import docker_prefect_file

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"
T = TypeVar("T")


@dataclass(frozen=True)
class GeneratedSection:
    """One generated section of ``prefect.yaml``.

    Attributes:
        what: what the section deploys, e.g. ``"domain"``: its markers say ``<what> deployments``.
        noun: what one configured item is, e.g. ``"domain"``, ``"source"``: messages count ``<noun>(s)``.
        config_name: the configuration file it is generated from, e.g. ``"tableau_domains.yaml"``.
        command: the command that writes it, e.g. ``"python -m deployments.domains"``.
        anchor: the ``definitions`` anchor every entry merges, e.g. ``"refresh"`` (``<<: *refresh``).
    """

    what: str
    noun: str
    config_name: str
    command: str
    anchor: str

    @property
    def begin(self) -> str:
        """The first line of the section (indented as a ``deployments:`` item)."""
        return f"  # BEGIN {self.what} deployments: generated from {self.config_name} by `{self.command}`"

    @property
    def end(self) -> str:
        """The last line of the section."""
        return f"  # END {self.what} deployments"

    def render(self, specs: Iterable[Mapping[str, Any]]) -> str:
        """The section's text, markers included, without a final newline: one ``- <<: *<anchor>`` entry
        per spec (a deployment's keys, less the anchor's), in order, separated by blank lines."""
        entries = []
        for spec in specs:
            body = yaml.safe_dump(dict(spec), sort_keys=False, width=110, allow_unicode=True)
            entries.append(
                f"  - <<: *{self.anchor}\n" + "".join(f"    {line}\n" for line in body.splitlines())
            )
        return "\n".join([self.begin, "\n".join(entries).rstrip("\n"), self.end])

    def updated(self, text: str, specs: Iterable[Mapping[str, Any]]) -> str:
        """``text`` (prefect.yaml) with this section replaced by ``render(specs)``.

        Raises:
            ValueError: the markers are missing (or the end comes first), so the section cannot be placed.
        """
        start, end = text.find(self.begin), text.find(self.end)
        if start < 0 or end < start:
            raise ValueError(
                f"prefect.yaml has no generated section: put the lines {self.begin.strip()!r} and "
                f"{self.end.strip()!r} under 'deployments:' where the {self.what} deployments belong"
            )
        return text[:start] + self.render(specs) + text[end + len(self.end) :]

    def main(
        self,
        argv: list[str] | None,
        *,
        description: str,
        load: Callable[[str | None], Mapping[str, T]],
        config_file: Callable[[str | None], os.PathLike[str] | str],
        spec: Callable[[T], Mapping[str, Any]],
    ) -> int:
        """The command line of ``command``: ``[--check] [--config FILE] [--prefect-yaml FILE]``.

        Args:
            argv: the arguments (None: ``sys.argv[1:]``).
            description: the command's one-line description (``--help``).
            load: reads the configuration (``--config``, or None for its default): name → item, in order.
            config_file: the file ``load`` reads for a ``--config`` value, named when prefect.yaml is stale.
            spec: an item's deployment keys (see ``render``).

        Returns:
            0 when the section is up to date or was rewritten, in each of ``prefect_files()``; 1 when
            ``--check`` finds it out of date in one of them (the message, on stderr, names the file and
            the command to run).

        Raises:
            ValueError: prefect.yaml has no section (``updated``); the configuration's own error (a
                ``ValueError``) when it is not valid.
            OSError: prefect.yaml (or prefect.docker.yaml) cannot be read or written, or the project's
                prefect.docker.yaml is missing (``prefect_files``).
        """
        parser = argparse.ArgumentParser(prog=self.command, description=description)
        parser.add_argument(
            "--check", action="store_true", help="change nothing; exit 1 if prefect.yaml is stale"
        )
        parser.add_argument(
            "--config", default=None, help=f"{self.noun} configuration (default: {self.config_name})"
        )
        parser.add_argument("--prefect-yaml", type=Path, default=PREFECT_YAML)
        args = parser.parse_args(argv)

        items = load(args.config)
        specs = [spec(item) for item in items.values()]
        stale = 0
        for path in self.prefect_files(args.prefect_yaml):
            text = path.read_text()
            new = self.updated(text, specs)
            if new == text:
                print(f"{path.name}: the deployments of {len(items)} {self.noun}(s) are up to date")
            elif args.check:
                print(
                    f"{path.name} is out of date with {config_file(args.config)}: run `{self.command}`",
                    file=sys.stderr,
                )
                stale = 1
            else:
                path.write_text(new)
                print(
                    f"{path.name}: wrote the deployments of {len(items)} {self.noun}(s): {', '.join(items)}"
                )
        return stale

    @staticmethod
    def prefect_files(prefect_yaml: Path) -> list[Path]:
        """The files holding the section: ``prefect_yaml``, and ``prefect.docker.yaml`` beside it if it
        exists (the project's own must: a missing one is an error, not a file left unchecked).

        Raises:
            FileNotFoundError: the project's ``prefect.docker.yaml`` is missing.
        """
        docker = docker_prefect_file(prefect_yaml)
        if docker.exists():
            return [prefect_yaml, docker]
        if prefect_yaml.resolve() == PREFECT_YAML:
            raise FileNotFoundError(
                f"{docker} is missing: restore it (git checkout -- {docker.name}); it holds the Docker "
                "work pool's deployments (docs/deploy.md)"
            )
        return [prefect_yaml]
