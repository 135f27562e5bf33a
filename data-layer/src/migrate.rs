//! `data-layer migrate`: every configured store's migrations from one
//! folder, with the store's own runner (see [`dl_migrations`]).
//!
//! Repositories never create tables, collections or indexes: the
//! migrations do. A service runs them from the CLI at deploy time, or from
//! code at startup:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use data_layer::{DataLayer, Settings, Sources, migrate};
//! use data_layer::models::domain::Patient;
//!
//! # let dir = tempfile::tempdir()?;
//! # let url = format!("sqlite://{}/app.db", dir.path().display());
//! let settings = Settings::load(&Sources::isolated().var("DATABASE_URL", &url))?;
//! // The clinical domain's scripts, built into the binary; a service
//! // loads its own with `migrate::load("migrations")`.
//! let runs = migrate::apply(&settings, &migrate::domain_scripts()).await?;
//! assert_eq!(runs[0].steps.len(), 4); // the clinical tables, the change feed, CDC, the saga log
//! let dl = DataLayer::from_settings(settings).await?;
//! let patients = dl.repository::<Patient>().await?;
//! # let _ = patients;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use dl_connections::{DatabaseUrl, Settings};
use dl_migrations::Target;
use dl_migrations::engine;
pub use dl_migrations::engine::{StatusLine, Step};
#[cfg(feature = "mongodb")]
use dl_migrations::nosql::MongoTarget;
#[cfg(feature = "redis")]
use dl_migrations::nosql::RedisTarget;
#[cfg(feature = "scylla")]
use dl_migrations::nosql::ScyllaTarget;
#[cfg(feature = "postgres")]
use dl_migrations::sql::PostgresTarget;
#[cfg(feature = "sqlite")]
use dl_migrations::sql::SqliteTarget;

/// The error for a store this build left out.
#[allow(dead_code)] // with every store compiled in
fn not_built(store: StoreKind, feature: &str) -> MigrationError {
    MigrationError::Unsupported {
        store,
        reason: format!(
            "this build of data-layer has no {store} support: enable the `{feature}` Cargo feature"
        ),
    }
}
pub use dl_migrations::{Migration, MigrationError, Options, StoreKind};

/// Every store's migrations, in version order.
pub type Scripts = BTreeMap<StoreKind, Vec<Migration>>;

/// The migrations under `dir` (`<dir>/<store>/<version>_<name>.<ext>`),
/// checked before anything runs (see [`dl_migrations::script::load`]).
///
/// # Errors
/// The first malformed file, folder or duplicate version, named.
pub fn load(dir: impl AsRef<Path>) -> Result<Scripts, MigrationError> {
    dl_migrations::script::load(dir.as_ref())
}

macro_rules! embedded {
    ($store:expr, $dir:literal: $($file:literal),+ $(,)?) => {
        (
            $store,
            dl_migrations::script::from_texts(
                $store,
                &[$((
                    $file,
                    include_str!(concat!("../../migrations/", $dir, "/", $file)),
                )),+],
            ),
        )
    };
}

/// The clinical domain's migrations, built into the binary (this
/// repository's `migrations/<store>/`): the tables, collections and indexes
/// of the [`dl_models::domain`] entities on every store. What `demo` runs.
///
/// # Panics
/// Never for the shipped scripts (this crate's tests load them).
#[must_use]
pub fn domain_scripts() -> Scripts {
    [
        embedded!(StoreKind::Postgres, "postgres": "1_clinical_schema.sql", "1_clinical_schema.down.sql", "2_change_feed.sql", "2_change_feed.down.sql", "3_cdc.sql", "3_cdc.down.sql", "4_sagas.sql", "4_sagas.down.sql"),
        embedded!(StoreKind::Sqlite, "sqlite": "1_clinical_schema.sql", "1_clinical_schema.down.sql", "2_change_feed.sql", "2_change_feed.down.sql", "3_cdc.sql", "3_cdc.down.sql", "4_sagas.sql", "4_sagas.down.sql"),
        embedded!(StoreKind::Mongo, "mongo": "1_clinical_schema.json", "1_clinical_schema.down.json", "2_change_feed.json", "2_change_feed.down.json", "3_sagas.json", "3_sagas.down.json"),
        embedded!(StoreKind::Scylla, "scylla": "1_clinical_schema.cql", "1_clinical_schema.down.cql", "2_cdc.cql", "2_cdc.down.cql"),
        embedded!(StoreKind::Redis, "redis": "1_index_sorted_sets.lua", "1_index_sorted_sets.down.lua", "2_records_as_strings.lua", "2_records_as_strings.down.lua"),
    ]
    .into_iter()
    .map(|(store, scripts)| {
        let scripts = scripts.unwrap_or_else(|e| panic!("a built-in migration is malformed: {e}"));
        (store, scripts)
    })
    .collect()
}

/// What `migrate` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Each script's state.
    Status,
    /// Apply pending scripts (up to `--to`).
    Up,
    /// Revert down to `--to`.
    Down,
    /// Check checksums, failures and pending scripts; change nothing.
    Verify,
    /// Remove a recorded failure of one version so it runs again.
    Resolve(u64),
}

/// One store's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreRun {
    /// The store.
    pub store: StoreKind,
    /// The scripts run (or that would run).
    pub steps: Vec<Step>,
    /// Each script's state after the run.
    pub status: Vec<StatusLine>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// The stores a `--store` value names.
///
/// # Errors
/// An unknown name.
pub fn stores(name: &str) -> Result<Vec<StoreKind>, String> {
    if name == "all" {
        return Ok(StoreKind::ALL.to_vec());
    }
    StoreKind::from_name(name).map(|s| vec![s]).ok_or_else(|| {
        format!("unknown store {name:?}: use postgres, sqlite, mongo, scylla, redis or all")
    })
}

/// Scripts are not bound by the stores' request timeout (a `CREATE INDEX`
/// may take long): their connections get this deadline instead
/// (PostgreSQL `statement_timeout`, the Redis response timeout, the Scylla
/// request timeout).
pub const SCRIPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

fn for_scripts(pool: &dl_connections::PoolSettings) -> dl_connections::PoolSettings {
    let mut pool = pool.clone();
    pool.request_timeout = SCRIPT_TIMEOUT;
    pool
}

fn connect_err(
    store: StoreKind,
    e: impl std::error::Error + Send + Sync + 'static,
) -> MigrationError {
    MigrationError::store(store, "cannot connect", e)
}

/// The runner of `store` from the settings; `None` when the store is not
/// configured.
///
/// # Errors
/// When its connection cannot be set up.
pub async fn target(
    settings: &Settings,
    store: StoreKind,
) -> Result<Option<Arc<dyn Target>>, MigrationError> {
    Ok(match (store, &settings.database_url) {
        #[cfg(not(feature = "postgres"))]
        (StoreKind::Postgres, DatabaseUrl::Postgres(_)) => {
            return Err(not_built(store, "postgres"));
        }
        #[cfg(not(feature = "sqlite"))]
        (StoreKind::Sqlite, DatabaseUrl::Sqlite(_)) => return Err(not_built(store, "sqlite")),
        #[cfg(not(feature = "mongodb"))]
        (StoreKind::Mongo, _) => match &settings.mongodb_uri {
            None => None,
            Some(_) => return Err(not_built(store, "mongodb")),
        },
        #[cfg(not(feature = "redis"))]
        (StoreKind::Redis, _) => match &settings.redis_url {
            None => None,
            Some(_) => return Err(not_built(store, "redis")),
        },
        #[cfg(not(feature = "scylla"))]
        (StoreKind::Scylla, _) => match &settings.scylla {
            None => None,
            Some(_) => return Err(not_built(store, "scylla")),
        },
        #[cfg(feature = "postgres")]
        (StoreKind::Postgres, DatabaseUrl::Postgres(url)) => {
            let pool =
                dl_connections::postgres::connect_lazy(url, &for_scripts(&settings.postgres))
                    .map_err(|e| connect_err(store, e))?;
            Some(Arc::new(PostgresTarget::new(
                pool,
                &settings.postgres_schema,
            )))
        }
        #[cfg(feature = "sqlite")]
        (StoreKind::Sqlite, DatabaseUrl::Sqlite(path)) => {
            let pool = dl_connections::sqlite::connect(path, &settings.sqlite)
                .await
                .map_err(|e| {
                    MigrationError::store(store, format!("cannot open SQLite database {path}"), e)
                })?;
            Some(Arc::new(SqliteTarget::new(pool)))
        }
        #[cfg(feature = "mongodb")]
        (StoreKind::Mongo, _) => match &settings.mongodb_uri {
            None => None,
            Some(url) => {
                let client = dl_connections::mongo::connect(url, &settings.mongo)
                    .await
                    .map_err(|e| connect_err(store, e))?;
                let db = client
                    .default_database()
                    .unwrap_or_else(|| client.database("data_layer"));
                Some(Arc::new(MongoTarget::new(db)))
            }
        },
        #[cfg(feature = "redis")]
        (StoreKind::Redis, _) => match &settings.redis_url {
            None => None,
            Some(url) => {
                let conn = dl_connections::redis::connect_lazy(url, &for_scripts(&settings.redis))
                    .map_err(|e| connect_err(store, e))?;
                Some(Arc::new(RedisTarget::new(conn, &settings.redis_key_prefix)))
            }
        },
        #[cfg(feature = "scylla")]
        (StoreKind::Scylla, _) => match &settings.scylla {
            None => None,
            Some(scylla) => {
                let session =
                    dl_connections::scylla::connect(scylla, &for_scripts(&settings.scylla_pool))
                        .await
                        .map_err(|e| connect_err(store, e))?;
                Some(Arc::new(
                    ScyllaTarget::new(session, &scylla.keyspace, scylla.lightweight_transactions)?
                        .create_keyspace_for_development(scylla.create_keyspace),
                ))
            }
        },
        _ => None,
    })
}

/// Runs `action` on each of `stores` that is configured, in order, calling
/// `progress` after each script. A store named alone that is not
/// configured is an error; with `all`, unconfigured stores are skipped.
/// Every store runs even if an earlier one failed; each result says how
/// it went. (The scripts were checked when they were loaded.)
pub async fn run(
    settings: &Settings,
    all: &Scripts,
    stores: &[StoreKind],
    action: Action,
    options: &Options,
    progress: &mut (dyn FnMut(&Step) + Send),
) -> Vec<StoreRun> {
    let mut out = Vec::new();
    for &store in stores {
        let migrations = all.get(&store).cloned().unwrap_or_default();
        let target = match target(settings, store).await {
            Ok(Some(t)) => t,
            Ok(None) if stores.len() > 1 => continue,
            Ok(None) => {
                out.push(StoreRun {
                    store,
                    steps: Vec::new(),
                    status: Vec::new(),
                    error: Some(format!(
                        "{store} is not configured: set its URL (see .env.example)"
                    )),
                });
                continue;
            }
            Err(e) => {
                out.push(StoreRun {
                    store,
                    steps: Vec::new(),
                    status: Vec::new(),
                    error: Some(e.to_string()),
                });
                continue;
            }
        };
        let t = &*target;
        let result = match action {
            Action::Status => Ok(Vec::new()),
            Action::Up => engine::up(t, &migrations, options, progress).await,
            Action::Down => engine::down(t, &migrations, options, progress).await,
            Action::Verify => engine::verify(t, &migrations, options)
                .await
                .map(|()| Vec::new()),
            Action::Resolve(v) => engine::resolve(t, v).await.map(|()| Vec::new()),
        };
        let (steps, error) = match result {
            Ok(steps) => (steps, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let status = match engine::status(t, &migrations).await {
            Ok(s) => s,
            Err(e) => {
                out.push(StoreRun {
                    store,
                    steps,
                    status: Vec::new(),
                    error: Some(error.unwrap_or_else(|| e.to_string())),
                });
                continue;
            }
        };
        out.push(StoreRun {
            store,
            steps,
            status,
            error,
        });
    }
    out
}

/// A store whose migrations failed in [`apply`].
#[derive(Debug, thiserror::Error)]
#[error("migrations failed on {store}: {reason}")]
pub struct Failed {
    /// The store.
    pub store: StoreKind,
    /// The runner's error (it names the script, and the statement where
    /// the store says which).
    pub reason: String,
}

/// Applies every pending script on each configured store, as `data-layer
/// migrate up --store all` does (concurrent callers are safe: each store's
/// runner takes its lock). Returns each store's run.
///
/// # Errors
/// The first store whose run failed (the others still ran).
pub async fn apply(settings: &Settings, scripts: &Scripts) -> Result<Vec<StoreRun>, Failed> {
    let runs = run(
        settings,
        scripts,
        &StoreKind::ALL,
        Action::Up,
        &Options::default(),
        &mut |_| {},
    )
    .await;
    match runs.iter().find_map(|r| Some((r.store, r.error.clone()?))) {
        Some((store, reason)) => Err(Failed { store, reason }),
        None => Ok(runs),
    }
}

/// Re-makes the Redis index entries and unique claims of the `#[phi]`
/// fields of `schemas` as keyed tokens under `privacy.key`: a keyspace
/// written before tokens (PHI values in key names), or under a rotated-out
/// key, is converted in place (each record rewritten by compare-and-set,
/// its TTL kept), and its repositories open again. `data-layer migrate up
/// --store redis` runs it for the built-in clinical entities; a service
/// runs it for its own. Returns the records rewritten per entity.
///
/// # Errors
/// No Redis or no `privacy.key` configured; the store's fault.
#[cfg(feature = "redis")]
pub async fn rekey_redis_phi(
    settings: &Settings,
    schemas: &[&'static dl_models::EntitySchema],
) -> Result<Vec<(&'static str, usize)>, MigrationError> {
    let store = StoreKind::Redis;
    let Some(url) = &settings.redis_url else {
        return Err(MigrationError::Unsupported {
            store,
            reason: "Redis is not configured".into(),
        });
    };
    let Some(privacy) = settings.privacy.privacy() else {
        return Err(MigrationError::Unsupported {
            store,
            reason: "PHI index entries are keyed tokens: set privacy.key".into(),
        });
    };
    let conn = dl_connections::redis::connect_lazy(url, &for_scripts(&settings.redis))
        .map_err(|e| connect_err(store, e))?;
    let backend = dl_repositories::backends::redis::RedisBackend::new(
        conn,
        &settings.redis_key_prefix,
        settings.redis.request_timeout,
    )
    .map_err(|e| MigrationError::Unsupported {
        store,
        reason: e.to_string(),
    })?
    .with_privacy(Arc::new(privacy));
    let mut out = Vec::new();
    for schema in schemas {
        let n = backend
            .rekey_phi_entries(schema)
            .await
            .map_err(|e| MigrationError::Store {
                store,
                reason: format!(
                    "cannot re-key the PHI index entries of {}: {e}",
                    schema.name
                ),
                source: None,
            })?;
        out.push((schema.name, n));
    }
    Ok(out)
}

/// The schemas of the built-in clinical entities.
#[must_use]
pub fn domain_schemas() -> Vec<&'static dl_models::EntitySchema> {
    use dl_models::Entity as _;
    use dl_models::domain::{Alert, Appointment, AuditEvent, Insurance, MediaAsset, Patient};
    vec![
        Patient::schema(),
        Appointment::schema(),
        Insurance::schema(),
        Alert::schema(),
        AuditEvent::schema(),
        MediaAsset::schema(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scripts built into the binary are the repository's files.
    #[test]
    fn domain_scripts_match_the_migrations_folder() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        let on_disk = load(&dir).expect("the project's scripts load");
        let built_in = domain_scripts();
        assert_eq!(
            built_in.keys().collect::<Vec<_>>(),
            on_disk
                .iter()
                .filter(|(_, m)| !m.is_empty())
                .map(|(s, _)| s)
                .collect::<Vec<_>>()
        );
        for (store, scripts) in &built_in {
            let disk = &on_disk[store];
            assert_eq!(scripts.len(), disk.len(), "{store}");
            for (a, b) in scripts.iter().zip(disk) {
                assert_eq!(
                    (a.version, &a.name, &a.up.checksum),
                    (b.version, &b.name, &b.up.checksum),
                    "{store}"
                );
                assert_eq!(
                    a.down.as_ref().map(|d| &d.checksum),
                    b.down.as_ref().map(|d| &d.checksum),
                    "{store}"
                );
            }
        }
    }
}
