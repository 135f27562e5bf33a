-- Sagas (dl_saga): the saga log. One row per saga: its definition, state,
-- where it is (cursor), each step's state, attempts and outputs (a JSON
-- array), and the lease of the runner driving it (owner, expiry, fencing
-- token). The input, the outputs and the error texts are sealed
-- (XChaCha20-Poly1305 under privacy.key, the key id beside each): no PHI
-- in readable form. Times are milliseconds since the Unix epoch.
CREATE TABLE IF NOT EXISTS "dl_sagas" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "name" TEXT NOT NULL,
    "version" INTEGER NOT NULL,
    "state" TEXT NOT NULL,
    "direction" TEXT NOT NULL,
    "cursor" INTEGER NOT NULL,
    "pivoted" INTEGER NOT NULL,
    "input" TEXT NOT NULL,
    "steps" TEXT NOT NULL,
    "error_kind" TEXT,
    "error" TEXT,
    "owner" TEXT,
    "lease_until" INTEGER NOT NULL,
    "fence" INTEGER NOT NULL,
    "recoveries" INTEGER NOT NULL,
    "created_at" INTEGER NOT NULL,
    "updated_at" INTEGER NOT NULL
) STRICT;

-- What a recovering runner looks for: open sagas whose lease expired.
CREATE INDEX IF NOT EXISTS "dl_sagas_open" ON "dl_sagas" ("lease_until")
    WHERE "state" IN ('running', 'compensating');
CREATE INDEX IF NOT EXISTS "dl_sagas_state" ON "dl_sagas" ("state", "created_at");

-- The guard rows of step effects applied once (dl_saga::once): a step
-- writes its key in the same transaction as its effect.
CREATE TABLE IF NOT EXISTS "dl_saga_effects" (
    "key" TEXT NOT NULL PRIMARY KEY,
    "at" INTEGER NOT NULL
) STRICT;
