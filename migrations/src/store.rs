//! The stores migration scripts can target (a leaf: every other module
//! of the crate may use it, and it uses none of them).

use std::fmt;

/// A store scripts can target, by folder name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// `postgres/*.sql`.
    Postgres,
    /// `sqlite/*.sql`.
    Sqlite,
    /// `mongo/*.json`: an array of database commands.
    Mongo,
    /// `scylla/*.cql`.
    Scylla,
    /// `redis/*.lua`: one Lua script, run atomically (`ARGV[1]` is the key
    /// prefix).
    Redis,
}

impl StoreKind {
    /// Every store, in the order `--store all` runs them.
    pub const ALL: [StoreKind; 5] = [
        StoreKind::Postgres,
        StoreKind::Sqlite,
        StoreKind::Mongo,
        StoreKind::Scylla,
        StoreKind::Redis,
    ];

    /// The folder (and `--store`) name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            StoreKind::Postgres => "postgres",
            StoreKind::Sqlite => "sqlite",
            StoreKind::Mongo => "mongo",
            StoreKind::Scylla => "scylla",
            StoreKind::Redis => "redis",
        }
    }

    /// The scripts' extension.
    #[must_use]
    pub const fn extension(self) -> &'static str {
        match self {
            StoreKind::Postgres | StoreKind::Sqlite => "sql",
            StoreKind::Mongo => "json",
            StoreKind::Scylla => "cql",
            StoreKind::Redis => "lua",
        }
    }

    /// The store of a folder name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
