//! Per-store migrations for data-layer.
//!
//! Scripts live in `migrations/<store>/` as `<version>_<name>.<ext>`. The
//! runner (history, checksums, locking, `data-layer migrate`) arrives with
//! its own issue; this crate already names the stores it will serve.

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
