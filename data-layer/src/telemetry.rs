//! Exporting the data layer's metrics to Prometheus (feature `prometheus`,
//! on by default).
//!
//! Every metric goes through the [`metrics`] facade, so any recorder works;
//! this installs the Prometheus one with histogram buckets suited to store
//! calls and returns the handle whose [`render`] output a service serves on
//! its own `/metrics` route:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let url = format!("sqlite://{}/metrics.db", dir.path().display());
//! use data_layer::{DataLayer, Settings, Sources};
//!
//! let prometheus = data_layer::telemetry::install_prometheus()?;
//! let dl = DataLayer::from_settings(Settings::load(&Sources::isolated().var("DATABASE_URL", &url))?).await?;
//! dl.health().await;
//! let text = prometheus.render();
//! assert!(text.contains(r#"dl_store_up{store="sqlite"} 1"#));
//! # Ok(()) }
//! ```
//!
//! The metrics:
//! - `dl_calls_total{store, entity, operation, outcome}`: outcome `ok` or
//!   the error kind (`timeout`, `unavailable`, `circuit_open`, ...);
//! - `dl_call_seconds{store, entity, operation}`: histogram;
//! - `dl_breaker_state{store}` (0 closed, 1 half-open, 2 open) and
//!   `dl_breaker_transitions_total{store, to}`;
//! - `dl_store_up{store}`, `dl_store_ping_seconds{store}`;
//! - `dl_pool_connections{store, state}` (open, idle, in_use, max),
//!   `dl_pool_utilization{store}` and `dl_pool_level{store}` (0 ok,
//!   1 warning above 80%, 2 critical above 90%), refreshed by every
//!   [`DataLayer::health`](crate::DataLayer::health) round (the background
//!   checker's included).
//!
//! No label ever holds a field value: entity names, operations and stores
//! only.
//!
//! [`render`]: PrometheusHandle::render

pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

/// Histogram buckets for call latencies, in seconds: 0.5 ms to 10 s.
pub const CALL_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the Prometheus recorder as the process's global `metrics`
/// recorder and returns its handle.
///
/// # Errors
/// When a global recorder is already installed.
pub fn install_prometheus() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &CALL_BUCKETS)?
        .install_recorder()
}
