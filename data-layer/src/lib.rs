//! data-layer: one typed way for a service to reach its stores.
//!
//! A service loads [`Settings`], applies its migrations ([`migrate`]),
//! builds a [`DataLayer`] and asks it for repositories. With no settings at
//! all it uses the embedded default, a SQLite file under `./data`:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use data_layer::{DataLayer, Filter, Patch, Query, Repository, Settings, Sources};
//! use data_layer::models::domain::{Patient, PatientStatus};
//!
//! # let dir = tempfile::tempdir()?;
//! # let url = format!("sqlite://{}/readme.db", dir.path().display());
//! let settings = Settings::load(&Sources::isolated().var("DATABASE_URL", &url))?;
//! // Tables come from migrations, never from the repositories: here the
//! // built-in clinical schema (a service loads its own migrations/ folder).
//! data_layer::migrate::apply(&settings, &data_layer::migrate::domain_scripts()).await?;
//! let dl = DataLayer::from_settings(settings).await?;
//! let patients = dl.repository::<Patient>().await?;
//!
//! let p = Patient {
//!     id: uuid::Uuid::new_v4(),
//!     mrn: "TEST-0001".into(),
//!     given_name: "Test".into(),
//!     family_name: "Testperson".into(),
//!     date_of_birth: chrono::NaiveDate::from_ymd_opt(1980, 1, 1).unwrap(),
//!     phone: None,
//!     email: None,
//!     status: PatientStatus::Active,
//!     created_at: chrono::Utc::now(),
//!     version: 1,
//! };
//! patients.insert(&p).await?;
//!
//! let updated = patients
//!     .update(&p.id, &Patch::new().set("status", "inactive").expect_version(1))
//!     .await?
//!     .expect("it exists");
//! assert_eq!(updated.version, 2);
//!
//! let page = patients
//!     .list(&Query::new().filter(Filter::eq("status", "inactive")).sort_asc("family_name"))
//!     .await?;
//! assert_eq!(page.items.len(), 1);
//! # Ok(()) }
//! ```

// With stores compiled out (their Cargo features off), the code for them
// is gone and some shared helpers go unused.
#![cfg_attr(
    not(all(
        feature = "sqlite",
        feature = "postgres",
        feature = "mongodb",
        feature = "redis",
        feature = "scylla"
    )),
    allow(dead_code, unused_variables, unused_imports, unreachable_code)
)]

use std::sync::Arc;

pub use dl_connections as connections;
pub use dl_connections::{Settings, SettingsError, Sources};
pub use dl_models as models;
pub use dl_models::Entity;
pub use dl_privacy as privacy;
pub use dl_repositories as repositories;
pub use dl_repositories::{
    Capabilities, Cursor, Error, Filter, Page, Patch, Query, Repo, Repository, Store,
};

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod cdc;
pub mod feed;
mod health;
pub mod migrate;
/// Sagas: the definitions, the runner and its log (the `dl-saga` crate),
/// and [`DataLayer::sagas`].
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod saga {
    pub use dl_saga::*;

    mod facade;
    pub use facade::{REDIS_GUARD_TTL, SagaRecovery};
}
#[cfg(feature = "prometheus")]
pub mod telemetry;
mod transaction;
pub use health::{FeedHealth, HealthChecker, HealthReport, RelayHealth, StoreHealth};
pub use transaction::Tx;

use dl_connections::DatabaseUrl;
use dl_repositories::Backend;
#[cfg(feature = "postgres")]
use dl_repositories::backends::postgres::PostgresBackend;
#[cfg(feature = "sqlite")]
use dl_repositories::backends::sqlite::SqliteBackend;

/// The error for a store the settings name that this build left out.
#[allow(dead_code)] // with every store compiled in
fn not_built(store: Store, feature: &str) -> SetupError {
    SetupError::Connect {
        store,
        reason: format!(
            "this build of data-layer has no {store} support: enable the `{feature}` Cargo feature"
        ),
        source: None,
    }
}

/// Why a [`DataLayer`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The settings are invalid.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// `cdc.entities` names an entity that cannot be captured.
    #[error("cdc.entities: {reason}")]
    Capture {
        /// Why (names entities, never values).
        reason: String,
    },
    /// A store could not be opened.
    #[error("{store}: cannot open the store: {reason}")]
    Connect {
        /// Which store.
        store: Store,
        /// Why (no secrets).
        reason: String,
        /// The driver's error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// The entry point a service holds: its settings and one backend per
/// configured store, each behind the guard (circuit breaker, retry of
/// idempotent calls, request deadline).
#[derive(Debug, Clone)]
pub struct DataLayer {
    settings: Arc<Settings>,
    relational: Arc<dyn Backend>,
    others: Vec<Arc<dyn Backend>>,
    privacy: Arc<dl_privacy::Privacy>,
    /// The keys from settings, when `privacy.key` is set (tokens that must
    /// stay the same across restarts: CDC's).
    configured_privacy: Option<Arc<dl_privacy::Privacy>>,
    /// The relational store's pool, for the CDC relay's ledger and sinks.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    sql_target: Option<dl_cdc::sql::SqlTarget>,
    /// The saga runner, once asked for.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    sagas: Arc<std::sync::Mutex<Option<dl_saga::Sagas>>>,
    /// The Redis connection, for [`DataLayer::once_redis`].
    #[cfg(feature = "redis")]
    redis_conn: Option<redis::aio::ConnectionManager>,
    /// Repositories opened, by store and entity type: opened (schema
    /// checked, statements prepared) once, then handed out again.
    repositories: Arc<std::sync::Mutex<RepoCache>>,
}

type RepoCache =
    std::collections::HashMap<(Store, std::any::TypeId), Box<dyn std::any::Any + Send + Sync>>;

impl DataLayer {
    /// Opens the stores the settings name.
    ///
    /// It does not wait for servers beyond one bounded attempt: the
    /// PostgreSQL and Redis pools connect on demand, the MongoDB client
    /// monitors its servers in the background, and ScyllaDB is tried once
    /// (within `scylla.connect_timeout`) and, if it does not answer, is
    /// connected on first use. A store that is down is reported by [`DataLayer::health`]
    /// (`degraded` when it is `<store>.optional`, `down` otherwise) and its
    /// calls fail fast with `Unavailable`, `Timeout` or `CircuitOpen`,
    /// while the other stores keep serving.
    ///
    /// # Errors
    /// When the settings are unusable: a SQLite file that cannot be opened,
    /// bad driver options in a URL, or an invalid schema, key prefix or
    /// keyspace name.
    pub async fn from_settings(settings: Settings) -> Result<Self, SetupError> {
        // One set of keys: cursors, and Redis's PHI index tokens when a key
        // is configured (a random key would lose every index entry at the
        // next start, so Redis gets none then, and refuses PHI indexes).
        let configured = settings.privacy.privacy().map(Arc::new);
        let capture = feed::capture_of(&settings, configured.as_ref())?;
        #[cfg(any(feature = "sqlite", feature = "postgres"))]
        let sql_target: Option<dl_cdc::sql::SqlTarget>;
        let relational: Arc<dyn Backend> = match &settings.database_url {
            #[cfg(not(feature = "sqlite"))]
            DatabaseUrl::Sqlite(_) => return Err(not_built(Store::Sqlite, "sqlite")),
            #[cfg(not(feature = "postgres"))]
            DatabaseUrl::Postgres(_) => return Err(not_built(Store::Postgres, "postgres")),
            #[cfg(feature = "sqlite")]
            DatabaseUrl::Sqlite(path) => {
                let pool = dl_connections::sqlite::connect(path, &settings.sqlite)
                    .await
                    .map_err(|e| SetupError::Connect {
                        store: Store::Sqlite,
                        reason: format!("cannot open SQLite database {path}"),
                        source: Some(Box::new(e)),
                    })?;
                sql_target = Some(dl_cdc::sql::SqlTarget::Sqlite(pool.clone()));
                let backend = SqliteBackend::new(pool);
                Arc::new(match &capture {
                    Some(c) => backend.with_capture(Arc::clone(c)),
                    None => backend,
                })
            }
            #[cfg(feature = "postgres")]
            DatabaseUrl::Postgres(url) => {
                let pool = dl_connections::postgres::connect_lazy(url, &settings.postgres)
                    .map_err(|e| SetupError::Connect {
                        store: Store::Postgres,
                        reason: format!("bad PostgreSQL options in {url}"),
                        source: Some(Box::new(e)),
                    })?;
                sql_target = Some(dl_cdc::sql::SqlTarget::Postgres(
                    pool.clone(),
                    settings.postgres_schema.clone(),
                ));
                let backend =
                    PostgresBackend::new(pool, &settings.postgres_schema).map_err(|e| {
                        SetupError::Connect {
                            store: Store::Postgres,
                            reason: e.to_string(),
                            source: None,
                        }
                    })?;
                Arc::new(match &capture {
                    Some(c) => backend.with_capture(Arc::clone(c)),
                    None => backend,
                })
            }
        };
        let relational = guarded(relational, &settings);
        let (others, raw) =
            connect_others(&settings, configured.as_ref(), capture.as_ref()).await?;
        #[cfg(not(feature = "redis"))]
        let _ = raw;
        let others = others.into_iter().map(|b| guarded(b, &settings)).collect();
        let privacy = configured.clone().unwrap_or_else(|| {
            tracing::warn!(
                "privacy.key is not set: cursors are sealed with a random key of this process \
                 (a cursor from another instance or an earlier run is refused); set \
                 DL_PRIVACY__KEY for a service with more than one instance"
            );
            Arc::new(dl_privacy::Privacy::ephemeral())
        });
        Ok(DataLayer {
            settings: Arc::new(settings),
            relational,
            others,
            privacy,
            configured_privacy: configured,
            #[cfg(any(feature = "sqlite", feature = "postgres"))]
            sql_target,
            #[cfg(any(feature = "sqlite", feature = "postgres"))]
            sagas: Arc::default(),
            #[cfg(feature = "redis")]
            redis_conn: raw.redis,
            repositories: Arc::default(),
        })
    }

    /// The tokens and sealing of this data layer (from `privacy.key`, or
    /// a random key of this process): the one privacy mechanism the
    /// layers above the repositories use.
    #[must_use]
    pub fn privacy(&self) -> &Arc<dl_privacy::Privacy> {
        &self.privacy
    }

    /// The settings in force.
    #[must_use]
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The relational store's backend (SQLite or PostgreSQL).
    #[must_use]
    pub fn relational(&self) -> &Arc<dyn Backend> {
        &self.relational
    }

    /// The repository of `T` on another configured store (MongoDB, Redis,
    /// ScyllaDB; or the relational one). Its table or collection comes from
    /// the migrations ([`migrate`]); nothing is created here. Opened once,
    /// then handed out again.
    ///
    /// # Errors
    /// `Unsupported` when that store is not configured, or cannot hold `T`
    /// (unique fields on ScyllaDB, say); `SchemaNotReady` when the
    /// migrations have not made its table, a column or a unique index.
    pub async fn repository_in<T: Entity>(
        &self,
        store: Store,
    ) -> Result<Arc<dyn Repository<T>>, Error> {
        let backend = self
            .backend_of(store)
            .ok_or_else(|| not_configured(store))?;
        self.opened::<T>(&backend).await
    }

    /// The (guarded) backend of a configured store, or the precise
    /// `Unsupported` naming what to set.
    fn backend_of(&self, store: Store) -> Option<Arc<dyn Backend>> {
        std::iter::once(&self.relational)
            .chain(&self.others)
            .find(|b| b.store() == store)
            .cloned()
    }

    /// The repository of `T` on `backend`: the one opened before, or opened
    /// now (its schema checked once) and kept. A failed open is not kept,
    /// so a repository opens once its migrations have run.
    async fn opened<T: Entity>(
        &self,
        backend: &Arc<dyn Backend>,
    ) -> Result<Arc<dyn Repository<T>>, Error> {
        let key = (backend.store(), std::any::TypeId::of::<T>());
        let cached = |cache: &RepoCache| {
            cache
                .get(&key)
                .and_then(|r| r.downcast_ref::<Arc<dyn Repository<T>>>())
                .cloned()
        };
        let lock = || {
            self.repositories
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some(r) = cached(&lock()) {
            return Ok(r);
        }
        let opened: Arc<dyn Repository<T>> =
            Arc::new(Repo::<T>::open_with(Arc::clone(backend), Arc::clone(&self.privacy)).await?);
        let mut cache = lock();
        // Two first calls at once: the first kept wins, both get it.
        if let Some(r) = cached(&cache) {
            return Ok(r);
        }
        cache.insert(key, Box::new(Arc::clone(&opened)));
        Ok(opened)
    }

    /// The stores this data layer reaches.
    #[must_use]
    pub fn stores(&self) -> Vec<Store> {
        std::iter::once(&self.relational)
            .chain(&self.others)
            .map(|b| b.store())
            .collect()
    }

    /// The repository of `T` on the relational store. Its table and indexes
    /// come from the migrations ([`migrate`]); nothing is created here. It
    /// is opened (checked against the store's schema) on the first call and
    /// the same one is handed out after.
    ///
    /// # Errors
    /// `SchemaNotReady` when the migrations have not made its table, a
    /// column or a unique index; the store's fault.
    pub async fn repository<T: Entity>(&self) -> Result<Arc<dyn Repository<T>>, Error> {
        let backend = Arc::clone(&self.relational);
        self.opened::<T>(&backend).await
    }
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

/// The answer for a store the settings do not name.
fn not_configured(store: Store) -> Error {
    Error::unsupported(
        store,
        dl_repositories::Operation::Prepare,
        format!("{store} is not configured: set its URL (see .env.example)"),
    )
}

/// Opens the optional stores the settings name (MongoDB, Redis, ScyllaDB).
async fn connect_others(
    settings: &Settings,
    privacy: Option<&Arc<dl_privacy::Privacy>>,
    #[allow(unused_variables)] // with Redis and MongoDB compiled out
    capture: Option<&Arc<dl_repositories::feed::Capture>>,
) -> Result<(Vec<Arc<dyn Backend>>, RawClients), SetupError> {
    #[cfg(feature = "mongodb")]
    use dl_repositories::backends::mongo::MongoBackend;
    #[cfg(feature = "redis")]
    use dl_repositories::backends::redis::RedisBackend;
    #[cfg(feature = "scylla")]
    use dl_repositories::backends::scylla::ScyllaBackend;
    #[cfg(feature = "scylla")]
    use dl_repositories::deferred::Deferred;
    #[allow(unused_mut)] // with every server store compiled out
    let mut out: Vec<Arc<dyn Backend>> = Vec::new();
    #[allow(unused_mut)]
    let mut raw = RawClients::default();
    #[cfg(not(feature = "mongodb"))]
    if settings.mongodb_uri.is_some() {
        return Err(not_built(Store::Mongo, "mongodb"));
    }
    #[cfg(not(feature = "redis"))]
    if settings.redis_url.is_some() {
        return Err(not_built(Store::Redis, "redis"));
    }
    #[cfg(not(feature = "scylla"))]
    if settings.scylla.is_some() {
        return Err(not_built(Store::Scylla, "scylla"));
    }
    let connect_err =
        |store: Store, reason: String, source: Option<Box<dyn std::error::Error + Send + Sync>>| {
            SetupError::Connect {
                store,
                reason,
                source,
            }
        };
    #[cfg(feature = "mongodb")]
    if let Some(url) = &settings.mongodb_uri {
        let client = dl_connections::mongo::connect(url, &settings.mongo)
            .await
            .map_err(|e| {
                connect_err(
                    Store::Mongo,
                    format!("bad MongoDB options in {url}"),
                    Some(Box::new(e)),
                )
            })?;
        let database = client
            .default_database()
            .map_or_else(|| "data_layer".to_owned(), |d| d.name().to_owned());
        let backend = MongoBackend::new(&client, &database, settings.mongo.request_timeout)
            .map_err(|e| connect_err(Store::Mongo, e.to_string(), None))?;
        let backend = match capture {
            Some(c) => backend.with_capture(Arc::clone(c)),
            None => backend,
        };
        out.push(Arc::new(backend));
    }
    #[cfg(feature = "redis")]
    if let Some(url) = &settings.redis_url {
        let conn = dl_connections::redis::connect_lazy(url, &settings.redis).map_err(|e| {
            connect_err(
                Store::Redis,
                format!("bad Redis options in {url}"),
                Some(Box::new(e)),
            )
        })?;
        raw.redis = Some(conn.clone());
        let backend = RedisBackend::new(
            conn,
            &settings.redis_key_prefix,
            settings.redis.request_timeout,
        )
        .map_err(|e| connect_err(Store::Redis, e.to_string(), None))?;
        let backend = match privacy {
            Some(p) => backend.with_privacy(Arc::clone(p)),
            None => backend,
        };
        let backend = match capture {
            Some(c) => backend.with_capture(Arc::clone(c)),
            None => backend,
        };
        out.push(Arc::new(backend));
    }
    #[cfg(feature = "scylla")]
    if let Some(scylla) = &settings.scylla {
        if !dl_models::is_valid_identifier(&scylla.keyspace) {
            return Err(connect_err(
                Store::Scylla,
                "the keyspace must match [a-z_][a-z0-9_]* (at most 48 bytes)".into(),
                None,
            ));
        }
        // The ScyllaDB session connects eagerly; a store that is down at
        // startup must not stop the service, so the session is made on
        // first use (tried once now) and the guard's breaker handles the
        // time it stays down.
        let (cfg, pool) = (scylla.clone(), settings.scylla_pool.clone());
        let connect: dl_repositories::deferred::Connector = Box::new(move || {
            let (cfg, pool) = (cfg.clone(), pool.clone());
            Box::pin(async move {
                let session = dl_connections::scylla::connect(&cfg, &pool).await?;
                let backend = ScyllaBackend::new(
                    session,
                    &cfg.keyspace,
                    cfg.lightweight_transactions,
                    pool.request_timeout,
                )?;
                Ok(Arc::new(backend) as Arc<dyn Backend>)
            })
        });
        let backend = Deferred::new(Store::Scylla, ScyllaBackend::CAPABILITIES, connect);
        if let Err(e) = dl_repositories::Probe::ping(&backend).await {
            tracing::warn!(
                store = "scylla",
                optional = settings.scylla_pool.optional,
                error = %e,
                "store unreachable at startup; connecting on first use"
            );
        }
        out.push(Arc::new(backend));
    }
    Ok((out, raw))
}

/// The drivers' own handles that layers above the repositories use.
#[derive(Default)]
struct RawClients {
    #[cfg(feature = "redis")]
    redis: Option<redis::aio::ConnectionManager>,
}

/// The guard's settings of `store` (from its pool settings): the request
/// deadline, the breaker and the retries.
fn guard_settings(
    store: Store,
    settings: &Settings,
) -> (
    std::time::Duration,
    dl_repositories::guard::BreakerSettings,
    dl_repositories::guard::RetrySettings,
) {
    use dl_repositories::guard::{BreakerSettings, RetrySettings};
    let pool = match store {
        Store::Postgres => &settings.postgres,
        Store::Mongo => &settings.mongo,
        Store::Redis => &settings.redis,
        Store::Scylla => &settings.scylla_pool,
        _ => &settings.sqlite,
    };
    let count = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
    let breaker = BreakerSettings {
        window: count(pool.breaker_window),
        min_calls: count(pool.breaker_min_calls),
        failure_rate: f64::from(pool.breaker_failure_percent) / 100.0,
        slow_call: pool.request_timeout / 2,
        wait_in_open: pool.breaker_wait,
        half_open_probes: count(pool.breaker_probes),
        ..BreakerSettings::default()
    };
    let retry = RetrySettings {
        max_retries: count(pool.retries),
        ..RetrySettings::default()
    };
    (pool.request_timeout, breaker, retry)
}

/// Wraps a backend in the guard (breaker, retry, deadline) with its store's
/// request timeout.
fn guarded(backend: Arc<dyn Backend>, settings: &Settings) -> Arc<dyn Backend> {
    let (deadline, breaker, retry) = guard_settings(backend.store(), settings);
    Arc::new(dl_repositories::guard::Guarded::new(
        backend, deadline, breaker, retry,
    ))
}
