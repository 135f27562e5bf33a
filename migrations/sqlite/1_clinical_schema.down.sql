DROP TABLE IF EXISTS "media_assets";
DROP TABLE IF EXISTS "audit_events";
DROP TABLE IF EXISTS "alerts";
DROP TABLE IF EXISTS "insurances";
DROP TABLE IF EXISTS "appointments";
DROP TABLE IF EXISTS "patients";
