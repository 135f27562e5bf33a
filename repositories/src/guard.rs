//! The guard: one decorator around every backend — circuit breaker, then
//! retry, then a deadline — so no backend carries its own copy.
//!
//! ```text
//! call ──► breaker (open? fail at once; one outcome per call) ──► retry
//!          (reads; writes never sent; within budget) ──► deadline (request
//!          timeout, per attempt) ──► backend
//! ```
//!
//! Time is tokio's: breaker windows, backoff sleeps and deadlines all read
//! `tokio::time`, so tests run on paused time (`start_paused`, `advance`)
//! and never sleep.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backon::BackoffBuilder as _;
use dl_models::EntitySchema;
use tokio::time::Instant;

use crate::backend::{Backend, Capabilities, Probe, Request, Response, Transaction};
use crate::error::{Error, Operation, Result, Store};

/// Circuit breaker settings. Defaults suit a store answering in
/// milliseconds; each line says its trade-off.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    /// Calls in the sliding window (count-based). Default 20: larger reacts
    /// slower and steadier.
    pub window: usize,
    /// Calls needed in the window before rates count. Default 10: fewer
    /// opens on a handful of errors.
    pub min_calls: usize,
    /// Transient-failure share that opens the breaker. Default 0.5.
    pub failure_rate: f64,
    /// Share of slow calls that opens it. Default 0.8.
    pub slow_call_rate: f64,
    /// A call slower than this is slow. Default 2 s.
    pub slow_call: Duration,
    /// Time open before half-open probes. Default 5 s: shorter recovers
    /// sooner, longer spares a struggling store.
    pub wait_in_open: Duration,
    /// Probes allowed while half-open; all must succeed to close. Default 3.
    pub half_open_probes: usize,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            window: 20,
            min_calls: 10,
            failure_rate: 0.5,
            slow_call_rate: 0.8,
            slow_call: Duration::from_secs(2),
            wait_in_open: Duration::from_secs(5),
            half_open_probes: 3,
        }
    }
}

pub use crate::backend::BreakerState;

#[derive(Debug, Clone, Copy)]
struct Outcome {
    failed: bool,
    slow: bool,
}

#[derive(Debug)]
struct BreakerInner {
    state: BreakerState,
    window: VecDeque<Outcome>,
    opened_at: Instant,
    probes_started: usize,
    probes_succeeded: usize,
    transitions: u64,
}

/// A circuit breaker for one store: closed, open, half-open, over a
/// count-based sliding window of failure and slow-call rates. Only
/// transient faults (`Unavailable`, `Timeout`, retryable backend errors)
/// count as failures: a `NotFound`, `Conflict` or `Invalid` is the store
/// answering.
#[derive(Debug)]
pub struct CircuitBreaker {
    store: Store,
    settings: BreakerSettings,
    inner: Mutex<BreakerInner>,
}

/// Leave to make one call through a breaker.
#[derive(Debug)]
#[must_use]
pub struct Permit {
    started: Instant,
    probe: bool,
}

impl CircuitBreaker {
    /// A closed breaker.
    #[must_use]
    pub fn new(store: Store, settings: BreakerSettings) -> Self {
        metrics::gauge!("dl_breaker_state", "store" => store.name()).set(0.0);
        CircuitBreaker {
            store,
            inner: Mutex::new(BreakerInner {
                state: BreakerState::Closed,
                window: VecDeque::with_capacity(settings.window),
                opened_at: Instant::now(),
                probes_started: 0,
                probes_succeeded: 0,
                transitions: 0,
            }),
            settings,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current state (an open breaker whose wait is over reports
    /// half-open).
    #[must_use]
    pub fn state(&self) -> BreakerState {
        let inner = self.lock();
        match inner.state {
            BreakerState::Open if inner.opened_at.elapsed() >= self.settings.wait_in_open => {
                BreakerState::HalfOpen
            }
            s => s,
        }
    }

    /// How many times the state changed.
    #[must_use]
    pub fn transitions(&self) -> u64 {
        self.lock().transitions
    }

    fn set(&self, inner: &mut BreakerInner, to: BreakerState) {
        if inner.state != to {
            tracing::warn!(store = %self.store, from = ?inner.state, to = ?to, "circuit breaker changed state");
            inner.state = to;
            inner.transitions += 1;
            let (code, name) = match to {
                BreakerState::Closed => (0.0, "closed"),
                BreakerState::HalfOpen => (1.0, "half_open"),
                BreakerState::Open => (2.0, "open"),
            };
            metrics::gauge!("dl_breaker_state", "store" => self.store.name()).set(code);
            metrics::counter!("dl_breaker_transitions_total", "store" => self.store.name(), "to" => name).increment(1);
        }
    }

    /// Asks to make a call.
    ///
    /// # Errors
    /// `CircuitOpen` when the breaker is open, or half-open with every probe
    /// already in flight.
    pub fn acquire(&self) -> Result<Permit> {
        let mut inner = self.lock();
        let now = Instant::now();
        if inner.state == BreakerState::Open
            && now.duration_since(inner.opened_at) >= self.settings.wait_in_open
        {
            self.set(&mut inner, BreakerState::HalfOpen);
            inner.probes_started = 0;
            inner.probes_succeeded = 0;
        }
        match inner.state {
            BreakerState::Closed => Ok(Permit {
                started: now,
                probe: false,
            }),
            BreakerState::Open => Err(Error::CircuitOpen { store: self.store }),
            BreakerState::HalfOpen => {
                if inner.probes_started < self.settings.half_open_probes {
                    inner.probes_started += 1;
                    Ok(Permit {
                        started: now,
                        probe: true,
                    })
                } else {
                    Err(Error::CircuitOpen { store: self.store })
                }
            }
        }
    }

    /// Records how a permitted call ended.
    pub fn record(&self, permit: Permit, result: std::result::Result<(), &Error>) {
        let failed = result.is_err_and(is_transient);
        let slow = permit.started.elapsed() >= self.settings.slow_call;
        let mut inner = self.lock();
        if permit.probe {
            if inner.state != BreakerState::HalfOpen {
                return;
            }
            if failed || slow {
                self.set(&mut inner, BreakerState::Open);
                inner.opened_at = Instant::now();
            } else {
                inner.probes_succeeded += 1;
                if inner.probes_succeeded >= self.settings.half_open_probes {
                    inner.window.clear();
                    self.set(&mut inner, BreakerState::Closed);
                }
            }
            return;
        }
        if inner.state != BreakerState::Closed {
            return;
        }
        if inner.window.len() == self.settings.window.max(1) {
            inner.window.pop_front();
        }
        inner.window.push_back(Outcome { failed, slow });
        let n = inner.window.len();
        if n >= self.settings.min_calls.max(1) {
            #[allow(clippy::cast_precision_loss)] // window sizes are small
            let rate = |count: usize| count as f64 / n as f64;
            let failures = inner.window.iter().filter(|o| o.failed).count();
            let slows = inner.window.iter().filter(|o| o.slow).count();
            if rate(failures) >= self.settings.failure_rate
                || rate(slows) >= self.settings.slow_call_rate
            {
                self.set(&mut inner, BreakerState::Open);
                inner.opened_at = Instant::now();
                inner.window.clear();
            }
        }
    }
}

/// Whether an error is a transient fault of the store (what a breaker counts
/// and a retry may fix).
#[must_use]
pub fn is_transient(e: &Error) -> bool {
    e.is_retryable()
}

/// Whether a failed write may have been applied by the store: anything but
/// a request that provably never reached it, or an answer of the store that
/// it applied nothing (a retryable backend error: deadlock, serialization
/// failure, write conflict, busy). Such a write is never retried: its answer
/// was lost, and running it again could contradict what the store holds.
fn may_be_applied(e: &Error) -> bool {
    match e {
        Error::Unavailable { sent, .. } => *sent,
        Error::Timeout { .. } => true,
        Error::Backend { retryable, .. } => !*retryable,
        Error::NotFound { .. }
        | Error::Conflict { .. }
        | Error::Batch { .. }
        | Error::Invalid { .. }
        | Error::Unsupported { .. }
        | Error::SchemaNotReady { .. }
        | Error::CircuitOpen { .. } => false,
    }
}

/// Retry settings: exponential backoff with full jitter, a budget.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySettings {
    /// Retries after the first attempt. Default 3.
    pub max_retries: usize,
    /// First backoff ceiling. Default 50 ms (long enough for a dropped
    /// connection to be replaced).
    pub min_delay: Duration,
    /// Largest backoff ceiling. Default 1 s.
    pub max_delay: Duration,
    /// Retries allowed per call made, over time (the budget). Default 0.2:
    /// a failing store sees at most 20% extra load from retries.
    pub budget_ratio: f64,
    /// Retries always allowed per second, whatever the ratio. Default 5.
    pub budget_floor_per_sec: f64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_retries: 3,
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
            budget_ratio: 0.2,
            budget_floor_per_sec: 5.0,
        }
    }
}

#[derive(Debug)]
struct Budget {
    tokens: f64,
    last: Instant,
}

/// The breaker, the retry rules and the deadline around calls to one
/// store or sink: what [`Guarded`] puts around every backend call, and
/// what a change-feed sink puts around every delivery.
#[derive(Debug)]
pub struct Guard {
    store: Store,
    breaker: Arc<CircuitBreaker>,
    deadline: Duration,
    retry: RetrySettings,
    budget: Mutex<Budget>,
}

impl Guard {
    /// A guard for calls to `store`: each passes the breaker, may be
    /// retried, and fails with `Timeout` after `deadline`.
    #[must_use]
    pub fn new(
        store: Store,
        deadline: Duration,
        breaker: BreakerSettings,
        retry: RetrySettings,
    ) -> Self {
        Guard {
            store,
            breaker: Arc::new(CircuitBreaker::new(store, breaker)),
            deadline,
            budget: Mutex::new(Budget {
                tokens: retry.budget_floor_per_sec,
                last: Instant::now(),
            }),
            retry,
        }
    }

    /// A guard sharing this one's breaker and deadline, with no retries
    /// (a transaction's calls).
    fn without_retries(&self) -> Self {
        Guard {
            store: self.store,
            breaker: Arc::clone(&self.breaker),
            deadline: self.deadline,
            retry: RetrySettings {
                max_retries: 0,
                ..self.retry.clone()
            },
            budget: Mutex::new(Budget {
                tokens: 0.0,
                last: Instant::now(),
            }),
        }
    }

    /// The breaker (for health and metrics).
    #[must_use]
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    /// The deadline of one attempt.
    #[must_use]
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Runs `f` through the breaker, the retry rules (a read, or an
    /// idempotent [`Operation::Deliver`], is retried on any retryable
    /// error; a write only when it provably was not applied) and the
    /// deadline, in a span naming the store, `entity` and the operation
    /// (never a value), counted in the metrics once.
    ///
    /// # Errors
    /// What `f` answered last, `CircuitOpen` when the breaker refused the
    /// call, or `Timeout`.
    pub async fn call<T, F, Fut>(&self, op: Operation, entity: &'static str, f: F) -> Result<T>
    where
        F: Fn() -> Fut + Sync,
        Fut: Future<Output = Result<T>> + Send,
    {
        self.call_guarded(op, entity, f).await
    }

    /// Takes a retry token if the budget allows; every call adds a share.
    fn budget(&self, call_made: bool) -> bool {
        let mut b = self
            .budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let cap = (self.retry.budget_floor_per_sec * 10.0).max(10.0);
        b.tokens = (b.tokens
            + now.duration_since(b.last).as_secs_f64() * self.retry.budget_floor_per_sec)
            .min(cap);
        b.last = now;
        if call_made {
            b.tokens = (b.tokens + self.retry.budget_ratio).min(cap);
            return true;
        }
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// One attempt: the deadline around the driver call.
    async fn attempt<T, F, Fut>(&self, op: Operation, f: &F) -> Result<T>
    where
        F: Fn() -> Fut + Sync,
        Fut: Future<Output = Result<T>> + Send,
    {
        match tokio::time::timeout(self.deadline, f()).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                store: self.store,
                operation: op,
                after: self.deadline,
            }),
        }
    }

    /// Runs a call through the guard in a span (store, entity, operation;
    /// never field values).
    async fn call_guarded<T, F, Fut>(&self, op: Operation, entity: &'static str, f: F) -> Result<T>
    where
        F: Fn() -> Fut + Sync,
        Fut: Future<Output = Result<T>> + Send,
    {
        use tracing::Instrument as _;
        let span = tracing::debug_span!(
            "dl.call",
            store = self.store.name(),
            entity,
            operation = op.name()
        );
        self.call_inner(op, entity, f).instrument(span).await
    }

    /// breaker → retry → deadline: the breaker admits the call and records
    /// its one final outcome; inside, a read is retried on a retryable
    /// error, and a write only when it provably was not applied (see
    /// [`may_be_applied`]) (backoff with full jitter, within the budget), each
    /// attempt under the deadline. Counted in the metrics once per call.
    async fn call_inner<T, F, Fut>(&self, op: Operation, entity: &'static str, f: F) -> Result<T>
    where
        F: Fn() -> Fut + Sync,
        Fut: Future<Output = Result<T>> + Send,
    {
        let store = self.store.name();
        let started = Instant::now();
        let result = match self.breaker.acquire() {
            Err(e) => Err(e),
            Ok(permit) => {
                let result = self.retrying(op, &f).await;
                self.breaker.record(permit, result.as_ref().map(|_| ()));
                metrics::histogram!("dl_call_seconds", "store" => store, "entity" => entity, "operation" => op.name())
                    .record(started.elapsed().as_secs_f64());
                result
            }
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind_name(),
        };
        metrics::counter!("dl_calls_total", "store" => store, "entity" => entity, "operation" => op.name(), "outcome" => outcome).increment(1);
        result
    }

    async fn retrying<T, F, Fut>(&self, op: Operation, f: &F) -> Result<T>
    where
        F: Fn() -> Fut + Sync,
        Fut: Future<Output = Result<T>> + Send,
    {
        self.budget(true);
        // Built at the first retry: most calls never need it.
        let mut delays = None;
        loop {
            match self.attempt(op, f).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && (op.is_idempotent() || !may_be_applied(&e)) => {
                    let delays = delays.get_or_insert_with(|| {
                        backon::ExponentialBuilder::default()
                            .with_min_delay(self.retry.min_delay)
                            .with_max_delay(self.retry.max_delay)
                            .with_max_times(self.retry.max_retries)
                            .build()
                    });
                    let Some(ceiling) = delays.next() else {
                        return Err(e);
                    };
                    if !self.budget(false) {
                        return Err(e);
                    }
                    // Full jitter: anywhere from zero to the ceiling.
                    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=ceiling_ms))).await;
                    tracing::debug!(store = %self.store, operation = %op, "retrying after a transient fault");
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The guard around one backend.
#[derive(Debug)]
pub struct Guarded {
    inner: Arc<dyn Backend>,
    guard: Guard,
}

impl Guarded {
    /// Wraps `inner`: every call passes the breaker, may be retried, and
    /// fails with `Timeout` after `deadline` (the request timeout).
    #[must_use]
    pub fn new(
        inner: Arc<dyn Backend>,
        deadline: Duration,
        breaker: BreakerSettings,
        retry: RetrySettings,
    ) -> Self {
        let store = inner.store();
        Guarded {
            inner,
            guard: Guard::new(store, deadline, breaker, retry),
        }
    }

    /// The breaker (for health and metrics).
    #[must_use]
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        self.guard.breaker()
    }
}

#[async_trait]
impl Backend for Guarded {
    fn store(&self) -> Store {
        self.inner.store()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    /// Every request through the breaker, the retry rules and the
    /// deadline, in a span; written once for every operation.
    async fn call(&self, schema: &'static EntitySchema, request: Request<'_>) -> Result<Response> {
        self.guard
            .call(request.operation(), schema.name, || {
                self.inner.call(schema, request)
            })
            .await
    }

    /// Begins through the breaker (and is retried when it never reached
    /// the store); the transaction's backend is guarded too, by the same
    /// breaker and deadline but with no retries: a statement that failed
    /// inside a transaction is the caller's to handle (PostgreSQL aborts
    /// the transaction), never silently sent again.
    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        let inner = self
            .guard
            .call(Operation::Transaction, "transaction", || self.inner.begin())
            .await?;
        let backend = Arc::new(Guarded {
            inner: inner.backend(),
            guard: self.guard.without_retries(),
        });
        Ok(Box::new(GuardedTransaction {
            inner,
            backend,
            deadline: self.guard.deadline,
        }))
    }

    /// The store's feed, each of its calls under the deadline (a feed read
    /// is not retried here: the consumer reads again from its checkpoint).
    async fn change_feed(&self) -> Result<Arc<dyn crate::feed::ChangeFeed>> {
        let inner = self.inner.change_feed().await?;
        Ok(Arc::new(GuardedFeed {
            inner,
            deadline: self.guard.deadline,
        }))
    }
}

/// A feed reached through the guard: every call under the deadline.
#[derive(Debug)]
struct GuardedFeed {
    inner: Arc<dyn crate::feed::ChangeFeed>,
    deadline: Duration,
}

impl GuardedFeed {
    async fn within<T, F: Future<Output = Result<T>> + Send>(&self, f: F) -> Result<T> {
        match tokio::time::timeout(self.deadline, f).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                store: self.inner.store(),
                operation: Operation::Feed,
                after: self.deadline,
            }),
        }
    }
}

#[async_trait]
impl crate::feed::ChangeFeed for GuardedFeed {
    fn store(&self) -> Store {
        self.inner.store()
    }
    async fn register(&self, consumer: &str, from_start: bool) -> Result<u64> {
        self.within(self.inner.register(consumer, from_start)).await
    }
    async fn unregister(&self, consumer: &str) -> Result<bool> {
        self.within(self.inner.unregister(consumer)).await
    }
    async fn read(&self, consumer: &str, limit: usize) -> Result<Vec<crate::feed::ChangeEvent>> {
        self.within(self.inner.read(consumer, limit)).await
    }
    async fn ack(&self, consumer: &str, position: u64) -> Result<()> {
        self.within(self.inner.ack(consumer, position)).await
    }
    async fn events_after(
        &self,
        position: u64,
        entity: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::feed::ChangeEvent>> {
        self.within(self.inner.events_after(position, entity, limit))
            .await
    }
    async fn status(&self) -> Result<crate::feed::FeedStatus> {
        self.within(self.inner.status()).await
    }
    async fn prune(&self, retention: Duration) -> Result<u64> {
        self.within(self.inner.prune(retention)).await
    }
}

/// A transaction begun through the guard: its calls guarded (no retries),
/// its commit and rollback under the deadline.
#[derive(Debug)]
struct GuardedTransaction {
    inner: Box<dyn Transaction>,
    backend: Arc<Guarded>,
    deadline: Duration,
}

/// `f` (a commit or rollback) under the deadline: a commit whose answer
/// did not come in time is `Timeout`, its outcome unknown.
async fn within<F: Future<Output = Result<()>> + Send>(
    deadline: Duration,
    store: Store,
    f: F,
) -> Result<()> {
    match tokio::time::timeout(deadline, f).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            store,
            operation: Operation::Transaction,
            after: deadline,
        }),
    }
}

#[async_trait]
impl Transaction for GuardedTransaction {
    fn backend(&self) -> Arc<dyn Backend> {
        Arc::clone(&self.backend) as Arc<dyn Backend>
    }
    async fn commit(self: Box<Self>) -> Result<()> {
        let store = self.backend.store();
        within(self.deadline, store, self.inner.commit()).await
    }
    async fn rollback(self: Box<Self>) -> Result<()> {
        let store = self.backend.store();
        within(self.deadline, store, self.inner.rollback()).await
    }
}

#[async_trait]
impl Probe for Guarded {
    /// A health probe: the deadline applies, the breaker and retries do not
    /// (health must see the store as it is).
    async fn ping(&self) -> Result<()> {
        match tokio::time::timeout(self.guard.deadline, self.inner.ping()).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                store: self.inner.store(),
                operation: Operation::Ping,
                after: self.guard.deadline,
            }),
        }
    }
    fn pool_stats(&self) -> Option<crate::backend::PoolStats> {
        self.inner.pool_stats()
    }
    fn breaker_state(&self) -> Option<BreakerState> {
        Some(self.guard.breaker.state())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use dl_models::{Entity, FieldType};

    use super::*;
    use dl_models::{Record, Value};

    impl Guarded {
        /// As the seam's callers see it.
        fn b(&self) -> &dyn Backend {
            self
        }
    }
    use crate::backends::memory::MemoryBackend;

    /// What the scripted backend does on its next call.
    #[derive(Debug, Clone, Copy)]
    enum Act {
        /// A fault after which the outcome is unknown (the request may
        /// have been sent).
        Fail,
        /// A fault before anything was sent (no connection could be had).
        FailUnsent,
        /// The call is applied, then its answer is lost.
        LoseAnswer,
        NotFound,
        Slow(Duration),
        Hang,
    }

    /// A backend that follows a script, then behaves (the memory model):
    /// the guard's cases a live server cannot show on demand. The live
    /// fault tests put a proxy between the client and each real store.
    #[derive(Debug, Default)]
    struct Scripted {
        inner: MemoryBackend,
        script: Mutex<VecDeque<Act>>,
        calls: AtomicUsize,
        lose_answer: std::sync::atomic::AtomicBool,
    }

    impl Scripted {
        fn then(&self, acts: &[Act]) {
            self.script.lock().unwrap().extend(acts.iter().copied());
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
        async fn act(&self, op: Operation) -> Result<()> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let next = self.script.lock().unwrap().pop_front();
            match next {
                None => Ok(()),
                Some(Act::Fail) => Err(Error::Unavailable {
                    store: Store::Memory,
                    operation: op,
                    reason: "scripted".into(),
                    sent: true,
                    source: None,
                }),
                Some(Act::FailUnsent) => Err(Error::Unavailable {
                    store: Store::Memory,
                    operation: op,
                    reason: "scripted, never sent".into(),
                    sent: false,
                    source: None,
                }),
                Some(Act::LoseAnswer) => {
                    self.lose_answer.store(true, Ordering::SeqCst);
                    Ok(())
                }
                Some(Act::NotFound) => Err(Error::NotFound { entity: "notes" }),
                Some(Act::Slow(d)) => {
                    tokio::time::sleep(d).await;
                    Ok(())
                }
                Some(Act::Hang) => std::future::pending().await,
            }
        }
        /// The answer of an applied call, or a lost answer.
        fn answer<T>(&self, op: Operation, applied: Result<T>) -> Result<T> {
            if self.lose_answer.swap(false, Ordering::SeqCst) {
                drop(applied);
                return Err(Error::Unavailable {
                    store: Store::Memory,
                    operation: op,
                    reason: "scripted, answer lost".into(),
                    sent: true,
                    source: None,
                });
            }
            applied
        }
    }

    #[async_trait]
    impl Backend for Scripted {
        fn store(&self) -> Store {
            Store::Memory
        }
        fn capabilities(&self) -> Capabilities {
            self.inner.capabilities()
        }
        async fn call(&self, s: &'static EntitySchema, request: Request<'_>) -> Result<Response> {
            let op = request.operation();
            if op != Operation::Prepare {
                self.act(op).await?;
            }
            let result = Backend::call(&self.inner, s, request).await;
            if op.is_read() {
                result
            } else {
                self.answer(op, result)
            }
        }
        async fn begin(&self) -> Result<Box<dyn Transaction>> {
            self.act(Operation::Transaction).await?;
            self.inner.begin_transaction().await
        }
        async fn change_feed(&self) -> Result<Arc<dyn crate::feed::ChangeFeed>> {
            Backend::change_feed(&self.inner).await
        }
    }

    #[async_trait]
    impl Probe for Scripted {
        async fn ping(&self) -> Result<()> {
            self.act(Operation::Ping).await
        }
        fn pool_stats(&self) -> Option<crate::backend::PoolStats> {
            None
        }
        fn breaker_state(&self) -> Option<BreakerState> {
            None
        }
    }

    #[derive(Clone, serde::Serialize, serde::Deserialize, dl_models::Entity)]
    #[entity(name = "notes")]
    struct Note {
        #[key]
        id: i64,
        body: String,
    }

    fn schema() -> &'static EntitySchema {
        let s = Note::schema();
        assert_eq!(s.key_field().ty, FieldType::Int);
        s
    }

    fn record(id: i64) -> Record {
        Record(vec![Value::Int(id), Value::Text("fake".into())])
    }

    fn no_retry() -> RetrySettings {
        RetrySettings {
            max_retries: 0,
            ..RetrySettings::default()
        }
    }

    fn guard(script: &Arc<Scripted>, retry: RetrySettings) -> Guarded {
        let breaker = BreakerSettings {
            window: 10,
            min_calls: 4,
            ..BreakerSettings::default()
        };
        Guarded::new(
            Arc::clone(script) as Arc<dyn Backend>,
            Duration::from_secs(1),
            breaker,
            retry,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_on_transient_failures_and_fails_fast() {
        let script = Arc::new(Scripted::default());
        let g = guard(&script, no_retry());
        script.then(&[Act::Fail; 4]);
        for _ in 0..4 {
            assert!(matches!(
                g.b().get(schema(), &Value::Int(1)).await,
                Err(Error::Unavailable { .. })
            ));
        }
        assert_eq!(g.breaker().state(), BreakerState::Open);
        let before = script.calls();
        let started = Instant::now();
        let r = g.b().get(schema(), &Value::Int(1)).await;
        assert!(
            matches!(
                r,
                Err(Error::CircuitOpen {
                    store: Store::Memory
                })
            ),
            "{r:?}"
        );
        assert_eq!(
            script.calls(),
            before,
            "an open breaker does not call the store"
        );
        assert_eq!(started.elapsed(), Duration::ZERO, "fails at once");
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_probes_close_it_again() {
        let script = Arc::new(Scripted::default());
        let g = guard(&script, no_retry());
        script.then(&[Act::Fail; 4]);
        for _ in 0..4 {
            let _ = g.b().get(schema(), &Value::Int(1)).await;
        }
        assert_eq!(g.breaker().state(), BreakerState::Open);
        tokio::time::advance(BreakerSettings::default().wait_in_open).await;
        assert_eq!(g.breaker().state(), BreakerState::HalfOpen);
        for _ in 0..3 {
            assert!(g.b().get(schema(), &Value::Int(1)).await.is_ok());
        }
        assert_eq!(g.breaker().state(), BreakerState::Closed);
        assert_eq!(
            g.breaker().transitions(),
            3,
            "closed → open → half-open → closed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_it_again() {
        let script = Arc::new(Scripted::default());
        let g = guard(&script, no_retry());
        script.then(&[Act::Fail; 4]);
        for _ in 0..4 {
            let _ = g.b().get(schema(), &Value::Int(1)).await;
        }
        tokio::time::advance(BreakerSettings::default().wait_in_open).await;
        script.then(&[Act::Fail]);
        assert!(g.b().get(schema(), &Value::Int(1)).await.is_err());
        assert_eq!(g.breaker().state(), BreakerState::Open);
        assert!(matches!(
            g.b().get(schema(), &Value::Int(1)).await,
            Err(Error::CircuitOpen { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn answers_that_are_not_faults_do_not_open_it() {
        let script = Arc::new(Scripted::default());
        let g = guard(&script, no_retry());
        script.then(&[Act::NotFound; 10]);
        for _ in 0..10 {
            assert!(matches!(
                g.b().get(schema(), &Value::Int(1)).await,
                Err(Error::NotFound { .. })
            ));
        }
        assert_eq!(g.breaker().state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_calls_open_it() {
        let script = Arc::new(Scripted::default());
        let g = guard(&script, no_retry());
        script.then(&[Act::Slow(Duration::from_millis(2500)); 4]);
        let deadline = Duration::from_secs(3);
        let mut g = g;
        g.guard.deadline = deadline;
        for _ in 0..4 {
            assert!(g.b().get(schema(), &Value::Int(1)).await.is_ok());
        }
        assert_eq!(g.breaker().state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_store_fails_at_the_deadline() {
        let script = Arc::new(Scripted::default());
        let g = guard(&script, no_retry());
        script.then(&[Act::Hang]);
        let started = Instant::now();
        let r = g.b().get(schema(), &Value::Int(1)).await;
        assert!(
            matches!(r, Err(Error::Timeout { after, .. }) if after == Duration::from_secs(1)),
            "{r:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        // The next call is served normally.
        assert!(g.b().get(schema(), &Value::Int(1)).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn reads_are_retried_with_backoff() {
        let script = Arc::new(Scripted::default());
        let g = guard(&script, RetrySettings::default());
        g.b().insert(schema(), &record(7)).await.unwrap();
        let before = script.calls();
        script.then(&[Act::Fail, Act::Fail]);
        let started = Instant::now();
        let got = g.b().get(schema(), &Value::Int(7)).await.unwrap();
        assert!(got.is_some());
        assert_eq!(script.calls() - before, 3, "two retries");
        assert!(
            started.elapsed() <= Duration::from_millis(50 + 100),
            "full jitter stays under the ceilings"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn inserts_and_non_transient_errors_are_not_retried() {
        let script = Arc::new(Scripted::default());
        // A breaker that stays closed, so only the retry rules show.
        let breaker = BreakerSettings {
            min_calls: 1000,
            window: 1000,
            ..BreakerSettings::default()
        };
        let g = Guarded::new(
            Arc::clone(&script) as Arc<dyn Backend>,
            Duration::from_secs(1),
            breaker,
            RetrySettings::default(),
        );
        script.then(&[Act::Fail]);
        assert!(g.b().insert(schema(), &record(1)).await.is_err());
        assert_eq!(
            script.calls(),
            1,
            "an insert that may have been sent is not retried"
        );
        script.then(&[Act::NotFound]);
        assert!(matches!(
            g.b().get(schema(), &Value::Int(1)).await,
            Err(Error::NotFound { .. })
        ));
        assert_eq!(script.calls(), 2, "NotFound is an answer");
        script.then(&[Act::Fail, Act::Fail, Act::Fail, Act::Fail]);
        assert!(matches!(
            g.b().get(schema(), &Value::Int(1)).await,
            Err(Error::Unavailable { .. })
        ));
        assert_eq!(script.calls(), 6, "at most max_retries (3) retries");
    }

    /// A write whose answer was lost is not sent again (it may have been
    /// applied: a retry would answer NotFound for a delete that worked, a
    /// duplicate for an insert that worked); the caller gets an error that
    /// says the outcome is unknown, and the store holds the write once. A
    /// write that provably never left is retried.
    #[tokio::test(start_paused = true)]
    async fn writes_are_retried_only_when_never_sent() {
        let script = Arc::new(Scripted::default());
        let g = guard(&script, RetrySettings::default());
        let s = schema();
        let lost = |r: Result<()>, what: &str| {
            let e = r.expect_err(what);
            assert!(e.outcome_unknown(), "{what}: {e}");
            assert!(e.to_string().contains("outcome unknown"), "{e}");
        };
        let writes: [(&str, Operation); 6] = [
            ("insert", Operation::Insert),
            ("insert_many", Operation::InsertMany),
            ("update", Operation::Update),
            ("replace", Operation::Replace),
            ("upsert", Operation::Upsert),
            ("delete", Operation::Delete),
        ];
        for (what, op) in writes {
            g.b().upsert(s, &record(1)).await.unwrap();
            g.b().delete(s, &Value::Int(2)).await.unwrap();
            let before = script.calls();
            script.then(&[Act::LoseAnswer]);
            let patch = crate::query::ValidPatch {
                sets: vec![(1, Value::Text("new".into()))],
                expected_version: None,
            };
            let result = match op {
                Operation::Insert => g.b().insert(s, &record(2)).await,
                Operation::InsertMany => g.b().insert_many(s, &[record(2)]).await,
                Operation::Update => g.b().update(s, &Value::Int(1), &patch).await.map(|_| ()),
                Operation::Replace => g.b().replace(s, &record(1), None).await.map(|_| ()),
                Operation::Upsert => g.b().upsert(s, &record(2)).await.map(|_| ()),
                _ => g.b().delete(s, &Value::Int(1)).await.map(|_| ()),
            };
            lost(result, what);
            assert_eq!(script.calls() - before, 1, "{what}: sent once");
            // The store holds the write, once.
            let one = script.inner.get(s, &Value::Int(1)).await.unwrap();
            let two = script.inner.get(s, &Value::Int(2)).await.unwrap();
            match op {
                Operation::Insert | Operation::InsertMany | Operation::Upsert => {
                    assert!(two.is_some(), "{what} applied");
                }
                Operation::Delete => assert!(one.is_none(), "{what} applied"),
                _ => assert!(one.is_some(), "{what} applied"),
            }
            // Never sent: retried, and the answer is the store's.
            let before = script.calls();
            script.then(&[Act::FailUnsent]);
            let again = match op {
                Operation::Delete => g.b().delete(s, &Value::Int(2)).await.map(|_| ()),
                _ => g.b().upsert(s, &record(3)).await.map(|_| ()),
            };
            again.unwrap_or_else(|e| panic!("{what}: a write never sent is retried: {e}"));
            assert_eq!(script.calls() - before, 2, "{what}: one retry");
        }
        // Reads are retried after any transient fault.
        let before = script.calls();
        script.then(&[Act::Fail]);
        g.b().get(s, &Value::Int(3)).await.unwrap();
        assert_eq!(script.calls() - before, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_retry_budget_caps_extra_load() {
        let script = Arc::new(Scripted::default());
        let retry = RetrySettings {
            budget_ratio: 0.0,
            budget_floor_per_sec: 1.0,
            ..RetrySettings::default()
        };
        let breaker = BreakerSettings {
            min_calls: 1000,
            window: 1000,
            ..BreakerSettings::default()
        };
        let g = Guarded::new(
            Arc::clone(&script) as Arc<dyn Backend>,
            Duration::from_secs(1),
            breaker,
            retry,
        );
        script.then(&[Act::Fail; 100]);
        for _ in 0..20 {
            let _ = g.b().get(schema(), &Value::Int(1)).await;
        }
        // 20 calls; the budget held about one token (plus refill while the
        // retries slept), so far fewer than 2 retries per call were made.
        let retries = script.calls() - 20;
        assert!(retries < 10, "{retries} retries");
    }

    #[test]
    fn calls_are_counted_by_store_operation_and_outcome() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let script = Arc::new(Scripted::default());
                let g = guard(&script, no_retry());
                g.b().insert(schema(), &record(1)).await.unwrap();
                assert!(g.b().get(schema(), &Value::Int(1)).await.unwrap().is_some());
                script.then(&[Act::NotFound]);
                assert!(g.b().get(schema(), &Value::Int(1)).await.is_err());
            });
        });
        let counters: Vec<(Vec<String>, DebugValue)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == "dl_calls_total")
            .map(|(key, _, _, value)| {
                (
                    key.key()
                        .labels()
                        .map(|l| format!("{}={}", l.key(), l.value()))
                        .collect(),
                    value,
                )
            })
            .collect();
        let count = |op: &str, outcome: &str| {
            counters
                .iter()
                .find(|(l, _)| {
                    l.contains(&"store=memory".to_owned())
                        && l.contains(&format!("operation={op}"))
                        && l.contains(&format!("outcome={outcome}"))
                })
                .map(|(_, v)| v)
        };
        assert_eq!(
            count("insert", "ok"),
            Some(&DebugValue::Counter(1)),
            "{counters:?}"
        );
        assert_eq!(
            count("get", "ok"),
            Some(&DebugValue::Counter(1)),
            "{counters:?}"
        );
        assert_eq!(
            count("get", "not_found"),
            Some(&DebugValue::Counter(1)),
            "{counters:?}"
        );
    }
}
