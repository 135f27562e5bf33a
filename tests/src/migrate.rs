//! The migration runner's behaviour suite, run against each store's
//! runner over a real connection: apply from empty, re-run, drift, a failing
//! script in the middle, down and up again, out-of-order scripts, dry runs,
//! ten runners at once, and a stale lease.
//!
//! A store supplies a [`Dialect`] (its scripts), a [`Make`] (a fresh runner
//! on namespace `ns`, with its own connection pool, as a separate process
//! would have) and a [`Probe`] (how many times version `v`'s side effect is
//! present in `ns`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dl_migrations::engine::{self, Options};
use dl_migrations::script::{self, StoreKind};
use dl_migrations::{MigrationError, Target};
use futures::future::BoxFuture;

/// A store's scripts for the suite. Each up script of version `v` leaves
/// one trace of `v` (a row, a document, a key) that the probe counts; its
/// down script removes it.
#[derive(Debug, Clone)]
pub struct Dialect {
    /// The store.
    pub store: StoreKind,
    /// Up and down scripts of versions 1, 2 and 3.
    pub scripts: [(&'static str, &'static str); 3],
    /// A version-2 script whose second statement (command) fails.
    pub failing_v2: &'static str,
    /// Which statement the store reports as failing (1-based: a Redis
    /// script is one statement).
    pub failing_statement: usize,
    /// The line of that statement, where the store reports lines.
    pub failing_line: Option<u32>,
    /// Whether the lock is safe for concurrent runners (ScyllaDB without
    /// lightweight transactions is not, and says so).
    pub concurrent_safe: bool,
    /// Whether a failed script's earlier statements are rolled back.
    pub transactional: bool,
}

/// Makes a runner on a namespace.
pub type Make = Arc<dyn Fn(String) -> BoxFuture<'static, Arc<dyn Target>> + Send + Sync>;
/// Counts version `v`'s traces in a namespace.
pub type Probe = Arc<dyn Fn(String, u64) -> BoxFuture<'static, u64> + Send + Sync>;
/// Takes the migration lease of a namespace over by hand, as another
/// runner would after this one's lease expired (or, on PostgreSQL, ends
/// the session that holds the lock).
pub type Steal = Arc<dyn Fn(String) -> BoxFuture<'static, ()> + Send + Sync>;

/// A runner whose `run` waits for a signal before running the script: a
/// slow script without a clock, so the test decides when the lease is
/// lost.
pub struct Gated {
    inner: Arc<dyn Target>,
    gate: tokio::sync::watch::Receiver<bool>,
    started: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Gated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gated")
            .field("store", &self.inner.store())
            .field("open", &*self.gate.borrow())
            .finish_non_exhaustive()
    }
}

/// Opens a [`Gated`] runner's gate (its scripts run).
pub type Gate = tokio::sync::watch::Sender<bool>;
/// Says when a [`Gated`] runner has reached a script.
pub type Started = tokio::sync::watch::Receiver<bool>;

impl Gated {
    /// `inner`, its scripts held until the gate opens.
    #[must_use]
    pub fn new(inner: Arc<dyn Target>) -> (Arc<Self>, Gate, Started) {
        let (open, gate) = tokio::sync::watch::channel(false);
        let (started, running) = tokio::sync::watch::channel(false);
        (
            Arc::new(Gated {
                inner,
                gate,
                started,
            }),
            open,
            running,
        )
    }
}

#[async_trait::async_trait]
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
    async fn history(&self) -> Result<Vec<dl_migrations::Applied>, MigrationError> {
        self.inner.history().await
    }
    async fn run(
        &self,
        script: &dl_migrations::script::ScriptFile,
        transactional: bool,
        after: &dl_migrations::engine::AfterRun,
        owner: &str,
    ) -> Result<(), MigrationError> {
        let _ = self.started.send(true);
        let mut gate = self.gate.clone();
        let _ = gate.wait_for(|open| *open).await;
        self.inner.run(script, transactional, after, owner).await
    }
    async fn record(&self, row: &dl_migrations::Applied) -> Result<(), MigrationError> {
        self.inner.record(row).await
    }
    async fn forget(&self, version: u64) -> Result<(), MigrationError> {
        self.inner.forget(version).await
    }
}

fn write(dir: &Path, dialect: &Dialect, versions: &[u64]) {
    let folder = dir.join(dialect.store.name());
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::create_dir_all(&folder).expect("folder");
    let ext = dialect.store.extension();
    for &v in versions {
        let (up, down) = dialect.scripts[usize::try_from(v - 1).expect("1..=3")];
        std::fs::write(folder.join(format!("{v}_step_{v}.{ext}")), up).expect("write");
        std::fs::write(folder.join(format!("{v}_step_{v}.down.{ext}")), down).expect("write");
    }
}

fn load(dir: &Path, store: StoreKind) -> Vec<dl_migrations::Migration> {
    script::load(dir)
        .expect("load")
        .remove(&store)
        .unwrap_or_default()
}

async fn up(
    target: &dyn Target,
    dir: &Path,
    store: StoreKind,
    o: &Options,
) -> Result<usize, MigrationError> {
    engine::up(target, &load(dir, store), o, &mut |_| {})
        .await
        .map(|s| s.len())
}

/// What the suite measured.
#[derive(Debug, Default)]
pub struct Summary {
    /// Scenarios passed.
    pub scenarios: usize,
    /// In the concurrency scenario: runners, and scripts applied in all
    /// (`(0, 0)`: not run, the store's lock is not safe for it).
    pub concurrent: (usize, usize),
}

/// Runs every scenario; panics on the first wrong behaviour.
///
/// # Panics
/// When the runner misbehaves.
pub async fn run_suite(
    name: &str,
    dialect: Dialect,
    make: Make,
    probe: Probe,
    steal: Steal,
    prefix: &str,
) -> Summary {
    let store = dialect.store;
    let mut summary = Summary::default();
    let ns = |s: &str| format!("{prefix}_{s}");
    let dir = tempfile::tempdir().expect("dir");
    let o = Options::default();

    // 1. From empty, then nothing to do.
    {
        let ns = ns("empty");
        let t = make(ns.clone()).await;
        write(dir.path(), &dialect, &[1, 2, 3]);
        let dry = Options {
            dry_run: true,
            ..o.clone()
        };
        assert_eq!(
            up(&*t, dir.path(), store, &dry).await.expect("dry run"),
            3,
            "{name}"
        );
        assert_eq!(
            probe(ns.clone(), 1).await,
            0,
            "{name}: a dry run changed nothing"
        );
        assert!(
            t.history().await.expect("history").is_empty(),
            "{name}: dry run wrote history"
        );
        assert_eq!(
            up(&*t, dir.path(), store, &o).await.expect("up"),
            3,
            "{name}"
        );
        for v in 1..=3 {
            assert_eq!(
                probe(ns.clone(), v).await,
                1,
                "{name}: version {v} applied once"
            );
        }
        let status = engine::status(&*t, &load(dir.path(), store))
            .await
            .expect("status");
        assert!(
            status.iter().all(|l| l.state == "applied"),
            "{name}: {status:?}"
        );
        let history = t.history().await.expect("history");
        assert_eq!(history.len(), 3);
        assert!(
            history
                .iter()
                .all(|a| a.outcome == "applied" && a.checksum.len() == 64)
        );
        assert_eq!(
            up(&*t, dir.path(), store, &o).await.expect("re-run"),
            0,
            "{name}: re-run"
        );
        engine::verify(&*t, &load(dir.path(), store), &o)
            .await
            .expect("verify");
        summary.scenarios += 2;

        // 2. Drift: refused with the file and both checksums; accepted by flag.
        let folder = dir.path().join(store.name());
        let file = folder.join(format!("2_step_2.{}", store.extension()));
        let original = std::fs::read_to_string(&file).expect("read");
        let changed = if store == StoreKind::Mongo {
            format!("{original}\n")
        } else {
            format!("{original}\n-- edited\n")
        };
        std::fs::write(&file, &changed).expect("edit");
        let e = up(&*t, dir.path(), store, &o).await.expect_err("drift");
        match &e {
            MigrationError::Drift {
                path,
                recorded,
                actual,
                ..
            } => {
                assert!(path.ends_with(file.file_name().expect("name")), "{e}");
                assert_eq!(recorded, &script::checksum(&original));
                assert_eq!(actual, &script::checksum(&changed));
                let text = e.to_string();
                assert!(
                    text.contains(recorded.as_str()) && text.contains(actual.as_str()),
                    "{text}"
                );
            }
            other => panic!("{name}: expected Drift, got {other}"),
        }
        assert!(matches!(
            engine::verify(&*t, &load(dir.path(), store), &o).await,
            Err(MigrationError::Drift { .. })
        ));
        let accept = Options {
            allow_drift: true,
            ..o.clone()
        };
        assert_eq!(
            up(&*t, dir.path(), store, &accept).await.expect("accepted"),
            0
        );
        engine::verify(&*t, &load(dir.path(), store), &o)
            .await
            .expect("drift accepted");
        assert_eq!(
            probe(ns.clone(), 2).await,
            1,
            "{name}: an accepted drift does not re-run"
        );
        summary.scenarios += 1;

        // 3. Down to 1, then up again.
        let down = Options {
            to: Some(1),
            ..o.clone()
        };
        let steps = engine::down(&*t, &load(dir.path(), store), &down, &mut |_| {})
            .await
            .expect("down");
        assert_eq!(
            steps.iter().map(|s| s.version).collect::<Vec<_>>(),
            vec![3, 2]
        );
        assert_eq!(probe(ns.clone(), 3).await, 0);
        assert_eq!(probe(ns.clone(), 2).await, 0);
        assert_eq!(probe(ns.clone(), 1).await, 1);
        let status = engine::status(&*t, &load(dir.path(), store))
            .await
            .expect("status");
        assert_eq!(
            status.iter().map(|l| l.state).collect::<Vec<_>>(),
            vec!["applied", "pending", "pending"]
        );
        assert_eq!(up(&*t, dir.path(), store, &o).await.expect("up again"), 2);
        assert_eq!(probe(ns.clone(), 3).await, 1);
        let no_to = engine::down(&*t, &load(dir.path(), store), &o, &mut |_| {}).await;
        assert!(
            matches!(no_to, Err(MigrationError::Unsupported { .. })),
            "down needs --to"
        );
        summary.scenarios += 1;
    }

    // 4. A failing script in the middle.
    {
        let ns = ns("failing");
        let t = make(ns.clone()).await;
        write(dir.path(), &dialect, &[1, 2, 3]);
        let file = dir
            .path()
            .join(store.name())
            .join(format!("2_step_2.{}", store.extension()));
        std::fs::write(&file, dialect.failing_v2).expect("write");
        let e = up(&*t, dir.path(), store, &o).await.expect_err("fails");
        match &e {
            MigrationError::ScriptFailed {
                path,
                statement,
                line,
                ..
            } => {
                assert_eq!(path, &file, "{e}");
                assert_eq!(*statement, dialect.failing_statement, "{e}");
                if let Some(want) = dialect.failing_line {
                    assert_eq!(*line, Some(want), "{e}");
                }
            }
            other => panic!("{name}: expected ScriptFailed, got {other}"),
        }
        assert_eq!(
            probe(ns.clone(), 1).await,
            1,
            "{name}: the earlier script stays"
        );
        assert_eq!(
            probe(ns.clone(), 3).await,
            0,
            "{name}: the later script did not run"
        );
        let history = t.history().await.expect("history");
        let failed = history.iter().find(|a| a.version == 2).expect("recorded");
        assert_eq!(failed.outcome, "failed");
        let at = format!("statement {}", dialect.failing_statement);
        assert!(failed.error.as_deref().is_some_and(|m| m.contains(&at)));
        // Refused until fixed or resolved.
        let again = up(&*t, dir.path(), store, &o).await;
        assert!(
            matches!(again, Err(MigrationError::PreviouslyFailed { .. })),
            "{again:?}"
        );
        engine::resolve(&*t, 2).await.expect("resolve");
        assert!(
            engine::resolve(&*t, 2).await.is_err(),
            "nothing left to resolve"
        );
        // Fixed: runs 2 and 3 (a transactional store rolled 2 back, so it
        // runs cleanly; the others need a script that tolerates a rerun,
        // which the dialect's failing script is).
        write(dir.path(), &dialect, &[1, 2, 3]);
        assert_eq!(up(&*t, dir.path(), store, &o).await.expect("fixed"), 2);
        assert_eq!(probe(ns.clone(), 2).await, 1);
        assert_eq!(probe(ns.clone(), 3).await, 1);
        summary.scenarios += 1;
    }

    // 5. Out of order: refused unless allowed.
    {
        let ns = ns("order");
        let t = make(ns.clone()).await;
        write(dir.path(), &dialect, &[1, 3]);
        assert_eq!(up(&*t, dir.path(), store, &o).await.expect("up"), 2);
        write(dir.path(), &dialect, &[1, 2, 3]);
        let e = up(&*t, dir.path(), store, &o)
            .await
            .expect_err("out of order");
        assert!(
            matches!(
                e,
                MigrationError::OutOfOrder {
                    version: 2,
                    latest: 3,
                    ..
                }
            ),
            "{e}"
        );
        let allow = Options {
            allow_out_of_order: true,
            ..o.clone()
        };
        assert_eq!(
            up(&*t, dir.path(), store, &allow).await.expect("allowed"),
            1
        );
        assert_eq!(probe(ns.clone(), 2).await, 1);
        summary.scenarios += 1;
    }

    // 6. Ten runners at once: each script applied exactly once; all finish.
    if dialect.concurrent_safe {
        let ns = ns("ten");
        write(dir.path(), &dialect, &[1, 2, 3]);
        let migrations = Arc::new(load(dir.path(), store));
        let mut runners = Vec::new();
        for _ in 0..10 {
            let t = make(ns.clone()).await;
            let migrations = Arc::clone(&migrations);
            runners.push(tokio::spawn(async move {
                let o = Options {
                    lock_wait: Duration::from_secs(60),
                    ..Options::default()
                };
                engine::up(&*t, &migrations, &o, &mut |_| {})
                    .await
                    .map(|s| s.len())
            }));
        }
        let mut applied = 0;
        for r in runners {
            applied += r
                .await
                .expect("runner")
                .unwrap_or_else(|e| panic!("{name}: a runner failed: {e}"));
        }
        assert_eq!(applied, 3, "{name}: scripts applied across ten runners");
        for v in 1..=3 {
            assert_eq!(
                probe(ns.clone(), v).await,
                1,
                "{name}: version {v} exactly once"
            );
        }
        summary.concurrent = (10, applied);
        summary.scenarios += 1;
    }

    // 7. A runner that dies holding the lock does not block forever.
    {
        let ns = ns("stale");
        let dead = make(ns.clone()).await;
        dead.ensure_history().await.expect("history");
        assert!(
            dead.try_lock("dead-runner", Duration::from_millis(300))
                .await
                .expect("lock")
        );
        let t = make(ns.clone()).await;
        write(dir.path(), &dialect, &[1]);
        let short = Options {
            lock_wait: Duration::from_millis(100),
            ..o.clone()
        };
        let e = up(&*t, dir.path(), store, &short).await.expect_err("held");
        assert!(matches!(e, MigrationError::Locked { .. }), "{e}");
        drop(dead); // the process is gone (a session lock dies with it)
        let patient = Options {
            lock_wait: Duration::from_secs(10),
            ..o.clone()
        };
        assert_eq!(
            up(&*t, dir.path(), store, &patient)
                .await
                .expect("taken over"),
            1
        );
        summary.scenarios += 1;
    }

    // 8. A runner whose lease is taken over while its script is slow
    //    commits nothing: no history row, and (the script waits before its
    //    first statement, by a signal, not a clock) none of its effects.
    {
        let ns = ns("fenced");
        write(dir.path(), &dialect, &[1]);
        let (gated, open, mut running) = Gated::new(make(ns.clone()).await);
        let migrations = load(dir.path(), store);
        let task = {
            let (gated, migrations, o) = (Arc::clone(&gated), migrations.clone(), o.clone());
            tokio::spawn(async move { engine::up(&*gated, &migrations, &o, &mut |_| {}).await })
        };
        tokio::time::timeout(Duration::from_secs(60), running.wait_for(|r| *r))
            .await
            .expect("the script started within 60 s")
            .expect("started");
        steal(ns.clone()).await;
        open.send(true).expect("open the gate");
        let r = task.await.expect("runner task");
        let e = r.expect_err("a runner that lost its lease must not succeed");
        assert!(
            matches!(e, MigrationError::LeaseLost { .. })
                || (store == StoreKind::Postgres && matches!(e, MigrationError::Store { .. })),
            "{name}: {e}"
        );
        assert_eq!(
            probe(ns.clone(), 1).await,
            0,
            "{name}: nothing of the script was committed"
        );
        let history = make(ns.clone()).await.history().await.expect("history");
        assert!(
            history.iter().all(|a| a.outcome != "applied"),
            "{name}: no history row: {history:?}"
        );
        summary.scenarios += 1;
    }
    summary
}
