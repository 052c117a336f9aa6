"""An HTTP stand-in for a CRM platform's batch user-import API (design.md §4, §6), modelled on real
batch APIs such as Braze `POST /users/track` and HubSpot's batch upsert. A real HTTP server storing
into SQLite, fast enough for the Beam sink's benchmarks; run as a subprocess by `CrmStandIn`:

    with CrmStandIn(api_key="k") as crm:
        requests.post(crm.batch_url, json={"users": [...]}, headers={"Authorization": "Bearer k"})
        assert crm.stats()["duplicate_deliveries"] == 0

From a shell: ``python -m devstack.crm --db crm.sqlite3 --api-key KEY --port 0``.

`POST /v1/users/batch`, body `{"users": [record, ...]}`
    Auth: `Authorization: Bearer <api key>`; missing or wrong → 401 `{"error": "invalid_api_key"}`.
    Faults (see `FaultConfig`) are then injected, in order: rate limit → 429 with `Retry-After:
    <seconds>` and `{"error": "rate_limited", "retry_after": n}`; server error → 500, 502 or 503
    (503 with `Retry-After: 1`) and `{"error": "server_error"}`; slow response → the request sleeps,
    then is processed normally. A 429 or 5xx stores nothing.
    `Idempotency-Key: <key>` (optional): a key that already got a 200 gets that same body again with
    `Idempotent-Replayed: true`, and nothing is stored; the same key with a different body (SHA-256
    of the raw body) → 422 `{"error": "idempotency_key_reused"}`. Only 200s are remembered.
    Malformed JSON, or no `users` list → 400 `{"error": "invalid_body", "detail": "..."}`; more than
    `max_batch_size` records (default 5,000) → 413 `{"error": "batch_too_large", "max_batch_size": n}`.
    Records are validated one by one; invalid ones are rejected, the rest of the batch is accepted.
    A record is an object with `external_id` (required: a non-empty string of ≤ 128 characters), an
    optional `email` (null, or a string matching `^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$`), and attributes:
    all its other fields, whose values are strings, numbers, booleans, null, arrays of strings/
    numbers/booleans, or objects whose values follow the same rules at any depth.
    200 `{"accepted": n, "rejected": [{"index": i, "external_id": str | null, "reason": "..."}]}`,
    `index` being the record's position in `users`.
    Accepted records are upserted by `external_id` into the SQLite table `users(external_id,
    attributes (JSON: the record without external_id), deliveries)`: a new user gets deliveries = 1,
    a known one has its attributes replaced and deliveries incremented. A replay does not touch it,
    so deliveries > 1 means the user was sent again under another idempotency key (or none).

Stand-in endpoints (no auth):
    `GET /devstack/stats` → `requests`, `batches_accepted` (200s that were not replays),
    `records_received`, `records_accepted`, `records_rejected` (records of those batches),
    `distinct_users`, `duplicate_deliveries` (users with deliveries > 1), `replays`,
    `slow_responses`, `status_counts` (`{"200": n, "429": n, ...}`). Counters cover batch requests
    and are updated when the response is sent.
    `POST /devstack/reset` → 204; forgets users, idempotency keys and counters, re-seeds the fault
    generator and refills the rate-limit bucket; the fault configuration stays.
    `GET /devstack/config`; `POST /devstack/config` with any `FaultConfig` fields → the new
    configuration (400 on unknown fields or invalid values).
    `GET /devstack/users/<external_id, URL-encoded>` → `{"external_id", "attributes", "deliveries"}`
    or 404.

The server logs nothing per request, and never the API key.
"""

from devstack.crm.faults import FaultConfig
from devstack.crm.standin import CrmStandIn

__all__ = ["CrmStandIn", "FaultConfig"]
