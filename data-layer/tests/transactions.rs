//! `DataLayer::transaction` on the embedded default (SQLite, no services):
//! commit on `Ok`; rollback on `Err`, on a panic inside the closure and on
//! a cancelled call; a store that is not configured, or has no
//! transactions, answers the precise `Unsupported` and writes nothing.

use std::time::Duration;

use data_layer::models::domain::{Patient, PatientStatus};
use data_layer::repositories::Operation;
use data_layer::{DataLayer, Error, Settings, Sources, Store};

async fn layer() -> (DataLayer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}/tx.db", dir.path().display());
    let settings =
        Settings::load(&Sources::isolated().var("DATABASE_URL", &url)).expect("settings");
    data_layer::migrate::apply(&settings, &data_layer::migrate::domain_scripts())
        .await
        .expect("migrations");
    (
        DataLayer::from_settings(settings)
            .await
            .expect("data layer"),
        dir,
    )
}

fn patient(mrn: &str) -> Patient {
    Patient {
        id: uuid::Uuid::new_v4(),
        mrn: mrn.into(),
        given_name: "Test".into(),
        family_name: "Testperson".into(),
        date_of_birth: chrono::NaiveDate::from_ymd_opt(1980, 5, 17).expect("date"),
        phone: None,
        email: None,
        status: PatientStatus::Active,
        created_at: chrono::Utc::now(),
        version: 1,
    }
}

async fn held(dl: &DataLayer, p: &Patient) -> bool {
    dl.repository::<Patient>()
        .await
        .expect("repository")
        .exists(&p.id)
        .await
        .expect("exists")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_on_ok_and_rolls_back_on_err() {
    let (dl, _dir) = layer().await;
    let (a, b) = (patient("TX-A"), patient("TX-B"));
    let (a2, b2) = (a.clone(), b.clone());
    let n = dl
        .transaction(Store::Sqlite, |tx| async move {
            let patients = tx.repository::<Patient>().await?;
            patients.insert(&a2).await?;
            patients.insert(&b2).await?;
            patients.count(&data_layer::Filter::all()).await
        })
        .await
        .expect("committed");
    assert_eq!(n, 2, "the transaction reads its own writes");
    assert!(held(&dl, &a).await && held(&dl, &b).await);

    // An error after a write: the write is rolled back, the error returned.
    let c = patient("TX-C");
    let c2 = c.clone();
    let taken = a.mrn.clone();
    let e = dl
        .transaction(Store::Sqlite, |tx| async move {
            let patients = tx.repository::<Patient>().await?;
            patients.insert(&c2).await?;
            let mut dup = patient(&taken);
            dup.id = uuid::Uuid::new_v4();
            patients.insert(&dup).await // mrn is unique: a conflict
        })
        .await
        .expect_err("the unique conflict");
    assert!(matches!(e, Error::Conflict { .. }), "{e}");
    assert!(!held(&dl, &c).await, "rolled back with the conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_or_a_cancelled_call_rolls_back() {
    let (dl, _dir) = layer().await;
    let p = patient("TX-P");
    let (dl2, p2) = (dl.clone(), p.clone());
    let task = tokio::spawn(async move {
        let _: Result<(), Error> = dl2
            .transaction(Store::Sqlite, |tx| async move {
                tx.repository::<Patient>().await?.insert(&p2).await?;
                panic!("a handler fails halfway (expected by the test)");
            })
            .await;
    });
    assert!(task.await.is_err_and(|e| e.is_panic()));
    assert!(!held(&dl, &p).await, "rolled back by the panic");

    // Cancelled while the closure waits: the transaction is dropped.
    let q = patient("TX-Q");
    let q2 = q.clone();
    let (inserted_tx, inserted) = tokio::sync::oneshot::channel();
    let call = dl.transaction(Store::Sqlite, |tx| async move {
        tx.repository::<Patient>().await?.insert(&q2).await?;
        let _ = inserted_tx.send(());
        std::future::pending::<Result<(), Error>>().await
    });
    tokio::select! {
        _ = call => panic!("the closure never finishes"),
        _ = async {
            inserted.await.expect("inserted");
        } => {}
    }
    assert!(
        !held(&dl, &q).await,
        "rolled back when the call was dropped"
    );
    // And the store takes writes again (the write lock was let go).
    let r = patient("TX-R");
    let r2 = r.clone();
    tokio::time::timeout(
        Duration::from_secs(60),
        dl.transaction(Store::Sqlite, |tx| async move {
            tx.repository::<Patient>().await?.insert(&r2).await
        }),
    )
    .await
    .expect("not blocked by the dropped transaction")
    .expect("committed");
    assert!(held(&dl, &r).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_transactions_is_refused_precisely() {
    let (dl, _dir) = layer().await;
    let mut ran = false;
    let e = dl
        .transaction(Store::Redis, |_tx| {
            ran = true;
            async { Ok::<(), Error>(()) }
        })
        .await
        .expect_err("redis is not configured");
    assert!(
        matches!(
            &e,
            Error::Unsupported {
                store: Store::Redis,
                ..
            }
        ),
        "{e}"
    );
    assert!(!ran, "the closure is not run");
    // Nested: the transaction's backend refuses to begin again.
    let e = dl
        .transaction(Store::Sqlite, |tx| async move {
            tx.backend().begin().await.map(|_| ())
        })
        .await
        .expect_err("nested");
    assert!(
        matches!(&e, Error::Unsupported { operation: Operation::Transaction, reason, .. } if reason.contains("nested")),
        "{e}"
    );
}
