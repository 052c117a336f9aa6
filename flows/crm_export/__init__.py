"""The CRM export flow: a weekly BigQuery shard of users to the CRM, launched and polled on Dataflow."""
