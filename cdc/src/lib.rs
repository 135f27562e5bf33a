//! CDC into analytics: the change feed's events redacted by the schema's
//! PHI rules ([`redact`]), wrapped as CloudEvents ([`envelope`]) and
//! delivered effectively once to analytics sinks ([`sink`]) by a relay
//! ([`relay`]) that keeps a redaction record of every event it emitted,
//! and the changes it refused, in the relational store ([`ledger`]).
//!
//! ```
//! use std::sync::Arc;
//! use dl_cdc::{Profile, Redactor};
//! use dl_models::{Entity as _, domain::Patient};
//! use dl_privacy::{Privacy, SecretKey};
//!
//! let privacy = Arc::new(Privacy::new(SecretKey::from_bytes("k1", [7u8; 32]).unwrap()));
//! let redactor = Redactor::new(&[Patient::schema()], Profile::Pseudonymous, "2026-12", Some(privacy)).unwrap();
//! let record = serde_json::json!({
//!     "id": "7b0e3f3a-8a43-4c1e-9d55-0b4b5f1f2a10", "mrn": "MRN-0001",
//!     "given_name": "Ada", "family_name": "Lovelace", "date_of_birth": "1931-02-03",
//!     "phone": null, "email": null, "status": "active",
//!     "created_at": "2026-12-07T10:00:00.000Z", "version": 1
//! });
//! let (data, fields) = redactor.redact_json("patients", &record.to_string(), None).unwrap();
//! assert!(data["mrn"].as_str().unwrap().starts_with("k1."));   // a keyed token
//! assert_eq!(data["family_name"], "********");                   // masked
//! assert_eq!(data["date_of_birth"], 1931);                       // the year
//! assert_eq!(fields[0].field, "mrn");                            // what was done, no value
//! assert_eq!(fields[0].action, "tokenized");
//!
//! // Safe Harbor keeps no part of an identifier: the mask rule is refused.
//! let err = Redactor::new(&[Patient::schema()], Profile::SafeHarbor, "2026-12", None).unwrap_err();
//! assert!(err.to_string().contains("given_name"));
//! ```

// The layer answers with the repositories' `Error`, which every caller
// already matches on (retryable, `Unavailable`, …); it is as large there.
#![allow(clippy::result_large_err)]

pub mod envelope;
pub mod ledger;
#[cfg(feature = "nats")]
pub mod nats;
pub mod redact;
pub mod relay;
#[cfg(feature = "scylla")]
pub mod scylla;
pub mod sink;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql;

pub use envelope::{CloudEvent, Redacted};
pub use ledger::{DeadLetter, Ledger, LedgerBatch, RedactionRecord};
pub use redact::{FieldRecord, Profile, Redactor, Rejected};
pub use relay::{Relay, RelayOptions, StepReport};
pub use sink::{GuardedSink, Sink};
