//! The CloudEvents 1.0 envelope (JSON format) of a redacted change.
//!
//! A small envelope of our own rather than the `cloudevents-sdk` crate:
//! the relay writes one JSON shape to every sink and reads none back, and
//! the SDK's `Event` keeps `data` as bytes or a string, would add its HTTP
//! and message-binding dependencies to every service, and offers nothing
//! the sinks use.

use chrono::{DateTime, SecondsFormat, Utc};
use dl_repositories::{ChangeEvent, ChangeOp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::redact::{FieldRecord, Profile, Redactor, Rejected};

/// One change as analytics receives it: a CloudEvent with the redacted
/// record as `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    /// Always `"1.0"`.
    pub specversion: String,
    /// The change's stable id (`<entity>/<key token>/<sequence>`): the
    /// same on every delivery, so each sink keeps it once.
    pub id: String,
    /// Where it comes from: `/data-layer/<store>` (settings may name it).
    pub source: String,
    /// `ce.<entity>.<created|updated|deleted>`.
    #[serde(rename = "type")]
    pub ty: String,
    /// When the write committed (RFC 3339, milliseconds, UTC).
    pub time: String,
    /// The record's key, or its token when the key is PHI.
    pub subject: String,
    /// `application/json`.
    pub datacontenttype: String,
    /// `urn:data-layer:<entity>:<shape version>`.
    pub dataschema: String,
    /// The key's sequence number (per key: 1, 2, 3, … without gaps).
    pub dlseq: u64,
    /// `<profile>/<policy version>`: the redaction this event had.
    pub dlpolicy: String,
    /// The redacted record; none for a delete.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub data: Option<Map<String, Value>>,
}

/// A change redacted: the event to emit and what was done to each PHI field.
#[derive(Debug, Clone, PartialEq)]
pub struct Redacted {
    /// The event.
    pub event: CloudEvent,
    /// One entry per PHI field of the record (none for a delete).
    pub fields: Vec<FieldRecord>,
    /// The feed position it came from.
    pub position: u64,
    /// The entity.
    pub entity: String,
}

impl Redacted {
    /// The event as JSON text (what every sink stores or sends).
    #[must_use]
    pub fn json(&self) -> String {
        serde_json::to_string(&self.event).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// `time` as the envelope writes it.
#[must_use]
pub fn event_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Redactor {
    /// The CloudEvent of `change`, its record redacted. `source` is the
    /// envelope's `source`.
    ///
    /// # Errors
    /// [`Rejected`] when the record does not match the schema (see
    /// [`Redactor::redact_json`]), or the change names an entity the
    /// relay has no schema of.
    pub fn redact(&self, change: &ChangeEvent, source: &str) -> Result<Redacted, Rejected> {
        let Some(schema) = self.schema(&change.entity) else {
            return Err(Rejected {
                reason: "an entity the relay has no schema of".to_owned(),
            });
        };
        let key_token = self.key_is_phi(&change.entity).then(|| change.key_token());
        let subject = match &key_token {
            Some(t) => t.clone(),
            None => match change.key() {
                dl_repositories::EventKey::Plain(Value::String(s)) => s,
                dl_repositories::EventKey::Plain(v) => v.to_string(),
                dl_repositories::EventKey::Token(_) => {
                    // A token in the feed for a key the schema calls not
                    // PHI: the feed and the schema disagree.
                    return Err(Rejected {
                        reason: format!(
                            "the key of {} is a token, but the schema's key is not PHI",
                            schema.name
                        ),
                    });
                }
            },
        };
        let (data, fields) = match (change.op, change.after_json()) {
            (ChangeOp::Deleted, _) => (None, Vec::new()),
            (_, Some(json)) => {
                let (d, f) = self.redact_json(&change.entity, json, key_token.as_deref())?;
                (Some(d), f)
            }
            (_, None) => {
                return Err(Rejected {
                    reason: "a created or updated event without its record".to_owned(),
                });
            }
        };
        Ok(Redacted {
            event: CloudEvent {
                specversion: "1.0".to_owned(),
                id: change.id(),
                source: source.to_owned(),
                ty: format!("ce.{}.{}", change.entity, change.op.as_str()),
                time: event_time(change.committed_at),
                subject,
                datacontenttype: "application/json".to_owned(),
                dataschema: format!("urn:data-layer:{}:{}", change.entity, change.schema_version),
                dlseq: change.seq,
                dlpolicy: policy_name(self.profile(), self.policy_version()),
                data,
            },
            fields,
            position: change.position,
            entity: change.entity.clone(),
        })
    }
}

/// `<profile>/<policy version>`.
#[must_use]
pub fn policy_name(profile: Profile, version: &str) -> String {
    format!("{}/{version}", profile.name())
}
