//! The conformance entities' tables and collections, made the way a
//! service makes its own: by the migrations in `tests/migrations/<store>/`,
//! run by the store's runner over the test's namespace. Backends never
//! create schema themselves.

use std::path::PathBuf;
use std::sync::OnceLock;

use dl_connections::{ScyllaSettings, SecretUrl};
use dl_migrations::engine::{self, Options};
use dl_migrations::nosql::{MongoTarget, ScyllaTarget};
use dl_migrations::script::StoreKind;
use dl_migrations::sql::{PostgresTarget, SqliteTarget};
use dl_migrations::{Migration, Target};

use crate::live::test_pool;

/// The folder of the test entities' migrations.
#[must_use]
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("migrations")
}

/// The test entities' migrations for `store` (loaded and checked once).
///
/// # Panics
/// When a script is malformed (a defect of this crate).
#[must_use]
pub fn scripts(store: StoreKind) -> Vec<Migration> {
    static ALL: OnceLock<std::collections::BTreeMap<StoreKind, Vec<Migration>>> = OnceLock::new();
    ALL.get_or_init(|| {
        dl_migrations::script::load(&dir())
            .unwrap_or_else(|e| panic!("tests/migrations is malformed: {e}"))
    })
    .get(&store)
    .cloned()
    .unwrap_or_default()
}

/// Applies the test entities' migrations with `target`. The lease is short
/// (5 s): a server killed mid-test may come back with a lease it never saw
/// released (SecantusDB after SIGKILL), and the next run takes it over.
///
/// # Errors
/// The runner's error, as text.
pub async fn apply(target: &dyn Target) -> Result<(), String> {
    let options = Options {
        lock_wait: std::time::Duration::from_secs(30),
        lease: std::time::Duration::from_secs(5),
        ..Options::default()
    };
    engine::up(target, &scripts(target.store()), &options, &mut |_| {})
        .await
        .map(|_| ())
        .map_err(|e| format!("{} test migrations: {e}", target.store()))
}

/// The test entities in a SQLite database.
///
/// # Errors
/// The runner's error, as text.
pub async fn sqlite(pool: &sqlx::SqlitePool) -> Result<(), String> {
    apply(&SqliteTarget::new(pool.clone())).await
}

/// The test entities in PostgreSQL schema `namespace` (created).
///
/// # Errors
/// The runner's error, as text.
pub async fn postgres(url: &SecretUrl, namespace: &str) -> Result<(), String> {
    let pool = dl_connections::postgres::connect_lazy(url, &test_pool(2))
        .map_err(|e| format!("postgres options: {e}"))?;
    let result = apply(&PostgresTarget::new(pool.clone(), namespace)).await;
    pool.close().await;
    result
}

/// The test entities in MongoDB database `database`.
///
/// # Errors
/// The runner's error, as text.
pub async fn mongo(url: &SecretUrl, database: &str) -> Result<(), String> {
    let client = dl_connections::mongo::connect(url, &test_pool(2))
        .await
        .map_err(|e| format!("mongo options: {e}"))?;
    apply(&MongoTarget::new(client.database(database))).await
}

/// The test entities in Scylla keyspace `keyspace` (created), over a
/// session of its own to `settings`' nodes (the runner `USE`s the
/// keyspace, which would change a shared session's).
///
/// # Errors
/// The runner's error, as text.
pub async fn scylla(settings: &ScyllaSettings, keyspace: &str) -> Result<(), String> {
    let session = dl_connections::scylla::connect(settings, &test_pool(1))
        .await
        .map_err(|e| format!("scylla: {e}"))?;
    // Test keyspaces are made by the runner (replication factor 1).
    let target = ScyllaTarget::new(session, keyspace, settings.lightweight_transactions)
        .map_err(|e| e.to_string())?
        .create_keyspace_for_development(true);
    apply(&target).await
}
