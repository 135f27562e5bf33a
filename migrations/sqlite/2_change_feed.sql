-- The change feed's outbox (dl_repositories::feed): one row per committed
-- write of an entity named in cdc.entities, written in the same
-- transaction as the write. position is AUTOINCREMENT, so it is never
-- reused after pruning and (SQLite having one writer) is commit order.
-- key_id is the key's JSON text, or its keyed token when the key is PHI.
CREATE TABLE IF NOT EXISTS "dl_feed" (
    "position" INTEGER PRIMARY KEY AUTOINCREMENT,
    "entity" TEXT NOT NULL,
    "op" TEXT NOT NULL CHECK ("op" IN ('created', 'updated', 'deleted')),
    "key_id" TEXT NOT NULL,
    "seq" INTEGER NOT NULL,
    "committed_at" INTEGER NOT NULL,
    "schema_version" TEXT NOT NULL,
    "after_image" TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS "dl_feed__entity" ON "dl_feed" ("entity", "position");

-- Each key's last sequence number (kept after a delete, so a key's
-- sequence never restarts).
CREATE TABLE IF NOT EXISTS "dl_feed_keys" (
    "entity" TEXT NOT NULL,
    "key_id" TEXT NOT NULL,
    "seq" INTEGER NOT NULL,
    "existed" INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY ("entity", "key_id")
) STRICT, WITHOUT ROWID;

-- Named consumers and their checkpoints.
CREATE TABLE IF NOT EXISTS "dl_feed_consumers" (
    "name" TEXT NOT NULL PRIMARY KEY,
    "position" INTEGER NOT NULL,
    "registered_at" INTEGER NOT NULL,
    "acked_at" INTEGER
) STRICT;
