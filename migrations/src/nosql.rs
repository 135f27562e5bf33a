//! MongoDB, Redis and ScyllaDB runners.
//!
//! | store | history | lock | a script |
//! | --- | --- | --- | --- |
//! | MongoDB | collection `dl_migrations` (`_id` = version) | lease document `dl_migrations_lock`, taken by one conditional upsert, with an expiry | its commands in order (`runCommand`) |
//! | Redis | hash `<prefix>:dl_migrations` | `SET <prefix>:dl_migrations_lock NX PX`, renewed and released by owner | one `EVAL` (atomic) |
//! | ScyllaDB | table `dl_migrations` in the keyspace | lease row with a TTL, by lightweight transaction (`IF NOT EXISTS` / `IF owner = ?`); without LWT (the CQL test server) a read-then-write that is **not** safe for concurrent runners, and says so in a warning | its statements in order |
//!
//! None of them has multi-statement transactions: a script that fails
//! part-way leaves its earlier statements applied; the failure is recorded
//! and later runs refuse until the file is fixed or the failure resolved.

use std::time::Duration;

#[cfg(feature = "mongodb")]
mod mongo;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "scylla")]
mod scylla;

#[cfg(feature = "mongodb")]
pub use crate::split::mongo_documents;
#[cfg(feature = "mongodb")]
pub use mongo::MongoTarget;
#[cfg(feature = "redis")]
pub use redis::RedisTarget;
#[cfg(feature = "scylla")]
pub use scylla::ScyllaTarget;

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}
