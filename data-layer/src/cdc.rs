//! CDC into analytics (see [`dl_cdc`]): a relay per store's change feed
//! that redacts every change by the schema's `#[phi]` rules and delivers
//! it, as a CloudEvent, effectively once to the sinks in `cdc.sinks`,
//! keeping a redaction record of each event in the relational store.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use data_layer::{DataLayer, Repository, Settings, Sources, Store};
//! use data_layer::models::domain::{Patient, PatientStatus};
//!
//! # let dir = tempfile::tempdir()?;
//! # let url = format!("sqlite://{}/cdc.db", dir.path().display());
//! let settings = Settings::load(
//!     &Sources::isolated()
//!         .var("DATABASE_URL", &url)
//!         .var("DL_CDC__ENTITIES", "patients")
//!         .var("DL_CDC__SINKS", "sqlite")
//!         .var("DL_PRIVACY__KEY", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"),
//! )?;
//! data_layer::migrate::apply(&settings, &data_layer::migrate::domain_scripts()).await?;
//! let dl = DataLayer::from_settings(settings).await?;
//!
//! let patients = dl.repository::<Patient>().await?;
//! patients.insert(&Patient {
//!     id: uuid::Uuid::new_v4(),
//!     mrn: "MRN-0001".into(),
//!     given_name: "Ada".into(),
//!     family_name: "Lovelace".into(),
//!     date_of_birth: chrono::NaiveDate::from_ymd_opt(1931, 2, 3).unwrap(),
//!     phone: None,
//!     email: None,
//!     status: PatientStatus::Active,
//!     created_at: chrono::Utc::now(),
//!     version: 1,
//! }).await?;
//!
//! // One batch by hand (a service runs `dl.start_cdc()` in the background).
//! let relay = dl.cdc_relay(Store::Sqlite).await?;
//! assert_eq!(relay.drain(10).await?.emitted, 1);
//!
//! let seen = dl.cdc_sink_events(10).await?;
//! assert!(seen[0].contains("\"type\":\"ce.patients.created\""));
//! assert!(!seen[0].contains("MRN-0001") && !seen[0].contains("Lovelace"));
//! # Ok(()) }
//! ```

// The repositories' `Error`, as every other call of the facade answers.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use dl_cdc::sql::{SqlLedger, SqlSink, SqlTarget};
pub use dl_cdc::{
    CloudEvent, DeadLetter, FieldRecord, GuardedSink, Ledger, Profile, Redacted, Redactor, Relay,
    RelayOptions, Sink, StepReport,
};
use dl_repositories::guard::Guard;

use crate::{DataLayer, Error, Store};

fn cdc_invalid(setting: &'static str, reason: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::invalid("cdc", Some(setting), reason)
}

/// The relays `start_cdc` runs in the background. Dropping it stops them
/// between batches (a batch under way is left unacknowledged and relayed
/// again); [`CdcHandle::shutdown`] waits for them.
#[derive(Debug)]
pub struct CdcHandle {
    stop: Option<tokio::sync::watch::Sender<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    relays: Vec<Arc<Relay>>,
}

impl CdcHandle {
    /// The relays, one per store with a feed.
    #[must_use]
    pub fn relays(&self) -> &[Arc<Relay>] {
        &self.relays
    }

    /// Stops the relays and waits for them to finish their batch.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for CdcHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
    }
}

impl DataLayer {
    fn sql_target(&self) -> Result<&SqlTarget, Error> {
        self.sql_target.as_ref().ok_or_else(|| {
            Error::unsupported(
                self.relational.store(),
                dl_repositories::Operation::Feed,
                "the CDC relay's ledger needs the relational store (SQLite or PostgreSQL)",
            )
        })
    }

    /// The redactor of the captured entities under `cdc.profile`.
    ///
    /// # Errors
    /// `Invalid` naming the entity and field of a rule the profile
    /// forbids, or a hash rule without `privacy.key`.
    pub fn cdc_redactor(&self) -> Result<Arc<Redactor>, Error> {
        let cdc = &self.settings.cdc;
        let profile = Profile::parse(&cdc.profile)?;
        let schemas: Vec<&'static dl_models::EntitySchema> = dl_models::registered_schemas()
            .iter()
            .copied()
            .filter(|s| cdc.entities.iter().any(|e| e == s.name))
            .fold(Vec::new(), |mut acc, s| {
                if !acc
                    .iter()
                    .any(|a: &&dl_models::EntitySchema| a.name == s.name)
                {
                    acc.push(s);
                }
                acc
            });
        Redactor::new(
            &schemas,
            profile,
            &cdc.policy_version,
            self.configured_privacy.clone(),
        )
        .map(Arc::new)
    }

    /// The sinks of `cdc.sinks`, each behind its store's guard (the nats
    /// sink behind a guard with the relational store's deadline, breaker
    /// and retry settings).
    async fn cdc_sinks(&self, feed_store: Store) -> Result<Vec<GuardedSink>, Error> {
        let target = self.sql_target()?;
        let cdc = &self.settings.cdc;
        let mut out = Vec::new();
        for name in &cdc.sinks {
            let (store, sink): (Store, Arc<dyn Sink>) = match name.as_str() {
                "sqlite" | "postgres" => {
                    let store = if name == "sqlite" {
                        Store::Sqlite
                    } else {
                        Store::Postgres
                    };
                    if target.store() != store {
                        return Err(cdc_invalid(
                            "cdc.sinks",
                            format!(
                                "the {name} sink writes the relational store's ce_events, but DATABASE_URL is {}",
                                target.store()
                            ),
                        ));
                    }
                    (
                        store,
                        Arc::new(SqlSink::new(target.clone()).relaxed_commit(feed_store == store)),
                    )
                }
                "nats" => (Store::Nats, self.nats_sink().await?),
                "scylla" => (Store::Scylla, self.scylla_sink()?),
                _ => {
                    return Err(cdc_invalid(
                        "cdc.sinks",
                        "an unknown sink (expected sqlite, postgres, nats or scylla)",
                    ));
                }
            };
            let guard_store = if store == Store::Nats {
                target.store()
            } else {
                store
            };
            let (deadline, breaker, retry) = crate::guard_settings(guard_store, &self.settings);
            out.push(GuardedSink::new(
                sink,
                Arc::new(Guard::new(store, deadline, breaker, retry)),
            ));
        }
        if out.is_empty() {
            return Err(cdc_invalid(
                "cdc.sinks",
                "no sink is configured: set cdc.sinks (sqlite, postgres, nats, scylla)",
            ));
        }
        Ok(out)
    }

    /// The nats sink of the settings.
    #[cfg(feature = "nats")]
    async fn nats_sink(&self) -> Result<Arc<dyn Sink>, Error> {
        let cdc = &self.settings.cdc;
        let Some(url) = &cdc.nats_url else {
            return Err(cdc_invalid(
                "cdc.nats_url",
                "the nats sink needs cdc.nats_url (nats://host:4222)",
            ));
        };
        let (deadline, ..) = crate::guard_settings(self.relational.store(), &self.settings);
        let options = dl_cdc::nats::NatsOptions {
            stream: cdc.nats_stream.clone(),
            subject_root: cdc.nats_subject_root.clone(),
            duplicate_window: cdc.nats_duplicate_window,
            ..dl_cdc::nats::NatsOptions::default()
        };
        Ok(Arc::new(
            dl_cdc::nats::NatsSink::connect(url.expose(), options, deadline).await?,
        ))
    }

    #[cfg(not(feature = "nats"))]
    #[allow(clippy::unused_async)]
    async fn nats_sink(&self) -> Result<Arc<dyn Sink>, Error> {
        Err(cdc_invalid(
            "cdc.sinks",
            "the nats sink is not built in: enable data-layer's `nats` feature",
        ))
    }

    /// The scylla sink of the settings: `ce_events` in the configured
    /// keyspace, over a session of its own made on first use.
    #[cfg(feature = "scylla")]
    fn scylla_sink(&self) -> Result<Arc<dyn Sink>, Error> {
        let Some(scylla) = self.settings.scylla.clone() else {
            return Err(cdc_invalid(
                "cdc.sinks",
                "the scylla sink needs SCYLLA_URI (the analytics cluster)",
            ));
        };
        let pool = self.settings.scylla_pool.clone();
        let options = dl_cdc::scylla::ScyllaOptions {
            keyspace: scylla.keyspace.clone(),
            ttl: self.settings.cdc.scylla_ttl,
            buckets: u16::try_from(self.settings.cdc.scylla_buckets).unwrap_or(8),
            timeout: pool.request_timeout,
        };
        let connect: dl_cdc::scylla::SessionConnector = Box::new(move || {
            let (scylla, pool) = (scylla.clone(), pool.clone());
            Box::pin(async move {
                dl_connections::scylla::connect(&scylla, &pool)
                    .await
                    .map_err(|e| Error::Unavailable {
                        store: Store::Scylla,
                        operation: dl_repositories::Operation::Deliver,
                        reason: format!("cannot connect to ScyllaDB: {e}"),
                        sent: false,
                        source: None,
                    })
            })
        });
        Ok(Arc::new(dl_cdc::scylla::ScyllaSink::new(connect, options)?))
    }

    #[cfg(not(feature = "scylla"))]
    #[allow(clippy::unused_self)]
    fn scylla_sink(&self) -> Result<Arc<dyn Sink>, Error> {
        Err(cdc_invalid(
            "cdc.sinks",
            "the scylla sink is not built in: enable data-layer's `scylla` feature",
        ))
    }

    /// The relay of `store`'s feed into the sinks of `cdc.sinks`, named
    /// `<cdc.relay>_<store>`, its ledger in the relational store.
    ///
    /// # Errors
    /// `Invalid` for unusable CDC settings (naming the setting, or the
    /// entity and field); `Unsupported` when the store keeps no feed or
    /// captures nothing. Nothing is sent to a store: the relay's first
    /// batch registers its feed consumer.
    pub async fn cdc_relay(&self, store: Store) -> Result<Relay, Error> {
        let redactor = self.cdc_redactor()?;
        let sinks = self.cdc_sinks(store).await?;
        let target = self.sql_target()?;
        // One disk flush per batch (the feed's acknowledgement) when the
        // feed is in the same server (see SqlLedger::relaxed_commit).
        let ledger: Arc<dyn Ledger> =
            Arc::new(SqlLedger::new(target.clone()).relaxed_commit(target.store() == store));
        let feed = self.feed(store).await?;
        let name = format!("{}_{}", self.settings.cdc.relay, store.name());
        let options = RelayOptions {
            batch: usize::try_from(self.settings.cdc.batch).unwrap_or(500),
            ..RelayOptions::default()
        };
        Relay::new(&name, feed, redactor, sinks, ledger, options)
    }

    /// Starts a relay in the background for every configured store that
    /// keeps a change feed (SQLite or PostgreSQL, Redis, MongoDB), each
    /// until the handle is dropped or shut down.
    ///
    /// # Errors
    /// As [`DataLayer::cdc_relay`]; `Invalid` naming `cdc.sinks` when no
    /// sink is configured.
    pub async fn start_cdc(&self) -> Result<CdcHandle, Error> {
        let (stop, watch) = tokio::sync::watch::channel(false);
        let mut relays = Vec::new();
        for store in self.stores() {
            let Ok(_) = self.feed(store).await else {
                continue;
            };
            relays.push(Arc::new(self.cdc_relay(store).await?));
        }
        if relays.is_empty() {
            return Err(cdc_invalid(
                "cdc.entities",
                "no store keeps a change feed: name captured entities in cdc.entities",
            ));
        }
        let tasks = relays
            .iter()
            .map(|relay| {
                let relay = Arc::clone(relay);
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    relay
                        .run_until(async move {
                            let _ = watch.wait_for(|stopped| *stopped).await;
                        })
                        .await;
                })
            })
            .collect();
        Ok(CdcHandle {
            stop: Some(stop),
            tasks,
            relays,
        })
    }

    /// What the relational store's analytics sink holds (`ce_events`), as
    /// JSON text, oldest first: what analytics sees.
    ///
    /// # Errors
    /// The store's error.
    pub async fn cdc_sink_events(&self, limit: usize) -> Result<Vec<String>, Error> {
        SqlSink::new(self.sql_target()?.clone()).events(limit).await
    }

    /// One event of the relational store's analytics sink, by its id.
    ///
    /// # Errors
    /// The store's error.
    pub async fn cdc_sink_event(&self, id: &str) -> Result<Option<String>, Error> {
        SqlSink::new(self.sql_target()?.clone()).event(id).await
    }

    /// The relay's ledger in the relational store (redaction records, dead
    /// letters, checkpoints).
    ///
    /// # Errors
    /// `Unsupported` without a relational store.
    pub fn cdc_ledger(&self) -> Result<Arc<dyn Ledger>, Error> {
        Ok(Arc::new(SqlLedger::new(self.sql_target()?.clone())))
    }
}
