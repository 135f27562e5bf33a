//! The ScyllaDB session (it owns its per-shard connection pools).

use std::sync::Arc;

use scylla::client::PoolSize;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

use crate::settings::{PoolSettings, ScyllaSettings};

/// Opens a ScyllaDB session on the contact points: connect timeout, a
/// request timeout on the default execution profile (no call waits longer),
/// `max_connections` per host, and the two settings single-node test
/// servers need off (`auto_await_schema_agreement`, `fetch_schema_metadata`).
///
/// # Errors
/// When no contact point answers.
pub async fn connect(
    scylla: &ScyllaSettings,
    pool: &PoolSettings,
) -> Result<Arc<Session>, scylla::errors::NewSessionError> {
    let profile = ExecutionProfile::builder()
        .request_timeout(Some(pool.request_timeout))
        .build();
    let size =
        std::num::NonZeroUsize::new(usize::try_from(pool.max_connections).unwrap_or(1).max(1))
            .unwrap_or(std::num::NonZeroUsize::MIN);
    let session = SessionBuilder::new()
        .known_nodes(&scylla.nodes)
        .connection_timeout(pool.connect_timeout)
        .pool_size(PoolSize::PerHost(size))
        .default_execution_profile_handle(profile.into_handle())
        .auto_await_schema_agreement(scylla.auto_await_schema_agreement)
        .fetch_schema_metadata(scylla.fetch_schema_metadata)
        .build()
        .await?;
    Ok(Arc::new(session))
}
