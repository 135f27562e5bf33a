//! Sagas on the data layer: [`DataLayer::sagas`] and
//! [`DataLayer::start_saga_recovery`].

// The layer answers with the repositories' `Error`, as every other call.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use dl_repositories::{Error, Operation};
use dl_saga::{SagaLog, SagaOptions, Sagas};

use crate::DataLayer;

/// The background task that resumes the sagas of runners that died:
/// stopped when dropped.
#[derive(Debug)]
pub struct SagaRecovery {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SagaRecovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DataLayer {
    /// The saga runner's options from settings (`saga.*`).
    #[must_use]
    pub fn saga_options(&self) -> SagaOptions {
        let s = &self.settings.saga;
        SagaOptions {
            lease: s.lease,
            step_timeout: s.step_timeout,
            attempts: s.attempts,
            stuck_after: s.stuck_after,
            ..SagaOptions::default()
        }
    }

    /// The sagas of this data layer: one runner per data layer (the same
    /// one on every call, so definitions registered once are seen by all
    /// clones), its log in the relational store (migration `4_sagas`),
    /// inputs, outputs and reasons sealed under `privacy.key`.
    ///
    /// ```
    /// use data_layer::{DataLayer, Settings, Sources};
    /// use data_layer::saga::{Outcome, SagaDefinition, Step};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let url = format!("sqlite://{}/app.db", dir.path().display());
    /// let settings = Settings::load(&Sources::isolated()
    ///     .var("DATABASE_URL", &url)
    ///     .var("DL_PRIVACY__KEY", "WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlo="))?;
    /// data_layer::migrate::apply(&settings, &data_layer::migrate::domain_scripts()).await?;
    /// let dl = DataLayer::from_settings(settings).await?;
    /// let sagas = dl.sagas()?;
    /// sagas.register(SagaDefinition::new("greet", 1, vec![
    ///     Step::pivot("hello", |_| async { Ok(serde_json::json!("hi")) }),
    /// ])?)?;
    /// let (_id, outcome) = sagas.run("greet", &serde_json::json!({})).await?;
    /// assert_eq!(outcome, Outcome::Completed);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// `Invalid` naming `privacy.key` when no key is configured (a random
    /// key would leave every saga unreadable to the process that resumes
    /// it); `Unsupported` without a relational store; `Invalid` for bad
    /// `saga.*` settings.
    pub fn sagas(&self) -> Result<Sagas, Error> {
        let mut slot = self
            .sagas
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = &*slot {
            return Ok(s.clone());
        }
        let privacy = self.configured_privacy.clone().ok_or_else(|| {
            Error::invalid(
                "saga",
                Some("privacy.key"),
                "the saga log seals every saga's input and outputs: set privacy.key (DL_PRIVACY__KEY)",
            )
        })?;
        let target = self.sql_target.clone().ok_or_else(|| {
            Error::unsupported(
                self.relational.store(),
                Operation::Saga,
                "the saga log needs the relational store (SQLite or PostgreSQL)",
            )
        })?;
        let sagas = Sagas::new(
            SagaLog::new(target),
            Arc::clone(&privacy),
            self.saga_options(),
        )?;
        *slot = Some(sagas.clone());
        Ok(sagas)
    }

    /// Resumes, now and every `saga.recover_every`, the sagas that runners
    /// which died left running (register the definitions first: a saga
    /// whose version is not registered is marked stuck). Runs until the
    /// handle is dropped.
    ///
    /// # Errors
    /// As [`DataLayer::sagas`].
    pub fn start_saga_recovery(&self) -> Result<SagaRecovery, Error> {
        let sagas = self.sagas()?;
        Ok(SagaRecovery {
            task: sagas.spawn_recovery(self.settings.saga.recover_every),
        })
    }
}
