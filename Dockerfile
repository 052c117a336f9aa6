# The image of analytics-flows' Docker, Kubernetes and ECS deployments (docs/deploy.md):
#
#   docker build -t analytics-flows .                              # Tableau refresh, metadata collection
#   docker build --build-arg CRM_EXPORT=true -t analytics-flows .  # and the CRM export (Apache Beam)
#
# `prefect deploy --prefect-file prefect.docker.yaml --all` builds and pushes it (prefect-docker's steps).
# Written for Docker's classic builder as well as BuildKit: prefect-docker builds through docker-py,
# which has no BuildKit features (no cache mounts, no heredocs). The large layer of each stage comes
# last: a storage driver without copy-on-write (vfs) copies the whole file system for every later step.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: uv, then the locked environment ------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
# The Makefile's UV_VERSION: the uv that wrote uv.lock installs it. CRM_EXPORT=true: the whole locked
# environment, Apache Beam and the CRM export's clients included.
ARG UV_VERSION=0.13.9 CRM_EXPORT=false
# uv from PyPI into a virtual environment of its own, left behind with this stage.
RUN python3.11 -m venv /opt/uv \
    && /opt/uv/bin/pip install --no-cache-dir --disable-pip-version-check --quiet "uv==${UV_VERSION}"
WORKDIR /opt/analytics-flows
COPY pyproject.toml uv.lock ./
# The environment from the lock (rebuilt when the lock changes, not with the code), without the
# project itself: the image runs it from /opt/analytics-flows on PYTHONPATH. Unless CRM_EXPORT=true,
# the packages only the CRM export needs are left uninstalled (the lock stays whole): Apache Beam and
# what nothing else requires (pyarrow, numpy, fastavro, pillow, zstandard, pymongo, dnspython,
# jsonpickle, objsize, sortedcontainers), the Dataflow and HubSpot clients and the sdist builder Beam
# uses. Measured: about 400 MB of the 790 MB environment (docs/deploy.md, "The image").
RUN skip=""; \
    if [ "$CRM_EXPORT" != true ]; then \
      for package in apache-beam pyarrow numpy fastavro pillow zstandard pymongo dnspython jsonpickle \
          objsize sortedcontainers google-cloud-dataflow-client hubspot-api-client build pyproject-hooks; do \
        skip="$skip --no-install-package $package"; \
      done; \
    fi; \
    UV_PYTHON=python3.11 UV_PYTHON_DOWNLOADS=never UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1 UV_NO_CACHE=1 \
    /opt/uv/bin/uv sync --locked --no-dev --no-install-project $skip

# --- final: the interpreter, the code and the environment; no uv, no pip of ours, no compiler ----------
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 flows \
    && useradd --system --uid 10001 --gid flows --create-home --home-dir /home/flows flows
# ANALYTICS_FLOWS_DIR: the directory the deployments' pull step changes into (deployments/steps.py).
ENV PATH=/opt/analytics-flows/.venv/bin:$PATH \
    VIRTUAL_ENV=/opt/analytics-flows/.venv \
    PYTHONPATH=/opt/analytics-flows \
    ANALYTICS_FLOWS_DIR=/opt/analytics-flows \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/analytics-flows
USER 10001:10001
CMD ["python", "-c", "import flows.metadata.collect, flows.tableau.refresh; print('analytics-flows: OK')"]
# The code and the environment, owned by root: read-only for the runs. Code changes rebuild from here.
COPY . .
COPY --from=build /opt/analytics-flows/.venv .venv
