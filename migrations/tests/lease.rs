//! A script that outlasts the lease is not taken over by a second runner:
//! the first renews its lease while the script runs (SQLite, no services).

use std::time::Duration;

use dl_migrations::engine::{self, Options};
use dl_migrations::script::{self, StoreKind};
use dl_migrations::sql::SqliteTarget;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_script_keeps_its_lease() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir(dir.path().join("sqlite")).expect("folder");
    // About 2 s of reading before the writes (WAL: the lease row stays
    // writable meanwhile), several times the 300 ms lease.
    std::fs::write(
        dir.path().join("sqlite/1_slow.sql"),
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 8000000) SELECT count(*) FROM c;\n\
         CREATE TABLE applied (n INTEGER NOT NULL);\n\
         INSERT INTO applied VALUES (1);\n",
    )
    .expect("script");
    let migrations = script::load(dir.path()).expect("load")[&StoreKind::Sqlite].clone();
    let db = dir.path().join("lease.db");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let connect = || async {
        let options: sqlx::sqlite::SqliteConnectOptions = url.parse().expect("url");
        SqliteTarget::new(
            sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(2)
                .connect_with(
                    options
                        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                        .busy_timeout(Duration::from_secs(10)),
                )
                .await
                .expect("sqlite"),
        )
    };
    let (a, b) = (connect().await, connect().await);
    let o = Options {
        lease: Duration::from_millis(300),
        lock_wait: Duration::from_secs(30),
        ..Options::default()
    };
    let first = async { engine::up(&a, &migrations, &o, &mut |_| {}).await };
    let second = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        engine::up(&b, &migrations, &o, &mut |_| {}).await
    };
    let (first, second) = tokio::join!(first, second);
    let (first, second) = (first.expect("first runner"), second.expect("second runner"));
    assert_eq!(first.len() + second.len(), 1, "applied once in all");
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("sqlite");
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM applied")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(n, 1, "the script ran once");
}
