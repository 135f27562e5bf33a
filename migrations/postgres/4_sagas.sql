-- Sagas (dl_saga): the saga log. One row per saga: its definition, state,
-- where it is (cursor), each step's state, attempts and outputs (a JSON
-- array), and the lease of the runner driving it (owner, expiry, fencing
-- token). The input, the outputs and the error texts are sealed
-- (XChaCha20-Poly1305 under privacy.key, the key id beside each): no PHI
-- in readable form. Times are milliseconds since the Unix epoch.
CREATE TABLE IF NOT EXISTS dl_sagas (
    id text PRIMARY KEY,
    name text NOT NULL,
    version bigint NOT NULL,
    state text NOT NULL,
    direction text NOT NULL,
    "cursor" bigint NOT NULL,
    pivoted bigint NOT NULL,
    input text NOT NULL,
    steps text NOT NULL,
    error_kind text,
    error text,
    owner text,
    lease_until bigint NOT NULL,
    fence bigint NOT NULL,
    recoveries bigint NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL
);

-- What a recovering runner looks for: open sagas whose lease expired.
CREATE INDEX IF NOT EXISTS dl_sagas_open ON dl_sagas (lease_until)
    WHERE state IN ('running', 'compensating');
CREATE INDEX IF NOT EXISTS dl_sagas_state ON dl_sagas (state, created_at);

-- The guard rows of step effects applied once (dl_saga::once): a step
-- writes its key in the same transaction as its effect.
CREATE TABLE IF NOT EXISTS dl_saga_effects (
    key text PRIMARY KEY,
    at bigint NOT NULL
);
