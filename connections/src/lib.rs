//! Settings and connections for data-layer.
//!
//! [`Settings::load`] reads the layers — defaults < `data-layer.toml` <
//! `.env` < environment < flags — with the conventional names first
//! (`DATABASE_URL`, `MONGODB_URI`, `REDIS_URL`, `SCYLLA_URI`) and
//! `DL_<STORE>__<KEY>` for tuning:
//!
//! ```
//! use dl_connections::{DatabaseUrl, Settings, Sources};
//!
//! let settings = Settings::load(
//!     &Sources::isolated()
//!         .var("DL_POSTGRES__MAX_CONNECTIONS", "20")
//!         .var("DATABASE_URL", "postgres://app:not-a-real-pw@localhost/app"),
//! )
//! .unwrap();
//! assert_eq!(settings.postgres.max_connections, 20);
//! // Passwords never print.
//! assert!(!format!("{settings:?}").contains("not-a-real-pw"));
//! assert!(matches!(settings.database_url, DatabaseUrl::Postgres(_)));
//!
//! // A bad value names the key, where it came from and what was expected.
//! let err = Settings::load(&Sources::isolated().var("DL_POSTGRES__MAX_CONNECTIONS", "lots"))
//!     .unwrap_err()
//!     .to_string();
//! assert!(err.contains("postgres.max_connections"), "{err}");
//! assert!(err.contains("a whole number from 1 to 1000"), "{err}");
//! ```

#[cfg(feature = "mongodb")]
pub mod mongo;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "scylla")]
pub mod scylla;
pub mod secret;
pub mod settings;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use secret::SecretUrl;
pub use settings::{
    CdcSettings, DatabaseUrl, KEYS, KeySpec, Kind, Origin, PoolSettings, PrivacyKeys, SagaSettings,
    ScyllaSettings, Settings, SettingsError, Sources, parse_duration,
};
