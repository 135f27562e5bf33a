//! Migration leases under load, made deterministic: a script that waits on
//! a signal (not on the clock) stands for a slow script, and the lease is
//! taken over by hand where a test needs a runner that lost it. SQLite, no
//! services.
//!
//! - A runner whose lease was taken over while its script ran commits
//!   nothing: neither the script's transaction nor its history row
//!   (`LeaseLost`), whatever the clock says.
//! - Two runners, one slow script: the script is applied exactly once;
//!   the other runner finds it applied, or (if the machine was so slow that
//!   its lease lapsed) lost its lease and committed nothing. Never a
//!   second run ("table applied already exists").

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dl_migrations::engine::{self, AfterRun, Applied, Options, Target};
use dl_migrations::error::MigrationError;
use dl_migrations::script::{self, ScriptFile, StoreKind};
use dl_migrations::sql::SqliteTarget;
use tokio::sync::watch;

/// A target whose `run` waits until the gate opens, then runs the script.
struct Gated {
    inner: SqliteTarget,
    gate: watch::Receiver<bool>,
    started: watch::Sender<bool>,
}

#[async_trait]
impl Target for Gated {
    fn store(&self) -> StoreKind {
        self.inner.store()
    }
    async fn ensure_history(&self) -> Result<(), MigrationError> {
        self.inner.ensure_history().await
    }
    async fn try_lock(&self, owner: &str, ttl: Duration) -> Result<bool, MigrationError> {
        self.inner.try_lock(owner, ttl).await
    }
    async fn unlock(&self, owner: &str) -> Result<(), MigrationError> {
        self.inner.unlock(owner).await
    }
    async fn history(&self) -> Result<Vec<Applied>, MigrationError> {
        self.inner.history().await
    }
    async fn run(
        &self,
        script: &ScriptFile,
        transactional: bool,
        after: &AfterRun,
        owner: &str,
    ) -> Result<(), MigrationError> {
        let _ = self.started.send(true);
        let mut gate = self.gate.clone();
        let _ = gate.wait_for(|open| *open).await;
        self.inner.run(script, transactional, after, owner).await
    }
    async fn record(&self, row: &Applied) -> Result<(), MigrationError> {
        self.inner.record(row).await
    }
    async fn forget(&self, version: u64) -> Result<(), MigrationError> {
        self.inner.forget(version).await
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    url: String,
    migrations: Vec<dl_migrations::Migration>,
}

async fn fixture() -> Fixture {
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
    Fixture {
        _dir: dir,
        url,
        migrations,
    }
}

async fn pool(url: &str) -> sqlx::SqlitePool {
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
    let f = fixture().await;
    let db = pool(&f.url).await;
    let (open, gate) = watch::channel(false);
    let (started, mut running) = watch::channel(false);
    let gated = Arc::new(Gated {
        inner: SqliteTarget::new(db.clone()),
        gate,
        started,
    });
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
    let f = fixture().await;
    let (a_pool, b_pool) = (pool(&f.url).await, pool(&f.url).await);
    let (open, gate) = watch::channel(false);
    let (started, mut running) = watch::channel(false);
    let a = Arc::new(Gated {
        inner: SqliteTarget::new(a_pool.clone()),
        gate,
        started,
    });
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
