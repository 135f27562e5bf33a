//! Redaction by the schema: each PHI field of a captured record rewritten
//! by its `#[phi(...)]` rule under the chosen [`Profile`], with a
//! [`FieldRecord`] of what was done (never a value).
//!
//! | rule | `pseudonymous` | `safe_harbor` |
//! | --- | --- | --- |
//! | `drop` | removed | removed |
//! | `hash` | keyed HMAC-SHA-256 token `<key id>.<22 chars>` | removed (no form derived from an identifier survives) |
//! | `mask` | `*` for every character, the last four kept when they are digits and the value has at least ten (a phone number's tail) | refused at startup (it keeps part of the identifier) |
//! | `generalize` | dates and timestamps to the year; numbers over 89 to `"90+"`; ZIP codes to their first three digits | the same, and the three-digit ZIP areas of fewer than 20,000 people to `"000"` |
//!
//! A PHI key is replaced by its token everywhere (the data's key field,
//! the CloudEvents `subject`, the event id); `safe_harbor` refuses a PHI
//! key at startup. A JSON field's rule applies to every value inside it.
//!
//! Fail closed: a record with a field the schema does not know, without a
//! field it declares, or with a value of the wrong type is [`Rejected`],
//! with a reason that names no value.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use dl_models::{EntitySchema, FieldDef, FieldType, Redaction, Sensitivity};
use dl_privacy::Privacy;
use dl_repositories::Error;
use serde_json::{Map, Value};

/// What the analytics side may receive, as HIPAA names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// De-identified by the Safe Harbor method (§164.514(b)(2)): no
    /// identifier survives in any form derived from it.
    SafeHarbor,
    /// A Limited Data Set under a data-use agreement: identifiers become
    /// keyed tokens (equal values, equal tokens), so records still join.
    Pseudonymous,
}

impl Profile {
    /// The name in settings (`safe_harbor`, `pseudonymous`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Profile::SafeHarbor => "safe_harbor",
            Profile::Pseudonymous => "pseudonymous",
        }
    }

    /// The profile named `text`.
    ///
    /// # Errors
    /// `Invalid` naming `cdc.profile` for any other name (not quoted back).
    pub fn parse(text: &str) -> Result<Self, Error> {
        match text {
            "safe_harbor" => Ok(Profile::SafeHarbor),
            "pseudonymous" => Ok(Profile::Pseudonymous),
            _ => Err(Error::invalid(
                "cdc",
                Some("cdc.profile"),
                "expected safe_harbor or pseudonymous",
            )),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What was done to one PHI field of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FieldRecord {
    /// The field.
    pub field: &'static str,
    /// Its rule (`drop`, `hash`, `mask`, `generalize`).
    pub rule: &'static str,
    /// What the rule did to this value: `dropped`, `tokenized`, `masked`,
    /// `to_year`, `to_90_plus`, `kept` (a number under 90), `to_zip3`,
    /// `to_000` (a ZIP area too small), `suppressed` (a value the rule has
    /// no coarser form of), or `null` (nothing to redact).
    pub action: &'static str,
}

/// A record the relay will not emit, and why (no value in the reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Why, naming at most a field of the schema.
    pub reason: String,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl Rejected {
    fn new(reason: impl Into<String>) -> Self {
        Rejected {
            reason: reason.into(),
        }
    }
}

/// What one field becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Keep,
    Drop,
    Token,
    Mask,
    Generalize,
}

#[derive(Debug)]
struct FieldPlan {
    def: &'static FieldDef,
    rule: Option<&'static str>,
    action: Action,
    /// The token domain: `cdc.<entity>.<field>`.
    domain: String,
}

#[derive(Debug)]
struct EntityPlan {
    schema: &'static EntitySchema,
    fields: Vec<FieldPlan>,
    by_name: HashMap<&'static str, usize>,
}

/// The redactor: one plan per entity, checked against the profile once.
/// Cheap to share (`Arc<Redactor>`).
pub struct Redactor {
    profile: Profile,
    policy_version: String,
    privacy: Option<Arc<Privacy>>,
    entities: HashMap<&'static str, EntityPlan>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.entities.keys().copied().collect();
        names.sort_unstable();
        f.debug_struct("Redactor")
            .field("profile", &self.profile)
            .field("policy_version", &self.policy_version)
            .field("key_id", &self.privacy.as_ref().map(|p| p.key_id()))
            .field("entities", &names)
            .finish()
    }
}

/// The longest policy version, in bytes.
pub const MAX_POLICY_VERSION: usize = 64;

impl Redactor {
    /// A redactor for `schemas` under `profile`. `privacy` makes the
    /// tokens of `hash` fields and PHI keys; it must be the configured
    /// key (`privacy.key`), not a process's ephemeral one, when any field
    /// is hashed: tokens must be the same after a restart.
    ///
    /// # Errors
    /// `Invalid` naming the entity and the field: a rule the profile
    /// forbids (`mask` under `safe_harbor`, a PHI key under
    /// `safe_harbor`), a `hash` rule with no key, the same entity twice;
    /// naming `cdc.policy_version` for an empty, long or unprintable
    /// version.
    pub fn new(
        schemas: &[&'static EntitySchema],
        profile: Profile,
        policy_version: &str,
        privacy: Option<Arc<Privacy>>,
    ) -> Result<Self, Error> {
        if policy_version.is_empty()
            || policy_version.len() > MAX_POLICY_VERSION
            || !policy_version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(Error::invalid(
                "cdc",
                Some("cdc.policy_version"),
                "expected 1 to 64 characters of A-Z a-z 0-9 . _ -",
            ));
        }
        let keyed = privacy
            .as_ref()
            .filter(|p| p.key_id() != "ephemeral")
            .is_some();
        let mut entities = HashMap::new();
        for schema in schemas {
            let mut fields = Vec::with_capacity(schema.fields.len());
            let mut by_name = HashMap::with_capacity(schema.fields.len());
            for (i, def) in schema.fields.iter().enumerate() {
                let rule = match def.sensitivity {
                    Sensitivity::Phi(r) => Some(r),
                    _ => None,
                };
                let is_key = i == schema.key;
                let action = match (rule, profile) {
                    (None, _) => Action::Keep,
                    (Some(_), Profile::SafeHarbor) if is_key => {
                        return Err(Error::invalid(
                            schema.name,
                            Some(def.name),
                            "the key is PHI: the safe_harbor profile has no form of it to emit (use pseudonymous, or a surrogate key)",
                        ));
                    }
                    (Some(_), Profile::Pseudonymous) if is_key => Action::Token,
                    (Some(Redaction::Drop), _) => Action::Drop,
                    (Some(Redaction::Hash), Profile::SafeHarbor) => Action::Drop,
                    (Some(Redaction::Hash), Profile::Pseudonymous) => Action::Token,
                    (Some(Redaction::Mask), Profile::SafeHarbor) => {
                        return Err(Error::invalid(
                            schema.name,
                            Some(def.name),
                            "the mask rule keeps part of an identifier, which the safe_harbor profile forbids (use drop or generalize)",
                        ));
                    }
                    (Some(Redaction::Mask), Profile::Pseudonymous) => Action::Mask,
                    (Some(Redaction::Generalize), _) => Action::Generalize,
                    (Some(_), _) => {
                        return Err(Error::invalid(
                            schema.name,
                            Some(def.name),
                            "a redaction rule this relay does not know",
                        ));
                    }
                };
                if action == Action::Token && !keyed {
                    return Err(Error::invalid(
                        schema.name,
                        Some(def.name),
                        "the hash rule needs a key: set privacy.key (and privacy.key_id)",
                    ));
                }
                by_name.insert(def.name, i);
                fields.push(FieldPlan {
                    def,
                    rule: rule.map(Redaction::name),
                    action,
                    domain: format!("cdc.{}.{}", schema.name, def.name),
                });
            }
            if entities
                .insert(
                    schema.name,
                    EntityPlan {
                        schema,
                        fields,
                        by_name,
                    },
                )
                .is_some()
            {
                return Err(Error::invalid(
                    schema.name,
                    None,
                    "the entity is named twice in the relay's schemas",
                ));
            }
        }
        Ok(Redactor {
            profile,
            policy_version: policy_version.to_owned(),
            privacy,
            entities,
        })
    }

    /// The profile.
    #[must_use]
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The policy version (written beside every event and record).
    #[must_use]
    pub fn policy_version(&self) -> &str {
        &self.policy_version
    }

    /// The id of the key that makes tokens, if any.
    #[must_use]
    pub fn key_id(&self) -> Option<&str> {
        self.privacy.as_ref().map(|p| p.key_id())
    }

    /// The schema of `entity`, when the relay knows it.
    #[must_use]
    pub fn schema(&self, entity: &str) -> Option<&'static EntitySchema> {
        self.entities.get(entity).map(|p| p.schema)
    }

    /// Whether the key of `entity` is PHI (and so shown as its token).
    #[must_use]
    pub fn key_is_phi(&self, entity: &str) -> bool {
        self.entities
            .get(entity)
            .is_some_and(|p| p.schema.key_field().sensitivity.is_phi())
    }

    /// Redacts one record of `entity` given as its JSON text (the entity's
    /// serde form). `key_token` replaces a PHI key (the feed's token).
    ///
    /// # Errors
    /// [`Rejected`]: an entity the relay does not know, text that is not a
    /// JSON object, a field the schema does not know, a missing field, a
    /// value of the wrong type.
    pub fn redact_json(
        &self,
        entity: &str,
        json: &str,
        key_token: Option<&str>,
    ) -> Result<(Map<String, Value>, Vec<FieldRecord>), Rejected> {
        let plan = self
            .entities
            .get(entity)
            .ok_or_else(|| Rejected::new("an entity the relay has no schema of"))?;
        let record: Map<String, Value> = serde_json::from_str(json)
            .map_err(|_| Rejected::new("the record is not a JSON object"))?;
        self.redact_map(plan, record, key_token)
    }

    fn redact_map(
        &self,
        plan: &EntityPlan,
        mut record: Map<String, Value>,
        key_token: Option<&str>,
    ) -> Result<(Map<String, Value>, Vec<FieldRecord>), Rejected> {
        if record.len() > plan.fields.len()
            || record
                .keys()
                .any(|k| !plan.by_name.contains_key(k.as_str()))
        {
            let unknown = record
                .keys()
                .find(|k| !plan.by_name.contains_key(k.as_str()))
                .map_or_else(String::new, |k| shown_name(k));
            return Err(Rejected::new(format!(
                "a field the schema of {} does not declare{unknown}",
                plan.schema.name
            )));
        }
        let mut out = Map::new();
        let mut records = Vec::new();
        for f in &plan.fields {
            let Some(value) = record.remove(f.def.name) else {
                return Err(Rejected::new(format!(
                    "the field {} is missing",
                    f.def.name
                )));
            };
            check_type(f.def, &value)?;
            let Some(rule) = f.rule else {
                out.insert(f.def.name.to_owned(), value);
                continue;
            };
            if value.is_null() {
                // Nothing to redact; a dropped field is left out all the same.
                let action = if f.action == Action::Drop {
                    "dropped"
                } else {
                    out.insert(f.def.name.to_owned(), Value::Null);
                    "null"
                };
                records.push(FieldRecord {
                    field: f.def.name,
                    rule,
                    action,
                });
                continue;
            }
            let (new, action) = match f.action {
                Action::Keep => (Some(value), "kept"),
                Action::Drop => (None, "dropped"),
                Action::Token => {
                    let t = if std::ptr::eq(f.def, plan.schema.key_field()) {
                        key_token.map(str::to_owned)
                    } else {
                        None
                    };
                    let t = match t {
                        Some(t) => t,
                        None => self.token(&f.domain, &value),
                    };
                    (Some(Value::String(t)), "tokenized")
                }
                Action::Mask => (Some(mask(&value)), "masked"),
                Action::Generalize => {
                    let (v, a) = generalize(f.def.ty, value, self.profile);
                    (Some(v), a)
                }
            };
            if let Some(v) = new {
                out.insert(f.def.name.to_owned(), v);
            }
            records.push(FieldRecord {
                field: f.def.name,
                rule,
                action,
            });
        }
        Ok((out, records))
    }

    fn token(&self, domain: &str, value: &Value) -> String {
        let privacy = self
            .privacy
            .as_ref()
            .expect("a tokenized field needs a key: checked in Redactor::new");
        match value {
            Value::String(s) => privacy.token(domain, s.as_bytes()),
            other => privacy.token(domain, other.to_string().as_bytes()),
        }
    }
}

/// A name from a record shown in a reason: only when it is a plain
/// identifier (a column name), else not at all.
fn shown_name(name: &str) -> String {
    if dl_models::is_valid_identifier(name) {
        format!(": {name}")
    } else {
        String::new()
    }
}

fn wrong(def: &FieldDef) -> Rejected {
    Rejected::new(format!(
        "the field {} does not hold a {}{}",
        def.name,
        def.ty.name(),
        if def.nullable { " or null" } else { "" }
    ))
}

/// Whether `v` is of the field's type in its serde form.
fn check_type(def: &FieldDef, v: &Value) -> Result<(), Rejected> {
    if v.is_null() {
        return if def.nullable || def.ty == FieldType::Json {
            Ok(())
        } else {
            Err(wrong(def))
        };
    }
    let ok = match def.ty {
        FieldType::Text => v.is_string(),
        FieldType::Int => {
            v.is_i64() || v.is_u64() && v.as_u64().is_some_and(|n| i64::try_from(n).is_ok())
        }
        FieldType::Float => v.is_number(),
        FieldType::Bool => v.is_boolean(),
        FieldType::Date => v
            .as_str()
            .is_some_and(|s| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()),
        FieldType::Timestamp => v
            .as_str()
            .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok()),
        FieldType::Uuid => v.as_str().is_some_and(|s| uuid::Uuid::parse_str(s).is_ok()),
        FieldType::Json => true,
    };
    if ok { Ok(()) } else { Err(wrong(def)) }
}

/// `*` for every character; the last four kept when they are digits and
/// the value has at least ten characters (a phone or card number's usual
/// tail; never part of a name). Inside JSON, every string;
/// numbers and booleans become `"*"`.
fn mask(v: &Value) -> Value {
    match v {
        Value::String(s) => {
            let n = s.chars().count();
            let digit_tail = s.chars().rev().take(4).all(|c| c.is_ascii_digit());
            let keep = if n >= 10 && digit_tail { 4 } else { 0 };
            let mut out = String::with_capacity(s.len());
            for (i, c) in s.chars().enumerate() {
                out.push(if i + keep >= n { c } else { '*' });
            }
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(mask).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), mask(v))).collect()),
        Value::Null => Value::Null,
        Value::Bool(_) | Value::Number(_) => Value::String("*".to_owned()),
    }
}

/// Three-digit ZIP areas with fewer than 20,000 people (2000 census), which
/// Safe Harbor turns into `000`.
const SMALL_ZIP3: [&str; 17] = [
    "036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878",
    "879", "884", "890", "893",
];

/// The coarser form of a value, and what was done.
fn generalize(ty: FieldType, v: Value, profile: Profile) -> (Value, &'static str) {
    match (ty, v) {
        (FieldType::Date | FieldType::Timestamp, Value::String(s)) => match year_of(&s) {
            Some(y) => (Value::from(y), "to_year"),
            None => (Value::Null, "suppressed"),
        },
        (FieldType::Int | FieldType::Float, Value::Number(n)) => {
            if n.as_f64().is_some_and(|x| x > 89.0) {
                (Value::String("90+".to_owned()), "to_90_plus")
            } else {
                (Value::Number(n), "kept")
            }
        }
        (FieldType::Text, Value::String(s)) => generalize_text(&s, profile),
        (FieldType::Json, v) => (generalize_json(v, profile), "generalized"),
        _ => (Value::Null, "suppressed"),
    }
}

fn generalize_text(s: &str, profile: Profile) -> (Value, &'static str) {
    let b = s.as_bytes();
    let zip5 = b.len() == 5 && b.iter().all(u8::is_ascii_digit);
    let zip9 =
        b.len() == 10 && b[5] == b'-' && b[..5].iter().chain(&b[6..]).all(u8::is_ascii_digit);
    if zip5 || zip9 {
        let area = &s[..3];
        if profile == Profile::SafeHarbor && SMALL_ZIP3.contains(&area) {
            return (Value::String("000".to_owned()), "to_000");
        }
        return (Value::String(area.to_owned()), "to_zip3");
    }
    match year_of(s) {
        Some(y) => (Value::from(y), "to_year"),
        None => (Value::Null, "suppressed"),
    }
}

fn generalize_json(v: Value, profile: Profile) -> Value {
    match v {
        Value::String(s) => generalize_text(&s, profile).0,
        Value::Number(n) => generalize(FieldType::Int, Value::Number(n), profile).0,
        Value::Array(a) => {
            Value::Array(a.into_iter().map(|v| generalize_json(v, profile)).collect())
        }
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k, generalize_json(v, profile)))
                .collect(),
        ),
        Value::Bool(_) => Value::Null,
        Value::Null => Value::Null,
    }
}

/// The year of a date (`YYYY-MM-DD`) or an RFC 3339 timestamp.
fn year_of(s: &str) -> Option<i64> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Some(i64::from(chrono::Datelike::year(&d)));
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| i64::from(chrono::Datelike::year(&t.naive_utc())))
}

/// The rules of each entity's PHI fields under a profile, for docs and
/// `data-layer cdc status`: entity → [(field, rule, what it becomes)].
#[must_use]
pub fn plan_summary(
    redactor: &Redactor,
) -> BTreeMap<&'static str, Vec<(&'static str, &'static str, &'static str)>> {
    redactor
        .entities
        .values()
        .map(|p| {
            let rows = p
                .fields
                .iter()
                .filter_map(|f| {
                    f.rule.map(|r| {
                        let becomes = match f.action {
                            Action::Keep => "kept",
                            Action::Drop => "dropped",
                            Action::Token => "token",
                            Action::Mask => "masked",
                            Action::Generalize => "generalized",
                        };
                        (f.def.name, r, becomes)
                    })
                })
                .collect();
            (p.schema.name, rows)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dl_models::Entity as _;
    use dl_models::domain::Patient;
    use dl_privacy::SecretKey;

    fn privacy() -> Arc<Privacy> {
        Arc::new(Privacy::new(
            SecretKey::from_bytes("k1", [9u8; 32]).unwrap(),
        ))
    }

    fn patient_json() -> String {
        serde_json::json!({
            "id": "7b0e3f3a-8a43-4c1e-9d55-0b4b5f1f2a10",
            "mrn": "MRN-CANARY-1",
            "given_name": "Canarygiven",
            "family_name": "Canaryfamilyname",
            "date_of_birth": "1931-02-03",
            "phone": "+1 555 0100 9999",
            "email": null,
            "status": "active",
            "created_at": "2026-12-07T10:00:00.000Z",
            "version": 1
        })
        .to_string()
    }

    fn pseudo() -> Redactor {
        Redactor::new(
            &[Patient::schema()],
            Profile::Pseudonymous,
            "v1",
            Some(privacy()),
        )
        .unwrap()
    }

    #[test]
    fn pseudonymous_rewrites_every_phi_field_and_records_it() {
        let (out, rec) = pseudo()
            .redact_json("patients", &patient_json(), None)
            .unwrap();
        let text = serde_json::to_string(&out).unwrap();
        for canary in [
            "MRN-CANARY-1",
            "Canarygiven",
            "Canaryfamilyname",
            "1931-02-03",
            "0100 9999",
        ] {
            assert!(!text.contains(canary), "{canary} in {text}");
        }
        assert!(out["mrn"].as_str().unwrap().starts_with("k1."));
        assert_eq!(out["given_name"], "***********");
        assert_eq!(out["phone"], "************9999");
        assert_eq!(out["date_of_birth"], 1931);
        assert_eq!(out["status"], "active");
        let fields: Vec<_> = rec.iter().map(|r| (r.field, r.rule, r.action)).collect();
        assert_eq!(
            fields,
            [
                ("mrn", "hash", "tokenized"),
                ("given_name", "mask", "masked"),
                ("family_name", "mask", "masked"),
                ("date_of_birth", "generalize", "to_year"),
                ("phone", "mask", "masked"),
                ("email", "mask", "null"),
            ]
        );
    }

    #[test]
    fn the_same_record_redacts_the_same_way() {
        let r = pseudo();
        let a = r.redact_json("patients", &patient_json(), None).unwrap();
        let b = r.redact_json("patients", &patient_json(), None).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn safe_harbor_refuses_mask_naming_the_field() {
        let e = Redactor::new(
            &[Patient::schema()],
            Profile::SafeHarbor,
            "v1",
            Some(privacy()),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("patients") && e.contains("given_name") && e.contains("safe_harbor"),
            "{e}"
        );
    }

    #[test]
    fn a_hash_rule_needs_a_configured_key() {
        for p in [None, Some(Arc::new(Privacy::ephemeral()))] {
            let e = Redactor::new(&[Patient::schema()], Profile::Pseudonymous, "v1", p)
                .unwrap_err()
                .to_string();
            assert!(e.contains("mrn") && e.contains("privacy.key"), "{e}");
        }
    }

    #[test]
    fn bad_policy_versions_are_refused() {
        for v in ["", "a b", "x'; DROP TABLE t;--", &"v".repeat(65)] {
            let e = Redactor::new(
                &[Patient::schema()],
                Profile::Pseudonymous,
                v,
                Some(privacy()),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("cdc.policy_version"), "{e}");
            assert!(v.is_empty() || !e.contains(v), "{e}");
        }
    }

    #[test]
    fn records_off_the_schema_are_rejected_without_values() {
        let r = pseudo();
        let mut extra: Map<String, Value> = serde_json::from_str(&patient_json()).unwrap();
        extra.insert("ssn".into(), "CANARY-SSN".into());
        let e = r
            .redact_json("patients", &Value::Object(extra).to_string(), None)
            .unwrap_err();
        assert!(
            e.reason.contains("ssn") && !e.reason.contains("CANARY"),
            "{e}"
        );

        let mut odd: Map<String, Value> = serde_json::from_str(&patient_json()).unwrap();
        odd.insert("CANARY name; DROP".into(), 1.into());
        let e = r
            .redact_json("patients", &Value::Object(odd).to_string(), None)
            .unwrap_err();
        assert!(!e.reason.contains("CANARY"), "{e}");

        let mut missing: Map<String, Value> = serde_json::from_str(&patient_json()).unwrap();
        missing.remove("mrn");
        let e = r
            .redact_json("patients", &Value::Object(missing).to_string(), None)
            .unwrap_err();
        assert!(e.reason.contains("mrn is missing"), "{e}");

        let mut typed: Map<String, Value> = serde_json::from_str(&patient_json()).unwrap();
        typed.insert("date_of_birth".into(), "CANARY-not-a-date".into());
        let e = r
            .redact_json("patients", &Value::Object(typed).to_string(), None)
            .unwrap_err();
        assert!(
            e.reason.contains("date_of_birth") && !e.reason.contains("CANARY"),
            "{e}"
        );

        for bad in ["", "[1,2]", "{\"id\":", "null", "\"CANARY\""] {
            let e = r.redact_json("patients", bad, None).unwrap_err();
            assert!(!e.reason.contains("CANARY"), "{e}");
        }
        assert!(r.redact_json("nobody", &patient_json(), None).is_err());
    }

    #[test]
    fn generalize_follows_safe_harbor() {
        let p = Profile::SafeHarbor;
        assert_eq!(
            generalize(FieldType::Int, 95.into(), p),
            (Value::from("90+"), "to_90_plus")
        );
        assert_eq!(
            generalize(FieldType::Int, 89.into(), p),
            (Value::from(89), "kept")
        );
        assert_eq!(
            generalize(FieldType::Text, "02139".into(), p),
            (Value::from("021"), "to_zip3")
        );
        assert_eq!(
            generalize(FieldType::Text, "03601-1234".into(), p),
            (Value::from("000"), "to_000")
        );
        assert_eq!(
            generalize(FieldType::Text, "03601".into(), Profile::Pseudonymous),
            (Value::from("036"), "to_zip3")
        );
        assert_eq!(
            generalize(FieldType::Text, "CANARY".into(), p),
            (Value::Null, "suppressed")
        );
        assert_eq!(
            generalize(FieldType::Timestamp, "2026-12-07T10:00:00+01:00".into(), p),
            (Value::from(2026), "to_year")
        );
        assert_eq!(
            generalize_json(
                serde_json::json!({"zip": "02139", "age": 93, "born": "1930-01-01", "x": true}),
                p
            ),
            serde_json::json!({"zip": "021", "age": "90+", "born": 1930, "x": null})
        );
    }

    #[test]
    fn mask_keeps_only_a_long_values_tail() {
        assert_eq!(mask(&"abc".into()), Value::from("***"));
        assert_eq!(mask(&"0123456789".into()), Value::from("******6789"));
        assert_eq!(mask(&"CANARYname".into()), Value::from("**********"));
        assert_eq!(
            mask(&serde_json::json!({"a": "CANARYname", "p": "555-010-0199", "n": 5})),
            serde_json::json!({"a": "**********", "p": "********0199", "n": "*"})
        );
    }
}
