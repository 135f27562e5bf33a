//! The change feed on every store that keeps one: SQLite (embedded, always)
//! and, with the `integration` feature, PostgreSQL of the test stack.

use std::sync::Arc;

use dl_repositories::backends::sqlite::SqliteBackend;
use dl_repositories::feed::Capture;
use dl_repositories::{Backend, Error, Operation, Store};
use dl_tests::feed::{consumers_read_from_checkpoints, every_write_is_one_event};
use dl_tests::live::test_privacy;

fn capture() -> Arc<Capture> {
    Arc::new(Capture::new(["specimens", "enrollments"], test_privacy()).expect("capture"))
}

async fn sqlite() -> Arc<dyn Backend> {
    sqlite_with_pool().await.0
}

async fn sqlite_with_pool() -> (Arc<dyn Backend>, sqlx::SqlitePool) {
    let dir = tempfile::tempdir().expect("temp dir").keep();
    let settings = dl_connections::Settings::load(&dl_connections::Sources::isolated())
        .expect("default settings");
    let pool = dl_connections::sqlite::connect(
        dir.join("feed.db").to_str().expect("utf-8 path"),
        &settings.sqlite,
    )
    .await
    .expect("open sqlite");
    dl_tests::schema::sqlite(&pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (
        Arc::new(SqliteBackend::new(pool.clone()).with_capture(capture())),
        pool,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_every_write_is_one_event() {
    every_write_is_one_event(sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_consumers_read_from_checkpoints() {
    consumers_read_from_checkpoints(sqlite().await).await;
}

/// The writer's settings: the store, capture of `specimens`, the tests'
/// privacy key.
fn writer_env(database_url: &str) -> Vec<(String, String)> {
    vec![
        ("DATABASE_URL".into(), database_url.into()),
        ("DL_CDC__ENTITIES".into(), "specimens".into()),
        // The tests' key (test_privacy): 32 bytes of 0x5a.
        (
            "DL_PRIVACY__KEY".into(),
            "WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlo=".into(),
        ),
        ("DL_PRIVACY__KEY_ID".into(), "test1".into()),
        ("FEED_WRITER_TASKS".into(), "3".into()),
    ]
}

/// Writers killed with SIGKILL 20 times at random points: afterwards
/// every acknowledged write has exactly one event and every refused one
/// none, sequences without gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_writers_killed_at_random_keep_one_event_per_write() {
    let dir = tempfile::tempdir().expect("temp dir").keep();
    let path = dir.join("kill.db");
    let backend = {
        let settings = dl_connections::Settings::load(&dl_connections::Sources::isolated())
            .expect("default settings");
        let pool = dl_connections::sqlite::connect(path.to_str().expect("utf-8"), &settings.sqlite)
            .await
            .expect("open sqlite");
        dl_tests::schema::sqlite(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Arc::new(SqliteBackend::new(pool).with_capture(capture())) as Arc<dyn Backend>
    };
    let env = writer_env(&format!("sqlite://{}", path.display()));
    // Nothing to do while a writer writes (the loop only paces itself).
    kill_writers("sqlite", env, backend, || {
        std::thread::sleep(std::time::Duration::from_millis(50));
    })
    .await;
}

/// Writers with `env`, killed with SIGKILL 20 times at random points
/// while `between` runs over and over; then the feed of `backend` checked
/// against what they said.
async fn kill_writers(
    store: &str,
    env: Vec<(String, String)>,
    backend: Arc<dyn Backend>,
    between: impl Fn() + Send + Sync + 'static,
) {
    let log = tokio::task::spawn_blocking(move || {
        dl_tests::feed::kill_writer_rounds(env!("CARGO_BIN_EXE_feed-writer"), &env, 20, &between)
    })
    .await
    .expect("the kill rounds");
    let counts = dl_tests::feed::check_feed_against(backend, &log).await;
    say(&format!("feed kill test, {store}: {counts:?}"));
    assert_eq!(counts.kills, 20);
    assert!(
        counts.acknowledged >= 60 && counts.refused > 0,
        "{counts:?}"
    );
}

/// A consumer process killed with SIGKILL 20 times while it reads (and
/// prunes, with a retention of 1 ms), while more events are written: it
/// resumes from its checkpoint each time and sees every event at least
/// once, in per-key order; pruning never took an event it had not
/// acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_consumer_killed_at_random_sees_every_event() {
    let dir = tempfile::tempdir().expect("temp dir").keep();
    let path = dir.join("consumer.db");
    let settings =
        dl_connections::Settings::load(&dl_connections::Sources::isolated()).expect("defaults");
    let pool = dl_connections::sqlite::connect(path.to_str().expect("utf-8"), &settings.sqlite)
        .await
        .expect("open sqlite");
    dl_tests::schema::sqlite(&pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let backend: Arc<dyn Backend> = Arc::new(SqliteBackend::new(pool).with_capture(capture()));
    let repo = Arc::new(
        dl_repositories::Repo::<dl_tests::entities::Specimen>::open(Arc::clone(&backend))
            .await
            .expect("open"),
    );
    let mut env = writer_env(&format!("sqlite://{}", path.display()));
    env.push(("DL_CDC__RETENTION".into(), "1ms".into()));
    env.push(("FEED_CONSUMER".into(), "resumer".into()));
    let rt = tokio::runtime::Handle::current();
    let writer = Arc::clone(&repo);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let log = tokio::task::spawn_blocking(move || {
        dl_tests::feed::kill_consumer_rounds(env!("CARGO_BIN_EXE_feed-writer"), &env, 20, &|| {
            // 60 events a round: inserts, then updates of the same keys.
            let base = next.fetch_add(30, std::sync::atomic::Ordering::Relaxed);
            rt.block_on(async {
                use dl_repositories::Repository as _;
                for i in base..base + 30 {
                    let s = dl_tests::entities::Specimen::new(&format!("c{i}"), 0);
                    writer.insert(&s).await.expect("insert");
                    writer
                        .update(
                            &format!("c{i}"),
                            &dl_repositories::Patch::new().set("rank", 1_i64),
                        )
                        .await
                        .expect("update");
                }
            });
        })
    })
    .await
    .expect("the consumer rounds");
    let feed = backend.change_feed().await.expect("feed");
    let status = feed.status().await.expect("status");
    say(&format!(
        "feed consumer kill test, sqlite: {} kills, {} deliveries of {} events, {} kept after pruning",
        log.kills, log.deliveries, status.last_position, status.events
    ));
    assert_eq!(log.kills, 20);
    let all: std::collections::BTreeSet<u64> = (1..=status.last_position).collect();
    assert_eq!(log.seen, all, "every event seen at least once");
    assert_eq!(status.consumers[0].position, status.last_position);
    assert!(status.events < status.last_position, "pruning ran");
}

fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_feed_shows_no_phi() {
    let (backend, pool) = sqlite_with_pool().await;
    let canaries = dl_tests::feed::feed_shows_no_phi(backend).await;
    // The feed's own columns (everything but the record after the write).
    let own: Vec<String> = sqlx::query_scalar(
        "SELECT entity || ' ' || op || ' ' || key_id || ' ' || seq || ' ' || schema_version FROM dl_feed \
         UNION ALL SELECT entity || ' ' || key_id || ' ' || seq FROM dl_feed_keys \
         UNION ALL SELECT name || ' ' || position FROM dl_feed_consumers",
    )
    .fetch_all(&pool)
    .await
    .expect("dump");
    let refs: Vec<&str> = canaries.iter().map(String::as_str).collect();
    dl_tests::canary::assert_no_canary("the feed's own SQLite columns", &own.join("\n"), &refs);
}

/// [`kill_writers`] while `proxy` cuts every connection every 300 ms.
#[cfg(feature = "integration")]
async fn kill_writers_through_resets(
    store: &str,
    env: Vec<(String, String)>,
    proxy: Arc<dl_tests::proxy::FaultProxy>,
    backend: Arc<dyn Backend>,
) {
    // The fault: every connection cut, every 300 ms.
    kill_writers(store, env, backend, move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        proxy.reset();
    })
    .await;
}

#[tokio::test]
async fn a_store_without_capture_has_no_feed() {
    let pool = dl_connections::sqlite::connect(
        ":memory:",
        &dl_connections::Settings::load(&dl_connections::Sources::isolated())
            .expect("defaults")
            .sqlite,
    )
    .await
    .expect("open sqlite");
    let plain: Arc<dyn Backend> = Arc::new(SqliteBackend::new(pool));
    match plain.change_feed().await {
        Err(Error::Unsupported {
            store: Store::Sqlite,
            operation: Operation::Feed,
            ..
        }) => {}
        other => panic!("expected Unsupported, got {other:?}"),
    }
    let memory: Arc<dyn Backend> =
        Arc::new(dl_repositories::backends::memory::MemoryBackend::new());
    assert!(matches!(
        memory.change_feed().await,
        Err(Error::Unsupported {
            store: Store::Memory,
            operation: Operation::Feed,
            ..
        })
    ));
}

#[cfg(feature = "integration")]
mod postgres {
    use super::*;
    use dl_repositories::backends::postgres::PostgresBackend;
    use dl_tests::live::{PgNamespaces, postgres_url, test_pool};

    async fn backend(ns: &PgNamespaces, tag: &str) -> Arc<dyn Backend> {
        let name = ns.name(tag);
        dl_tests::schema::postgres(&postgres_url(), &name)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let pool = dl_connections::postgres::connect_lazy(&postgres_url(), &test_pool(4))
            .expect("postgres options");
        Arc::new(
            PostgresBackend::new(pool, &name)
                .expect("namespace")
                .with_capture(capture()),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_every_write_is_one_event() {
        let ns = PgNamespaces::new("feed").await;
        every_write_is_one_event(backend(&ns, "writes").await).await;
        ns.drop_all().await;
    }

    /// Writers through a proxy that cuts every connection every 300 ms,
    /// killed with SIGKILL 20 times: exactly one event per acknowledged
    /// write, none per refused one, at most one per write whose answer
    /// was lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_writers_killed_through_resets_keep_one_event_per_write() {
        let ns = PgNamespaces::new("feedkill").await;
        let backend = backend(&ns, "kill").await;
        let (proxy, through) = dl_tests::proxy::through_proxy(postgres_url().expose(), 5432).await;
        let mut env = writer_env(through.as_str());
        env.push(("DL_POSTGRES__SCHEMA".into(), ns.name("kill")));
        env.push(("DL_POSTGRES__MAX_CONNECTIONS".into(), "4".into()));
        env.push(("DL_POSTGRES__REQUEST_TIMEOUT".into(), "5s".into()));
        kill_writers_through_resets("postgres", env, proxy, backend).await;
        ns.drop_all().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_feed_shows_no_phi() {
        let ns = PgNamespaces::new("feedphi").await;
        let canaries = dl_tests::feed::feed_shows_no_phi(backend(&ns, "phi").await).await;
        let pool = dl_connections::postgres::connect_lazy(&postgres_url(), &test_pool(1))
            .expect("postgres options");
        let name = ns.name("phi");
        let own: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT concat_ws(' ', entity, op, key_id, seq, schema_version, \"position\") FROM \"{name}\".dl_feed \
             UNION ALL SELECT concat_ws(' ', entity, key_id, seq) FROM \"{name}\".dl_feed_keys \
             UNION ALL SELECT concat_ws(' ', name, \"position\") FROM \"{name}\".dl_feed_consumers"
        )))
        .fetch_all(&pool)
        .await
        .expect("dump");
        let refs: Vec<&str> = canaries.iter().map(String::as_str).collect();
        dl_tests::canary::assert_no_canary(
            "the feed's own PostgreSQL columns",
            &own.join("\n"),
            &refs,
        );
        pool.close().await;
        ns.drop_all().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_consumers_read_from_checkpoints() {
        let ns = PgNamespaces::new("feedc").await;
        consumers_read_from_checkpoints(backend(&ns, "consumers").await).await;
        ns.drop_all().await;
    }
}

#[cfg(feature = "integration")]
mod redis_store {
    use super::*;
    use dl_repositories::backends::redis::RedisBackend;
    use dl_tests::live::{RedisNamespaces, redis_url, test_pool};

    fn backend(prefix: &str) -> Arc<dyn Backend> {
        let pool = test_pool(2);
        let conn = dl_connections::redis::connect_lazy(&redis_url(), &pool).expect("redis options");
        Arc::new(
            RedisBackend::new(conn, prefix, pool.request_timeout)
                .expect("prefix")
                .with_privacy(test_privacy())
                .with_capture(capture()),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_every_write_is_one_event() {
        let ns = RedisNamespaces::new("feed").await;
        every_write_is_one_event(backend(&ns.namespace())).await;
        ns.drop_all().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_consumers_read_from_checkpoints() {
        let ns = RedisNamespaces::new("feedc").await;
        consumers_read_from_checkpoints(backend(&ns.namespace())).await;
        ns.drop_all().await;
    }

    /// An entity not captured writes no feed key at all; capture on writes
    /// only the feed's keys beside the entity's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_uncaptured_writes_touch_no_feed_key() {
        use dl_repositories::{Repo, Repository as _};
        let ns = RedisNamespaces::new("feedkeys").await;
        let prefix = ns.namespace();
        let b = backend(&prefix);
        let notes = Repo::<dl_tests::entities::Note>::open(Arc::clone(&b))
            .await
            .expect("open notes");
        notes
            .insert(&dl_tests::entities::Note {
                id: 1,
                body: "plain".into(),
            })
            .await
            .expect("insert");
        let keys = redis_keys(&prefix).await;
        assert!(
            keys.iter().all(|k| !k.contains("~feed")),
            "an uncaptured write made feed keys: {keys:?}"
        );
        let specimens = Repo::<dl_tests::entities::Specimen>::open(Arc::clone(&b))
            .await
            .expect("open specimens");
        specimens
            .insert(&dl_tests::entities::Specimen::new("a", 1))
            .await
            .expect("insert");
        let mut feed_keys: Vec<String> = redis_keys(&prefix)
            .await
            .into_iter()
            .filter(|k| k.contains("~feed"))
            .collect();
        feed_keys.sort();
        assert_eq!(
            feed_keys,
            [
                format!("{prefix}:~feed"),
                format!("{prefix}:~feed:clock"),
                format!("{prefix}:~feed:seq:specimens"),
            ]
        );
        ns.drop_all().await;
    }

    async fn redis_keys(prefix: &str) -> Vec<String> {
        let mut conn = dl_connections::redis::connect_lazy(&redis_url(), &test_pool(1))
            .expect("redis options");
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        for _ in 0..10_000 {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}:*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .expect("scan");
            out.extend(keys);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        out
    }

    /// Writers through a proxy that cuts every connection every 300 ms,
    /// killed with SIGKILL 20 times: exactly one event per acknowledged
    /// write, none per refused one, at most one per write whose answer
    /// was lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_writers_killed_through_resets_keep_one_event_per_write() {
        let ns = RedisNamespaces::new("feedkill").await;
        let prefix = ns.namespace();
        let (proxy, through) = dl_tests::proxy::through_proxy(redis_url().expose(), 6379).await;
        let dir = tempfile::tempdir().expect("temp dir").keep();
        let mut env = writer_env(&format!("sqlite://{}", dir.join("rel.db").display()));
        env.push(("REDIS_URL".into(), through.to_string()));
        env.push(("DL_REDIS__KEY_PREFIX".into(), prefix.clone()));
        env.push(("DL_REDIS__REQUEST_TIMEOUT".into(), "5s".into()));
        env.push(("FEED_WRITER_STORE".into(), "redis".into()));
        kill_writers_through_resets("redis", env, proxy, backend(&prefix)).await;
        ns.drop_all().await;
    }

    /// The canary, and every feed key's content but the records after the
    /// writes (the stream's `a` fields): no PHI in readable form.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_feed_shows_no_phi() {
        let ns = RedisNamespaces::new("feedphi").await;
        let prefix = ns.namespace();
        let canaries = dl_tests::feed::feed_shows_no_phi(backend(&prefix)).await;
        let mut conn = dl_connections::redis::connect_lazy(&redis_url(), &test_pool(1))
            .expect("redis options");
        let mut own = String::new();
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(format!("{prefix}:~feed"))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .expect("xrange");
        assert!(!entries.is_empty());
        for (id, fields) in entries {
            own.push_str(&id);
            for pair in fields.chunks(2) {
                if pair[0] != "a" {
                    own.push_str(&format!(" {}={}", pair[0], pair[1]));
                }
            }
            own.push('\n');
        }
        for key in redis_keys(&prefix).await {
            own.push_str(&key);
            own.push('\n');
            if key.contains("~feed:") && !key.ends_with(":clock") {
                let all: Vec<String> = redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .expect("hgetall");
                own.push_str(&all.join(" "));
                own.push('\n');
            }
        }
        let refs: Vec<&str> = canaries.iter().map(String::as_str).collect();
        dl_tests::canary::assert_no_canary("the feed's own Redis keys", &own, &refs);
        ns.drop_all().await;
    }
}

#[cfg(feature = "integration")]
mod mongo_store {
    use super::*;
    use dl_repositories::backends::mongo::MongoBackend;
    use dl_tests::live::{MongoNamespaces, mongo_url, test_pool};

    async fn backend(database: &str) -> Arc<dyn Backend> {
        let pool = test_pool(4);
        let client = dl_connections::mongo::connect(&mongo_url(), &pool)
            .await
            .expect("mongo options");
        Arc::new(
            MongoBackend::new(&client, database, pool.request_timeout)
                .expect("database name")
                .with_capture(capture()),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mongo_every_write_is_one_event() {
        let ns = MongoNamespaces::new("feed").await;
        every_write_is_one_event(backend(&ns.migrated().await).await).await;
        ns.drop_all().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mongo_consumers_read_from_checkpoints() {
        let ns = MongoNamespaces::new("feedc").await;
        consumers_read_from_checkpoints(backend(&ns.migrated().await).await).await;
        ns.drop_all().await;
    }

    /// A captured entity without the feed's collections is refused at open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mongo_captured_entity_needs_the_feed_collections() {
        let ns = MongoNamespaces::new("feednr").await;
        let db = ns.migrated().await;
        let client = dl_connections::mongo::connect(&mongo_url(), &test_pool(1))
            .await
            .expect("mongo options");
        client
            .database(&db)
            .collection::<mongodb::bson::Document>("dl_feed_clock")
            .drop()
            .await
            .expect("drop");
        let e = dl_repositories::Repo::<dl_tests::entities::Specimen>::open(backend(&db).await)
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(e, Error::SchemaNotReady { .. }) && e.to_string().contains("dl_feed_clock"),
            "{e}"
        );
        ns.drop_all().await;
    }

    /// Writers through a proxy that cuts every connection every 300 ms,
    /// killed with SIGKILL 20 times: exactly one event per acknowledged
    /// write, none per refused one, at most one per write whose answer
    /// was lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mongo_writers_killed_through_resets_keep_one_event_per_write() {
        let ns = MongoNamespaces::new("feedkill").await;
        let db = ns.migrated().await;
        let (proxy, mut through) =
            dl_tests::proxy::through_proxy(mongo_url().expose(), 27017).await;
        through.set_path(&format!("/{db}"));
        let dir = tempfile::tempdir().expect("temp dir").keep();
        let mut env = writer_env(&format!("sqlite://{}", dir.join("rel.db").display()));
        env.push(("MONGODB_URI".into(), through.to_string()));
        env.push(("DL_MONGO__REQUEST_TIMEOUT".into(), "5s".into()));
        env.push(("FEED_WRITER_STORE".into(), "mongodb".into()));
        kill_writers_through_resets("mongodb", env, proxy, backend(&db).await).await;
        ns.drop_all().await;
    }

    /// The canary, and every outbox document but the records after the
    /// writes: no PHI in readable form.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mongo_feed_shows_no_phi() {
        use futures::TryStreamExt as _;
        let ns = MongoNamespaces::new("feedphi").await;
        let db = ns.migrated().await;
        let canaries = dl_tests::feed::feed_shows_no_phi(backend(&db).await).await;
        let client = dl_connections::mongo::connect(&mongo_url(), &test_pool(1))
            .await
            .expect("mongo options");
        let mut own = String::new();
        for c in [
            "dl_feed",
            "dl_feed_keys",
            "dl_feed_clock",
            "dl_feed_consumers",
        ] {
            let docs: Vec<mongodb::bson::Document> = client
                .database(&db)
                .collection::<mongodb::bson::Document>(c)
                .find(mongodb::bson::doc! {})
                .await
                .expect("find")
                .try_collect()
                .await
                .expect("collect");
            for mut d in docs {
                d.remove("after_image");
                own.push_str(&format!("{c}: {d}\n"));
            }
        }
        assert!(own.contains("dl_feed: "), "{own:.200}");
        let refs: Vec<&str> = canaries.iter().map(String::as_str).collect();
        dl_tests::canary::assert_no_canary("the feed's own MongoDB documents", &own, &refs);
        ns.drop_all().await;
    }
}
