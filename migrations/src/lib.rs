//! Per-store migrations for data-layer: one engine ([`engine`]), a runner
//! per store ([`Target`]), and the scripts' rules ([`script`]).
//!
//! Scripts live in `migrations/<store>/` as `<version>_<name>.<ext>`, with
//! an optional `<version>_<name>.down.<ext>` beside each:
//!
//! | store | folder | extension | a script is |
//! | --- | --- | --- | --- |
//! | PostgreSQL | `postgres/` | `.sql` | SQL statements, in one transaction with its history row unless its first line is `-- dl:no-transaction` |
//! | SQLite | `sqlite/` | `.sql` | the same |
//! | MongoDB | `mongo/` | `.json` | a JSON array of database commands (`create` with a `$jsonSchema` validator, `createIndexes` with unique or TTL indexes, `update`, ...) |
//! | ScyllaDB | `scylla/` | `.cql` | CQL statements (no transactions) |
//! | Redis | `redis/` | `.lua` | one Lua script, run atomically; `ARGV[1]` is the key prefix |
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use dl_migrations::{engine, script::{self, StoreKind}, sql::SqliteTarget};
//!
//! let dir = tempfile::tempdir()?;
//! std::fs::create_dir(dir.path().join("sqlite"))?;
//! std::fs::write(dir.path().join("sqlite/1_notes.sql"), "CREATE TABLE notes (id INTEGER PRIMARY KEY);")?;
//! let all = script::load(dir.path())?;
//!
//! let pool = sqlx::sqlite::SqlitePoolOptions::new().connect("sqlite::memory:").await?;
//! let target = SqliteTarget::new(pool);
//! let steps = engine::up(&target, &all[&StoreKind::Sqlite], &engine::Options::default(), &mut |_| {}).await?;
//! assert_eq!(steps.len(), 1);
//! // Nothing left to do the second time.
//! assert!(engine::up(&target, &all[&StoreKind::Sqlite], &engine::Options::default(), &mut |_| {}).await?.is_empty());
//! # Ok(()) }
//! ```

// With a store compiled out (its Cargo feature off), helpers only that
// store's runner uses are unused; they are not dead in the full build.
#![cfg_attr(
    not(all(
        feature = "sqlite",
        feature = "postgres",
        feature = "mongodb",
        feature = "redis",
        feature = "scylla"
    )),
    allow(dead_code, unused_imports)
)]

pub mod engine;
pub mod error;
pub mod nosql;
pub mod script;
pub mod split;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql;
pub mod store;

pub use engine::{Applied, Options, Step, Target};
pub use error::MigrationError;
pub use script::Migration;
pub use split::mongo_commands;
#[cfg(feature = "mongodb")]
pub use split::mongo_documents;
pub use store::StoreKind;

/// The stores a migration script can target, by folder name.
pub const STORES: [&str; 5] = ["postgres", "sqlite", "mongo", "scylla", "redis"];

/// Whether `name` is a migration folder this crate knows.
#[must_use]
pub fn is_known_store(name: &str) -> bool {
    STORES.contains(&name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_stores() {
        assert!(super::is_known_store("postgres"));
        assert!(!super::is_known_store("mysql"));
    }
}
