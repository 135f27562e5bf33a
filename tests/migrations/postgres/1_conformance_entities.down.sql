DROP TABLE IF EXISTS "notes";
DROP TABLE IF EXISTS "unique_specimens";
DROP TABLE IF EXISTS "specimens";
