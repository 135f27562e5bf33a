//! Helpers for the live stores of the test stack: where each store is,
//! a namespace per test, and a loud failure when a configured store does
//! not answer (never a skip).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dl_connections::{PoolSettings, SecretUrl, Settings, Sources};
use dl_repositories::Backend;
use dl_repositories::backends::mongo::MongoBackend;
use dl_repositories::backends::postgres::PostgresBackend;
use dl_repositories::backends::redis::RedisBackend;
use dl_repositories::backends::scylla::ScyllaBackend;

use crate::harness::Factory;

/// The PostgreSQL URL of the test stack: `TEST_POSTGRES_URL`, else the
/// stack's default (written to `.env.test` by `scripts/stack.sh`).
#[must_use]
pub fn postgres_url() -> SecretUrl {
    let raw = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    SecretUrl::parse(&raw).unwrap_or_else(|()| panic!("TEST_POSTGRES_URL is not a URL"))
}

/// The NATS (JetStream) URL of the test stack: `TEST_NATS_URL`, else the
/// stack's default.
#[must_use]
pub fn nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A NATS stream and subject root of one test (`dlt_<tag>_<8 hex>`),
/// deleted by [`drop_nats_stream`].
#[must_use]
pub fn nats_namespace(tag: &str) -> String {
    unique_prefix(tag)
}

/// Deletes the stream `name` (a test's).
pub async fn drop_nats_stream(name: &str) {
    if let Ok(client) = async_nats::connect(nats_url()).await {
        let _ = async_nats::jetstream::new(client).delete_stream(name).await;
    }
}

/// Pool settings for tests: the defaults with a small pool.
#[must_use]
pub fn test_pool(max: u32) -> PoolSettings {
    let mut p = Settings::load(&Sources::isolated())
        .expect("default settings")
        .postgres;
    p.max_connections = max;
    p
}

/// [`test_privacy`]'s key as settings take it (base64url of 32 bytes of
/// 0x5a; a test key, never a real one).
pub const TEST_PRIVACY_KEY: &str = "WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlo";

/// The privacy keys of the tests (a fixed key: tokens made in one test
/// are found by the next call, as with a key from settings).
#[must_use]
pub fn test_privacy() -> Arc<dl_privacy::Privacy> {
    static KEYS: std::sync::OnceLock<Arc<dl_privacy::Privacy>> = std::sync::OnceLock::new();
    Arc::clone(KEYS.get_or_init(|| {
        Arc::new(dl_privacy::Privacy::new(
            dl_privacy::SecretKey::from_bytes("test1", [0x5a; 32]).expect("a valid test key"),
        ))
    }))
}

/// A unique prefix for one test's namespaces (`dlt_<8 hex>`).
#[must_use]
pub fn unique_prefix(tag: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("dlt_{tag}_{}", &id[..8])
}

/// PostgreSQL namespaces (schemas) made for one test, dropped by
/// [`PgNamespaces::drop_all`].
#[derive(Debug, Clone)]
pub struct PgNamespaces {
    prefix: String,
    next: Arc<AtomicUsize>,
}

impl PgNamespaces {
    /// Checks that the server answers (panics naming it otherwise) and
    /// returns a namespace maker.
    pub async fn new(tag: &str) -> Self {
        let url = postgres_url();
        let pool =
            dl_connections::postgres::connect_lazy(&url, &test_pool(1)).expect("postgres options");
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            sqlx::query("SELECT 1").execute(&pool),
        )
        .await;
        match answer {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!(
                "PostgreSQL at {url} is configured but does not answer ({e}); bring the stack up: scripts/stack.sh up"
            ),
            Err(_) => panic!(
                "PostgreSQL at {url} is configured but did not answer within 10s; bring the stack up: scripts/stack.sh up"
            ),
        }
        pool.close().await;
        PgNamespaces {
            prefix: unique_prefix(tag),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A factory: each call migrates a fresh namespace (the test entities'
    /// migrations) and opens a pool and a backend there.
    #[must_use]
    pub fn factory(&self, pool_size: u32) -> Factory {
        let me = self.clone();
        Arc::new(move || {
            let me = me.clone();
            Box::pin(async move {
                let ns = format!("{}_{}", me.prefix, me.next.fetch_add(1, Ordering::Relaxed));
                crate::schema::postgres(&postgres_url(), &ns)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let pool =
                    dl_connections::postgres::connect_lazy(&postgres_url(), &test_pool(pool_size))
                        .expect("postgres options");
                Arc::new(PostgresBackend::new(pool, &ns).expect("namespace")) as Arc<dyn Backend>
            })
        })
    }

    /// A namespace name of this maker (`<prefix>_<tag>`), for a test that
    /// migrates and opens it itself; dropped by [`PgNamespaces::drop_all`].
    #[must_use]
    pub fn name(&self, tag: &str) -> String {
        format!("{}_{tag}", self.prefix)
    }

    /// Drops every namespace this maker created.
    pub async fn drop_all(&self) {
        drop_postgres_namespaces(&self.prefix).await;
    }
}

/// Drops every PostgreSQL schema named `<prefix>_...` (a test's or a
/// benchmark run's).
pub async fn drop_postgres_namespaces(prefix: &str) {
    let pool = dl_connections::postgres::connect_lazy(&postgres_url(), &test_pool(1))
        .expect("postgres options");
    let names: Vec<(String,)> =
        sqlx::query_as("SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)")
            .bind(format!("{prefix}_"))
            .fetch_all(&pool)
            .await
            .expect("list namespaces");
    for (name,) in names {
        assert!(dl_models::is_valid_identifier(&name));
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
        )))
        .execute(&pool)
        .await
        .expect("drop namespace");
    }
    pool.close().await;
}

/// The Redis URL of the test stack: `TEST_REDIS_URL`, else the stack's default.
#[must_use]
pub fn redis_url() -> SecretUrl {
    let raw = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    SecretUrl::parse(&raw).unwrap_or_else(|()| panic!("TEST_REDIS_URL is not a URL"))
}

/// Redis key prefixes made for one test, removed by [`RedisNamespaces::drop_all`]
/// (with SCAN, never KEYS).
#[derive(Debug, Clone)]
pub struct RedisNamespaces {
    prefix: String,
    next: Arc<AtomicUsize>,
}

impl RedisNamespaces {
    /// Checks that the server answers (panics naming it otherwise).
    pub async fn new(tag: &str) -> Self {
        let url = redis_url();
        let mut conn =
            dl_connections::redis::connect_lazy(&url, &test_pool(1)).expect("redis options");
        let answer: Result<Result<String, _>, _> = tokio::time::timeout(
            Duration::from_secs(10),
            redis::cmd("PING").query_async(&mut conn),
        )
        .await;
        match answer {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!(
                "Redis at {url} is configured but does not answer ({e}); bring the stack up: scripts/stack.sh up"
            ),
            Err(_) => panic!(
                "Redis at {url} is configured but did not answer within 10s; bring the stack up: scripts/stack.sh up"
            ),
        }
        RedisNamespaces {
            prefix: unique_prefix(tag),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A fresh key prefix under this maker's (removed by `drop_all`).
    #[must_use]
    pub fn namespace(&self) -> String {
        format!(
            "{}_{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A factory: each call opens a connection and a backend under a fresh prefix.
    #[must_use]
    pub fn factory(&self) -> Factory {
        let me = self.clone();
        Arc::new(move || {
            let me = me.clone();
            Box::pin(async move {
                let ns = me.namespace();
                let pool = test_pool(1);
                let conn = dl_connections::redis::connect_lazy(&redis_url(), &pool)
                    .expect("redis options");
                Arc::new(
                    RedisBackend::new(conn, &ns, pool.request_timeout)
                        .expect("prefix")
                        .with_privacy(test_privacy()),
                ) as Arc<dyn Backend>
            })
        })
    }

    /// Removes every key under this maker's prefixes.
    pub async fn drop_all(&self) {
        drop_redis_namespaces(&self.prefix).await;
    }
}

/// Removes every Redis key under `<prefix>_...` (a test's or a benchmark
/// run's).
pub async fn drop_redis_namespaces(prefix: &str) {
    let mut conn =
        dl_connections::redis::connect_lazy(&redis_url(), &test_pool(1)).expect("redis options");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}_*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("scan");
        if !keys.is_empty() {
            let _: i64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .expect("unlink");
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

/// The MongoDB URI of the test stack: `TEST_MONGODB_URI`, else the stack's default.
#[must_use]
pub fn mongo_url() -> SecretUrl {
    let raw = std::env::var("TEST_MONGODB_URI")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?directConnection=true".into());
    SecretUrl::parse(&raw).unwrap_or_else(|()| panic!("TEST_MONGODB_URI is not a URL"))
}

/// MongoDB databases made for one test, dropped by [`MongoNamespaces::drop_all`].
#[derive(Debug, Clone)]
pub struct MongoNamespaces {
    prefix: String,
    next: Arc<AtomicUsize>,
}

impl MongoNamespaces {
    /// Checks that the server answers (panics naming it otherwise).
    pub async fn new(tag: &str) -> Self {
        let url = mongo_url();
        let client = dl_connections::mongo::connect(&url, &test_pool(1))
            .await
            .expect("mongo options");
        let answer = tokio::time::timeout(
            Duration::from_secs(15),
            client
                .database("admin")
                .run_command(mongodb::bson::doc! { "ping": 1 }),
        )
        .await;
        match answer {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!(
                "MongoDB at {url} is configured but does not answer ({e}); bring the stack up: scripts/stack.sh up"
            ),
            Err(_) => panic!(
                "MongoDB at {url} is configured but did not answer within 15s; bring the stack up: scripts/stack.sh up"
            ),
        }
        MongoNamespaces {
            prefix: unique_prefix(tag),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A fresh database under this maker's prefix, migrated with the
    /// test entities' migrations (dropped by `drop_all`).
    ///
    /// # Panics
    /// When the migrations fail.
    pub async fn migrated(&self) -> String {
        let ns = format!(
            "{}_{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        crate::schema::mongo(&mongo_url(), &ns)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        ns
    }

    /// A factory: each call migrates a fresh database (the test entities'
    /// migrations) and opens a client and a backend there.
    #[must_use]
    pub fn factory(&self) -> Factory {
        let me = self.clone();
        Arc::new(move || {
            let me = me.clone();
            Box::pin(async move {
                let ns = format!("{}_{}", me.prefix, me.next.fetch_add(1, Ordering::Relaxed));
                crate::schema::mongo(&mongo_url(), &ns)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let pool = test_pool(2);
                let client = dl_connections::mongo::connect(&mongo_url(), &pool)
                    .await
                    .expect("mongo options");
                Arc::new(
                    MongoBackend::new(&client, &ns, pool.request_timeout).expect("database name"),
                ) as Arc<dyn Backend>
            })
        })
    }

    /// Drops every database this maker created.
    pub async fn drop_all(&self) {
        drop_mongo_namespaces(&self.prefix).await;
    }
}

/// Drops every MongoDB database named `<prefix>_...` (a test's or a
/// benchmark run's).
pub async fn drop_mongo_namespaces(prefix: &str) {
    let client = dl_connections::mongo::connect(&mongo_url(), &test_pool(1))
        .await
        .expect("mongo options");
    let names = client.list_database_names().await.expect("list databases");
    for name in names
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}_")))
    {
        client.database(&name).drop().await.expect("drop database");
    }
}

/// Whether the server answering as MongoDB is SecantusDB (its `buildInfo`
/// carries `secantusVersion`); asked of the server, not configured.
pub async fn mongo_is_secantusdb() -> bool {
    let client = dl_connections::mongo::connect(&mongo_url(), &test_pool(1))
        .await
        .expect("mongo options");
    let info = client
        .database("admin")
        .run_command(mongodb::bson::doc! { "buildInfo": 1 })
        .await
        .expect("buildInfo");
    info.contains_key("secantusVersion")
}

/// Defects of SecantusDB 0.5.3-beta.196 that make conformance cases fail
/// there (not on MongoDB): asserted and counted by the suite.
pub const SECANTUSDB_DEFECTS: &[crate::harness::KnownDefect] = &[crate::harness::KnownDefect {
    case: "unique_value_freed_by_update",
    server: "secantusdb 0.5.3-beta.196",
    what: "a unique index keeps the old value of a document after any update or replace \
           (plain, sparse or partial index; $set, $unset or replacement) until the \
           document is deleted, so the value stays taken; MongoDB frees it",
    failure_contains: "the value of unique field `code` is already taken",
}];

/// The CQL contact point of the test stack: `TEST_SCYLLA_URI`, else the
/// stack's default (the CQL test server on 127.0.0.1:9042).
#[must_use]
pub fn scylla_settings() -> dl_connections::ScyllaSettings {
    let nodes = std::env::var("TEST_SCYLLA_URI").unwrap_or_else(|_| "127.0.0.1:9042".into());
    let settings = Settings::load(
        &Sources::isolated()
            .var("SCYLLA_URI", &nodes)
            .var("DL_SCYLLA__CREATE_KEYSPACE", "true")
            .var("DL_SCYLLA__AUTO_AWAIT_SCHEMA_AGREEMENT", "false")
            .var("DL_SCYLLA__FETCH_SCHEMA_METADATA", "false")
            .var(
                "DL_SCYLLA__LIGHTWEIGHT_TRANSACTIONS",
                &std::env::var("TEST_SCYLLA_LWT").unwrap_or_else(|_| "false".into()),
            ),
    )
    .unwrap_or_else(|e| panic!("TEST_SCYLLA_URI: {e}"));
    settings.scylla.expect("SCYLLA_URI is set")
}

/// Settings that reach every store of the test stack, each in namespace
/// `ns` (PostgreSQL schema, MongoDB database, Redis key prefix, Scylla
/// keyspace), as a service's settings would.
///
/// # Panics
/// When the stack's URLs do not make valid settings.
#[must_use]
pub fn all_stores_settings(ns: &str) -> Settings {
    let env = all_stores_env(ns);
    let mut sources = Sources::isolated();
    for (k, v) in &env {
        sources = sources.var(k, v);
    }
    Settings::load(&sources).expect("settings for every store")
}

/// The environment of [`all_stores_settings`], for a child process.
#[must_use]
pub fn all_stores_env(ns: &str) -> Vec<(String, String)> {
    let mongo = mongo_url().expose().replacen("/?", &format!("/{ns}?"), 1);
    let scylla = scylla_settings();
    [
        ("DATABASE_URL", postgres_url().expose().to_owned()),
        ("DL_POSTGRES__SCHEMA", ns.to_owned()),
        ("MONGODB_URI", mongo),
        ("REDIS_URL", redis_url().expose().to_owned()),
        ("DL_REDIS__KEY_PREFIX", ns.to_owned()),
        ("DL_PRIVACY__KEY", TEST_PRIVACY_KEY.to_owned()),
        ("DL_PRIVACY__KEY_ID", "test1".to_owned()),
        ("SCYLLA_URI", scylla.nodes.join(",")),
        ("DL_SCYLLA__KEYSPACE", ns.to_owned()),
        ("DL_SCYLLA__CREATE_KEYSPACE", "true".to_owned()),
        ("DL_SCYLLA__AUTO_AWAIT_SCHEMA_AGREEMENT", "false".to_owned()),
        ("DL_SCYLLA__FETCH_SCHEMA_METADATA", "false".to_owned()),
        (
            "DL_SCYLLA__LIGHTWEIGHT_TRANSACTIONS",
            if scylla.lightweight_transactions {
                "true"
            } else {
                "false"
            }
            .to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Scylla keyspaces made for one test.
#[derive(Debug, Clone)]
pub struct ScyllaNamespaces {
    prefix: String,
    next: Arc<AtomicUsize>,
    session: Arc<scylla::client::session::Session>,
}

impl ScyllaNamespaces {
    /// Connects (panics naming the server when it does not answer).
    pub async fn new(tag: &str) -> Self {
        let settings = scylla_settings();
        let session = match tokio::time::timeout(
            Duration::from_secs(15),
            dl_connections::scylla::connect(&settings, &test_pool(1)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => panic!(
                "Scylla at {:?} is configured but does not answer ({e}); bring the stack up: scripts/stack.sh up",
                settings.nodes
            ),
            Err(_) => panic!(
                "Scylla at {:?} is configured but did not answer within 15s; bring the stack up: scripts/stack.sh up",
                settings.nodes
            ),
        };
        ScyllaNamespaces {
            prefix: unique_prefix(tag),
            next: Arc::new(AtomicUsize::new(0)),
            session,
        }
    }

    /// A factory: each call migrates a fresh keyspace (the test entities'
    /// migrations) and makes a backend there, on one shared session.
    #[must_use]
    pub fn factory(&self, lightweight_transactions: bool) -> Factory {
        let me = self.clone();
        Arc::new(move || {
            let me = me.clone();
            Box::pin(async move {
                let ns = format!("{}_{}", me.prefix, me.next.fetch_add(1, Ordering::Relaxed));
                // The runner takes its lease as the server allows
                // (TEST_SCYLLA_LWT), whatever the backend under test uses.
                crate::schema::scylla(&scylla_settings(), &ns)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                Arc::new(
                    ScyllaBackend::new(
                        Arc::clone(&me.session),
                        &ns,
                        lightweight_transactions,
                        Duration::from_secs(10),
                    )
                    .expect("keyspace"),
                ) as Arc<dyn Backend>
            })
        })
    }

    /// The session (for tests that talk CQL directly).
    #[must_use]
    pub fn session(&self) -> &Arc<scylla::client::session::Session> {
        &self.session
    }
}

/// Defects of the CQL test server (kassandra 0.14) that make conformance
/// cases fail there (not on ScyllaDB): asserted and counted by the suite.
pub const CQL_TEST_SERVER_DEFECTS: &[crate::harness::KnownDefect] =
    &[crate::harness::KnownDefect {
        case: "update_unsets_nullable",
        server: "cql-test-server (kassandra 0.14)",
        what: "a null bound in UPDATE or INSERT is ignored, so a column cannot be cleared \
           (a literal null or a column DELETE would, but it cannot prepare column deletes); \
           ScyllaDB clears the column",
        failure_contains: "the stored entity differs",
    }];
