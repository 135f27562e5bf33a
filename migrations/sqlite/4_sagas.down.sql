DROP TABLE IF EXISTS "dl_saga_effects";
DROP INDEX IF EXISTS "dl_sagas_state";
DROP INDEX IF EXISTS "dl_sagas_open";
DROP TABLE IF EXISTS "dl_sagas";
