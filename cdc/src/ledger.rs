//! The relay's durable state in the relational store: its checkpoint, the
//! redaction record of every emitted event and the dead letters, written
//! together in one transaction per batch.

use std::fmt;

use async_trait::async_trait;
use dl_repositories::{Error, Store};

use crate::redact::FieldRecord;

/// What was done to one emitted event's PHI fields, under which profile,
/// policy version and key: never an original value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedactionRecord {
    /// The event's id.
    pub event_id: String,
    /// The entity.
    pub entity: String,
    /// The feed position.
    pub position: u64,
    /// `safe_harbor` or `pseudonymous`.
    pub profile: String,
    /// The policy version in force.
    pub policy_version: String,
    /// The id of the key that made its tokens, if any.
    pub key_id: Option<String>,
    /// One entry per PHI field.
    pub fields: Vec<FieldRecord>,
}

/// A change not emitted because its record did not match the schema.
#[derive(Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The event's id.
    pub event_id: String,
    /// The entity.
    pub entity: String,
    /// The feed position.
    pub position: u64,
    /// Why (names at most a field; never a value).
    pub reason: String,
}

impl fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetter")
            .field("event_id", &self.event_id)
            .field("entity", &self.entity)
            .field("position", &self.position)
            .field("reason", &self.reason)
            .finish()
    }
}

/// One batch's part of the ledger: written in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerBatch {
    /// The records of the events emitted.
    pub redactions: Vec<RedactionRecord>,
    /// The changes dead-lettered.
    pub dead_letters: Vec<DeadLetter>,
    /// The last feed position the batch covers (the new checkpoint; 0
    /// leaves the checkpoint where it is, as the relay's records-only
    /// write and a replay do).
    pub position: u64,
}

/// Where a relay keeps its state.
#[async_trait]
pub trait Ledger: Send + Sync + fmt::Debug {
    /// The store.
    fn store(&self) -> Store;

    /// The relay's checkpoint: the last position whose batch was delivered
    /// and recorded (0 before the first).
    ///
    /// # Errors
    /// The store's error.
    async fn checkpoint(&self, relay: &str) -> Result<u64, Error>;

    /// Writes the batch's records, dead letters and checkpoint in one
    /// transaction. Records and dead letters already written (a batch
    /// relayed again) are kept as they are; the checkpoint never moves
    /// back.
    ///
    /// # Errors
    /// The store's error; then nothing of the batch is written.
    async fn commit(&self, relay: &str, batch: &LedgerBatch) -> Result<(), Error>;

    /// The relay's dead letters, oldest first.
    ///
    /// # Errors
    /// The store's error.
    async fn dead_letters(&self, relay: &str, limit: usize) -> Result<Vec<DeadLetter>, Error>;

    /// The feed position of an event the relay emitted or dead-lettered.
    ///
    /// # Errors
    /// The store's error.
    async fn position_of(&self, relay: &str, event_id: &str) -> Result<Option<u64>, Error>;

    /// How many dead letters the relay has.
    ///
    /// # Errors
    /// The store's error.
    async fn dead_letter_count(&self, relay: &str) -> Result<u64, Error>;

    /// The redaction record of one event, as JSON (for audit and tests).
    ///
    /// # Errors
    /// The store's error.
    async fn redaction(
        &self,
        relay: &str,
        event_id: &str,
    ) -> Result<Option<serde_json::Value>, Error>;
}
