"""Where export jobs run: Dataflow, or a detached local process with a job registry on disk."""
