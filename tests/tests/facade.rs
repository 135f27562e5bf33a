//! The facade over the live stack: one `DataLayer` from settings reaches
//! every configured store, and refuses precisely what a store cannot hold.

#![cfg(feature = "integration")]

use data_layer::models::domain::{Appointment, Patient};
use data_layer::{DataLayer, Error, Store};
use dl_tests::live::{postgres_url, unique_prefix};

fn appointment() -> Appointment {
    Appointment {
        id: uuid::Uuid::new_v4(),
        patient_id: uuid::Uuid::new_v4(),
        starts_at: chrono::DateTime::from_timestamp_millis(chrono::Utc::now().timestamp_millis())
            .expect("now"),
        duration_minutes: 30,
        kind: "checkup".into(),
        status: "scheduled".into(),
        notes: Some("fake note".into()),
        version: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_data_layer_reaches_every_store() {
    let ns = unique_prefix("facade");
    let settings = dl_tests::live::all_stores_settings(&ns);
    let runs = data_layer::migrate::apply(&settings, &data_layer::migrate::domain_scripts())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(runs.len(), 4, "postgres, mongo, scylla, redis: {runs:?}");
    let dl = DataLayer::from_settings(settings)
        .await
        .expect("data layer");
    assert_eq!(
        dl.stores(),
        vec![Store::Postgres, Store::Mongo, Store::Redis, Store::Scylla]
    );
    let health = dl.health().await;
    assert_eq!(health.status, "up", "{health:?}");
    assert!(
        health
            .stores
            .iter()
            .all(|s| s.status == "up" && s.breaker.is_some()),
        "{health:?}"
    );
    assert!(
        health
            .stores
            .iter()
            .find(|s| s.store == "postgres")
            .is_some_and(|s| s.pool.is_some())
    );
    for store in [Store::Postgres, Store::Mongo, Store::Redis, Store::Scylla] {
        let repo = dl
            .repository_in::<Appointment>(store)
            .await
            .unwrap_or_else(|e| panic!("{store}: {e}"));
        let a = appointment();
        repo.insert(&a)
            .await
            .unwrap_or_else(|e| panic!("{store}: {e}"));
        let back = repo
            .get(&a.id)
            .await
            .unwrap_or_else(|e| panic!("{store}: {e}"));
        assert!(back == Some(a.clone()), "{store}: round trip");
        assert!(
            repo.delete(&a.id)
                .await
                .unwrap_or_else(|e| panic!("{store}: {e}")),
            "{store}: delete"
        );
    }
    // Patient's MRN is unique: Scylla cannot enforce it and says so.
    match dl.repository_in::<Patient>(Store::Scylla).await {
        Err(Error::Unsupported {
            store: Store::Scylla,
            reason,
            ..
        }) => assert!(reason.contains("mrn"), "{reason}"),
        Err(e) => panic!("expected Unsupported, got {e}"),
        Ok(_) => panic!("Scylla opened an entity with a unique field"),
    }
    match dl.repository_in::<Patient>(Store::Sqlite).await {
        Err(Error::Unsupported {
            store: Store::Sqlite,
            reason,
            ..
        }) => assert!(reason.contains("not configured"), "{reason}"),
        Err(e) => panic!("expected Unsupported, got {e}"),
        Ok(_) => panic!("an unconfigured store answered"),
    }
    // Clean up the PostgreSQL schema (the other namespaces are dropped with
    // their test servers' data or left under a unique prefix).
    let pool =
        dl_connections::postgres::connect_lazy(&postgres_url(), &dl_tests::live::test_pool(1))
            .expect("pool");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{ns}\" CASCADE"
    )))
    .execute(&pool)
    .await
    .expect("drop schema");
}
