"""Blocks of the CRM export: the CRM it sends to (HubSpot, Braze, a generic endpoint), Dataflow options, and
the secret stores of the CRM's key (Vault KV v2, a KMS ciphertext in GCS)."""
