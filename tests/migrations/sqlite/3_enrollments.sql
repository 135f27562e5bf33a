-- An entity with a PHI key (dl_tests::entities::Enrollment).
CREATE TABLE IF NOT EXISTS "enrollments" ("mrn" TEXT NOT NULL PRIMARY KEY, "name" TEXT NOT NULL, "status" TEXT NOT NULL) STRICT;
