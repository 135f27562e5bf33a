-- The conformance suite's entities (dl_tests::entities), in the shape the
-- SQLite backend expects (dl_repositories::backends::sqlite::create_table_sql).
CREATE TABLE IF NOT EXISTS "specimens" ("id" TEXT NOT NULL PRIMARY KEY, "label" TEXT NOT NULL, "code" TEXT, "rank" INTEGER NOT NULL, "score" REAL, "active" INTEGER NOT NULL, "born" TEXT, "seen_at" INTEGER, "ref_id" TEXT, "tags" TEXT NOT NULL, "body" TEXT, "owner" TEXT, "version" INTEGER NOT NULL) STRICT;
CREATE INDEX IF NOT EXISTS "specimens__label" ON "specimens" ("label");
CREATE INDEX IF NOT EXISTS "specimens__code" ON "specimens" ("code");
CREATE INDEX IF NOT EXISTS "specimens__rank" ON "specimens" ("rank");
CREATE INDEX IF NOT EXISTS "specimens__active" ON "specimens" ("active");
CREATE INDEX IF NOT EXISTS "specimens__seen_at" ON "specimens" ("seen_at");
CREATE INDEX IF NOT EXISTS "specimens__owner" ON "specimens" ("owner");
CREATE TABLE IF NOT EXISTS "unique_specimens" ("id" TEXT NOT NULL PRIMARY KEY, "label" TEXT NOT NULL, "code" TEXT, "rank" INTEGER NOT NULL, "score" REAL, "active" INTEGER NOT NULL, "born" TEXT, "seen_at" INTEGER, "ref_id" TEXT, "tags" TEXT NOT NULL, "body" TEXT, "owner" TEXT, "version" INTEGER NOT NULL) STRICT;
CREATE INDEX IF NOT EXISTS "unique_specimens__label" ON "unique_specimens" ("label");
CREATE UNIQUE INDEX IF NOT EXISTS "unique_specimens__code" ON "unique_specimens" ("code");
CREATE INDEX IF NOT EXISTS "unique_specimens__rank" ON "unique_specimens" ("rank");
CREATE INDEX IF NOT EXISTS "unique_specimens__active" ON "unique_specimens" ("active");
CREATE INDEX IF NOT EXISTS "unique_specimens__seen_at" ON "unique_specimens" ("seen_at");
CREATE INDEX IF NOT EXISTS "unique_specimens__owner" ON "unique_specimens" ("owner");
CREATE TABLE IF NOT EXISTS "notes" ("id" INTEGER NOT NULL PRIMARY KEY, "body" TEXT NOT NULL) STRICT;
