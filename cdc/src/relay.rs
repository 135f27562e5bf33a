//! The relay: a named consumer of one store's change feed that redacts
//! each change, delivers the batch to every sink, then records it.
//!
//! One batch, in order:
//! 1. read up to `batch` events after the feed checkpoint (commit order);
//! 2. redact each; a record off the schema becomes a dead letter;
//! 3. deliver the emitted events to every sink (each keeps an event once
//!    by its id), each through its guard, and at the same time write the
//!    redaction records and the dead letters to the ledger (each kept once
//!    by its event id);
//! 4. when all of 3 has succeeded: move the relay's checkpoint in the
//!    ledger and acknowledge the feed, at the same time.
//!
//! A crash before 4 delivers the batch again (the sinks and the ledger
//! keep each event once); a crash after the checkpoint moved but before
//! the feed's acknowledgement reads events the ledger already covers,
//! which are acknowledged without being sent again. So every event reaches
//! every sink at least once and is kept there once: effectively once. The
//! next batch is delivered only when every sink has acknowledged the last,
//! so a slow sink slows the relay. While a batch is delivered and recorded
//! the relay reads and redacts the next one (the events after the batch's
//! last position, what its next read would return): memory stays at most
//! two batches, and the read and the redaction are off the batch's
//! critical path. A batch read ahead is only memory: it is dropped when
//! anything fails, and a crash loses nothing but the read.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dl_repositories::feed::check_consumer_name;
use dl_repositories::{ChangeEvent, ChangeFeed, Error};

use crate::envelope::Redacted;
use crate::ledger::{DeadLetter, Ledger, LedgerBatch, RedactionRecord};
use crate::redact::Redactor;
use crate::sink::GuardedSink;

/// The largest batch a relay reads.
pub const MAX_RELAY_BATCH: usize = 5_000;

/// How a relay runs.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Events read, redacted and delivered at once (1 to 5,000; default 500).
    pub batch: usize,
    /// The CloudEvents `source` of its events (default `/data-layer/<store>`).
    pub source: Option<String>,
    /// How long it waits when the feed has nothing new (default 100 ms).
    pub idle: Duration,
    /// How long it waits after a failed batch before trying again
    /// (default 1 s; the guard has retried already).
    pub backoff: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            batch: 500,
            source: None,
            idle: Duration::from_millis(100),
            backoff: Duration::from_secs(1),
        }
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Events read from the feed.
    pub read: usize,
    /// Events delivered to the sinks.
    pub emitted: usize,
    /// Changes dead-lettered (not emitted).
    pub dead_lettered: usize,
    /// Events the ledger already covered (acknowledged, not sent again).
    pub skipped: usize,
    /// The feed position acknowledged (0 when nothing was read).
    pub position: u64,
}

/// A relay from one feed to its sinks.
pub struct Relay {
    name: String,
    feed: Arc<dyn ChangeFeed>,
    redactor: Arc<Redactor>,
    sinks: Vec<GuardedSink>,
    ledger: Arc<dyn Ledger>,
    options: RelayOptions,
    source: String,
    /// The ledger's checkpoint, once read (`u64::MAX`: not yet).
    checkpoint: AtomicU64,
    /// Whether its feed consumer is registered (by the first batch).
    registered: std::sync::atomic::AtomicBool,
    /// The next batch, read while the last was delivered: the events after
    /// the position it names, which the feed has acknowledged.
    ahead: std::sync::Mutex<Option<Ahead>>,
}

/// A batch read (and redacted) ahead, while the one before it was
/// delivered.
struct Ahead {
    /// The position it was read after (the last batch's).
    after: u64,
    /// Its events.
    changes: Vec<ChangeEvent>,
    /// What [`Relay::redact_batch`] made of them, with `after` as done.
    redacted: (Vec<Redacted>, LedgerBatch, usize),
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("name", &self.name)
            .field("feed", &self.feed.store())
            .field(
                "sinks",
                &self
                    .sinks
                    .iter()
                    .map(|s| s.sink().name())
                    .collect::<Vec<_>>(),
            )
            .field("ledger", &self.ledger.store())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A name safe to show and store for an entity an event names: a store
/// name, else `unknown` (an event written by hand may name anything).
fn shown_entity(entity: &str) -> &str {
    if dl_models::is_valid_identifier(entity) {
        entity
    } else {
        "unknown"
    }
}

/// The id of a change that is dead-lettered (its entity shown safely).
fn dead_id(change: &ChangeEvent) -> String {
    format!(
        "{}/{}/{}",
        shown_entity(&change.entity),
        change.key_token(),
        change.seq
    )
}

impl Relay {
    /// A relay named `name` (its feed consumer and ledger name), from the
    /// start of what the feed keeps. Nothing is sent to a store here: its
    /// consumer is registered by its first batch (so a store that is down
    /// at startup delays the relay, it does not stop it).
    ///
    /// # Errors
    /// `Invalid` for a bad name, no sink, or a batch outside 1 to 5,000.
    pub fn new(
        name: &str,
        feed: Arc<dyn ChangeFeed>,
        redactor: Arc<Redactor>,
        sinks: Vec<GuardedSink>,
        ledger: Arc<dyn Ledger>,
        options: RelayOptions,
    ) -> Result<Self, Error> {
        check_consumer_name(name)?;
        if sinks.is_empty() {
            return Err(Error::invalid(
                "cdc",
                Some("cdc.sinks"),
                "a relay needs at least one sink (sqlite, postgres, nats, scylla)",
            ));
        }
        if !(1..=MAX_RELAY_BATCH).contains(&options.batch) {
            return Err(Error::invalid(
                "cdc",
                Some("cdc.batch"),
                "expected a batch of 1 to 5000 events",
            ));
        }
        let source = options
            .source
            .clone()
            .unwrap_or_else(|| format!("/data-layer/{}", feed.store().name()));
        Ok(Relay {
            name: name.to_owned(),
            feed,
            redactor,
            sinks,
            ledger,
            options,
            source,
            checkpoint: AtomicU64::new(u64::MAX),
            registered: std::sync::atomic::AtomicBool::new(false),
            ahead: std::sync::Mutex::new(None),
        })
    }

    /// The relay's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its sinks.
    #[must_use]
    pub fn sinks(&self) -> &[GuardedSink] {
        &self.sinks
    }

    /// Its ledger.
    #[must_use]
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    /// Its feed.
    #[must_use]
    pub fn feed(&self) -> &Arc<dyn ChangeFeed> {
        &self.feed
    }

    /// Takes the batch read ahead and puts `next` in its place.
    fn read_ahead(&self, next: Option<Ahead>) -> Option<Ahead> {
        let mut slot = self
            .ahead
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::replace(&mut *slot, next)
    }

    async fn ledger_checkpoint(&self) -> Result<u64, Error> {
        let c = self.checkpoint.load(Ordering::Acquire);
        if c != u64::MAX {
            return Ok(c);
        }
        let c = self.ledger.checkpoint(&self.name).await?;
        self.checkpoint.store(c, Ordering::Release);
        Ok(c)
    }

    /// Redacts `changes`: what to deliver and what the ledger keeps. Events
    /// at or before `done` are left out (the ledger covers them).
    fn redact_batch(
        &self,
        changes: &[ChangeEvent],
        done: u64,
    ) -> (Vec<Redacted>, LedgerBatch, usize) {
        let mut emitted = Vec::with_capacity(changes.len());
        let mut ledger = LedgerBatch::default();
        let mut skipped = 0;
        for change in changes {
            ledger.position = ledger.position.max(change.position);
            if change.position <= done {
                skipped += 1;
                continue;
            }
            match self.redactor.redact(change, &self.source) {
                Ok(r) => {
                    ledger.redactions.push(RedactionRecord {
                        event_id: r.event.id.clone(),
                        entity: r.entity.clone(),
                        position: r.position,
                        profile: self.redactor.profile().name().to_owned(),
                        policy_version: self.redactor.policy_version().to_owned(),
                        key_id: self.redactor.key_id().map(str::to_owned),
                        fields: r.fields.clone(),
                    });
                    emitted.push(r);
                }
                Err(rejected) => {
                    let entity = shown_entity(&change.entity).to_owned();
                    tracing::warn!(relay = %self.name, entity = %entity, position = change.position, reason = %rejected, "dead-lettered a change that does not match the schema");
                    metrics::counter!("dl_cdc_dead_letters_total", "relay" => self.name.clone(), "entity" => entity.clone())
                        .increment(1);
                    ledger.dead_letters.push(DeadLetter {
                        event_id: dead_id(change),
                        entity,
                        position: change.position,
                        reason: rejected.reason,
                    });
                }
            }
        }
        (emitted, ledger, skipped)
    }

    /// Relays one batch.
    ///
    /// # Errors
    /// The feed's, a sink's or the ledger's error: nothing is acknowledged
    /// then, and the next step relays the batch again.
    pub async fn step(&self) -> Result<StepReport, Error> {
        let r = self.step_inner().await;
        if r.is_err() {
            self.read_ahead(None);
            // Read the checkpoint from the ledger again: after a fault the
            // store may have lost a commit it had answered (a relaxed
            // commit and a server crash before the acknowledgement).
            self.checkpoint.store(u64::MAX, Ordering::Release);
        }
        r
    }

    async fn step_inner(&self) -> Result<StepReport, Error> {
        if !self.registered.load(Ordering::Acquire) {
            self.feed.register(&self.name, true).await?;
            self.registered.store(true, Ordering::Release);
        }
        let done = self.ledger_checkpoint().await?;
        let t0 = std::time::Instant::now();
        let (changes, redacted) = match self.read_ahead(None) {
            // Read and redacted while the last batch was delivered, after
            // the position the ledger now holds; an empty read ahead is
            // read again (events may have come since).
            Some(ahead) if ahead.after == done && !ahead.changes.is_empty() => {
                (ahead.changes, Some(ahead.redacted))
            }
            _ => (self.feed.read(&self.name, self.options.batch).await?, None),
        };
        let read_took = t0.elapsed();
        let Some(last) = changes.last() else {
            metrics::gauge!("dl_cdc_lag_seconds", "relay" => self.name.clone()).set(0.0);
            return Ok(StepReport::default());
        };
        let last_commit = last.committed_at;
        let t1 = std::time::Instant::now();
        let (emitted, ledger, skipped) =
            redacted.unwrap_or_else(|| self.redact_batch(&changes, done));
        let redact_took = t1.elapsed();
        // Deliver, record and acknowledge this batch while the next is read
        // and redacted.
        let position = ledger.position;
        let dead_lettered = ledger.dead_letters.len();
        let finish = async {
            let t2 = std::time::Instant::now();
            // Every sink at once, and the batch's records (the checkpoint
            // left where it is): a record written before its event reaches
            // the sinks only says what the relay did to it, and the event
            // is relayed again until every sink has it.
            let deliver = async {
                let results =
                    futures::future::join_all(self.sinks.iter().map(|sink| sink.deliver(&emitted)))
                        .await;
                for (sink, result) in self.sinks.iter().zip(results) {
                    if let Err(e) = result {
                        metrics::counter!("dl_cdc_sink_errors_total", "relay" => self.name.clone(), "sink" => sink.sink().name())
                            .increment(1);
                        return Err(e);
                    }
                }
                Ok(t2.elapsed())
            };
            let record = async {
                if ledger.redactions.is_empty() && ledger.dead_letters.is_empty() {
                    return Ok(t2.elapsed());
                }
                let records = LedgerBatch {
                    redactions: ledger.redactions,
                    dead_letters: ledger.dead_letters,
                    position: 0,
                };
                self.ledger.commit(&self.name, &records).await?;
                Ok::<_, Error>(t2.elapsed())
            };
            let (delivered, recorded) = futures::future::join(deliver, record).await;
            let deliver_took = delivered?;
            let record_took = recorded?;
            // Only now, when every sink and the ledger have the batch: the
            // checkpoint and the feed's acknowledgement, at once (either
            // may come first: a batch both cover is not sent again, and one
            // only the checkpoint covers is acknowledged unsent).
            let t4 = std::time::Instant::now();
            let checkpoint = async {
                if position > done {
                    let only = LedgerBatch {
                        position,
                        ..LedgerBatch::default()
                    };
                    self.ledger.commit(&self.name, &only).await?;
                    self.checkpoint.store(position, Ordering::Release);
                }
                Ok::<_, Error>(())
            };
            let (moved, acked) =
                futures::future::join(checkpoint, self.feed.ack(&self.name, position)).await;
            moved?;
            acked?;
            Ok((deliver_took, record_took, t4.elapsed()))
        };
        // The next batch: what the feed's next read returns once this one
        // is acknowledged, redacted as if the ledger covered this one.
        let next = async {
            let changes = self
                .feed
                .events_after(position, None, self.options.batch)
                .await?;
            let redacted = self.redact_batch(&changes, position);
            Ok::<_, Error>(Ahead {
                after: position,
                changes,
                redacted,
            })
        };
        let (finished, next) = futures::future::join(finish, next).await;
        let (deliver_took, record_took, ack_took) = finished?;
        match next {
            Ok(next) => {
                self.read_ahead(Some(next));
            }
            Err(e) => {
                // Only the read ahead failed: the next step reads again.
                tracing::debug!(relay = %self.name, error = %e, "reading the next batch ahead failed");
            }
        }
        let report = StepReport {
            read: changes.len(),
            emitted: emitted.len(),
            dead_lettered,
            skipped,
            position,
        };
        tracing::debug!(
            relay = %self.name,
            read = report.read,
            emitted = report.emitted,
            dead_lettered = report.dead_lettered,
            skipped = report.skipped,
            position = report.position,
            read_ms = read_took.as_secs_f64() * 1e3,
            redact_ms = redact_took.as_secs_f64() * 1e3,
            deliver_ms = deliver_took.as_secs_f64() * 1e3,
            record_ms = record_took.as_secs_f64() * 1e3,
            ack_ms = ack_took.as_secs_f64() * 1e3,
            "relayed a batch"
        );
        for r in &emitted {
            tracing::trace!(relay = %self.name, id = %r.event.id, ty = %r.event.ty, seq = r.event.dlseq, "emitted");
        }
        metrics::counter!("dl_cdc_events_total", "relay" => self.name.clone(), "outcome" => "emitted")
            .increment(report.emitted as u64);
        let behind = (chrono::Utc::now() - last_commit)
            .to_std()
            .unwrap_or_default();
        metrics::gauge!("dl_cdc_lag_seconds", "relay" => self.name.clone())
            .set(behind.as_secs_f64());
        metrics::histogram!("dl_cdc_commit_to_sink_seconds", "relay" => self.name.clone())
            .record(behind.as_secs_f64());
        Ok(report)
    }

    /// Relays until `stop` resolves: a batch after another, waiting
    /// `idle` when the feed has nothing new and `backoff` after a failed
    /// batch (logged without values). Stops between batches: a batch
    /// under way is finished or, if `stop` comes first, dropped
    /// unacknowledged (it is relayed again).
    pub async fn run_until<F>(&self, stop: F)
    where
        F: std::future::Future<Output = ()> + Send,
    {
        tokio::pin!(stop);
        loop {
            let pause = tokio::select! {
                () = &mut stop => return,
                r = self.step() => match r {
                    Ok(report) if report.read == 0 => self.options.idle,
                    Ok(_) => Duration::ZERO,
                    Err(e) => {
                        tracing::warn!(relay = %self.name, error = %e, "a relay batch failed; trying again");
                        self.options.backoff
                    }
                },
            };
            if !pause.is_zero() {
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }

    /// Relays again the events from feed position `from` up to the relay's
    /// checkpoint (a sink restored from a backup, a sink added later):
    /// each is delivered to every sink again, which keeps what it already
    /// has; records and dead letters already written stay as they are, and
    /// the checkpoint does not move. Returns what it did.
    ///
    /// # Errors
    /// `Invalid` naming `--from` when the feed no longer keeps the event
    /// at `from` (pruned: replay from the oldest kept, or re-snapshot);
    /// the feed's, a sink's or the ledger's error.
    pub async fn replay(&self, from: u64) -> Result<StepReport, Error> {
        let end = self.ledger.checkpoint(&self.name).await?;
        let mut total = StepReport::default();
        let mut after = from.saturating_sub(1);
        let mut first = true;
        while after < end {
            let mut changes = self
                .feed
                .events_after(after, None, self.options.batch)
                .await?;
            changes.retain(|c| c.position <= end);
            let Some(last) = changes.last() else { break };
            if first && changes[0].position > from.max(1) {
                return Err(Error::invalid(
                    "cdc",
                    Some("--from"),
                    "the feed no longer keeps that event (pruned): replay from a later one, or re-snapshot the sink",
                ));
            }
            first = false;
            after = last.position;
            // Everything redacted again (none is left out as done).
            let (emitted, ledger, _) = self.redact_batch(&changes, 0);
            for sink in &self.sinks {
                sink.deliver(&emitted).await?;
            }
            let mut batch = ledger;
            batch.position = 0; // the checkpoint stays where it is
            self.ledger.commit(&self.name, &batch).await?;
            total.read += changes.len();
            total.emitted += emitted.len();
            total.dead_lettered += batch.dead_letters.len();
            total.position = after;
        }
        Ok(total)
    }

    /// Relays until the feed has nothing new (for the CLI's `cdc run
    /// --once`, the demo and tests); at most `max_batches` batches.
    ///
    /// # Errors
    /// The first failed batch's error.
    pub async fn drain(&self, max_batches: usize) -> Result<StepReport, Error> {
        let mut total = StepReport::default();
        for _ in 0..max_batches {
            let r = self.step().await?;
            if r.read == 0 {
                break;
            }
            total.read += r.read;
            total.emitted += r.emitted;
            total.dead_lettered += r.dead_lettered;
            total.skipped += r.skipped;
            total.position = r.position;
        }
        Ok(total)
    }
}
