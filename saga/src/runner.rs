//! The runner: starts sagas, drives each forward or backward under a
//! lease, and resumes the sagas a dead runner left.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dl_privacy::Privacy;
use dl_repositories::{Error, Operation};
use futures::FutureExt as _;
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::context::{FailureKind, Phase, StepContext, StepError};
use crate::definition::{SagaDefinition, Step, StepKind};
use crate::log::{Direction, SagaLog, SagaRow, SagaState, Save, StepRecord, StepState};

/// How the runner runs sagas.
#[derive(Debug, Clone)]
pub struct SagaOptions {
    /// How long a runner's hold on a saga lasts without renewal (default
    /// 30 s); it is renewed every third of it. A runner that dies loses its
    /// sagas to another after this long.
    pub lease: Duration,
    /// How long one attempt of a step may take by default (30 s).
    pub step_timeout: Duration,
    /// How many times the action of a compensatable step or of the pivot
    /// is tried before the saga turns back (default 3).
    pub attempts: u32,
    /// After how many failed attempts in a row a compensation or a
    /// retriable step leaves its saga stuck (default 10).
    pub stuck_after: u32,
    /// The first pause between attempts (default 100 ms), doubled each
    /// time up to `backoff_max` (default 10 s), with jitter.
    pub backoff_min: Duration,
    /// The longest pause between attempts.
    pub backoff_max: Duration,
    /// How many sagas a recovery takes over at once (default 500).
    pub recover_batch: usize,
    /// How many sagas a recovery drives at once (default 64).
    pub concurrency: usize,
}

impl Default for SagaOptions {
    fn default() -> Self {
        SagaOptions {
            lease: Duration::from_secs(30),
            step_timeout: Duration::from_secs(30),
            attempts: 3,
            stuck_after: 10,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            recover_batch: 500,
            concurrency: 64,
        }
    }
}

impl SagaOptions {
    /// Checks the options.
    ///
    /// # Errors
    /// `Invalid` naming the setting.
    pub fn check(&self) -> Result<(), Error> {
        let bad =
            |field: &str, reason: &'static str| Err(Error::invalid("saga", Some(field), reason));
        if self.lease < Duration::from_millis(300) || self.lease > Duration::from_secs(3600) {
            return bad("saga.lease", "expected a lease of 300ms to 1h");
        }
        if self.step_timeout.is_zero() {
            return bad("saga.step_timeout", "expected a timeout above 0");
        }
        if self.attempts == 0 || self.stuck_after == 0 {
            return bad("saga.attempts", "expected at least 1 attempt");
        }
        if self.backoff_min > self.backoff_max {
            return bad("saga.backoff", "expected backoff_min at most backoff_max");
        }
        if self.recover_batch == 0 || self.concurrency == 0 {
            return bad("saga.concurrency", "expected at least 1");
        }
        Ok(())
    }
}

/// Where the runner reads the time (milliseconds since the Unix epoch):
/// leases expire by it. Tests put in their own.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now.
    fn now_millis(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

/// How a saga ended, as far as this runner saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every step succeeded.
    Completed,
    /// It turned back at `step`; every compensation needed ran.
    Compensated {
        /// The step that failed.
        step: String,
    },
    /// It waits for an operator: a compensation or a retriable step kept
    /// failing, or its definition's version is not registered.
    Stuck {
        /// The step it is stuck at, if one.
        step: Option<String>,
    },
    /// Another runner took it over (this runner's lease was lost) or an
    /// operator aborted it: this runner stopped driving it.
    TakenOver,
}

/// What a recovery did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Recovery {
    /// Sagas taken over.
    pub resumed: usize,
    /// Of them, completed.
    pub completed: usize,
    /// Compensated.
    pub compensated: usize,
    /// Stuck.
    pub stuck: usize,
    /// Lost again to another runner, or failed on a store fault (left for
    /// a later recovery).
    pub left: usize,
}

/// The sagas of one process: definitions, the log, and this runner's
/// identity. Cheap to clone.
#[derive(Clone)]
pub struct Sagas {
    inner: Arc<Inner>,
}

struct Inner {
    log: SagaLog,
    privacy: Arc<Privacy>,
    owner: String,
    options: SagaOptions,
    clock: Arc<dyn Clock>,
    definitions: RwLock<HashMap<String, Vec<Arc<SagaDefinition>>>>,
    /// Until when every lease of this runner was last renewed.
    renewed_until: AtomicI64,
    renewer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(h) = self
            .renewer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            h.abort();
        }
    }
}

impl fmt::Debug for Sagas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sagas")
            .field("owner", &self.inner.owner)
            .field("log", &self.inner.log.target().store())
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// The sealing context of one saga's part.
fn context(id: &str, part: &str) -> Vec<u8> {
    format!("dl_saga/{id}/{part}").into_bytes()
}

fn log_fault(e: &Error) -> bool {
    e.is_retryable()
}

impl Sagas {
    /// The sagas of this process, their log in `log`, inputs and outputs
    /// sealed with `privacy` (the configured key, never a random one: a
    /// saga must open in the process that resumes it).
    ///
    /// # Errors
    /// `Invalid` for bad options.
    pub fn new(log: SagaLog, privacy: Arc<Privacy>, options: SagaOptions) -> Result<Self, Error> {
        options.check()?;
        Ok(Sagas {
            inner: Arc::new(Inner {
                log,
                privacy,
                owner: format!("runner-{}", Uuid::new_v4().simple()),
                options,
                clock: Arc::new(SystemClock),
                definitions: RwLock::default(),
                renewed_until: AtomicI64::new(0),
                renewer: std::sync::Mutex::new(None),
            }),
        })
    }

    /// The same, reading the time from `clock` (tests).
    ///
    /// # Errors
    /// As [`Sagas::new`].
    pub fn with_clock(
        log: SagaLog,
        privacy: Arc<Privacy>,
        options: SagaOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        let s = Sagas::new(log, privacy, options)?;
        let mut inner = Arc::into_inner(s.inner).expect("just made");
        inner.clock = clock;
        Ok(Sagas {
            inner: Arc::new(inner),
        })
    }

    /// This runner's name in the log (`owner` of the sagas it drives).
    #[must_use]
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// The log.
    #[must_use]
    pub fn log(&self) -> &SagaLog {
        &self.inner.log
    }

    /// Registers a definition. Several versions of one name may be
    /// registered: a saga finishes under the version it started with.
    ///
    /// # Errors
    /// `Invalid` when that name and version is registered already.
    pub fn register(&self, definition: SagaDefinition) -> Result<(), Error> {
        let mut defs = self
            .inner
            .definitions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let versions = defs.entry(definition.name.clone()).or_default();
        if versions.iter().any(|d| d.version == definition.version) {
            return Err(Error::invalid(
                "saga",
                Some(&definition.name),
                "this saga's version is registered already",
            ));
        }
        versions.push(Arc::new(definition));
        versions.sort_by_key(|d| d.version);
        Ok(())
    }

    fn definition(&self, name: &str, version: Option<u32>) -> Option<Arc<SagaDefinition>> {
        let defs = self
            .inner
            .definitions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let versions = defs.get(name)?;
        match version {
            Some(v) => versions.iter().find(|d| d.version == v).cloned(),
            None => versions.last().cloned(),
        }
    }

    /// Writes a new saga of the latest registered version of `name` into
    /// the log, held by this runner: its id and definition.
    async fn create(
        &self,
        name: &str,
        version: Option<u32>,
        input: &impl Serialize,
    ) -> Result<(SagaRow, Arc<SagaDefinition>), Error> {
        let def = self.definition(name, version).ok_or_else(|| {
            Error::invalid(
                "saga",
                Some(name),
                if version.is_some() {
                    "no saga of this name and version is registered"
                } else {
                    "no saga of this name is registered"
                },
            )
        })?;
        let input = serde_json::to_vec(input).map_err(|_| {
            Error::invalid(
                "saga",
                Some("input"),
                "the input does not serialize as JSON",
            )
        })?;
        let id = Uuid::new_v4().to_string();
        let now = self.inner.clock.now_millis();
        let row = SagaRow {
            input: self.inner.privacy.seal(&context(&id, "input"), &input),
            id,
            name: def.name.clone(),
            version: def.version,
            state: SagaState::Running,
            direction: Direction::Forward,
            cursor: 0,
            pivoted: false,
            steps: def
                .steps
                .iter()
                .map(|s| StepRecord::pending(&s.name))
                .collect(),
            error_kind: None,
            error: None,
            owner: Some(self.inner.owner.clone()),
            lease_until: now + self.lease_millis(),
            fence: 1,
            recoveries: 0,
            created_at: now,
            updated_at: now,
        };
        self.inner.log.create(&row).await?;
        metrics::counter!("dl_saga_started_total", "saga" => def.name.clone()).increment(1);
        self.ensure_renewer();
        Ok((row, def))
    }

    /// Starts a saga of the latest registered version of `name` with
    /// `input`, and drives it in the background: its id, once its log row
    /// is written (from then on it ends completed or compensated, in this
    /// process or, if this one dies, in another).
    ///
    /// # Errors
    /// `Invalid` for an unknown name or an input that is not JSON; the
    /// log's store error (then nothing ran).
    pub async fn start(&self, name: &str, input: &impl Serialize) -> Result<Uuid, Error> {
        let (row, def) = self.create(name, None, input).await?;
        let id = Uuid::parse_str(&row.id).unwrap_or_default();
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.drive(row, def).await {
                tracing::warn!(saga = %id, error = %e, "a saga stopped on a saga-log fault; a recovery resumes it");
            }
        });
        Ok(id)
    }

    /// Runs a saga of `name` (the latest version) with `input` to its end
    /// here: its id and outcome.
    ///
    /// # Errors
    /// As [`Sagas::start`]; and the log's store error when it failed while
    /// the saga ran (the saga is resumed by a recovery).
    pub async fn run(&self, name: &str, input: &impl Serialize) -> Result<(Uuid, Outcome), Error> {
        self.run_version(name, None, input).await
    }

    /// As [`Sagas::run`], of one version.
    ///
    /// # Errors
    /// As [`Sagas::run`].
    pub async fn run_version(
        &self,
        name: &str,
        version: Option<u32>,
        input: &impl Serialize,
    ) -> Result<(Uuid, Outcome), Error> {
        let (row, def) = self.create(name, version, input).await?;
        let id = Uuid::parse_str(&row.id).unwrap_or_default();
        Ok((id, self.drive(row, def).await?))
    }

    fn lease_millis(&self) -> i64 {
        i64::try_from(self.inner.options.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// Starts the task that renews this runner's leases (once).
    fn ensure_renewer(&self) {
        let mut slot = self
            .inner
            .renewer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_some() {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let every = self.inner.options.lease / 3;
        *slot = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                let until = inner.clock.now_millis()
                    + i64::try_from(inner.options.lease.as_millis()).unwrap_or(i64::MAX);
                match inner.log.renew(&inner.owner, until).await {
                    Ok(_) => inner.renewed_until.store(until, Ordering::Release),
                    Err(e) => {
                        tracing::warn!(owner = %inner.owner, error = %e, "renewing the saga leases failed");
                    }
                }
            }
        }));
    }

    /// Takes over every open saga whose lease expired (a dead runner's),
    /// in batches, and drives each to its end or until it is stuck.
    ///
    /// # Errors
    /// The log's store error while taking sagas over.
    pub async fn recover(&self) -> Result<Recovery, Error> {
        use futures::StreamExt as _;
        let mut report = Recovery::default();
        // Bounded: each round takes sagas whose leases expired; a saga
        // this runner drives is held by it (not taken again).
        for _ in 0..1_000_000 {
            let now = self.inner.clock.now_millis();
            let rows = self
                .inner
                .log
                .claim_expired(
                    &self.inner.owner,
                    now,
                    now + self.lease_millis(),
                    self.inner.options.recover_batch,
                )
                .await?;
            if rows.is_empty() {
                break;
            }
            self.ensure_renewer();
            report.resumed += rows.len();
            metrics::counter!("dl_saga_recoveries_total").increment(rows.len() as u64);
            let outcomes: Vec<Result<Outcome, Error>> = futures::stream::iter(rows)
                .map(|row| self.drive_row(row))
                .buffer_unordered(self.inner.options.concurrency)
                .collect()
                .await;
            for o in outcomes {
                match o {
                    Ok(Outcome::Completed) => report.completed += 1,
                    Ok(Outcome::Compensated { .. }) => report.compensated += 1,
                    Ok(Outcome::Stuck { .. }) => report.stuck += 1,
                    Ok(Outcome::TakenOver) | Err(_) => report.left += 1,
                }
            }
        }
        Ok(report)
    }

    /// Recovers now and then every `every` (a first time at once) until
    /// the task is aborted: sagas left by runners that die later are
    /// resumed too.
    #[must_use]
    pub fn spawn_recovery(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                match this.recover().await {
                    Ok(r) if r.resumed > 0 => {
                        tracing::info!(
                            resumed = r.resumed,
                            completed = r.completed,
                            compensated = r.compensated,
                            stuck = r.stuck,
                            "resumed sagas"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "a saga recovery failed; trying again"),
                }
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Drives a saga taken over: by its definition if registered, else
    /// stuck with a message that names the version.
    async fn drive_row(&self, row: SagaRow) -> Result<Outcome, Error> {
        match self.definition(&row.name, Some(row.version)) {
            Some(def) => self.drive(row, def).await,
            None => {
                let reason = format!(
                    "saga {} version {} is not registered in this runner",
                    row.name, row.version
                );
                let mut d = Driver::new(self, row, None);
                d.stuck(None, "unknown_version", &reason).await
            }
        }
    }

    async fn drive(&self, row: SagaRow, def: Arc<SagaDefinition>) -> Result<Outcome, Error> {
        let span =
            tracing::info_span!("saga", id = %row.id, name = %row.name, version = row.version);
        let d = Driver::new(self, row, Some(def));
        d.run().instrument(span).await
    }

    /// Puts a stuck saga back to work (the way it was going), for any
    /// runner to take: the row after.
    ///
    /// # Errors
    /// `NotFound` for no such saga; `Invalid` when it is not stuck; the
    /// store's.
    pub async fn retry(&self, id: &str) -> Result<SagaRow, Error> {
        let row = self.get_row(id).await?;
        let state = match row.direction {
            Direction::Forward => SagaState::Running,
            Direction::Backward => SagaState::Compensating,
        };
        self.inner
            .log
            .reset(
                &row.id,
                &[SagaState::Stuck],
                state,
                row.direction,
                self.inner.clock.now_millis(),
            )
            .await?
            .ok_or_else(|| Error::invalid("saga", Some("id"), "only a stuck saga can be retried"))
    }

    /// Turns a saga back (its compensations run, by any runner): one
    /// running, or stuck going forward, whose pivot has not succeeded.
    /// The runner driving it stops at its next write (its fencing token
    /// is old). The row after.
    ///
    /// # Errors
    /// `NotFound` for no such saga; `Invalid` when it has ended, is past
    /// its pivot, or is compensating already; the store's.
    pub async fn abort(&self, id: &str) -> Result<SagaRow, Error> {
        let row = self.get_row(id).await?;
        if row.pivoted {
            return Err(Error::invalid(
                "saga",
                Some("id"),
                "the saga is past its pivot: it can only go forward (retry it)",
            ));
        }
        if row.direction == Direction::Backward || row.state.is_final() {
            return Err(Error::invalid(
                "saga",
                Some("id"),
                "only a running saga, or one stuck going forward, can be aborted",
            ));
        }
        self.inner
            .log
            .reset(
                &row.id,
                &[SagaState::Running, SagaState::Stuck],
                SagaState::Compensating,
                Direction::Backward,
                self.inner.clock.now_millis(),
            )
            .await?
            .ok_or_else(|| {
                Error::invalid("saga", Some("id"), "the saga changed meanwhile: look again")
            })
    }

    /// Saga `id`'s row.
    ///
    /// # Errors
    /// `Invalid` for an id that is not a UUID; `NotFound`; the store's.
    pub async fn row(&self, id: &str) -> Result<SagaRow, Error> {
        self.get_row(id).await
    }

    async fn get_row(&self, id: &str) -> Result<SagaRow, Error> {
        let id = Uuid::parse_str(id)
            .map_err(|_| Error::invalid("saga", Some("id"), "expected a saga id (a UUID)"))?
            .to_string();
        self.inner
            .log
            .get(&id)
            .await?
            .ok_or(Error::NotFound { entity: "saga" })
    }

    /// Why a saga turned back or is stuck (opened from the log): the
    /// reason a step gave, which names no value.
    ///
    /// # Errors
    /// As the log's; `Invalid` when the reason does not open (another key).
    pub fn reason(&self, row: &SagaRow) -> Result<Option<String>, Error> {
        let Some(sealed) = &row.error else {
            return Ok(None);
        };
        let text = self
            .inner
            .privacy
            .open(&context(&row.id, "error"), sealed)
            .map_err(|_| {
                Error::invalid(
                    "saga",
                    Some("error"),
                    "the reason does not open with the configured keys",
                )
            })?;
        Ok(Some(String::from_utf8_lossy(&text).into_owned()))
    }
}

/// One saga being driven by this runner.
struct Driver<'a> {
    sagas: &'a Sagas,
    def: Option<Arc<SagaDefinition>>,
    row: SagaRow,
    /// Until when this runner's lease on it runs, as it last wrote it.
    lease_until: i64,
    /// The step a runner that died may have been running when this one
    /// took the saga over: its effect may be applied, whatever the attempts
    /// here say (so it is compensated if the saga turns back at it).
    inherited: Option<usize>,
}

impl<'a> Driver<'a> {
    fn new(sagas: &'a Sagas, row: SagaRow, def: Option<Arc<SagaDefinition>>) -> Self {
        Driver {
            lease_until: row.lease_until,
            inherited: (row.fence > 1 && row.direction == Direction::Forward).then_some(row.cursor),
            sagas,
            def,
            row,
        }
    }

    fn inner(&self) -> &Inner {
        &self.sagas.inner
    }

    /// Whether this runner may still act for the saga: its lease (as it
    /// last wrote or renewed it) has not run out. A runner past it stops
    /// before the next step; one that is slow past it anyway is refused at
    /// its next write by the fencing token, and the step's idempotency key
    /// keeps its effect once.
    fn holds_lease(&self) -> bool {
        let until = self
            .lease_until
            .max(self.inner().renewed_until.load(Ordering::Acquire));
        self.inner().clock.now_millis() < until
    }

    async fn run(mut self) -> Result<Outcome, Error> {
        let def = Arc::clone(self.def.as_ref().expect("a definition"));
        let input: Arc<Value> = Arc::new({
            let bytes = self
                .inner()
                .privacy
                .open(&context(&self.row.id, "input"), &self.row.input)
                .map_err(|_| {
                    Error::invalid(
                        "saga",
                        Some("input"),
                        "the saga's input does not open with the configured keys",
                    )
                });
            match bytes.map(|b| serde_json::from_slice(&b)) {
                Ok(Ok(v)) => v,
                _ => {
                    return self
                        .stuck(
                            None,
                            "input",
                            "the saga's input does not open with the configured keys",
                        )
                        .await;
                }
            }
        });
        if self.row.steps.len() != def.steps.len() {
            return self
                .stuck(
                    None,
                    "definition",
                    "the saga's log does not match its definition's steps",
                )
                .await;
        }
        loop {
            match self.row.direction {
                Direction::Forward => {
                    let i = self.row.cursor;
                    if i >= def.steps.len() {
                        return self.finish(SagaState::Completed).await;
                    }
                    if !self.holds_lease() {
                        return Ok(self.taken_over());
                    }
                    let step = &def.steps[i];
                    match self.attempt_action(step, i, &input).await {
                        Ok(output) => {
                            let sealed = self.inner().privacy.seal(
                                &context(&self.row.id, &step.name),
                                output.to_string().as_bytes(),
                            );
                            let now = self.inner().clock.now_millis();
                            let rec = &mut self.row.steps[i];
                            rec.state = StepState::Done;
                            rec.output = Some(sealed);
                            rec.error_kind = None;
                            rec.at = now;
                            self.row.cursor = i + 1;
                            if step.kind == StepKind::Pivot {
                                self.row.pivoted = true;
                            }
                            if self.row.cursor == def.steps.len() {
                                return self.finish(SagaState::Completed).await;
                            }
                            if !self.save(SagaState::Running, true).await? {
                                return Ok(self.taken_over());
                            }
                        }
                        Err(Stop::TakenOver) => return Ok(self.taken_over()),
                        Err(Stop::Stuck(e)) => {
                            let reason = e.reason().to_owned();
                            self.row.steps[i].error_kind = Some(e.kind().name().to_owned());
                            return self.stuck(Some(i), e.kind().name(), &reason).await;
                        }
                        Err(Stop::Failed(e, maybe_applied)) => {
                            // Turn back: the steps before it, and this one
                            // if it may have applied its effect.
                            let now = self.inner().clock.now_millis();
                            let rec = &mut self.row.steps[i];
                            rec.state = if maybe_applied || e.kind() == FailureKind::Unknown {
                                StepState::Unknown
                            } else {
                                StepState::Failed
                            };
                            rec.error_kind = Some(e.kind().name().to_owned());
                            rec.at = now;
                            self.row.direction = Direction::Backward;
                            self.row.cursor = i + 1;
                            let sealed = self
                                .inner()
                                .privacy
                                .seal(&context(&self.row.id, "error"), e.reason().as_bytes());
                            self.row.error_kind =
                                Some(format!("{}:{}", step.name, e.kind().name()));
                            self.row.error = Some(sealed);
                            tracing::info!(step = %step.name, kind = e.kind().name(), "a saga step failed; compensating");
                            if !self.save(SagaState::Compensating, true).await? {
                                return Ok(self.taken_over());
                            }
                        }
                    }
                }
                Direction::Backward => {
                    // The last step at or before the cursor that applied
                    // (or may have) its effect.
                    let next = (0..self.row.cursor).rev().find(|&j| {
                        matches!(
                            self.row.steps[j].state,
                            StepState::Done | StepState::Unknown
                        ) && def.steps[j].compensation.is_some()
                    });
                    let Some(j) = next else {
                        return self.finish(SagaState::Compensated).await;
                    };
                    if !self.holds_lease() {
                        return Ok(self.taken_over());
                    }
                    let step = &def.steps[j];
                    match self.attempt_compensation(step, j, &input).await {
                        Ok(()) => {
                            let now = self.inner().clock.now_millis();
                            let rec = &mut self.row.steps[j];
                            rec.state = StepState::Compensated;
                            rec.at = now;
                            self.row.cursor = j;
                            if !(0..j).any(|k| {
                                matches!(
                                    self.row.steps[k].state,
                                    StepState::Done | StepState::Unknown
                                ) && def.steps[k].compensation.is_some()
                            }) {
                                return self.finish(SagaState::Compensated).await;
                            }
                            if !self.save(SagaState::Compensating, true).await? {
                                return Ok(self.taken_over());
                            }
                        }
                        Err(Stop::TakenOver) => return Ok(self.taken_over()),
                        Err(Stop::Stuck(e) | Stop::Failed(e, _)) => {
                            let reason = e.reason().to_owned();
                            return self.stuck(Some(j), e.kind().name(), &reason).await;
                        }
                    }
                }
            }
        }
    }

    fn taken_over(&self) -> Outcome {
        metrics::counter!("dl_saga_taken_over_total", "saga" => self.row.name.clone()).increment(1);
        tracing::info!("this runner no longer holds the saga's lease: it stopped driving it");
        Outcome::TakenOver
    }

    fn context(&self, index: usize, phase: Phase, attempt: u32, input: &Arc<Value>) -> StepContext {
        let outputs: Vec<(String, Value)> = self.row.steps[..index]
            .iter()
            .filter_map(|s| {
                let sealed = s.output.as_ref()?;
                let bytes = self
                    .inner()
                    .privacy
                    .open(&context(&self.row.id, &s.name), sealed)
                    .ok()?;
                Some((s.name.clone(), serde_json::from_slice(&bytes).ok()?))
            })
            .collect();
        StepContext {
            saga: Uuid::parse_str(&self.row.id).unwrap_or_default(),
            step: Arc::from(self.row.steps[index].name.as_str()),
            index,
            phase,
            attempt,
            fence: self.row.fence,
            input: Arc::clone(input),
            outputs: Arc::new(outputs),
        }
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        use backon::BackoffBuilder as _;
        backon::ExponentialBuilder::default()
            .with_min_delay(self.inner().options.backoff_min)
            .with_max_delay(self.inner().options.backoff_max)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// One attempt of `f`, bounded by the step's timeout; a panic is an
    /// unknown outcome.
    async fn once(
        &self,
        step: &Step,
        f: &crate::definition::StepFn,
        ctx: StepContext,
    ) -> Result<Value, StepError> {
        let timeout = step.timeout.unwrap_or(self.inner().options.step_timeout);
        let phase = ctx.phase.name();
        let attempt = ctx.attempt;
        let span = tracing::info_span!("saga_step", step = %step.name, phase, attempt);
        let started = std::time::Instant::now();
        let fut = std::panic::AssertUnwindSafe(f(ctx)).catch_unwind();
        let r = match tokio::time::timeout(timeout, fut).instrument(span).await {
            Err(_) => Err(StepError::unknown("the step timed out")),
            Ok(Err(_)) => Err(StepError::unknown("the step panicked")),
            Ok(Ok(r)) => r,
        };
        metrics::histogram!("dl_saga_step_seconds", "saga" => self.row.name.clone(), "step" => step.name.clone(), "phase" => phase)
            .record(started.elapsed().as_secs_f64());
        r
    }

    async fn attempt_action(
        &mut self,
        step: &Step,
        i: usize,
        input: &Arc<Value>,
    ) -> Result<Value, Stop> {
        let limit = match step.kind {
            StepKind::Retriable => self.inner().options.stuck_after,
            _ => step.attempts.unwrap_or(self.inner().options.attempts),
        };
        let mut pauses = self.backoff();
        let mut tried = 0;
        // Whether an attempt may have applied the effect: one that ended
        // unknown, or the dead runner's before this one took over.
        let mut maybe_applied = self.inherited == Some(i);
        loop {
            self.row.steps[i].attempts += 1;
            tried += 1;
            let ctx = self.context(i, Phase::Action, self.row.steps[i].attempts, input);
            let e = match self.once(step, &step.action, ctx).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            maybe_applied |= e.kind() == FailureKind::Unknown;
            let again = match step.kind {
                StepKind::Retriable => tried < limit,
                _ => e.kind() != FailureKind::Failed && tried < limit,
            };
            if !again {
                return Err(if step.kind == StepKind::Retriable {
                    Stop::Stuck(e)
                } else {
                    Stop::Failed(e, maybe_applied)
                });
            }
            tracing::debug!(step = %step.name, kind = e.kind().name(), "a saga step attempt failed; trying again");
            tokio::time::sleep(pauses.next().unwrap_or(self.inner().options.backoff_max)).await;
            if !self.holds_lease() {
                return Err(Stop::TakenOver);
            }
        }
    }

    async fn attempt_compensation(
        &mut self,
        step: &Step,
        j: usize,
        input: &Arc<Value>,
    ) -> Result<(), Stop> {
        let comp = step.compensation.as_ref().expect("checked: it has one");
        let mut pauses = self.backoff();
        let mut tried = 0;
        loop {
            self.row.steps[j].compensation_attempts += 1;
            tried += 1;
            let ctx = self.context(
                j,
                Phase::Compensation,
                self.row.steps[j].compensation_attempts,
                input,
            );
            let e = match self.once(step, comp, ctx).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if tried >= self.inner().options.stuck_after {
                return Err(Stop::Stuck(e));
            }
            tracing::debug!(step = %step.name, kind = e.kind().name(), "a compensation attempt failed; trying again");
            tokio::time::sleep(pauses.next().unwrap_or(self.inner().options.backoff_max)).await;
            if !self.holds_lease() {
                return Err(Stop::TakenOver);
            }
        }
    }

    /// Writes the row as it is now under `state`, keeping the lease (or
    /// releasing it). Retried on a transient fault (the write sets the
    /// same values again). Whether the lease still held.
    async fn save(&mut self, state: SagaState, keep: bool) -> Result<bool, Error> {
        let mut pauses = self.backoff();
        for tries in 1.. {
            let now = self.inner().clock.now_millis();
            let lease_until = keep.then(|| now + self.sagas.lease_millis());
            let s = Save {
                state,
                direction: self.row.direction,
                cursor: self.row.cursor,
                pivoted: self.row.pivoted,
                steps: &self.row.steps,
                error_kind: self.row.error_kind.as_deref(),
                error: self.row.error.as_deref(),
                lease_until,
                now,
            };
            match self
                .inner()
                .log
                .save(&self.row.id, &self.inner().owner, self.row.fence, &s)
                .await
            {
                Ok(held) => {
                    self.row.state = state;
                    if let Some(t) = lease_until {
                        self.lease_until = t;
                    }
                    return Ok(held);
                }
                Err(e) if log_fault(&e) && tries < 5 => {
                    tracing::debug!(error = %e, "a saga-log write failed; trying again");
                    tokio::time::sleep(pauses.next().unwrap_or_default()).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Backend {
            store: self.inner().log.target().store(),
            operation: Operation::Saga,
            message: "unreachable".into(),
            retryable: false,
            source: None,
        })
    }

    async fn finish(&mut self, state: SagaState) -> Result<Outcome, Error> {
        if !self.save(state, false).await? {
            return Ok(self.taken_over());
        }
        let name = self.row.name.clone();
        Ok(match state {
            SagaState::Completed => {
                metrics::counter!("dl_saga_completed_total", "saga" => name).increment(1);
                Outcome::Completed
            }
            _ => {
                metrics::counter!("dl_saga_compensated_total", "saga" => name).increment(1);
                let failed = self
                    .row
                    .steps
                    .iter()
                    .find(|s| {
                        matches!(s.state, StepState::Failed | StepState::Unknown)
                            || s.error_kind.is_some()
                    })
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                Outcome::Compensated { step: failed }
            }
        })
    }

    async fn stuck(
        &mut self,
        step: Option<usize>,
        kind: &str,
        reason: &str,
    ) -> Result<Outcome, Error> {
        let name = step.map(|i| self.row.steps[i].name.clone());
        self.row.error_kind = Some(match &name {
            Some(s) => format!("{s}:{kind}"),
            None => kind.to_owned(),
        });
        self.row.error = Some(
            self.inner()
                .privacy
                .seal(&context(&self.row.id, "error"), reason.as_bytes()),
        );
        if !self.save(SagaState::Stuck, false).await? {
            return Ok(self.taken_over());
        }
        metrics::counter!("dl_saga_stuck_total", "saga" => self.row.name.clone()).increment(1);
        tracing::error!(saga = %self.row.id, name = %self.row.name, step = name.as_deref().unwrap_or("-"), kind, "a saga is stuck: it needs an operator (data-layer saga show / retry)");
        Ok(Outcome::Stuck { step: name })
    }
}

/// Why an attempt loop stopped.
enum Stop {
    /// The step failed for good (turn back); whether an attempt of it may
    /// have applied its effect.
    Failed(StepError, bool),
    /// It kept failing past the limit (stuck).
    Stuck(StepError),
    /// The lease ran out.
    TakenOver,
}
