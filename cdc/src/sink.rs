//! Where redacted events go. Each sink keeps every event once by its id
//! (so a batch delivered again after a crash changes nothing), and every
//! delivery goes through the guard of the sink's store (breaker, retry,
//! deadline).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use dl_repositories::guard::Guard;
use dl_repositories::{Error, Operation, Store};

use crate::envelope::Redacted;

/// A sink of redacted events.
#[async_trait]
pub trait Sink: Send + Sync + fmt::Debug {
    /// Its name in settings and metrics (`sqlite`, `postgres`, `nats`,
    /// `scylla`).
    fn name(&self) -> &'static str;

    /// The store it writes to (for errors and the guard).
    fn store(&self) -> Store;

    /// Delivers `events` (in feed order), each kept once by its id: an
    /// event delivered before is not kept again. Returns when the sink has
    /// acknowledged every event.
    ///
    /// # Errors
    /// The store's error; the relay delivers the batch again later.
    async fn deliver(&self, events: &[Redacted]) -> Result<(), Error>;

    /// How many events the sink holds (for status and tests), if it can
    /// count them.
    ///
    /// # Errors
    /// The store's error.
    async fn count(&self) -> Result<Option<u64>, Error>;
}

/// A sink behind its guard.
#[derive(Debug, Clone)]
pub struct GuardedSink {
    sink: Arc<dyn Sink>,
    guard: Arc<Guard>,
}

impl GuardedSink {
    /// `sink` behind `guard` (made for the sink's store).
    #[must_use]
    pub fn new(sink: Arc<dyn Sink>, guard: Arc<Guard>) -> Self {
        GuardedSink { sink, guard }
    }

    /// The sink.
    #[must_use]
    pub fn sink(&self) -> &Arc<dyn Sink> {
        &self.sink
    }

    /// The guard (its breaker for health).
    #[must_use]
    pub fn guard(&self) -> &Arc<Guard> {
        &self.guard
    }

    /// Delivers through the guard: a delivery is idempotent, so it is
    /// retried on any retryable error, each attempt under the deadline.
    ///
    /// # Errors
    /// The last attempt's error, `CircuitOpen` or `Timeout`.
    pub async fn deliver(&self, events: &[Redacted]) -> Result<(), Error> {
        if events.is_empty() {
            return Ok(());
        }
        self.guard
            .call(Operation::Deliver, self.sink.name(), || {
                self.sink.deliver(events)
            })
            .await
    }
}
