-- The clinical domain's tables (dl_models::domain), in the shape the
-- PostgreSQL backend expects. Runs with search_path set to postgres.schema.
-- Text is COLLATE "C" so it orders by bytes, as on every other store.
CREATE TABLE IF NOT EXISTS patients (
    id uuid PRIMARY KEY,
    mrn text NOT NULL COLLATE "C",
    given_name text NOT NULL COLLATE "C",
    family_name text NOT NULL COLLATE "C",
    date_of_birth date NOT NULL,
    phone text COLLATE "C",
    email text COLLATE "C",
    status text NOT NULL COLLATE "C",
    created_at timestamptz NOT NULL,
    version bigint NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS patients__mrn ON patients (mrn);
CREATE INDEX IF NOT EXISTS patients__family_name ON patients (family_name);
CREATE INDEX IF NOT EXISTS patients__status ON patients (status);

CREATE TABLE IF NOT EXISTS appointments (
    id uuid PRIMARY KEY,
    patient_id uuid NOT NULL,
    starts_at timestamptz NOT NULL,
    duration_minutes bigint NOT NULL,
    kind text NOT NULL COLLATE "C",
    status text NOT NULL COLLATE "C",
    notes text COLLATE "C",
    version bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS appointments__patient_id ON appointments (patient_id);
CREATE INDEX IF NOT EXISTS appointments__starts_at ON appointments (starts_at);
CREATE INDEX IF NOT EXISTS appointments__status ON appointments (status);

CREATE TABLE IF NOT EXISTS insurances (
    id uuid PRIMARY KEY,
    patient_id uuid NOT NULL,
    payer text NOT NULL COLLATE "C",
    member_id text NOT NULL COLLATE "C",
    group_number text COLLATE "C",
    valid_from date NOT NULL,
    valid_to date
);
CREATE INDEX IF NOT EXISTS insurances__patient_id ON insurances (patient_id);

CREATE TABLE IF NOT EXISTS alerts (
    id uuid PRIMARY KEY,
    patient_id uuid,
    severity text NOT NULL COLLATE "C",
    message text NOT NULL COLLATE "C",
    raised_at timestamptz NOT NULL,
    acknowledged boolean NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts__patient_id ON alerts (patient_id);
CREATE INDEX IF NOT EXISTS alerts__severity ON alerts (severity);

CREATE TABLE IF NOT EXISTS audit_events (
    id uuid PRIMARY KEY,
    at timestamptz NOT NULL,
    actor text NOT NULL COLLATE "C",
    action text NOT NULL COLLATE "C",
    entity text NOT NULL COLLATE "C",
    entity_key text NOT NULL COLLATE "C",
    purpose text COLLATE "C",
    detail jsonb
);
CREATE INDEX IF NOT EXISTS audit_events__at ON audit_events (at);
CREATE INDEX IF NOT EXISTS audit_events__actor ON audit_events (actor);

CREATE TABLE IF NOT EXISTS media_assets (
    id uuid PRIMARY KEY,
    uri text NOT NULL COLLATE "C",
    source text NOT NULL COLLATE "C",
    license text NOT NULL COLLATE "C",
    expires_at timestamptz,
    hash text NOT NULL COLLATE "C"
);
CREATE INDEX IF NOT EXISTS media_assets__expires_at ON media_assets (expires_at);
CREATE INDEX IF NOT EXISTS media_assets__hash ON media_assets (hash);
