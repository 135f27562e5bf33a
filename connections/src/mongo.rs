//! The MongoDB client (it owns its connection pool).

use mongodb::options::ClientOptions;

use crate::secret::SecretUrl;
use crate::settings::PoolSettings;

/// Builds a MongoDB client with the pool settings: size, connect timeout,
/// server selection within the acquire timeout (a store that is down fails
/// calls at that deadline instead of hanging), idle time. The client
/// connects in the background; the first call waits for a server.
///
/// # Errors
/// When the URI does not parse (or an SRV record cannot be resolved).
pub async fn connect(
    url: &SecretUrl,
    pool: &PoolSettings,
) -> Result<mongodb::Client, mongodb::error::Error> {
    let mut opts = ClientOptions::parse(url.expose()).await?;
    opts.app_name = Some("data-layer".into());
    opts.max_pool_size = Some(pool.max_connections);
    opts.min_pool_size = Some(pool.min_connections);
    opts.connect_timeout = Some(pool.connect_timeout);
    opts.server_selection_timeout = Some(pool.acquire_timeout);
    opts.max_idle_time = Some(pool.idle_timeout);
    mongodb::Client::with_options(opts)
}
