//! `Repository<T>`: one typed contract over every store.
//!
//! A service holds `Arc<dyn Repository<T>>` and does not care which store is
//! behind it. Every input — entity, key, [`Filter`], [`Patch`], [`Query`] —
//! is checked against `T::schema()` before any I/O: an unknown field, a value
//! of the wrong type, an oversize value or an operator the store cannot
//! serve is a clear [`Error`], and nothing is written.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), dl_repositories::Error> {
//! use std::sync::Arc;
//! use dl_models::domain::Alert;
//! use dl_repositories::{Filter, Query, Repo, Repository, backends::memory::MemoryBackend};
//!
//! let alerts: Arc<dyn Repository<Alert>> =
//!     Arc::new(Repo::<Alert>::open(Arc::new(MemoryBackend::new())).await?);
//! let alert = Alert {
//!     id: uuid::Uuid::new_v4(),
//!     patient_id: None,
//!     severity: "warning".into(),
//!     message: "fake message".into(),
//!     raised_at: chrono::Utc::now(),
//!     acknowledged: false,
//! };
//! alerts.insert(&alert).await?;
//! let page = alerts.list(&Query::new().filter(Filter::eq("severity", "warning"))).await?;
//! assert_eq!(page.items.len(), 1);
//!
//! // Bad input is an error before any I/O, naming the field but never a value.
//! let err = alerts.count(&Filter::eq("severity'; DROP TABLE alerts; --", "x")).await.unwrap_err();
//! assert!(matches!(err, dl_repositories::Error::Invalid { .. }));
//! # Ok(()) }
//! ```

// With a store compiled out (its Cargo feature off), helpers only that
// store's module uses are unused; they are not dead in the full build.
#![cfg_attr(
    not(all(
        feature = "sqlite",
        feature = "postgres",
        feature = "mongodb",
        feature = "redis",
        feature = "scylla"
    )),
    allow(dead_code)
)]

pub mod backend;
pub mod backends;
pub mod deferred;
pub mod error;
pub mod feed;
pub mod guard;
mod json_record;
pub mod keys;
pub mod query;
mod repo;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql_capture;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql_target;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sqlx_errors;
mod versions;

pub use backend::{
    Backend, BreakerState, Capabilities, FilterSupport, PoolStats, Probe, Read, Request, Response,
    Transaction,
};
pub use error::{
    BatchFailure, BoxError, ConflictKind, DriverError, Error, Operation, Result, Store,
};
pub use feed::{Capture, ChangeEvent, ChangeFeed, ChangeOp, Consumer, EventKey, FeedStatus};
pub use query::{
    CmpOp, Cond, Cursor, Direction, Filter, ListRequest, Page, Patch, Query, ValidPatch,
};
pub use repo::{MAX_BATCH, Repo, Repository};
