//! What can go wrong, each naming the store and the file.

use std::path::PathBuf;

use crate::store::StoreKind;

/// A driver's error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a migration command refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrationError {
    /// A file or folder could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A folder under the migrations folder that names no store.
    #[error("{}: not a store's folder (known: {})", path.display(), known.join(", "))]
    UnknownStore {
        /// The folder.
        path: PathBuf,
        /// The known store folders.
        known: Vec<&'static str>,
    },
    /// A file name that does not follow `<version>_<name>[.down].<ext>`.
    #[error("{}: bad migration file name: {reason}", path.display())]
    BadName {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A script that cannot be run as written.
    #[error("{}: {reason}", path.display())]
    BadScript {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Two scripts with one version.
    #[error("{store}: version {version} is used twice: {} and {}", first.display(), second.display())]
    DuplicateVersion {
        /// The store.
        store: StoreKind,
        /// The version.
        version: u64,
        /// One file.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// An applied script whose file changed since.
    #[error(
        "{store}: {} was applied with checksum {recorded} but the file now has {actual}; restore it, or accept the change with --allow-drift",
        path.display()
    )]
    Drift {
        /// The store.
        store: StoreKind,
        /// The file.
        path: PathBuf,
        /// Checksum in the history.
        recorded: String,
        /// Checksum of the file.
        actual: String,
    },
    /// A pending script older than one already applied.
    #[error(
        "{store}: {} (version {version}) is older than the applied version {latest}; renumber it, or run it anyway with --allow-out-of-order",
        path.display()
    )]
    OutOfOrder {
        /// The store.
        store: StoreKind,
        /// The pending file.
        path: PathBuf,
        /// Its version.
        version: u64,
        /// The newest applied version.
        latest: u64,
    },
    /// A script failed on an earlier run and is unchanged.
    #[error(
        "{store}: {label} failed on an earlier run ({reason}); fix the file, or mark it resolved with `data-layer migrate resolve --store {store} --version {version}`"
    )]
    PreviouslyFailed {
        /// The store.
        store: StoreKind,
        /// `<version>_<name>`.
        label: String,
        /// Its version.
        version: u64,
        /// What was recorded.
        reason: String,
    },
    /// A script failed now (recorded in the history).
    #[error("{store}: {} failed at statement {statement}{}: {message}", path.display(), line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    ScriptFailed {
        /// The store.
        store: StoreKind,
        /// The file.
        path: PathBuf,
        /// Which statement or command (1-based).
        statement: usize,
        /// The line, where known.
        line: Option<u32>,
        /// The store's message.
        message: String,
    },
    /// A down was asked for but a script has no down script.
    #[error("{store}: {label} has no down script ({label}.down.{ext})")]
    NoDown {
        /// The store.
        store: StoreKind,
        /// `<version>_<name>`.
        label: String,
        /// The extension.
        ext: &'static str,
    },
    /// The lock was not obtained in time.
    #[error("{store}: another runner holds the migration lock (waited {waited:?})")]
    Locked {
        /// The store.
        store: StoreKind,
        /// How long this runner waited.
        waited: std::time::Duration,
    },
    /// This runner's lease was taken over while its script ran (it was
    /// too slow, or the store was): nothing it did after that was
    /// committed where the store has transactions, and its history row was
    /// not written. Run `migrate up` again.
    #[error(
        "{store}: this runner lost its migration lease while the script ran (another runner took it over); its commit and its history row were refused"
    )]
    LeaseLost {
        /// The store.
        store: StoreKind,
    },
    /// Something the store cannot do.
    #[error("{store}: {reason}")]
    Unsupported {
        /// The store.
        store: StoreKind,
        /// What and why.
        reason: String,
    },
    /// The store failed outside any script (history, lock, connection).
    #[error("{store}: {reason}")]
    Store {
        /// The store.
        store: StoreKind,
        /// What was being done.
        reason: String,
        /// The driver's error.
        #[source]
        source: Option<BoxError>,
    },
}

impl MigrationError {
    /// A store error with its driver cause.
    pub fn store(store: StoreKind, reason: impl Into<String>, source: impl Into<BoxError>) -> Self {
        MigrationError::Store {
            store,
            reason: reason.into(),
            source: Some(source.into()),
        }
    }
}
