//! `data-layer migrate`: every configured store's migrations from one
//! folder, with the store's own runner (see [`dl_migrations`]).

use std::path::Path;
use std::sync::Arc;

use dl_connections::{DatabaseUrl, Settings};
use dl_migrations::engine::{self, Options, StatusLine, Step};
use dl_migrations::nosql::{MongoTarget, RedisTarget, ScyllaTarget};
use dl_migrations::sql::{PostgresTarget, SqliteTarget};
use dl_migrations::{MigrationError, StoreKind, Target};

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
        (StoreKind::Postgres, DatabaseUrl::Postgres(url)) => {
            let pool =
                dl_connections::postgres::connect_lazy(url, &for_scripts(&settings.postgres))
                    .map_err(|e| connect_err(store, e))?;
            Some(Arc::new(PostgresTarget::new(
                pool,
                &settings.postgres_schema,
            )))
        }
        (StoreKind::Sqlite, DatabaseUrl::Sqlite(path)) => {
            let pool = dl_connections::sqlite::connect(path, &settings.sqlite)
                .await
                .map_err(|e| connect_err(store, e))?;
            Some(Arc::new(SqliteTarget::new(pool)))
        }
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
        (StoreKind::Redis, _) => match &settings.redis_url {
            None => None,
            Some(url) => {
                let conn = dl_connections::redis::connect_lazy(url, &for_scripts(&settings.redis))
                    .map_err(|e| connect_err(store, e))?;
                Some(Arc::new(RedisTarget::new(conn, &settings.redis_key_prefix)))
            }
        },
        (StoreKind::Scylla, _) => match &settings.scylla {
            None => None,
            Some(scylla) => {
                let session =
                    dl_connections::scylla::connect(scylla, &for_scripts(&settings.scylla_pool))
                        .await
                        .map_err(|e| connect_err(store, e))?;
                Some(Arc::new(ScyllaTarget::new(
                    session,
                    &scylla.keyspace,
                    scylla.lightweight_transactions,
                )?))
            }
        },
        _ => None,
    })
}

/// Runs `action` on each of `stores` that is configured, in order, calling
/// `progress` after each script. A store named alone that is not
/// configured is an error; with `all`, unconfigured stores are skipped.
/// Every store runs even if an earlier one failed; each result says how
/// it went.
///
/// # Errors
/// Only the folder's checks (bad names, empty files, invalid JSON, unknown
/// store folders, duplicate versions): then nothing runs.
pub async fn run(
    settings: &Settings,
    dir: &Path,
    stores: &[StoreKind],
    action: Action,
    options: &Options,
    progress: &mut (dyn FnMut(&Step) + Send),
) -> Result<Vec<StoreRun>, MigrationError> {
    let all = dl_migrations::script::load(dir)?;
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
    Ok(out)
}
