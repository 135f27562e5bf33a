//! Optional stores that are down when the service starts: the data layer
//! still starts, the relational store serves, health says "degraded", and
//! calls to the absent stores fail fast with a clear, retryable error.
//! (Closed loopback ports; no services needed.)

use std::time::{Duration, Instant};

use data_layer::models::domain::Appointment;
use data_layer::{DataLayer, Error, Settings, Sources, Store};

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    l.local_addr().expect("addr").port()
}

fn appointment() -> Appointment {
    Appointment {
        id: uuid::Uuid::new_v4(),
        patient_id: uuid::Uuid::new_v4(),
        starts_at: chrono::DateTime::from_timestamp_millis(1_700_000_000_000).expect("time"),
        duration_minutes: 30,
        kind: "checkup".into(),
        status: "scheduled".into(),
        notes: Some("fake note".into()),
        version: 1,
    }
}

fn settings(dir: &std::path::Path, optional: bool) -> Settings {
    let flag = if optional { "true" } else { "false" };
    Settings::load(
        &Sources::isolated()
            .var(
                "DATABASE_URL",
                &format!("sqlite://{}/degrade.db", dir.display()),
            )
            .var("SCYLLA_URI", &format!("127.0.0.1:{}", closed_port()))
            .var("DL_SCYLLA__OPTIONAL", flag)
            .var("DL_SCYLLA__CONNECT_TIMEOUT", "300ms")
            .var("DL_SCYLLA__REQUEST_TIMEOUT", "500ms")
            .var(
                "MONGODB_URI",
                &format!("mongodb://127.0.0.1:{}/degrade", closed_port()),
            )
            .var("DL_MONGO__OPTIONAL", flag)
            .var("DL_MONGO__CONNECT_TIMEOUT", "300ms")
            .var("DL_MONGO__ACQUIRE_TIMEOUT", "300ms")
            .var("DL_MONGO__REQUEST_TIMEOUT", "500ms"),
    )
    .expect("settings")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_stores_down_at_startup_degrade() {
    let dir = tempfile::tempdir().expect("dir");
    let started = Instant::now();
    let dl = DataLayer::from_settings(settings(dir.path(), true))
        .await
        .expect("starts with its optional stores down");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "startup waited {:?}",
        started.elapsed()
    );
    assert_eq!(
        dl.stores(),
        vec![Store::Sqlite, Store::Mongo, Store::Scylla]
    );

    let health = dl.health().await;
    assert_eq!(health.status, "degraded", "{health:?}");
    for s in &health.stores {
        let expect = if s.store == "sqlite" { "up" } else { "down" };
        assert_eq!(s.status, expect, "{s:?}");
        assert!(s.latency_ms < 2000.0, "{s:?}");
    }

    // The relational store serves (its schema from the built-in migrations).
    let scripts = data_layer::migrate::domain_scripts();
    let runs = data_layer::migrate::run(
        dl.settings(),
        &scripts,
        &[data_layer::migrate::StoreKind::Sqlite],
        data_layer::migrate::Action::Up,
        &data_layer::migrate::Options::default(),
        &mut |_| {},
    )
    .await;
    assert!(runs[0].error.is_none(), "{runs:?}");
    let local = dl.repository::<Appointment>().await.expect("sqlite");
    let a = appointment();
    local.insert(&a).await.expect("insert");
    assert_eq!(local.get(&a.id).await.expect("get"), Some(a));

    // The absent stores fail fast and say which store, retryably.
    for store in [Store::Scylla, Store::Mongo] {
        let started = Instant::now();
        let e = dl
            .repository_in::<Appointment>(store)
            .await
            .err()
            .unwrap_or_else(|| panic!("{store} is down but answered"));
        assert!(
            matches!(&e, Error::Unavailable { store: s, .. } | Error::Timeout { store: s, .. } | Error::CircuitOpen { store: s, .. } if *s == store),
            "{store}: {e}"
        );
        assert!(
            e.is_retryable() || matches!(e, Error::CircuitOpen { .. }),
            "{e}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{store}: took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_stores_down_at_startup_report_down() {
    let dir = tempfile::tempdir().expect("dir");
    let dl = DataLayer::from_settings(settings(dir.path(), false))
        .await
        .expect("the data layer starts; health tells");
    let health = dl.health().await;
    assert_eq!(health.status, "down", "{health:?}");
    let json = serde_json::to_value(&health).expect("json");
    assert_eq!(json["status"], "down");
}

/// PostgreSQL refusing connections: the health check says so ("connection
/// refused") at once, instead of waiting out the pool's acquire timeout
/// (30 s here) and reporting that no pooled connection became free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_is_reported_with_its_cause() {
    let settings = Settings::load(
        &Sources::isolated()
            .var(
                "DATABASE_URL",
                &format!("postgres://postgres@127.0.0.1:{}/test", closed_port()),
            )
            .var("DL_POSTGRES__ACQUIRE_TIMEOUT", "30s")
            .var("DL_POSTGRES__REQUEST_TIMEOUT", "30s"),
    )
    .expect("settings");
    let dl = DataLayer::from_settings(settings).await.expect("starts");
    let started = Instant::now();
    let health = dl.health().await;
    let took = started.elapsed();
    let pg = health
        .stores
        .iter()
        .find(|s| s.store == "postgres")
        .expect("postgres in the report");
    assert_eq!(pg.status, "down", "{pg:?}");
    let error = pg.error.clone().unwrap_or_default();
    assert!(error.contains("connection refused"), "{error}");
    assert!(
        took < Duration::from_secs(20),
        "health waited {took:?}: the acquire timeout, not the cause"
    );
}
