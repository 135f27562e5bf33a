//! Health: a real round trip per store, pool occupancy and breaker state,
//! as a report (serde: JSON), as metrics, and from a background checker
//! that logs each store going down or coming back once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dl_repositories::guard::BreakerState;
use dl_repositories::{Backend, Store};
use tokio::sync::watch;

use crate::DataLayer;

/// One store's health, as `data-layer health` and a service's health
/// endpoint report it (serde: JSON).
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreHealth {
    /// The store.
    pub store: &'static str,
    /// `up` or `down`, from a real round trip.
    pub status: &'static str,
    /// Whether the service needs it (not `<store>.optional`).
    pub required: bool,
    /// The round trip's latency.
    pub latency_ms: f64,
    /// Why it is down (no values, no secrets).
    pub error: Option<String>,
    /// The circuit breaker's state.
    pub breaker: Option<dl_repositories::guard::BreakerState>,
    /// Pool occupancy, where the driver exposes it.
    pub pool: Option<dl_repositories::PoolStats>,
    /// `ok`, `warning` (in use above 80% of the maximum) or `critical`
    /// (above 90%).
    pub pool_level: &'static str,
    /// The store's change feed, when it captures entities.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed: Option<FeedHealth>,
}

/// A change feed's state in a health report (counts and ages, no values).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FeedHealth {
    /// Events kept.
    pub events: u64,
    /// The last position written.
    pub last_position: u64,
    /// Registered consumers.
    pub consumers: usize,
    /// The largest lag of a consumer, in events.
    pub max_lag: u64,
    /// How long the oldest event some consumer has not acknowledged has
    /// waited, in seconds (none: all caught up).
    pub oldest_unacked_age_s: Option<f64>,
    /// Why the feed could not be read, if it could not.
    pub error: Option<String>,
}

/// The health of every store of a data layer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HealthReport {
    /// `up`; `degraded` when an optional store is down, a breaker is not
    /// closed or a pool is critical; `down` when a required store is down.
    pub status: &'static str,
    /// Per store.
    pub stores: Vec<StoreHealth>,
    /// The CDC relays (one per store with a feed, when `cdc.sinks` is set).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cdc: Vec<RelayHealth>,
}

/// The health of one CDC relay.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RelayHealth {
    /// The relay (`<cdc.relay>_<store>`).
    pub relay: String,
    /// The store whose feed it relays.
    pub store: &'static str,
    /// Events of the feed it has not yet relayed.
    pub lag_events: u64,
    /// The last position it delivered and recorded.
    pub checkpoint: u64,
    /// Changes it did not emit (off the schema).
    pub dead_letters: u64,
    /// Why it could not be read, if it could not.
    pub error: Option<String>,
}

impl DataLayer {
    /// Pings every store (concurrently, each within its request timeout),
    /// reports, and records the result as metrics: `dl_store_up`,
    /// `dl_store_ping_seconds`, and per pool `dl_pool_connections` (by
    /// `state`: open, idle, in_use, max), `dl_pool_utilization` (in use /
    /// max) and `dl_pool_level` (0 ok, 1 warning, 2 critical); for a store
    /// with a change feed, `dl_feed_events`, `dl_feed_max_lag` and
    /// `dl_feed_oldest_unacked_seconds` (0 when every consumer is caught up).
    pub async fn health(&self) -> HealthReport {
        let backends: Vec<&Arc<dyn Backend>> = std::iter::once(&self.relational)
            .chain(&self.others)
            .collect();
        let probes = backends.iter().map(|b| async move {
            let started = Instant::now();
            let result = b.ping().await;
            (b, started.elapsed(), result)
        });
        let mut stores = Vec::with_capacity(backends.len());
        for (b, took, result) in futures::future::join_all(probes).await {
            let store = b.store();
            let required = !self.pool_settings(store).optional;
            let pool = b.pool_stats();
            let utilization = pool
                .filter(|p| p.max > 0)
                .map(|p| f64::from(p.in_use) / f64::from(p.max));
            let pool_level = match utilization {
                Some(u) if u > 0.9 => "critical",
                Some(u) if u > 0.8 => "warning",
                _ => "ok",
            };
            let feed = match (&result, b.change_feed().await) {
                (Ok(()), Ok(f)) => Some(feed_health(store, &*f).await),
                _ => None,
            };
            let health = StoreHealth {
                store: store.name(),
                feed,
                status: if result.is_ok() { "up" } else { "down" },
                required,
                latency_ms: took.as_secs_f64() * 1000.0,
                error: result.err().map(|e| e.to_string()),
                breaker: b.breaker_state(),
                pool,
                pool_level,
            };
            record_metrics(&health, took, utilization);
            stores.push(health);
        }
        let status = if stores.iter().any(|s| s.required && s.status == "down") {
            "down"
        } else if stores.iter().any(|s| {
            s.status == "down"
                || s.pool_level == "critical"
                || s.breaker.is_some_and(|b| b != BreakerState::Closed)
        }) {
            "degraded"
        } else {
            "up"
        };
        let cdc = self.cdc_health(&stores).await;
        HealthReport {
            status,
            stores,
            cdc,
        }
    }

    /// Each relay's lag, checkpoint and dead letters (and as metrics:
    /// `dl_cdc_lag_events`, `dl_cdc_dead_letters`).
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    async fn cdc_health(&self, stores: &[StoreHealth]) -> Vec<RelayHealth> {
        let mut out = Vec::new();
        if self.settings.cdc.sinks.is_empty() {
            return out;
        }
        let Ok(ledger) = self.cdc_ledger() else {
            return out;
        };
        for s in stores.iter().filter(|s| s.feed.is_some()) {
            let Some(store) = self.stores().into_iter().find(|st| st.name() == s.store) else {
                continue;
            };
            let relay = format!("{}_{}", self.settings.cdc.relay, s.store);
            let read = async {
                let status = self.feed(store).await?.status().await?;
                let lag = status
                    .consumers
                    .iter()
                    .find(|c| c.name == relay)
                    .map_or(status.last_position, |c| c.lag);
                let checkpoint = ledger.checkpoint(&relay).await?;
                let dead = ledger.dead_letter_count(&relay).await?;
                Ok::<_, dl_repositories::Error>((lag, checkpoint, dead))
            };
            let health = match read.await {
                Ok((lag_events, checkpoint, dead_letters)) => {
                    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
                    {
                        metrics::gauge!("dl_cdc_lag_events", "relay" => relay.clone())
                            .set(lag_events as f64);
                        metrics::gauge!("dl_cdc_dead_letters", "relay" => relay.clone())
                            .set(dead_letters as f64);
                    }
                    RelayHealth {
                        relay,
                        store: s.store,
                        lag_events,
                        checkpoint,
                        dead_letters,
                        error: None,
                    }
                }
                Err(e) => RelayHealth {
                    relay,
                    store: s.store,
                    lag_events: 0,
                    checkpoint: 0,
                    dead_letters: 0,
                    error: Some(e.to_string()),
                },
            };
            out.push(health);
        }
        out
    }

    #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
    #[allow(clippy::unused_async)]
    async fn cdc_health(&self, _: &[StoreHealth]) -> Vec<RelayHealth> {
        Vec::new()
    }

    /// Starts the background health checker: every `health.interval` it
    /// runs [`DataLayer::health`] (so the metrics stay current with no
    /// traffic), publishes the report, and logs each store going down
    /// (`warn`) or coming back (`info`) once per transition, so an outage is
    /// noticed before a request has to fail. Stops when the returned handle
    /// is dropped. Needs a Tokio runtime.
    #[must_use]
    pub fn start_health_checker(&self) -> HealthChecker {
        let (tx, rx) = watch::channel(None);
        let dl = self.clone();
        let every = self.settings.health_interval;
        let task = tokio::spawn(async move {
            let mut last: HashMap<&'static str, (&'static str, Instant)> = HashMap::new();
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let report = dl.health().await;
                if let Err(e) = dl.prune_feeds().await {
                    tracing::warn!(error = %e, "pruning the change feed failed");
                }
                for s in &report.stores {
                    log_transition(&mut last, s);
                }
                if tx.send(Some(report)).is_err() {
                    break;
                }
            }
        });
        HealthChecker { task, latest: rx }
    }
    fn pool_settings(&self, store: Store) -> &dl_connections::PoolSettings {
        match store {
            Store::Postgres => &self.settings.postgres,
            Store::Mongo => &self.settings.mongo,
            Store::Redis => &self.settings.redis,
            Store::Scylla => &self.settings.scylla_pool,
            _ => &self.settings.sqlite,
        }
    }
}

/// A feed's state, recorded as metrics.
async fn feed_health(store: Store, feed: &dyn dl_repositories::ChangeFeed) -> FeedHealth {
    let name = store.name();
    match feed.status().await {
        Ok(s) => {
            let max_lag = s.consumers.iter().map(|c| c.lag).max().unwrap_or(0);
            let age = s.oldest_unacked_age.map(|d| d.as_secs_f64());
            #[allow(clippy::cast_precision_loss)] // counts far below 2^52
            {
                metrics::gauge!("dl_feed_events", "store" => name).set(s.events as f64);
                metrics::gauge!("dl_feed_max_lag", "store" => name).set(max_lag as f64);
            }
            metrics::gauge!("dl_feed_oldest_unacked_seconds", "store" => name)
                .set(age.unwrap_or(0.0));
            FeedHealth {
                events: s.events,
                last_position: s.last_position,
                consumers: s.consumers.len(),
                max_lag,
                oldest_unacked_age_s: age,
                error: None,
            }
        }
        Err(e) => FeedHealth {
            events: 0,
            last_position: 0,
            consumers: 0,
            max_lag: 0,
            oldest_unacked_age_s: None,
            error: Some(e.to_string()),
        },
    }
}

fn record_metrics(s: &StoreHealth, took: Duration, utilization: Option<f64>) {
    let store = s.store;
    metrics::gauge!("dl_store_up", "store" => store).set(if s.status == "up" { 1.0 } else { 0.0 });
    metrics::gauge!("dl_store_ping_seconds", "store" => store).set(took.as_secs_f64());
    if let (Some(p), Some(u)) = (s.pool, utilization) {
        for (state, n) in [
            ("open", p.size),
            ("idle", p.idle),
            ("in_use", p.in_use),
            ("max", p.max),
        ] {
            metrics::gauge!("dl_pool_connections", "store" => store, "state" => state)
                .set(f64::from(n));
        }
        metrics::gauge!("dl_pool_utilization", "store" => store).set(u);
        let level = match s.pool_level {
            "critical" => 2.0,
            "warning" => 1.0,
            _ => 0.0,
        };
        metrics::gauge!("dl_pool_level", "store" => store).set(level);
    }
}

/// Logs a store's status when it differs from the last one seen (a store
/// first seen down is logged too; first seen up is not).
fn log_transition(last: &mut HashMap<&'static str, (&'static str, Instant)>, s: &StoreHealth) {
    let now = Instant::now();
    let previous = last.get(s.store).copied();
    if previous.is_some_and(|(status, _)| status == s.status) {
        return;
    }
    let error = s.error.as_deref().unwrap_or("");
    match (s.status, previous) {
        ("down", _) => tracing::warn!(
            store = s.store,
            required = s.required,
            error,
            "store is down"
        ),
        (_, Some((_, since))) => tracing::info!(
            store = s.store,
            down_for_ms = u64::try_from(now.duration_since(since).as_millis()).unwrap_or(u64::MAX),
            "store is back up"
        ),
        _ => {}
    }
    last.insert(s.store, (s.status, now));
}

/// The running background health checker (see
/// [`DataLayer::start_health_checker`]); dropping it stops the checker.
#[derive(Debug)]
pub struct HealthChecker {
    task: tokio::task::JoinHandle<()>,
    latest: watch::Receiver<Option<HealthReport>>,
}

impl HealthChecker {
    /// The last report (`None` before the first round finishes).
    #[must_use]
    pub fn latest(&self) -> Option<HealthReport> {
        self.latest.borrow().clone()
    }

    /// A receiver that sees every new report, for a health endpoint or
    /// readiness gate.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Option<HealthReport>> {
        self.latest.clone()
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.task.abort();
    }
}
