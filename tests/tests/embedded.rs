//! The conformance suite and the model-based property test on the backends
//! that need no server: memory and SQLite.

use std::io::Write as _;
use std::sync::Arc;

use dl_connections::PoolSettings;
use dl_repositories::Backend;
use dl_repositories::backends::memory::MemoryBackend;
use dl_repositories::backends::sqlite::SqliteBackend;
use dl_tests::harness::{Factory, Restricted, run_conformance};
use dl_tests::model::run_model_test;

/// Prints a line past libtest's capture (which only takes `print!` macros),
/// so the per-backend counts show in every `cargo test` run.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn memory() -> Factory {
    Arc::new(|| Box::pin(async { Arc::new(MemoryBackend::new()) as Arc<dyn Backend> }))
}

fn pool_settings() -> PoolSettings {
    dl_connections::Settings::load(&dl_connections::Sources::isolated())
        .expect("default settings")
        .sqlite
}

/// Each case gets its own database file in a fresh temporary folder (the
/// folder lives as long as the process; the OS cleans /tmp).
fn sqlite_file() -> Factory {
    Arc::new(|| {
        Box::pin(async {
            let dir = tempfile::tempdir().expect("temp dir").keep();
            let path = dir.join("conformance.db");
            let pool = dl_connections::sqlite::connect(
                path.to_str().expect("utf-8 path"),
                &pool_settings(),
            )
            .await
            .expect("open sqlite");
            dl_tests::schema::sqlite(&pool)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            Arc::new(SqliteBackend::new(pool)) as Arc<dyn Backend>
        })
    })
}

fn sqlite_memory() -> Factory {
    Arc::new(|| {
        Box::pin(async {
            let pool = dl_connections::sqlite::connect(":memory:", &pool_settings())
                .await
                .expect("open sqlite");
            dl_tests::schema::sqlite(&pool)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            Arc::new(SqliteBackend::new(pool)) as Arc<dyn Backend>
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_memory() {
    let report = run_conformance("memory", memory(), 16).await;
    report.assert_exactly(&[]);
    say(&report.summary());
    assert!(report.failed.is_empty(), "{}", report.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_sqlite() {
    let report = run_conformance("sqlite", sqlite_file(), 8).await;
    report.assert_exactly(&[]);
    say(&report.summary());
    assert!(report.failed.is_empty(), "{}", report.summary());
}

#[test]
fn model_sqlite_matches_memory() {
    let report = run_model_test(sqlite_memory(), 64).expect("sqlite diverged from the model");
    say(&format!(
        "model[sqlite]: {} sequences, {} steps compared with the memory model, {} unsupported steps",
        report.sequences, report.steps, report.unsupported_steps
    ));
}

#[test]
fn model_memory_matches_itself() {
    let report = run_model_test(memory(), 32).expect("memory diverged from itself");
    say(&format!(
        "model[memory]: {} sequences, {} steps compared",
        report.sequences, report.steps
    ));
}

fn restricted() -> Factory {
    Arc::new(|| {
        Box::pin(async {
            Arc::new(Restricted::indexed_equality_only(Arc::new(
                MemoryBackend::new(),
            ))) as Arc<dyn Backend>
        })
    })
}

/// The suite on a backend that declares indexed-equality filters only and no
/// sorting: every case that needs more must get the precise Unsupported
/// error (asserted and counted), and the rest must pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_restricted_capabilities() {
    let report = run_conformance("memory, indexed-equality only", restricted(), 16).await;
    say(&report.summary());
    assert!(report.failed.is_empty(), "{}", report.summary());
    report.assert_exactly(dl_tests::harness::INDEXED_EQUALITY_UNSUPPORTED);
}

#[test]
fn model_restricted_capabilities() {
    let report = run_model_test(restricted(), 32).expect("restricted backend diverged");
    assert!(
        report.unsupported_steps > 0,
        "the generator must reach unsupported filters"
    );
    say(&format!(
        "model[memory, indexed-equality only]: {} sequences, {} steps compared, {} answered Unsupported",
        report.sequences, report.steps, report.unsupported_steps
    ));
}

/// An entity with a unique field cannot be opened on a store that cannot
/// enforce it: a precise Unsupported error, before anything is created.
#[tokio::test]
async fn unique_fields_need_a_store_that_enforces_them() {
    use dl_repositories::{Error, Operation, Repo, Store};
    use dl_tests::entities::{Note, UniqueSpecimen};
    let backend: Arc<dyn Backend> =
        Arc::new(Restricted::without_unique(Arc::new(MemoryBackend::new())));
    match Repo::<UniqueSpecimen>::open(Arc::clone(&backend)).await {
        Err(Error::Unsupported {
            store: Store::Memory,
            operation: Operation::Prepare,
            reason,
        }) => {
            assert!(reason.contains("`code`"), "{reason}");
        }
        other => panic!("expected Unsupported, got {:?}", other.map(|_| ())),
    }
    // An entity without unique fields opens fine.
    Repo::<Note>::open(backend).await.expect("no unique fields");
}

/// The guard changes no semantics: the suite passes on SQLite behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_sqlite_behind_the_guard() {
    use dl_repositories::guard::{BreakerSettings, Guarded, RetrySettings};
    let inner = sqlite_file();
    let factory: Factory = Arc::new(move || {
        let inner = Arc::clone(&inner);
        Box::pin(async move {
            let backend = inner().await;
            Arc::new(Guarded::new(
                backend,
                std::time::Duration::from_secs(10),
                BreakerSettings::default(),
                RetrySettings::default(),
            )) as Arc<dyn Backend>
        })
    });
    let report = run_conformance("sqlite behind the guard", factory, 8).await;
    report.assert_exactly(&[]);
    say(&report.summary());
    assert!(report.failed.is_empty(), "{}", report.summary());
}

/// Repositories never create schema (the migrations do): on an empty
/// database, opening one is `SchemaNotReady` naming the table, and nothing
/// is created; a table that lacks a column, or the unique index of a
/// `#[indexed(unique)]` field, is refused the same way; after the test
/// entities' migrations, all three open.
#[tokio::test]
async fn sqlite_repositories_need_their_migrations() {
    use dl_repositories::{Error, Repo, Store};
    use dl_tests::entities::{Note, Specimen, UniqueSpecimen};
    let pool = dl_connections::sqlite::connect(":memory:", &pool_settings())
        .await
        .expect("open sqlite");
    let backend: Arc<dyn Backend> = Arc::new(SqliteBackend::new(pool.clone()));
    let tables = async || -> Vec<String> {
        sqlx::query_scalar("SELECT name FROM sqlite_master ORDER BY name")
            .fetch_all(&pool)
            .await
            .expect("sqlite_master")
    };

    match Repo::<Specimen>::open(Arc::clone(&backend)).await {
        Err(Error::SchemaNotReady {
            store: Store::Sqlite,
            entity: "specimens",
            reason,
        }) => assert_eq!(reason, "table \"specimens\" does not exist"),
        other => panic!("expected SchemaNotReady, got {:?}", other.map(|_| ())),
    }
    let shown = Repo::<Note>::open(Arc::clone(&backend))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        shown.contains("notes") && shown.contains("data-layer migrate up --store sqlite"),
        "{shown}"
    );
    assert!(
        tables().await.is_empty(),
        "opening created {:?}",
        tables().await
    );

    // A table of the right name, with two of its columns.
    sqlx::query("CREATE TABLE specimens (id TEXT PRIMARY KEY, label TEXT NOT NULL)")
        .execute(&pool)
        .await
        .expect("create");
    match Repo::<Specimen>::open(Arc::clone(&backend)).await {
        Err(Error::SchemaNotReady { reason, .. }) => {
            assert!(
                reason.ends_with("lacks the column(s) `code`, `rank`, `score`, `active`, `born`, `seen_at`, `ref_id`, `tags`, `body`, `owner`, `version`"),
                "{reason}"
            );
        }
        other => panic!("expected SchemaNotReady, got {:?}", other.map(|_| ())),
    }
    sqlx::query("DROP TABLE specimens")
        .execute(&pool)
        .await
        .expect("drop");

    // Every column, but `code` without its unique index: duplicates would
    // be accepted silently, so the repository refuses to open.
    let ddl = dl_repositories::backends::sqlite::create_table_sql(
        <UniqueSpecimen as dl_models::Entity>::schema(),
    );
    for stmt in ddl.iter().filter(|s| !s.contains("UNIQUE INDEX")) {
        sqlx::query(sqlx::AssertSqlSafe(stmt.clone()))
            .execute(&pool)
            .await
            .expect("ddl");
    }
    match Repo::<UniqueSpecimen>::open(Arc::clone(&backend)).await {
        Err(Error::SchemaNotReady { reason, .. }) => {
            assert!(reason.contains("no unique index on `code`"), "{reason}");
        }
        other => panic!("expected SchemaNotReady, got {:?}", other.map(|_| ())),
    }
    sqlx::query("DROP TABLE unique_specimens")
        .execute(&pool)
        .await
        .expect("drop");

    dl_tests::schema::sqlite(&pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Repo::<Specimen>::open(Arc::clone(&backend))
        .await
        .expect("specimens");
    Repo::<UniqueSpecimen>::open(Arc::clone(&backend))
        .await
        .expect("unique_specimens");
    Repo::<Note>::open(backend).await.expect("notes");
}

/// Statements are cached per entity type, not per table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_entity_types_share_a_table() {
    let backend = sqlite_file()().await;
    dl_tests::entities::two_entity_types_share_a_table(backend)
        .await
        .unwrap_or_else(|e| panic!("sqlite: {e}"));
}
