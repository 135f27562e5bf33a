DROP TABLE IF EXISTS media_assets, audit_events, alerts, insurances, appointments, patients;
