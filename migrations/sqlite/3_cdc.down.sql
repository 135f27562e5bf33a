DROP TABLE IF EXISTS "ce_events";
DROP TABLE IF EXISTS "dl_cdc_dead_letters";
DROP TABLE IF EXISTS "dl_cdc_redactions";
DROP TABLE IF EXISTS "dl_cdc_relays";
