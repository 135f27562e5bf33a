//! The conformance suite and the model-based property test on a live Redis
//! (the test stack's). Redis serves eq/in on indexed fields only: the cases
//! that need more assert the precise Unsupported error, and are counted.

#![cfg(feature = "integration")]

use std::io::Write as _;

use dl_tests::harness::run_conformance;
use dl_tests::live::RedisNamespaces;
use dl_tests::model::run_model_test;

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_redis() {
    let ns = RedisNamespaces::new("conf").await;
    let report = run_conformance("redis", ns.factory(), 8).await;
    ns.drop_all().await;
    say(&report.summary());
    assert!(report.failed.is_empty(), "{}", report.summary());
    assert!(report.passed >= 60, "{}", report.summary());
}

#[test]
fn model_redis_matches_memory() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ns = rt.block_on(RedisNamespaces::new("model"));
    let result = run_model_test(ns.factory(), 48);
    rt.block_on(ns.drop_all());
    let report = result.expect("redis diverged from the model");
    say(&format!(
        "model[redis]: {} sequences, {} steps compared with the memory model, {} answered Unsupported",
        report.sequences, report.steps, report.unsupported_steps
    ));
}

/// The index layout change of issue 6 (index entries as sorted sets) comes
/// with a migration: index entries written as plain sets, as before, are
/// converted with their members, and filters read them again; the down
/// script turns them back into sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_sets_from_before_sorted_indexes_are_migrated() {
    use data_layer::migrate::{self, Action, Options};
    use data_layer::models::domain::Appointment;
    use data_layer::{DataLayer, Filter, Query, Store};

    let nss = RedisNamespaces::new("ixmig").await;
    let ns = nss.namespace();
    let settings = dl_connections::Settings::load(
        &dl_connections::Sources::isolated()
            .var("REDIS_URL", dl_tests::live::redis_url().expose())
            .var("DL_REDIS__KEY_PREFIX", &ns),
    )
    .expect("settings");
    let scripts = migrate::domain_scripts();
    let stores = migrate::stores("redis").expect("redis");
    let migrate_to = |action, to| {
        let o = Options {
            to,
            ..Options::default()
        };
        let (settings, scripts, stores) = (&settings, &scripts, &stores);
        async move {
            let runs = migrate::run(settings, scripts, stores, action, &o, &mut |_| {}).await;
            assert!(runs.iter().all(|r| r.error.is_none()), "{runs:?}");
        }
    };
    migrate_to(Action::Up, None).await;

    let dl = DataLayer::from_settings(settings.clone())
        .await
        .expect("data layer");
    let repo = dl
        .repository_in::<Appointment>(Store::Redis)
        .await
        .expect("repository");
    let mut scheduled = Vec::new();
    for i in 0..6 {
        let a = Appointment {
            id: uuid::Uuid::new_v4(),
            patient_id: uuid::Uuid::new_v4(),
            starts_at: chrono::DateTime::from_timestamp_millis(1_800_000_000_000 + i * 60_000)
                .expect("time"),
            duration_minutes: 30,
            kind: "checkup".into(),
            status: if i % 2 == 0 { "scheduled" } else { "done" }.into(),
            notes: None,
            version: 1,
        };
        repo.insert(&a).await.expect("insert");
        if i % 2 == 0 {
            scheduled.push(a.id);
        }
    }
    scheduled.sort();
    let index = format!("{ns}:appointments:i:status:scheduled");
    let mut conn = dl_connections::redis::connect_lazy(
        &dl_tests::live::redis_url(),
        &dl_tests::live::test_pool(1),
    )
    .expect("redis");
    let kind = |conn: &mut redis::aio::ConnectionManager| {
        let mut conn = conn.clone();
        let index = index.clone();
        async move {
            let t: String = redis::cmd("TYPE")
                .arg(&index)
                .query_async(&mut conn)
                .await
                .expect("type");
            t
        }
    };
    assert_eq!(kind(&mut conn).await, "zset");

    // Back to the layout written before: plain sets.
    migrate_to(Action::Down, Some(0)).await;
    assert_eq!(kind(&mut conn).await, "set");
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&index)
        .query_async(&mut conn)
        .await
        .expect("smembers");
    assert_eq!(members.len(), 3);
    // The backend of this version names the cause and the command.
    let query = Query::new()
        .filter(Filter::eq("status", "scheduled"))
        .limit(10);
    match repo.list(&query).await {
        Err(data_layer::Error::SchemaNotReady { reason, .. }) => {
            assert!(reason.contains("migrate up --store redis"), "{reason}");
        }
        other => panic!("expected SchemaNotReady, got {other:?}"),
    }

    // Up again: converted, members kept, the filter reads them in key order.
    migrate_to(Action::Up, None).await;
    assert_eq!(kind(&mut conn).await, "zset");
    let page = repo
        .list(
            &Query::new()
                .filter(Filter::eq("status", "scheduled"))
                .limit(10),
        )
        .await
        .expect("list");
    let ids: Vec<uuid::Uuid> = page.items.iter().map(|a| a.id).collect();
    assert_eq!(ids, scheduled);
    nss.drop_all().await;
    say(
        "redis[migrations]: index sets written before sorted indexes: converted down and up again, 3 of 3 members kept, list reads them in key order",
    );
}
