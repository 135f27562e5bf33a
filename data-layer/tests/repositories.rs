//! Repositories are opened once: the schema checks run on the first call,
//! and later calls hand out the same repository. A failed open is not kept
//! (the repository opens once its migrations have run). SQLite, no services.

use std::sync::Arc;

use data_layer::models::domain::Patient;
use data_layer::{DataLayer, Error, Settings, Sources};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repositories_are_opened_once() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}/once.db", dir.path().display());
    let settings =
        Settings::load(&Sources::isolated().var("DATABASE_URL", &url)).expect("settings");
    let dl = DataLayer::from_settings(settings.clone())
        .await
        .expect("data layer");
    let e = dl
        .repository::<Patient>()
        .await
        .err()
        .expect("no table before the migrations");
    assert!(matches!(e, Error::SchemaNotReady { .. }), "{e}");
    data_layer::migrate::apply(&settings, &data_layer::migrate::domain_scripts())
        .await
        .expect("migrations");
    let first = dl.repository::<Patient>().await.expect("opens after them");
    let again = dl.repository::<Patient>().await.expect("again");
    assert!(Arc::ptr_eq(&first, &again), "the same repository");
    let via_store = dl
        .repository_in::<Patient>(data_layer::Store::Sqlite)
        .await
        .expect("by store");
    assert!(Arc::ptr_eq(&first, &via_store), "the same repository");
}
