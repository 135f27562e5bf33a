DROP TABLE IF EXISTS "enrollments";
