//! The migration runner's behaviour suite on SQLite (always) and on the
//! live PostgreSQL (feature `integration`).

use std::sync::Arc;

use dl_migrations::Target;
use dl_migrations::script::StoreKind;
use dl_migrations::sql::SqliteTarget;
use dl_tests::migrate::{Dialect, Make, Probe, run_suite};

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
    failing_line: Some(3),
    transactional: true,
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
    let summary = run_suite("sqlite", SQL, make, probe, "s").await;
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
    let summary = run_suite("postgres", dialect, make, probe, &prefix).await;
    say(&format!(
        "migrations[postgres]: {} scenarios passed; {} runners at once applied {} scripts, each exactly once",
        summary.scenarios, summary.concurrent.0, summary.concurrent.1
    ));
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("pool");
    for s in ["empty", "failing", "order", "ten", "stale"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{prefix}_{s}\" CASCADE"
        )))
        .execute(&pool)
        .await
        .expect("drop");
    }
}
