//! The migration runner's behaviour suite on SQLite (always) and on the
//! live PostgreSQL (feature `integration`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dl_migrations::engine::{self, Options};
use dl_migrations::script::{self, StoreKind};
use dl_migrations::sql::SqliteTarget;
use dl_migrations::{MigrationError, Target};
use dl_tests::migrate::{Dialect, Gated, Make, Probe, Steal, run_suite};

const SQL: Dialect = Dialect {
    store: StoreKind::Sqlite,
    scripts: [
        (
            "-- the log the probe reads\nCREATE TABLE mig_log (v INTEGER NOT NULL);\nINSERT INTO mig_log VALUES (1);\n",
            "DROP TABLE mig_log;\n",
        ),
        (
            "CREATE TABLE mig_two (id INTEGER PRIMARY KEY);\nINSERT INTO mig_log VALUES (2);\n",
            "DROP TABLE mig_two;\nDELETE FROM mig_log WHERE v = 2;\n",
        ),
        (
            "INSERT INTO mig_log VALUES (3);\n",
            "DELETE FROM mig_log WHERE v = 3;\n",
        ),
    ],
    failing_v2: "CREATE TABLE mig_two (id INTEGER PRIMARY KEY);\n\nINSERT INTO no_such_table VALUES (2);\n",
    failing_statement: 2,
    failing_line: Some(3),
    transactional: true,
    concurrent_safe: true,
};

fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_runner() {
    let dir = Arc::new(tempfile::tempdir().expect("dir"));
    let path = |dir: &tempfile::TempDir, ns: &str| {
        format!("sqlite://{}/{ns}.db?mode=rwc", dir.path().display())
    };
    let d = Arc::clone(&dir);
    let make: Make = Arc::new(move |ns| {
        let url = path(&d, &ns);
        Box::pin(async move {
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(2)
                .connect(&url)
                .await
                .expect("sqlite");
            Arc::new(SqliteTarget::new(pool)) as Arc<dyn Target>
        })
    });
    let d = Arc::clone(&dir);
    let probe: Probe = Arc::new(move |ns, v| {
        let url = path(&d, &ns);
        Box::pin(async move {
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .expect("sqlite");
            let n: Result<(i64,), _> = sqlx::query_as("SELECT count(*) FROM mig_log WHERE v = ?")
                .bind(i64::try_from(v).expect("small"))
                .fetch_one(&pool)
                .await;
            n.map_or(0, |(n,)| u64::try_from(n).unwrap_or(0))
        })
    });
    let d = Arc::clone(&dir);
    let steal: Steal = Arc::new(move |ns| {
        let url = path(&d, &ns);
        Box::pin(async move {
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .expect("sqlite");
            let done =
                sqlx::query("UPDATE dl_migrations_lock SET owner = 'another-runner' WHERE id = 1")
                    .execute(&pool)
                    .await
                    .expect("take the lease over");
            assert_eq!(done.rows_affected(), 1, "a lease to take over");
        })
    });
    let summary = run_suite("sqlite", SQL, make, probe, steal, "s").await;
    say(&format!(
        "migrations[sqlite]: {} scenarios passed; {} runners at once applied {} scripts, each exactly once",
        summary.scenarios, summary.concurrent.0, summary.concurrent.1
    ));
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_runner() {
    use dl_migrations::sql::PostgresTarget;
    let url = dl_tests::live::postgres_url().expose().to_owned();
    let prefix = dl_tests::live::unique_prefix("mig");
    let u = url.clone();
    let make: Make = Arc::new(move |ns| {
        let url = u.clone();
        Box::pin(async move {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect_lazy(&url)
                .expect("pool");
            Arc::new(PostgresTarget::new(pool, &ns)) as Arc<dyn Target>
        })
    });
    let u = url.clone();
    let probe: Probe = Arc::new(move |ns, v| {
        let url = u.clone();
        Box::pin(async move {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .expect("pool");
            let n: Result<(i64,), _> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM \"{ns}\".mig_log WHERE v = $1"
            )))
            .bind(i64::try_from(v).expect("small"))
            .fetch_one(&pool)
            .await;
            n.map_or(0, |(n,)| u64::try_from(n).unwrap_or(0))
        })
    });
    let dialect = Dialect {
        store: StoreKind::Postgres,
        ..SQL
    };
    let u = url.clone();
    let steal: Steal = Arc::new(move |ns| {
        let url = u.clone();
        Box::pin(async move {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .expect("pool");
            // The lease is the advisory lock of a session: end the session.
            let ended: Vec<(bool,)> = sqlx::query_as(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' \
                 AND granted AND objid = (hashtext($1)::bigint & 4294967295)::oid",
            )
            .bind(format!("data-layer migrations {ns}"))
            .fetch_all(&pool)
            .await
            .expect("end the lock's session");
            assert_eq!(ended.len(), 1, "one session holds the lock");
        })
    });
    let summary = run_suite("postgres", dialect, make, probe, steal, &prefix).await;
    say(&format!(
        "migrations[postgres]: {} scenarios passed; {} runners at once applied {} scripts, each exactly once",
        summary.scenarios, summary.concurrent.0, summary.concurrent.1
    ));
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("pool");
    for s in ["empty", "failing", "order", "ten", "stale", "fenced"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{prefix}_{s}\" CASCADE"
        )))
        .execute(&pool)
        .await
        .expect("drop");
    }
}

#[cfg(feature = "integration")]
fn report(store: &str, summary: &dl_tests::migrate::Summary) {
    let concurrency = if summary.concurrent.0 == 0 {
        "ten runners at once: not claimed (no lightweight transactions on this server; the lease is not atomic)".to_owned()
    } else {
        format!(
            "{} runners at once applied {} scripts, each exactly once",
            summary.concurrent.0, summary.concurrent.1
        )
    };
    say(&format!(
        "migrations[{store}]: {} scenarios passed; {concurrency}",
        summary.scenarios
    ));
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_runner() {
    use dl_migrations::nosql::MongoTarget;
    use mongodb::bson::doc;
    let prefix = dl_tests::live::unique_prefix("mig");
    let client =
        dl_connections::mongo::connect(&dl_tests::live::mongo_url(), &dl_tests::live::test_pool(4))
            .await
            .expect("mongo");
    let c = client.clone();
    let make: Make = Arc::new(move |ns| {
        let client = c.clone();
        Box::pin(async move { Arc::new(MongoTarget::new(client.database(&ns))) as Arc<dyn Target> })
    });
    let c = client.clone();
    let probe: Probe = Arc::new(move |ns, v| {
        let client = c.clone();
        Box::pin(async move {
            client
                .database(&ns)
                .collection::<mongodb::bson::Document>("mig_log")
                .count_documents(doc! { "v": i64::try_from(v).expect("small") })
                .await
                .unwrap_or(0)
        })
    });
    let dialect = Dialect {
        store: StoreKind::Mongo,
        scripts: [
            (
                r#"[
  {"create": "mig_log", "validator": {"$jsonSchema": {"bsonType": "object", "required": ["v"]}}},
  {"createIndexes": "mig_log", "indexes": [
    {"key": {"v": 1}, "name": "v_idx"},
    {"key": {"at": 1}, "name": "at_ttl", "expireAfterSeconds": 86400}
  ]},
  {"insert": "mig_log", "documents": [{"v": 1}]}
]"#,
                r#"[{"drop": "mig_log"}]"#,
            ),
            (
                r#"[
  {"create": "mig_two"},
  {"createIndexes": "mig_two", "indexes": [{"key": {"code": 1}, "name": "code_unique", "unique": true}]},
  {"insert": "mig_log", "documents": [{"v": 2}]}
]"#,
                r#"[{"drop": "mig_two"}, {"delete": "mig_log", "deletes": [{"q": {"v": 2}, "limit": 0}]}]"#,
            ),
            (
                r#"[
  {"insert": "mig_log", "documents": [{"v": 3}]},
  {"update": "mig_log", "updates": [{"q": {"v": 3}, "u": {"$set": {"note": "fake"}}}]}
]"#,
                r#"[{"delete": "mig_log", "deletes": [{"q": {"v": 3}, "limit": 0}]}]"#,
            ),
        ],
        failing_v2: r#"[{"insert": "mig_log", "documents": [{"v": 20}]}, {"noSuchCommand": 1}]"#,
        failing_statement: 2,
        failing_line: None,
        transactional: false,
        concurrent_safe: true,
    };
    let c = client.clone();
    let steal: Steal = Arc::new(move |ns| {
        let client = c.clone();
        Box::pin(async move {
            let done = client
                .database(&ns)
                .collection::<mongodb::bson::Document>("dl_migrations_lock")
                .update_one(
                    doc! { "_id": "lock" },
                    doc! { "$set": { "owner": "another-runner" } },
                )
                .await
                .expect("take the lease over");
            assert_eq!(done.matched_count, 1, "a lease to take over");
        })
    });
    let summary = run_suite("mongo", dialect, make, probe, steal, &prefix).await;
    report("mongo", &summary);
    for s in ["empty", "failing", "order", "ten", "stale", "fenced"] {
        let _ = client.database(&format!("{prefix}_{s}")).drop().await;
    }
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_runner() {
    use dl_migrations::nosql::RedisTarget;
    let prefix = dl_tests::live::unique_prefix("mig");
    let conn = dl_connections::redis::connect_lazy(
        &dl_tests::live::redis_url(),
        &dl_tests::live::test_pool(1),
    )
    .expect("redis");
    let make: Make = Arc::new(move |ns| {
        // Each runner its own connection, as separate processes would.
        Box::pin(async move {
            let conn = dl_connections::redis::connect_lazy(
                &dl_tests::live::redis_url(),
                &dl_tests::live::test_pool(1),
            )
            .expect("redis");
            Arc::new(RedisTarget::new(conn, &ns)) as Arc<dyn Target>
        })
    });
    let c = conn.clone();
    let probe: Probe = Arc::new(move |ns, v| {
        let mut conn = c.clone();
        Box::pin(async move {
            let items: Vec<String> = redis::cmd("LRANGE")
                .arg(format!("{ns}:mig_log"))
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            u64::try_from(items.iter().filter(|i| **i == v.to_string()).count()).unwrap_or(0)
        })
    });
    let dialect = Dialect {
        store: StoreKind::Redis,
        scripts: [
            (
                "redis.call('RPUSH', ARGV[1] .. ':mig_log', '1')\nreturn 1\n",
                "redis.call('LREM', ARGV[1] .. ':mig_log', 0, '1')\n",
            ),
            (
                "redis.call('SET', ARGV[1] .. ':mig_two', 'fake')\nredis.call('RPUSH', ARGV[1] .. ':mig_log', '2')\n",
                "redis.call('DEL', ARGV[1] .. ':mig_two')\nredis.call('LREM', ARGV[1] .. ':mig_log', 0, '2')\n",
            ),
            (
                "redis.call('RPUSH', ARGV[1] .. ':mig_log', '3')\n",
                "redis.call('LREM', ARGV[1] .. ':mig_log', 0, '3')\n",
            ),
        ],
        failing_v2: "redis.call('RPUSH', ARGV[1] .. ':mig_log', '20')\nredis.call('NOSUCHCOMMAND')\n",
        failing_statement: 1,
        failing_line: Some(2),
        transactional: false,
        concurrent_safe: true,
    };
    let c = conn.clone();
    let steal: Steal = Arc::new(move |ns| {
        let mut conn = c.clone();
        Box::pin(async move {
            let held: Option<String> = redis::cmd("GET")
                .arg(format!("{ns}:dl_migrations_lock"))
                .query_async(&mut conn)
                .await
                .expect("get");
            assert!(held.is_some(), "a lease to take over");
            let () = redis::cmd("SET")
                .arg(format!("{ns}:dl_migrations_lock"))
                .arg("another-runner")
                .arg("PX")
                .arg(60_000)
                .query_async(&mut conn)
                .await
                .expect("take the lease over");
        })
    });
    let summary = run_suite("redis", dialect, make, probe, steal, &prefix).await;
    report("redis", &summary);
    let mut conn = conn;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}_*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    for k in keys {
        let _: Result<i64, _> = redis::cmd("DEL").arg(k).query_async(&mut conn).await;
    }
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_runner() {
    use dl_migrations::nosql::ScyllaTarget;
    let prefix = dl_tests::live::unique_prefix("mig");
    let settings = dl_tests::live::scylla_settings();
    let lwt = settings.lightweight_transactions;
    let s = settings.clone();
    let make: Make = Arc::new(move |ns| {
        let settings = s.clone();
        Box::pin(async move {
            let session = dl_connections::scylla::connect(&settings, &dl_tests::live::test_pool(1))
                .await
                .expect("scylla");
            Arc::new(
                ScyllaTarget::new(session, &ns, lwt)
                    .expect("keyspace")
                    .create_keyspace_for_development(true),
            ) as Arc<dyn Target>
        })
    });
    let session = dl_connections::scylla::connect(&settings, &dl_tests::live::test_pool(1))
        .await
        .expect("scylla");
    let probe: Probe = Arc::new(move |ns, v| {
        let session = Arc::clone(&session);
        Box::pin(async move {
            let Ok(r) = session
                .query_unpaged(
                    format!("SELECT n FROM {ns}.mig_log WHERE v = ?"),
                    (i32::try_from(v).expect("small"),),
                )
                .await
            else {
                return 0;
            };
            r.into_rows_result()
                .ok()
                .and_then(|rows| u64::try_from(rows.rows_num()).ok())
                .unwrap_or(0)
        })
    });
    let dialect = Dialect {
        store: StoreKind::Scylla,
        scripts: [
            (
                "CREATE TABLE IF NOT EXISTS mig_log (v int PRIMARY KEY, n int);\nINSERT INTO mig_log (v, n) VALUES (1, 1);\n",
                // (The CQL test server cannot parse DROP TABLE; these down
                // scripts delete rows instead.)
                "DELETE FROM mig_log WHERE v = 1;\n",
            ),
            (
                "CREATE TABLE IF NOT EXISTS mig_two (id int PRIMARY KEY);\nINSERT INTO mig_log (v, n) VALUES (2, 1);\n",
                "DELETE FROM mig_log WHERE v = 2;\n",
            ),
            (
                "INSERT INTO mig_log (v, n) VALUES (3, 1);\n",
                "DELETE FROM mig_log WHERE v = 3;\n",
            ),
        ],
        failing_v2: "CREATE TABLE IF NOT EXISTS mig_two (id int PRIMARY KEY);\n\nINSERT INTO no_such_table (id) VALUES (2);\n",
        failing_statement: 2,
        failing_line: Some(3),
        transactional: false,
        concurrent_safe: lwt,
    };
    let session = dl_connections::scylla::connect(&settings, &dl_tests::live::test_pool(1))
        .await
        .expect("scylla");
    let steal: Steal = Arc::new(move |ns| {
        let session = Arc::clone(&session);
        Box::pin(async move {
            session
                .query_unpaged(
                    format!("UPDATE {ns}.dl_migrations_lock SET owner = 'another-runner' WHERE id = 'lock'"),
                    (),
                )
                .await
                .expect("take the lease over");
        })
    });
    let summary = run_suite("scylla", dialect, make, probe, steal, &prefix).await;
    report("scylla", &summary);
}

/// `migrate up --store all` with the project's own scripts brings every
/// configured store of the test stack to the latest version; a second run
/// has nothing to do; the repositories then work on the migrated schema.
#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projects_scripts_on_every_live_store() {
    use data_layer::migrate::{self, Action};
    use data_layer::models::domain::Appointment;
    use data_layer::{DataLayer, Store};
    let ns = dl_tests::live::unique_prefix("migall");
    let settings = dl_tests::live::all_stores_settings(&ns);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let dir = migrate::load(&dir).expect("the project's scripts load");
    let stores = migrate::stores("all").expect("all");
    let o = dl_migrations::Options::default();
    let mut lines = Vec::new();
    let runs = migrate::run(&settings, &dir, &stores, Action::Up, &o, &mut |s| {
        lines.push(format!("{} {} {}", s.store, s.version, s.outcome));
    })
    .await;
    for r in &runs {
        assert!(r.error.is_none(), "{}: {:?}", r.store, r.error);
        assert!(
            r.status.iter().all(|l| l.state == "applied"),
            "{}: {:?}",
            r.store,
            r.status
        );
    }
    let names: Vec<&str> = runs.iter().map(|r| r.store.name()).collect();
    assert_eq!(names, vec!["postgres", "mongo", "scylla", "redis"]);
    for store in ["postgres", "mongo", "scylla", "redis"] {
        assert!(lines.contains(&format!("{store} 1 ok")), "{lines:?}");
    }
    assert!(lines.contains(&"redis 2 ok".to_owned()), "{lines:?}");
    let again = migrate::run(&settings, &dir, &stores, Action::Up, &o, &mut |_| {}).await;
    assert!(
        again
            .iter()
            .all(|r| r.steps.is_empty() && r.error.is_none())
    );
    let verified = migrate::run(&settings, &dir, &stores, Action::Verify, &o, &mut |_| {}).await;
    assert!(verified.iter().all(|r| r.error.is_none()), "{verified:?}");

    let dl = DataLayer::from_settings(settings)
        .await
        .expect("data layer");
    for store in [Store::Postgres, Store::Mongo, Store::Scylla, Store::Redis] {
        let repo = dl
            .repository_in::<Appointment>(store)
            .await
            .unwrap_or_else(|e| panic!("{store}: {e}"));
        assert_eq!(
            repo.count(&data_layer::Filter::all()).await.expect("count"),
            0
        );
    }
    say(&format!(
        "migrations[all]: migrate up --store all applied {} scripts ({}) and then had nothing to do",
        lines.len(),
        lines.join(", ")
    ));
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(dl_tests::live::postgres_url().expose())
        .await
        .expect("pool");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{ns}\" CASCADE"
    )))
    .execute(&pool)
    .await
    .expect("drop");
}

/// Repositories never create schema on the live stores either: before the
/// migrations, opening one is `SchemaNotReady` naming what is missing, and
/// the namespace stays empty; a unique field without its unique index is
/// refused (PostgreSQL, MongoDB); after the migrations, they open.
#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_repositories_need_their_migrations() {
    use dl_repositories::backends::mongo::MongoBackend;
    use dl_repositories::backends::postgres::PostgresBackend;
    use dl_repositories::backends::scylla::ScyllaBackend;
    use dl_repositories::{Backend, Error, Repo, Store};
    use dl_tests::entities::{Note, Specimen, UniqueSpecimen};
    use dl_tests::live::{mongo_url, postgres_url, scylla_settings, test_pool, unique_prefix};

    fn not_ready<T>(store: Store, r: Result<T, Error>) -> String {
        match r {
            Err(Error::SchemaNotReady {
                store: s, reason, ..
            }) if s == store => reason,
            Err(e) => panic!("{store}: expected SchemaNotReady, got {e}"),
            Ok(_) => panic!("{store}: expected SchemaNotReady, it opened"),
        }
    }

    // PostgreSQL.
    let ns = unique_prefix("mignr");
    let pool =
        dl_connections::postgres::connect_lazy(&postgres_url(), &test_pool(2)).expect("pool");
    let pg: Arc<dyn Backend> = Arc::new(PostgresBackend::new(pool.clone(), &ns).expect("backend"));
    let reason = not_ready(
        Store::Postgres,
        Repo::<Specimen>::open(Arc::clone(&pg)).await,
    );
    assert_eq!(
        reason,
        format!("table \"{ns}\".\"specimens\" does not exist")
    );
    let (schemas,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_namespace WHERE nspname = $1")
        .bind(&ns)
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(schemas, 0, "opening created the schema");
    let ddl = dl_repositories::backends::postgres::create_table_sql(
        <UniqueSpecimen as dl_models::Entity>::schema(),
    );
    let mut tx = pool.begin().await.expect("tx");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{ns}\"")))
        .execute(&mut *tx)
        .await
        .expect("schema");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL search_path TO \"{ns}\""
    )))
    .execute(&mut *tx)
    .await
    .expect("search_path");
    for stmt in ddl.iter().filter(|s| !s.contains("UNIQUE INDEX")) {
        sqlx::query(sqlx::AssertSqlSafe(stmt.clone()))
            .execute(&mut *tx)
            .await
            .expect("ddl");
    }
    sqlx::query("ALTER TABLE unique_specimens DROP COLUMN owner")
        .execute(&mut *tx)
        .await
        .expect("drop column");
    tx.commit().await.expect("commit");
    let reason = not_ready(
        Store::Postgres,
        Repo::<UniqueSpecimen>::open(Arc::clone(&pg)).await,
    );
    assert!(reason.ends_with("lacks the column(s) `owner`"), "{reason}");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE \"{ns}\".unique_specimens ADD COLUMN owner text"
    )))
    .execute(&pool)
    .await
    .expect("add column");
    let reason = not_ready(
        Store::Postgres,
        Repo::<UniqueSpecimen>::open(Arc::clone(&pg)).await,
    );
    assert_eq!(
        reason,
        "no unique index on `code` (declared #[indexed(unique)])"
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP TABLE \"{ns}\".unique_specimens"
    )))
    .execute(&pool)
    .await
    .expect("drop");
    dl_tests::schema::postgres(&postgres_url(), &ns)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Repo::<Specimen>::open(Arc::clone(&pg))
        .await
        .expect("specimens");
    Repo::<UniqueSpecimen>::open(Arc::clone(&pg))
        .await
        .expect("unique_specimens");
    Repo::<Note>::open(pg).await.expect("notes");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA \"{ns}\" CASCADE")))
        .execute(&pool)
        .await
        .expect("drop schema");

    // MongoDB.
    let client = dl_connections::mongo::connect(&mongo_url(), &test_pool(2))
        .await
        .expect("client");
    let mongo: Arc<dyn Backend> = Arc::new(
        MongoBackend::new(&client, &ns, std::time::Duration::from_secs(10)).expect("backend"),
    );
    let reason = not_ready(Store::Mongo, Repo::<Note>::open(Arc::clone(&mongo)).await);
    assert_eq!(
        reason,
        format!("collection `notes` does not exist in database `{ns}`")
    );
    let db = client.database(&ns);
    assert!(
        db.list_collection_names().await.expect("list").is_empty(),
        "opening created a collection"
    );
    db.create_collection("unique_specimens")
        .await
        .expect("create");
    let reason = not_ready(
        Store::Mongo,
        Repo::<UniqueSpecimen>::open(Arc::clone(&mongo)).await,
    );
    assert_eq!(
        reason,
        "no unique index on `code` (declared #[indexed(unique)])"
    );
    db.drop().await.expect("drop");
    dl_tests::schema::mongo(&mongo_url(), &ns)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Repo::<Specimen>::open(Arc::clone(&mongo))
        .await
        .expect("specimens");
    Repo::<UniqueSpecimen>::open(Arc::clone(&mongo))
        .await
        .expect("unique_specimens");
    Repo::<Note>::open(mongo).await.expect("notes");
    db.drop().await.expect("drop");

    // ScyllaDB (the CQL test server): the keyspace does not exist yet.
    let settings = scylla_settings();
    let session = dl_connections::scylla::connect(&settings, &test_pool(1))
        .await
        .expect("session");
    let scylla: Arc<dyn Backend> = Arc::new(
        ScyllaBackend::new(
            session,
            &ns,
            settings.lightweight_transactions,
            std::time::Duration::from_secs(10),
        )
        .expect("backend"),
    );
    let reason = not_ready(Store::Scylla, Repo::<Note>::open(Arc::clone(&scylla)).await);
    assert!(
        reason.starts_with(&format!("table {ns}.notes cannot be used: ")),
        "{reason}"
    );
    dl_tests::schema::scylla(&settings, &ns)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Repo::<Specimen>::open(Arc::clone(&scylla))
        .await
        .expect("specimens");
    Repo::<Note>::open(scylla).await.expect("notes");
    say(
        "migrations[schema]: before their migrations, repositories on postgres, mongo and scylla refuse to open with SchemaNotReady and create nothing; a missing column or unique index is named; after them, they open",
    );
}

// ---------------------------------------------------------------- leases
// Migration leases under load, made deterministic: a script that waits on
// a signal (not on the clock) stands for a slow script, and the lease is
// taken over by hand where a test needs a runner that lost it. SQLite.
//
// - A runner whose lease was taken over while its script ran commits
//   nothing: neither the script's transaction nor its history row
//   (`LeaseLost`), whatever the clock says.
// - Two runners, one slow script: the script is applied exactly once; the
//   other runner finds it applied, or (if the machine was so slow that its
//   lease lapsed) lost its lease and committed nothing. Never a second run
//   ("table applied already exists").

struct LeaseFixture {
    _dir: tempfile::TempDir,
    url: String,
    migrations: Vec<dl_migrations::Migration>,
}

async fn lease_fixture() -> LeaseFixture {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir(dir.path().join("sqlite")).expect("folder");
    std::fs::write(
        dir.path().join("sqlite/1_slow.sql"),
        "CREATE TABLE applied (n INTEGER NOT NULL);\nINSERT INTO applied VALUES (1);\n",
    )
    .expect("script");
    let migrations = script::load(dir.path()).expect("load")[&StoreKind::Sqlite].clone();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("lease.db").display()
    );
    LeaseFixture {
        _dir: dir,
        url,
        migrations,
    }
}

async fn wal_pool(url: &str) -> sqlx::SqlitePool {
    let options: sqlx::sqlite::SqliteConnectOptions = url.parse().expect("url");
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(
            options
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(30)),
        )
        .await
        .expect("sqlite")
}

async fn applied_rows(pool: &sqlx::SqlitePool) -> Option<i64> {
    sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM applied")
        .fetch_one(pool)
        .await
        .ok()
        .map(|(n,)| n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_lost_its_lease_commits_nothing() {
    let f = lease_fixture().await;
    let db = wal_pool(&f.url).await;
    let (gated, open, mut running) =
        Gated::new(Arc::new(SqliteTarget::new(db.clone())) as Arc<dyn Target>);
    let o = Options {
        lease: Duration::from_secs(60),
        lock_wait: Duration::from_secs(60),
        ..Options::default()
    };
    let runner = {
        let (gated, migrations, o) = (Arc::clone(&gated), f.migrations.clone(), o.clone());
        tokio::spawn(async move { engine::up(&*gated, &migrations, &o, &mut |_| {}).await })
    };
    running.wait_for(|r| *r).await.expect("the script started");
    // Another runner takes the lease over (as after an expiry).
    let stolen = sqlx::query("UPDATE dl_migrations_lock SET owner = 'another-runner' WHERE id = 1")
        .execute(&db)
        .await
        .expect("take the lease over");
    assert_eq!(stolen.rows_affected(), 1, "the first runner held the lease");
    open.send(true).expect("open the gate");
    let result = runner.await.expect("runner task");
    assert!(
        matches!(result, Err(MigrationError::LeaseLost { .. })),
        "{result:?}"
    );
    assert_eq!(
        applied_rows(&db).await,
        None,
        "the script's transaction was rolled back"
    );
    let history = SqliteTarget::new(db.clone())
        .history()
        .await
        .expect("history");
    assert!(history.is_empty(), "no history row: {history:?}");
    // Once the lease is free, a runner applies it.
    sqlx::query("DELETE FROM dl_migrations_lock")
        .execute(&db)
        .await
        .expect("the other runner is done");
    let steps = engine::up(
        &SqliteTarget::new(db.clone()),
        &f.migrations,
        &o,
        &mut |_| {},
    )
    .await
    .expect("applied");
    assert_eq!(steps.len(), 1);
    assert_eq!(applied_rows(&db).await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_script_is_applied_once_however_slow_the_machine() {
    let f = lease_fixture().await;
    let (a_pool, b_pool) = (wal_pool(&f.url).await, wal_pool(&f.url).await);
    let (a, open, mut running) =
        Gated::new(Arc::new(SqliteTarget::new(a_pool.clone())) as Arc<dyn Target>);
    let b = SqliteTarget::new(b_pool.clone());
    // A lease of 300 ms, renewed every 100 ms while the script runs.
    let o = Options {
        lease: Duration::from_millis(300),
        lock_wait: Duration::from_secs(60),
        ..Options::default()
    };
    let first = {
        let (a, migrations, o) = (Arc::clone(&a), f.migrations.clone(), o.clone());
        tokio::spawn(async move { engine::up(&*a, &migrations, &o, &mut |_| {}).await })
    };
    running.wait_for(|r| *r).await.expect("the script started");
    // The script runs until its lease has been renewed twice (several
    // lease lengths on a calm machine; bounded at 60 s on any).
    let read_expiry = || async {
        sqlx::query_as::<_, (i64,)>("SELECT expires_at FROM dl_migrations_lock WHERE id = 1")
            .fetch_optional(&b_pool)
            .await
            .ok()
            .flatten()
            .map(|(t,)| t)
    };
    let waited = Instant::now();
    let mut renewals = 0;
    let mut last = read_expiry().await;
    while renewals < 2 && waited.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = read_expiry().await;
        if now.is_some() && now != last {
            renewals += 1;
            last = now;
        }
    }
    assert_eq!(renewals, 2, "the running script's lease was renewed");
    // A second runner meanwhile.
    let second = {
        let (migrations, o) = (f.migrations.clone(), o.clone());
        tokio::spawn(async move { engine::up(&b, &migrations, &o, &mut |_| {}).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    open.send(true).expect("open the gate");
    let (first, second) = (
        first.await.expect("first task"),
        second.await.expect("second task"),
    );
    let applied = |r: &Result<Vec<engine::Step>, MigrationError>| match r {
        Ok(steps) => steps.len(),
        Err(MigrationError::LeaseLost { .. }) => 0,
        Err(e) => panic!("a runner failed otherwise than by losing its lease: {e}"),
    };
    assert_eq!(
        applied(&first) + applied(&second),
        1,
        "applied once in all: {first:?} {second:?}"
    );
    assert_eq!(applied_rows(&a_pool).await, Some(1), "the script ran once");
}
