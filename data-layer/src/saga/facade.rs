//! Sagas on the data layer: [`DataLayer::sagas`] and
//! [`DataLayer::start_saga_recovery`].

// The layer answers with the repositories' `Error`, as every other call.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use std::future::Future;

use dl_repositories::{ConflictKind, Error, Operation, Store};
use dl_saga::{Once, SagaEffect, SagaLog, SagaOptions, Sagas, StepContext, StepError};

use crate::{DataLayer, Tx};

/// How long a Redis guard of [`DataLayer::once_redis`] lasts: longer than
/// any saga stays stuck before an operator retries it (30 days).
pub const REDIS_GUARD_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

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
            // A saga step holds a connection of the relational pool (its
            // transaction) while the log writes need others: drive at
            // most half the pool's size at once.
            concurrency: usize::try_from(self.relational_pool_size() / 2)
                .unwrap_or(1)
                .clamp(1, SagaOptions::default().concurrency),
            ..SagaOptions::default()
        }
    }

    fn relational_pool_size(&self) -> u32 {
        match self.relational.store() {
            Store::Sqlite => self.settings.sqlite.max_connections,
            _ => self.settings.postgres.max_connections,
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

    /// Applies a saga step's effect once: runs `f` in a transaction on
    /// `store` (as [`DataLayer::transaction`]) that first writes the
    /// step's guard ([`SagaEffect`], keyed by its idempotency key) into
    /// `dl_saga_effects`. When the guard is there already — an earlier
    /// attempt of this step committed, here or in a process that died —
    /// `f` does not run and the answer is [`Once::AlreadyApplied`]. Two
    /// attempts at once cannot both commit: the second waits on the guard
    /// (PostgreSQL), on the write lock (SQLite) or conflicts (MongoDB).
    ///
    /// SQLite, PostgreSQL (migration `4_sagas`) and MongoDB (a session
    /// transaction; migration `3_sagas`, a replica set). Redis and
    /// ScyllaDB have their own: [`DataLayer::once_redis`] and
    /// [`dl_saga::once::scylla`].
    ///
    /// ```
    /// use data_layer::{DataLayer, Settings, Sources, Store};
    /// use data_layer::models::domain::{Patient, PatientStatus};
    /// use data_layer::saga::{Once, Outcome, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let url = format!("sqlite://{}/app.db", dir.path().display());
    /// # let settings = Settings::load(&Sources::isolated().var("DATABASE_URL", &url)
    /// #     .var("DL_PRIVACY__KEY", "WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlo="))?;
    /// # data_layer::migrate::apply(&settings, &data_layer::migrate::domain_scripts()).await?;
    /// let dl = DataLayer::from_settings(settings).await?;
    /// let sagas = dl.sagas()?;
    /// let layer = dl.clone();
    /// sagas.register(SagaDefinition::new("register", 1, vec![Step::pivot("patient", move |ctx| {
    ///     let dl = layer.clone();
    ///     async move {
    ///         let patient = Patient {
    ///             id: ctx.id_for("patient"), // the same id on every attempt
    ///             mrn: "MRN-1".into(), given_name: "Ada".into(), family_name: "Lovelace".into(),
    ///             date_of_birth: chrono::NaiveDate::from_ymd_opt(1980, 5, 17).unwrap(),
    ///             phone: None, email: None, status: PatientStatus::Active,
    ///             created_at: chrono::Utc::now(), version: 1,
    ///         };
    ///         let done = dl.once_in(Store::Sqlite, &ctx, |tx| async move {
    ///             tx.repository::<Patient>().await?.insert(&patient).await
    ///         }).await?;
    ///         Ok::<_, StepError>(serde_json::json!({ "applied_now": done.is_applied() }))
    ///     }
    /// })])?)?;
    /// let (_id, outcome) = sagas.run("register", &serde_json::json!({})).await?;
    /// assert_eq!(outcome, Outcome::Completed);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// `f`'s error or the store's, as a [`StepError`] (after the
    /// rollback; `unknown` when a commit's answer was lost);
    /// `Unsupported` (failed) for a store without transactions.
    pub async fn once_in<R, F, Fut>(
        &self,
        store: Store,
        ctx: &StepContext,
        f: F,
    ) -> Result<Once<R>, StepError>
    where
        F: FnOnce(Tx) -> Fut,
        Fut: Future<Output = Result<R, Error>>,
    {
        let guard = SagaEffect::of(ctx);
        let r = self
            .transaction(store, |tx| async move {
                let guards = tx.repository::<SagaEffect>().await?;
                // Read first: a store's answer to a duplicate inside a
                // transaction (MongoDB's aborts it) is not always a
                // duplicate-key conflict.
                if guards.get(&guard.key).await?.is_some() {
                    return Ok(Once::AlreadyApplied);
                }
                match guards.insert(&guard).await {
                    Ok(()) => {}
                    Err(Error::Conflict {
                        kind: ConflictKind::DuplicateKey,
                        ..
                    }) => return Ok(Once::AlreadyApplied),
                    Err(e) => return Err(e),
                }
                f(tx).await.map(Once::Applied)
            })
            .await;
        r.map_err(StepError::from)
    }

    /// Applies a saga step's Redis commands once
    /// ([`dl_saga::once::redis`]): in one script, after `SET NX` of the
    /// step's guard key (`<redis.key_prefix>:dl_saga_once:<idempotency
    /// key>`, kept [`REDIS_GUARD_TTL`]). A guard found set answers
    /// [`Once::AlreadyApplied`] and runs nothing.
    ///
    /// # Errors
    /// As [`dl_saga::once::redis`]; `failed` when Redis is not configured.
    #[cfg(feature = "redis")]
    pub async fn once_redis(
        &self,
        ctx: &StepContext,
        commands: &[redis::Cmd],
    ) -> Result<Once<()>, StepError> {
        let mut conn = self
            .redis_conn
            .clone()
            .ok_or_else(|| StepError::failed("redis: not configured (set REDIS_URL)"))?;
        dl_saga::once::redis(
            &mut conn,
            &self.settings.redis_key_prefix,
            ctx,
            REDIS_GUARD_TTL,
            commands,
        )
        .await
    }
}
