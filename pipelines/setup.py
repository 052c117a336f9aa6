"""The package Dataflow workers install: ``pipelines`` only (``--setup_file=pipelines/setup.py``).

Beam builds it with ``python -m build --sdist`` when it stages a job; workers already have Beam
with its GCP extras (``requests``, ``google-cloud-kms``), so the only extra is orjson.
"""

import setuptools

setuptools.setup(
    name="analytics-flows-pipelines",
    version="0.1.0",
    description="Apache Beam pipelines of analytics-flows (CRM export)",
    package_dir={"pipelines": "."},
    packages=["pipelines", "pipelines.crm_export"],
    install_requires=["orjson", "requests"],
    python_requires=">=3.11",
)
