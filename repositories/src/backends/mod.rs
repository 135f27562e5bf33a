//! The backends, one module per store.

pub mod memory;
#[cfg(feature = "mongodb")]
pub mod mongo;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "scylla")]
pub mod scylla;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[macro_use]
mod sql_common;
#[cfg(feature = "sqlite")]
pub mod sqlite;
