//! The backends, one module per store.

pub mod memory;
pub mod mongo;
pub mod postgres;
pub mod redis;
pub mod scylla;
#[macro_use]
mod sql_common;
pub mod sqlite;
