"""The pull step of the project's deployments: change into the worker host's checkout of the project."""

from __future__ import annotations

import os
from pathlib import Path

#: The environment variable a worker host sets to its checkout of the project (docs/tableau-refresh.md, "Deploy").
PROJECT_DIR_VARIABLE = "ANALYTICS_FLOWS_DIR"


class ProjectDirectoryError(RuntimeError):
    """The worker's environment does not name a checkout of the project."""


def set_project_directory(variable: str = PROJECT_DIR_VARIABLE) -> dict[str, str]:
    """Change the run's working directory to the checkout named by the environment variable ``variable``
    (a pull step of ``prefect.yaml``: ``deployments.steps.set_project_directory``).

    Prefect's own ``set_working_directory`` with ``{{ $ANALYTICS_FLOWS_DIR }}`` succeeds when the
    variable is unset and the run then crashes on a ``FileNotFoundError`` for ``flows/…`` in a temporary
    directory; this step says what is missing instead.

    Returns:
        ``{"directory": <the checkout, absolute>}``, the output Prefect records for the step.

    Raises:
        ProjectDirectoryError: ``variable`` is unset or empty, or names a directory without ``flows/``;
            the message names the variable and what to set it to.
    """
    value = os.environ.get(variable, "").strip()
    example = f"{variable}=/srv/analytics-flows prefect worker start --pool <pool>"
    if not value:
        raise ProjectDirectoryError(
            f"{variable} is not set in this worker's environment: set it to this host's checkout of "
            f"analytics-flows (the directory holding prefect.yaml and flows/) and restart the worker, "
            f"e.g. `{example}`."
        )
    directory = Path(value).expanduser().resolve()
    if not (directory / "flows").is_dir():
        raise ProjectDirectoryError(
            f"{variable}={value!r} is not a checkout of analytics-flows on this host (no flows/ directory "
            f"in {directory}): set it to the directory holding prefect.yaml and flows/, e.g. `{example}`."
        )
    os.chdir(directory)
    return {"directory": str(directory)}
