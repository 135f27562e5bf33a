-- An entity with a PHI key (dl_tests::entities::Enrollment).
CREATE TABLE IF NOT EXISTS "enrollments" ("mrn" TEXT COLLATE "C" NOT NULL PRIMARY KEY, "name" TEXT COLLATE "C" NOT NULL, "status" TEXT COLLATE "C" NOT NULL);
