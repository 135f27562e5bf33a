//! The domain models of the product's first users: a clinical system's
//! patients, appointments, insurance, alerts, audit events and media assets.
//!
//! PHI fields carry their redaction rule; `Debug` prints them as `<redacted>`.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Entity;

/// A patient's administrative status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatientStatus {
    /// Under care.
    Active,
    /// No longer under care.
    Inactive,
    /// Deceased; the record is kept.
    Deceased,
}

/// A patient.
#[derive(Clone, PartialEq, Serialize, Deserialize, Entity)]
#[entity(name = "patients")]
pub struct Patient {
    /// Surrogate key.
    #[key]
    pub id: Uuid,
    /// Medical record number, unique per facility.
    #[indexed(unique)]
    #[phi(hash)]
    #[field(max_len = 32)]
    pub mrn: String,
    /// Given name.
    #[phi(mask)]
    #[field(max_len = 200)]
    pub given_name: String,
    /// Family name.
    #[indexed]
    #[phi(mask)]
    #[field(max_len = 200)]
    pub family_name: String,
    /// Date of birth.
    #[phi(generalize)]
    pub date_of_birth: NaiveDate,
    /// Phone number.
    #[phi(mask)]
    #[field(max_len = 40)]
    pub phone: Option<String>,
    /// E-mail address.
    #[phi(mask)]
    #[field(max_len = 320)]
    pub email: Option<String>,
    /// Administrative status.
    #[indexed]
    #[field(text)]
    pub status: PatientStatus,
    /// When the record was created.
    pub created_at: DateTime<Utc>,
    /// Optimistic-concurrency version.
    #[version]
    pub version: i64,
}

/// An appointment of a patient.
#[derive(Clone, PartialEq, Serialize, Deserialize, Entity)]
#[entity(name = "appointments")]
pub struct Appointment {
    /// Surrogate key.
    #[key]
    pub id: Uuid,
    /// The patient's key.
    #[indexed]
    pub patient_id: Uuid,
    /// Start.
    #[indexed]
    pub starts_at: DateTime<Utc>,
    /// Length in minutes.
    pub duration_minutes: i32,
    /// Kind of visit (`"checkup"`, `"follow_up"`...).
    #[field(max_len = 64)]
    pub kind: String,
    /// `"scheduled"`, `"done"`, `"cancelled"`.
    #[indexed]
    #[field(max_len = 32)]
    pub status: String,
    /// Free-text clinical notes.
    #[phi(drop)]
    #[field(max_len = 65536)]
    pub notes: Option<String>,
    /// Optimistic-concurrency version.
    #[version]
    pub version: i64,
}

/// A patient's insurance coverage.
#[derive(Clone, PartialEq, Serialize, Deserialize, Entity)]
#[entity(name = "insurances")]
pub struct Insurance {
    /// Surrogate key.
    #[key]
    pub id: Uuid,
    /// The patient's key.
    #[indexed]
    pub patient_id: Uuid,
    /// Payer name.
    #[field(max_len = 200)]
    pub payer: String,
    /// Member id at the payer.
    #[phi(hash)]
    #[field(max_len = 64)]
    pub member_id: String,
    /// Group number.
    #[field(max_len = 64)]
    pub group_number: Option<String>,
    /// First day of coverage.
    pub valid_from: NaiveDate,
    /// Last day of coverage, if known.
    pub valid_to: Option<NaiveDate>,
}

/// A clinical or operational alert.
#[derive(Clone, PartialEq, Serialize, Deserialize, Entity)]
#[entity(name = "alerts")]
pub struct Alert {
    /// Surrogate key.
    #[key]
    pub id: Uuid,
    /// The patient concerned, if any.
    #[indexed]
    pub patient_id: Option<Uuid>,
    /// `"info"`, `"warning"`, `"critical"`.
    #[indexed]
    #[field(max_len = 16)]
    pub severity: String,
    /// The message; may name the patient.
    #[phi(drop)]
    #[field(max_len = 4096)]
    pub message: String,
    /// When it was raised.
    pub raised_at: DateTime<Utc>,
    /// Whether someone acknowledged it.
    pub acknowledged: bool,
}

/// One access to PHI, kept for audit.
#[derive(Clone, PartialEq, Serialize, Deserialize, Entity)]
#[entity(name = "audit_events")]
pub struct AuditEvent {
    /// Surrogate key.
    #[key]
    pub id: Uuid,
    /// When.
    #[indexed]
    pub at: DateTime<Utc>,
    /// Who (a user or service id).
    #[indexed]
    #[field(max_len = 200)]
    pub actor: String,
    /// `"read"`, `"write"`, `"delete"`, `"export"`.
    #[field(max_len = 32)]
    pub action: String,
    /// The entity's store name.
    #[field(max_len = 48)]
    pub entity: String,
    /// The entity's key, as text.
    #[phi(hash)]
    #[field(max_len = 200)]
    pub entity_key: String,
    /// Declared purpose of use.
    #[field(max_len = 64)]
    pub purpose: Option<String>,
    /// Extra structured detail (never PHI values).
    pub detail: Option<serde_json::Value>,
}

/// A stored media file (scan, photo, document) and its provenance.
#[derive(Clone, PartialEq, Serialize, Deserialize, Entity)]
#[entity(name = "media_assets")]
pub struct MediaAsset {
    /// Surrogate key.
    #[key]
    pub id: Uuid,
    /// Where the bytes live (object store URI).
    #[phi(drop)]
    #[field(max_len = 2048)]
    pub uri: String,
    /// Where it came from (device, upload, partner).
    #[field(max_len = 200)]
    pub source: String,
    /// License or consent under which it is held.
    #[field(max_len = 200)]
    pub license: String,
    /// When it must be deleted, if ever.
    #[indexed]
    pub expires_at: Option<DateTime<Utc>>,
    /// SHA-256 of the content, hex.
    #[indexed]
    #[field(max_len = 64)]
    pub hash: String,
}
