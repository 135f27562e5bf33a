-- CDC into analytics (dl_cdc): the relay's checkpoint, its redaction
-- records and dead letters, written in one transaction per batch; and the
-- SQLite analytics sink's table. None of them holds a PHI value: records
-- name fields and rules, dead letters a reason, ce_events redacted events.
CREATE TABLE IF NOT EXISTS "dl_cdc_relays" (
    "name" TEXT NOT NULL PRIMARY KEY,
    "position" INTEGER NOT NULL,
    "updated_at" INTEGER NOT NULL
) STRICT;

-- For every emitted event, what was done to each PHI field.
CREATE TABLE IF NOT EXISTS "dl_cdc_redactions" (
    "relay" TEXT NOT NULL,
    "event_id" TEXT NOT NULL,
    "entity" TEXT NOT NULL,
    "position" INTEGER NOT NULL,
    "profile" TEXT NOT NULL,
    "policy_version" TEXT NOT NULL,
    "key_id" TEXT,
    "fields" TEXT NOT NULL,
    PRIMARY KEY ("relay", "event_id")
) STRICT, WITHOUT ROWID;

-- Captured records that did not match the schema: not emitted.
CREATE TABLE IF NOT EXISTS "dl_cdc_dead_letters" (
    "relay" TEXT NOT NULL,
    "event_id" TEXT NOT NULL,
    "entity" TEXT NOT NULL,
    "position" INTEGER NOT NULL,
    "reason" TEXT NOT NULL,
    "at" INTEGER NOT NULL,
    PRIMARY KEY ("relay", "event_id")
) STRICT, WITHOUT ROWID;

-- The SQLite analytics sink: one row per event, kept once by its id (its
-- rowid numbers the rows in the order they arrived).
CREATE TABLE IF NOT EXISTS "ce_events" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "type" TEXT NOT NULL,
    "subject" TEXT NOT NULL,
    "time" TEXT NOT NULL,
    "seq" INTEGER NOT NULL,
    "event" TEXT NOT NULL,
    "delivered_at" INTEGER NOT NULL
) STRICT;
