//! The PostgreSQL pool.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::secret::SecretUrl;
use crate::settings::PoolSettings;

/// Opens a PostgreSQL pool with the pool settings: size, acquire timeout,
/// idle timeout, max lifetime, and a server-side `statement_timeout` equal to
/// the request timeout, so a hung query is cancelled by the server too.
/// Connections are opened lazily (the first call opens one), so a service
/// starts while the database is still coming up.
///
/// A pooled connection is not pinged before each use (sqlx's
/// `test_before_acquire`, a round trip per call): a connection the server
/// closed fails its next call at once, retryably (`Unavailable`), the pool
/// drops it, and the guard retries idempotent calls on a fresh one. This
/// is deadpool-postgres's default ("fast" recycling) too.
///
/// # Errors
/// When the URL does not parse as PostgreSQL connection options.
pub fn connect_lazy(url: &SecretUrl, pool: &PoolSettings) -> Result<PgPool, sqlx::Error> {
    let statement_timeout = pool.request_timeout.as_millis().to_string();
    let opts = PgConnectOptions::from_str(url.expose())?
        .options([("statement_timeout", statement_timeout.as_str())])
        .application_name("data-layer");
    Ok(PgPoolOptions::new()
        .max_connections(pool.max_connections)
        .min_connections(pool.min_connections)
        .acquire_timeout(pool.acquire_timeout)
        .idle_timeout(Some(pool.idle_timeout))
        .max_lifetime(Some(pool.max_lifetime))
        .test_before_acquire(false)
        .connect_lazy_with(opts))
}
