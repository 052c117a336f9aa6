"""Tasks of the CRM export: shard, API key, launch/poll of the job on its launcher, cost."""
