-- The clinical domain's tables (dl_models::domain), in the shape the SQLite
-- backend expects: STRICT tables, text keys, timestamps as epoch millis.
CREATE TABLE IF NOT EXISTS "patients" ("id" TEXT NOT NULL PRIMARY KEY, "mrn" TEXT NOT NULL, "given_name" TEXT NOT NULL, "family_name" TEXT NOT NULL, "date_of_birth" TEXT NOT NULL, "phone" TEXT, "email" TEXT, "status" TEXT NOT NULL, "created_at" INTEGER NOT NULL, "version" INTEGER NOT NULL) STRICT;
CREATE UNIQUE INDEX IF NOT EXISTS "patients__mrn" ON "patients" ("mrn");
CREATE INDEX IF NOT EXISTS "patients__family_name" ON "patients" ("family_name");
CREATE INDEX IF NOT EXISTS "patients__status" ON "patients" ("status");

CREATE TABLE IF NOT EXISTS "appointments" ("id" TEXT NOT NULL PRIMARY KEY, "patient_id" TEXT NOT NULL, "starts_at" INTEGER NOT NULL, "duration_minutes" INTEGER NOT NULL, "kind" TEXT NOT NULL, "status" TEXT NOT NULL, "notes" TEXT, "version" INTEGER NOT NULL) STRICT;
CREATE INDEX IF NOT EXISTS "appointments__patient_id" ON "appointments" ("patient_id");
CREATE INDEX IF NOT EXISTS "appointments__starts_at" ON "appointments" ("starts_at");
CREATE INDEX IF NOT EXISTS "appointments__status" ON "appointments" ("status");

CREATE TABLE IF NOT EXISTS "insurances" ("id" TEXT NOT NULL PRIMARY KEY, "patient_id" TEXT NOT NULL, "payer" TEXT NOT NULL, "member_id" TEXT NOT NULL, "group_number" TEXT, "valid_from" TEXT NOT NULL, "valid_to" TEXT) STRICT;
CREATE INDEX IF NOT EXISTS "insurances__patient_id" ON "insurances" ("patient_id");

CREATE TABLE IF NOT EXISTS "alerts" ("id" TEXT NOT NULL PRIMARY KEY, "patient_id" TEXT, "severity" TEXT NOT NULL, "message" TEXT NOT NULL, "raised_at" INTEGER NOT NULL, "acknowledged" INTEGER NOT NULL) STRICT;
CREATE INDEX IF NOT EXISTS "alerts__patient_id" ON "alerts" ("patient_id");
CREATE INDEX IF NOT EXISTS "alerts__severity" ON "alerts" ("severity");

CREATE TABLE IF NOT EXISTS "audit_events" ("id" TEXT NOT NULL PRIMARY KEY, "at" INTEGER NOT NULL, "actor" TEXT NOT NULL, "action" TEXT NOT NULL, "entity" TEXT NOT NULL, "entity_key" TEXT NOT NULL, "purpose" TEXT, "detail" TEXT) STRICT;
CREATE INDEX IF NOT EXISTS "audit_events__at" ON "audit_events" ("at");
CREATE INDEX IF NOT EXISTS "audit_events__actor" ON "audit_events" ("actor");

CREATE TABLE IF NOT EXISTS "media_assets" ("id" TEXT NOT NULL PRIMARY KEY, "uri" TEXT NOT NULL, "source" TEXT NOT NULL, "license" TEXT NOT NULL, "expires_at" INTEGER, "hash" TEXT NOT NULL) STRICT;
CREATE INDEX IF NOT EXISTS "media_assets__expires_at" ON "media_assets" ("expires_at");
CREATE INDEX IF NOT EXISTS "media_assets__hash" ON "media_assets" ("hash");
