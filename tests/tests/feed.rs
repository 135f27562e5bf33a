//! The change feed on every store that keeps one: SQLite (embedded, always)
//! and, with the `integration` feature, PostgreSQL of the test stack.

use std::sync::Arc;

use dl_repositories::backends::sqlite::SqliteBackend;
use dl_repositories::feed::Capture;
use dl_repositories::{Backend, Error, Operation, Store};
use dl_tests::feed::{consumers_read_from_checkpoints, every_write_is_one_event};
use dl_tests::live::test_privacy;

fn capture() -> Arc<Capture> {
    Arc::new(Capture::new(["specimens"], test_privacy()).expect("capture"))
}

async fn sqlite() -> Arc<dyn Backend> {
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
    Arc::new(SqliteBackend::new(pool).with_capture(capture()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_every_write_is_one_event() {
    every_write_is_one_event(sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_consumers_read_from_checkpoints() {
    consumers_read_from_checkpoints(sqlite().await).await;
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_consumers_read_from_checkpoints() {
        let ns = PgNamespaces::new("feedc").await;
        consumers_read_from_checkpoints(backend(&ns, "consumers").await).await;
        ns.drop_all().await;
    }
}
