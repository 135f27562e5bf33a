//! A backend whose connection is made on first use: for a store whose
//! driver connects eagerly (the ScyllaDB session) and that was down when the
//! service started. Until the store answers, every call (and health ping)
//! tries to connect once and fails with `Unavailable`; the guard around it
//! counts those failures like any other, so its breaker opens and the
//! service keeps serving from its other stores. Once connected, calls go
//! straight to the real backend.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use dl_models::EntitySchema;
use futures::future::BoxFuture;
use tokio::sync::OnceCell;

use crate::backend::{Backend, BreakerState, Capabilities, PoolStats, Probe, Request, Response};
use crate::error::{BoxError, Error, Operation, Result, Store};

/// Makes the real backend; an `Err` is the driver's reason, reported as the
/// call's `Unavailable` error (as its source).
pub type Connector = Box<
    dyn Fn() -> BoxFuture<'static, std::result::Result<Arc<dyn Backend>, BoxError>> + Send + Sync,
>;

/// A backend connected on first successful use (see the module docs).
pub struct Deferred {
    store: Store,
    capabilities: Capabilities,
    connect: Connector,
    inner: OnceCell<Arc<dyn Backend>>,
}

impl fmt::Debug for Deferred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deferred")
            .field("store", &self.store)
            .field("connected", &self.inner.initialized())
            .finish_non_exhaustive()
    }
}

impl Deferred {
    /// A backend for `store`, declaring `capabilities` (what the real one
    /// will declare), made by `connect` on first use. Concurrent first calls
    /// share one attempt.
    #[must_use]
    pub fn new(store: Store, capabilities: Capabilities, connect: Connector) -> Self {
        Deferred {
            store,
            capabilities,
            connect,
            inner: OnceCell::new(),
        }
    }

    /// Whether the real backend has been made.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.inner.initialized()
    }

    async fn inner(&self, operation: Operation) -> Result<&Arc<dyn Backend>> {
        self.inner
            .get_or_try_init(|| (self.connect)())
            .await
            .map_err(|e| Error::Unavailable {
                store: self.store,
                operation,
                reason: "cannot connect".into(),
                sent: false,
                source: Some(crate::error::DriverError::new("connector", "connect").io_from(&*e)),
            })
    }
}

#[async_trait]
impl Backend for Deferred {
    fn store(&self) -> Store {
        self.store
    }
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }
    async fn call(&self, schema: &'static EntitySchema, request: Request<'_>) -> Result<Response> {
        self.inner(request.operation())
            .await?
            .call(schema, request)
            .await
    }
    async fn begin(&self) -> Result<Box<dyn crate::backend::Transaction>> {
        self.inner(Operation::Transaction).await?.begin().await
    }
    async fn change_feed(&self) -> Result<std::sync::Arc<dyn crate::feed::ChangeFeed>> {
        self.inner(Operation::Feed).await?.change_feed().await
    }
}

#[async_trait]
impl Probe for Deferred {
    async fn ping(&self) -> Result<()> {
        self.inner(Operation::Ping).await?.ping().await
    }
    fn pool_stats(&self) -> Option<PoolStats> {
        self.inner.get().and_then(|b| b.pool_stats())
    }
    fn breaker_state(&self) -> Option<BreakerState> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::memory::MemoryBackend;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn connects_on_first_success_and_reports_unavailable_before() {
        let attempts = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&attempts);
        let deferred = Deferred::new(
            Store::Memory,
            Capabilities::full(),
            Box::new(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move {
                    if n < 2 {
                        Err("not yet (test)".into())
                    } else {
                        Ok(Arc::new(MemoryBackend::new()) as Arc<dyn Backend>)
                    }
                })
            }),
        );
        for _ in 0..2 {
            let e = deferred.ping().await.expect_err("down");
            assert!(
                matches!(
                    e,
                    Error::Unavailable {
                        store: Store::Memory,
                        operation: Operation::Ping,
                        ..
                    }
                ),
                "{e}"
            );
            assert!(e.is_retryable());
        }
        assert!(!deferred.is_connected());
        deferred.ping().await.expect("connected on the third try");
        deferred.ping().await.expect("still connected");
        assert!(deferred.is_connected());
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
    }
}
