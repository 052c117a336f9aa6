"""The package Dataflow workers install: ``pipelines`` only (``--setup_file=pipelines/setup.py``).

Beam builds it with ``python -m build --sdist`` when it stages a job; workers already have Beam
with its GCP extras (``requests``, ``google-cloud-kms``). The extras: orjson (the records' JSON),
pydantic (the settings contract, ``crm_export/settings.py``) and hubspot-api-client (the HubSpot
destination's client, ``crm_export/destinations.py``).
"""

import setuptools

setuptools.setup(
    name="analytics-flows-pipelines",
    version="0.1.0",
    description="Apache Beam pipelines of analytics-flows (CRM export)",
    package_dir={"pipelines": "."},
    packages=["pipelines", "pipelines.crm_export"],
    install_requires=["orjson", "pydantic>=2,<3", "requests", "hubspot-api-client>=12"],
    python_requires=">=3.11",
)
