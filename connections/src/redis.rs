//! The Redis connection: one multiplexed connection manager per store,
//! which reconnects on its own after the server goes away.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::secret::SecretUrl;
use crate::settings::PoolSettings;

/// Opens a Redis connection manager lazily (the first command connects),
/// with the connect timeout, a per-command response timeout equal to the
/// request timeout, and a bounded number of reconnection attempts per call.
///
/// # Errors
/// When the URL is not a valid Redis URL.
pub fn connect_lazy(
    url: &SecretUrl,
    pool: &PoolSettings,
) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(url.expose())?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(pool.connect_timeout))
        .set_response_timeout(Some(pool.request_timeout))
        .set_number_of_retries(2)
        .set_max_delay(pool.connect_timeout);
    ConnectionManager::new_lazy_with_config(client, config)
}
