DROP TABLE IF EXISTS dl_saga_effects;
DROP TABLE IF EXISTS dl_sagas;
