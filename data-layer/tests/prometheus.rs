//! The Prometheus exporter (own test binary: it installs the process's
//! global recorder): calls, latency histograms, breaker state, store and
//! pool gauges appear with store, entity and operation labels, and no field
//! value ever does.

#![cfg(feature = "prometheus")]

use data_layer::models::domain::Appointment;
use data_layer::{DataLayer, Settings, Sources};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_exported_without_values() {
    let prometheus = data_layer::telemetry::install_prometheus().expect("recorder");
    assert!(
        data_layer::telemetry::install_prometheus().is_err(),
        "a second global recorder is refused"
    );
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}/prom.db", dir.path().display());
    let settings =
        Settings::load(&Sources::isolated().var("DATABASE_URL", &url)).expect("settings");
    data_layer::migrate::apply(&settings, &data_layer::migrate::domain_scripts())
        .await
        .expect("migrations");
    let dl = DataLayer::from_settings(settings)
        .await
        .expect("data layer");
    let repo = dl.repository::<Appointment>().await.expect("repo");
    let a = Appointment {
        id: uuid::Uuid::new_v4(),
        patient_id: uuid::Uuid::new_v4(),
        starts_at: chrono::DateTime::from_timestamp_millis(1_700_000_000_000).expect("time"),
        duration_minutes: 30,
        kind: "checkup".into(),
        status: "scheduled".into(),
        notes: Some("FAKE-NOTE-VALUE".into()),
        version: 1,
    };
    repo.insert(&a).await.expect("insert");
    assert!(repo.get(&a.id).await.expect("get").is_some());
    assert!(repo.insert(&a).await.is_err(), "duplicate");
    let report = dl.health().await;
    assert_eq!(report.status, "up");

    let text = prometheus.render();
    for needle in [
        r#"dl_calls_total{store="sqlite",entity="appointments",operation="insert",outcome="ok"} 1"#,
        r#"dl_calls_total{store="sqlite",entity="appointments",operation="insert",outcome="conflict"} 1"#,
        r#"dl_calls_total{store="sqlite",entity="appointments",operation="get",outcome="ok"} 1"#,
        r#"dl_call_seconds_bucket{store="sqlite",entity="appointments",operation="get",le="0.0005"}"#,
        r#"dl_breaker_state{store="sqlite"} 0"#,
        r#"dl_store_up{store="sqlite"} 1"#,
        r#"dl_pool_connections{store="sqlite",state="max"} 4"#,
        r#"dl_pool_utilization{store="sqlite"}"#,
        r#"dl_pool_level{store="sqlite"} 0"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    for value in ["FAKE-NOTE-VALUE", &a.id.to_string(), "checkup"] {
        assert!(!text.contains(value), "a field value in the metrics");
    }
}
