-- CDC into analytics (dl_cdc): the relay's checkpoint, its redaction
-- records and dead letters, written in one transaction per batch; and the
-- PostgreSQL analytics sink's table (in the schema this script runs in:
-- run it in an analytics schema of its own to keep the sink apart). None
-- of them holds a PHI value.
CREATE TABLE IF NOT EXISTS dl_cdc_relays (
    name text PRIMARY KEY,
    "position" bigint NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS dl_cdc_redactions (
    relay text NOT NULL,
    event_id text NOT NULL,
    entity text NOT NULL,
    "position" bigint NOT NULL,
    profile text NOT NULL,
    policy_version text NOT NULL,
    key_id text,
    fields jsonb NOT NULL,
    PRIMARY KEY (relay, event_id)
);

CREATE TABLE IF NOT EXISTS dl_cdc_dead_letters (
    relay text NOT NULL,
    event_id text NOT NULL,
    entity text NOT NULL,
    "position" bigint NOT NULL,
    reason text NOT NULL,
    at timestamptz NOT NULL,
    PRIMARY KEY (relay, event_id)
);

-- The PostgreSQL analytics sink: one row per event, kept once by its id;
-- received numbers the rows in the order they arrived.
CREATE TABLE IF NOT EXISTS ce_events (
    id text PRIMARY KEY,
    received bigint GENERATED ALWAYS AS IDENTITY,
    type text NOT NULL,
    subject text NOT NULL,
    "time" timestamptz NOT NULL,
    seq bigint NOT NULL,
    event jsonb NOT NULL,
    delivered_at timestamptz NOT NULL DEFAULT now()
);
