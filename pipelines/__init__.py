"""Apache Beam pipelines, shipped to Dataflow workers as a package (``--setup_file``, see setup.py).

Nothing here imports Prefect: workers install only this package and Beam.
"""
