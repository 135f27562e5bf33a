//! Sagas: writes across stores that no store can commit at once, made
//! durable: every saga ends **completed** or **compensated**, through
//! crashes, each step's effect applied once, and nothing of its input or
//! outputs readable in its log.
//!
//! A saga's steps are typed as the literature names them
//! ([`StepKind`]): *compensatable* steps (undone, last first, when a later
//! step fails), at most one *pivot* (the point of no return) and
//! *retriable* steps after it (tried until they succeed). The log
//! ([`SagaLog`], in the relational store) keeps each saga's state, each
//! step's state, attempts and sealed output; a runner ([`Sagas`]) drives a
//! saga under a lease with a fencing token, and a runner that dies loses
//! its sagas to another, which resumes each where its log says.
//!
//! ```
//! use std::sync::Arc;
//! use dl_saga::{Outcome, SagaDefinition, SagaLog, SagaOptions, Sagas, Step, StepError};
//! use dl_privacy::{Privacy, SecretKey};
//! use dl_repositories::sql_target::SqlTarget;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}/s.db?mode=rwc", dir.path().display())).await?;
//! # sqlx::raw_sql(sqlx::AssertSqlSafe(include_str!("../../migrations/sqlite/4_sagas.sql"))).execute(&pool).await?;
//! let privacy = Arc::new(Privacy::new(SecretKey::from_bytes("k1", [7u8; 32])?));
//! let sagas = Sagas::new(SagaLog::new(SqlTarget::Sqlite(pool)), privacy, SagaOptions::default())?;
//! sagas.register(SagaDefinition::new("admit", 1, vec![
//!     Step::compensatable("reserve_bed",
//!         |_ctx| async { Ok(serde_json::json!({ "bed": 12 })) },
//!         |_ctx| async { Ok(serde_json::Value::Null) }),
//!     Step::pivot("admit", |ctx| async move {
//!         let bed: serde_json::Value = ctx.output("reserve_bed")?;
//!         if bed["bed"] == 12 { Ok(serde_json::Value::Null) } else { Err(StepError::failed("no bed")) }
//!     }),
//! ])?)?;
//! let (_id, outcome) = sagas.run("admit", &serde_json::json!({ "patient": "…" })).await?;
//! assert_eq!(outcome, Outcome::Completed);
//!
//! // A definition that cannot run is refused before anything runs.
//! let two_pivots = SagaDefinition::new("bad", 1, vec![
//!     Step::pivot("a", |_| async { Ok(serde_json::Value::Null) }),
//!     Step::pivot("b", |_| async { Ok(serde_json::Value::Null) }),
//! ]);
//! assert!(two_pivots.unwrap_err().to_string().contains("at most one pivot"));
//! # Ok(()) }
//! ```

// The layer answers with the repositories' `Error`, which every caller
// already matches on; it is as large there.
#![allow(clippy::result_large_err)]
// Without a relational store there is no log and no runner: the
// definitions are only checked.
#![cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]

pub mod context;
pub mod definition;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod log;
pub mod once;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod runner;

pub use context::{FailureKind, Phase, StepContext, StepError};
pub use definition::{SagaDefinition, Step, StepKind};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use log::{Direction, SagaLog, SagaRow, SagaState, StepRecord, StepState};
pub use once::{Once, SagaEffect};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use runner::{Clock, Outcome, Recovery, SagaOptions, Sagas, SystemClock};
