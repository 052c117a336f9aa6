"""Blocks of the CRM export: Dataflow options and the secret stores of the CRM API key (Vault KV v2, a KMS ciphertext in GCS)."""
