-- The conformance suite's entities (dl_tests::entities), in the shape the
-- PostgreSQL backend expects (dl_repositories::backends::postgres::create_table_sql).
-- Runs with search_path set to the test's schema.
CREATE TABLE IF NOT EXISTS "specimens" ("id" TEXT COLLATE "C" NOT NULL PRIMARY KEY, "label" TEXT COLLATE "C" NOT NULL, "code" TEXT COLLATE "C", "rank" BIGINT NOT NULL, "score" DOUBLE PRECISION, "active" BOOLEAN NOT NULL, "born" DATE, "seen_at" TIMESTAMPTZ, "ref_id" UUID, "tags" JSONB NOT NULL, "body" TEXT COLLATE "C", "owner" TEXT COLLATE "C", "version" BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS "specimens__label" ON "specimens" ("label");
CREATE INDEX IF NOT EXISTS "specimens__code" ON "specimens" ("code");
CREATE INDEX IF NOT EXISTS "specimens__rank" ON "specimens" ("rank");
CREATE INDEX IF NOT EXISTS "specimens__active" ON "specimens" ("active");
CREATE INDEX IF NOT EXISTS "specimens__seen_at" ON "specimens" ("seen_at");
CREATE INDEX IF NOT EXISTS "specimens__owner" ON "specimens" ("owner");
CREATE TABLE IF NOT EXISTS "unique_specimens" ("id" TEXT COLLATE "C" NOT NULL PRIMARY KEY, "label" TEXT COLLATE "C" NOT NULL, "code" TEXT COLLATE "C", "rank" BIGINT NOT NULL, "score" DOUBLE PRECISION, "active" BOOLEAN NOT NULL, "born" DATE, "seen_at" TIMESTAMPTZ, "ref_id" UUID, "tags" JSONB NOT NULL, "body" TEXT COLLATE "C", "owner" TEXT COLLATE "C", "version" BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS "unique_specimens__label" ON "unique_specimens" ("label");
CREATE UNIQUE INDEX IF NOT EXISTS "unique_specimens__code" ON "unique_specimens" ("code");
CREATE INDEX IF NOT EXISTS "unique_specimens__rank" ON "unique_specimens" ("rank");
CREATE INDEX IF NOT EXISTS "unique_specimens__active" ON "unique_specimens" ("active");
CREATE INDEX IF NOT EXISTS "unique_specimens__seen_at" ON "unique_specimens" ("seen_at");
CREATE INDEX IF NOT EXISTS "unique_specimens__owner" ON "unique_specimens" ("owner");
CREATE TABLE IF NOT EXISTS "notes" ("id" BIGINT NOT NULL PRIMARY KEY, "body" TEXT COLLATE "C" NOT NULL);
