-- The change feed's outbox (dl_repositories::feed): one row per committed
-- write of an entity named in cdc.entities, written by the same statement
-- as the write. position comes from the one-row clock, whose row lock is
-- held to commit, so positions are commit order without gaps; an event
-- written inside a transaction gets its position just before COMMIT.
-- key_id is the key's JSON text, or its keyed token when the key is PHI.
CREATE TABLE IF NOT EXISTS dl_feed (
    id bigserial PRIMARY KEY,
    "position" bigint UNIQUE,
    entity text NOT NULL,
    op text NOT NULL CHECK (op IN ('created', 'updated', 'deleted')),
    key_id text NOT NULL,
    seq bigint NOT NULL,
    committed_at timestamptz NOT NULL,
    schema_version text NOT NULL,
    after_image jsonb
);
CREATE INDEX IF NOT EXISTS dl_feed__unstamped ON dl_feed (id) WHERE "position" IS NULL;
CREATE INDEX IF NOT EXISTS dl_feed__entity ON dl_feed (entity, "position");

-- Each key's last sequence number (kept after a delete).
CREATE TABLE IF NOT EXISTS dl_feed_keys (
    entity text NOT NULL,
    key_id text NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (entity, key_id)
);

-- The last position given out.
CREATE TABLE IF NOT EXISTS dl_feed_clock (
    id smallint PRIMARY KEY CHECK (id = 1),
    "position" bigint NOT NULL
);
INSERT INTO dl_feed_clock (id, "position") VALUES (1, 0) ON CONFLICT (id) DO NOTHING;

-- Named consumers and their checkpoints.
CREATE TABLE IF NOT EXISTS dl_feed_consumers (
    name text PRIMARY KEY,
    "position" bigint NOT NULL,
    registered_at timestamptz NOT NULL,
    acked_at timestamptz
);
