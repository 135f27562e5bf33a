//! Transactions on one store: [`DataLayer::transaction`] and [`Tx`].

use std::future::Future;
use std::sync::Arc;

use dl_models::Entity;
use dl_repositories::{Backend, Error, Repo, Repository, Store};

use crate::DataLayer;

/// An open transaction, handed to the closure of
/// [`DataLayer::transaction`]. Repositories from
/// [`Tx::repository`] read and write inside it: what they write is seen by
/// no one else until the closure returns `Ok` and the transaction commits.
/// Cheap to clone; it cannot outlive the transaction usefully (a call
/// after the end fails with `Invalid`).
#[derive(Clone)]
pub struct Tx {
    backend: Arc<dyn Backend>,
    layer: DataLayer,
    store: Store,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").field("store", &self.store).finish()
    }
}

impl Tx {
    /// The store the transaction runs on.
    #[must_use]
    pub fn store(&self) -> Store {
        self.store
    }

    /// The repository of `T` inside this transaction. Its schema is checked
    /// once per data layer (as by [`DataLayer::repository_in`]), not again
    /// inside the transaction.
    ///
    /// # Errors
    /// As [`DataLayer::repository_in`]; `Invalid` after the transaction
    /// ended.
    pub async fn repository<T: Entity>(&self) -> Result<Arc<dyn Repository<T>>, Error> {
        // Checked (and its statements made) on the store first, once.
        self.layer.repository_in::<T>(self.store).await?;
        let repo =
            Repo::<T>::open_with(Arc::clone(&self.backend), Arc::clone(self.layer.privacy()))
                .await?;
        Ok(Arc::new(repo))
    }

    /// The backend bound to the transaction (the seam), for layers that
    /// work below repositories.
    #[must_use]
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }
}

impl DataLayer {
    /// Runs `f` in a transaction on `store`: it commits when `f` returns
    /// `Ok`, and rolls back when `f` returns `Err`, panics, or is dropped
    /// before it finishes (a cancelled request): never a partial commit.
    ///
    /// SQLite (`BEGIN IMMEDIATE`: the write lock is taken at begin) and
    /// PostgreSQL (read committed) run a database transaction on one pooled
    /// connection. Other stores answer the precise `Unsupported` (see the
    /// README). Nested transactions are refused: [`Tx::backend`] answers
    /// `Unsupported` to `begin`. Statements inside are not retried by the
    /// guard (a failed one is yours to handle), and a commit whose answer
    /// was lost is an error that says the outcome is unknown.
    ///
    /// ```
    /// use data_layer::{DataLayer, Error, Repository, Settings, Sources, Store};
    /// use data_layer::models::domain::{Patient, PatientStatus};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let url = format!("sqlite://{}/app.db", dir.path().display());
    /// # let settings = Settings::load(&Sources::isolated().var("DATABASE_URL", &url))?;
    /// # data_layer::migrate::apply(&settings, &data_layer::migrate::domain_scripts()).await?;
    /// let dl = DataLayer::from_settings(settings).await?;
    /// # let patient = Patient {
    /// #     id: uuid::Uuid::new_v4(), mrn: "TEST-0043".into(), given_name: "Test".into(),
    /// #     family_name: "Testperson".into(),
    /// #     date_of_birth: chrono::NaiveDate::from_ymd_opt(1980, 5, 17).unwrap(),
    /// #     phone: None, email: None, status: PatientStatus::Active,
    /// #     created_at: chrono::Utc::now(), version: 1,
    /// # };
    /// // The closure fails after its insert: the insert is rolled back.
    /// let failed: Result<(), Error> = dl
    ///     .transaction(Store::Sqlite, |tx| {
    ///         let patient = patient.clone();
    ///         async move {
    ///             tx.repository::<Patient>().await?.insert(&patient).await?;
    ///             Err(Error::invalid("patients", None, "changed my mind"))
    ///         }
    ///     })
    ///     .await;
    /// assert!(failed.is_err());
    /// let patients = dl.repository::<Patient>().await?;
    /// assert!(patients.get(&patient.id).await?.is_none());
    ///
    /// // Returning Ok commits.
    /// dl.transaction(Store::Sqlite, |tx| {
    ///     let patient = patient.clone();
    ///     async move { tx.repository::<Patient>().await?.insert(&patient).await }
    /// })
    /// .await?;
    /// assert!(patients.get(&patient.id).await?.is_some());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// `f`'s error (after the rollback); the store's refusal to begin or
    /// commit; `Unsupported` for a store without transactions.
    pub async fn transaction<R, E, F, Fut>(&self, store: Store, f: F) -> Result<R, E>
    where
        F: FnOnce(Tx) -> Fut,
        Fut: Future<Output = Result<R, E>>,
        E: From<Error>,
    {
        let backend = self
            .backend_of(store)
            .ok_or_else(|| crate::not_configured(store))?;
        let tx = backend.begin().await?;
        let handle = Tx {
            backend: tx.backend(),
            layer: self.clone(),
            store,
        };
        // A panic in `f` unwinds past here and drops `tx`: it rolls back.
        match f(handle).await {
            Ok(v) => {
                tx.commit().await?;
                Ok(v)
            }
            Err(e) => {
                if let Err(why) = tx.rollback().await {
                    // The store ends it with the connection anyway.
                    tracing::warn!(store = %store, error = %why, "rollback failed");
                }
                Err(e)
            }
        }
    }
}
