//! The codec between entities and records, including what it refuses, and
//! the domain models' schemas.

use dl_models::domain::{Appointment, AuditEvent, Patient, PatientStatus};
use dl_models::{
    Entity, EntitySchema, FieldDef, FieldType, Record, Redaction, Sensitivity, Value, decode,
    encode,
};
use serde::{Deserialize, Serialize};

fn patient() -> Patient {
    Patient {
        id: uuid::Uuid::nil(),
        mrn: "MRN-FAKE-1".into(),
        given_name: "Fakey".into(),
        family_name: "McTestface".into(),
        date_of_birth: chrono::NaiveDate::from_ymd_opt(1990, 2, 3).unwrap(),
        phone: Some("+1-555-0100".into()),
        email: None,
        status: PatientStatus::Deceased,
        created_at: chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
        version: 4,
    }
}

#[test]
fn round_trip() {
    let p = patient();
    let r = encode(&p).unwrap();
    assert_eq!(r.0.len(), Patient::schema().fields.len());
    assert_eq!(
        r.0[Patient::schema().position("status").unwrap()],
        Value::Text("deceased".into())
    );
    let back: Patient = decode(&r).unwrap();
    assert!(back == p);
}

#[test]
fn debug_hides_phi() {
    let shown = format!("{:?}", patient());
    for phi in ["MRN-FAKE-1", "Fakey", "McTestface", "1990", "555"] {
        assert!(!shown.contains(phi), "{phi} in {shown}");
    }
    assert!(
        shown.contains("Deceased") && shown.contains("version: 4"),
        "{shown}"
    );
}

#[test]
fn domain_schemas() {
    let s = Patient::schema();
    assert_eq!(s.name, "patients");
    assert_eq!(s.key_field().ty, FieldType::Uuid);
    assert_eq!(s.version_field().unwrap().name, "version");
    assert_eq!(
        s.field("mrn").unwrap().sensitivity,
        Sensitivity::Phi(Redaction::Hash)
    );
    assert!(s.field("mrn").unwrap().unique);
    assert_eq!(
        s.field("date_of_birth").unwrap().sensitivity,
        Sensitivity::Phi(Redaction::Generalize)
    );
    assert!(!s.field("status").unwrap().sensitivity.is_phi());
    assert_eq!(
        Appointment::schema().field("notes").unwrap().sensitivity,
        Sensitivity::Phi(Redaction::Drop)
    );
    assert_eq!(
        AuditEvent::schema().field("detail").unwrap().ty,
        FieldType::Json
    );
    for schema in [
        Patient::schema(),
        Appointment::schema(),
        AuditEvent::schema(),
    ] {
        assert!(dl_models::is_valid_identifier(schema.name));
        assert!(
            schema
                .fields
                .iter()
                .all(|f| dl_models::is_valid_identifier(f.name))
        );
    }
}

/// A hand-written Entity whose schema disagrees with its serde form, to
/// exercise what the codec refuses (the derive prevents these).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Skewed {
    id: String,
    extra: String,
    n: Option<f64>,
}

static SKEWED_FIELDS: [FieldDef; 2] = [
    FieldDef {
        name: "id",
        ty: FieldType::Text,
        nullable: false,
        indexed: false,
        unique: false,
        sensitivity: Sensitivity::Public,
        max_len: None,
    },
    FieldDef {
        name: "n",
        ty: FieldType::Float,
        nullable: false,
        indexed: false,
        unique: false,
        sensitivity: Sensitivity::Public,
        max_len: None,
    },
];
static SKEWED: EntitySchema = EntitySchema {
    name: "skewed",
    rust_name: "Skewed",
    fields: &SKEWED_FIELDS,
    key: 0,
    version: None,
};

impl Entity for Skewed {
    type Key = String;
    fn schema() -> &'static EntitySchema {
        &SKEWED
    }
    fn key(&self) -> String {
        self.id.clone()
    }
}

#[test]
fn refuses_what_does_not_fit() {
    let nan = Skewed {
        id: "a".into(),
        extra: "x".into(),
        n: Some(f64::NAN),
    };
    let e = encode(&nan).unwrap_err();
    assert_eq!(e.field, Some("n"));
    assert!(e.reason.contains("NaN"), "{e}");

    let extra = Skewed {
        id: "a".into(),
        extra: "secret-ish".into(),
        n: Some(1.0),
    };
    let e = encode(&extra).unwrap_err();
    assert!(
        e.reason.contains("`extra`") && !e.to_string().contains("secret-ish"),
        "{e}"
    );

    let short = Record(vec![Value::Text("a".into())]);
    assert!(
        decode::<Skewed>(&short)
            .unwrap_err()
            .reason
            .contains("1 values")
    );

    let wrong = Record(vec![
        Value::Text("a".into()),
        Value::Text("not a float".into()),
    ]);
    let e = decode::<Patient>(&wrong).unwrap_err();
    assert!(e.reason.contains("values"), "{e}");
    let e =
        decode::<Skewed>(&Record(vec![Value::Text("a".into()), Value::Float(1.0)])).unwrap_err();
    assert!(!e.to_string().contains("1.0"), "{e}");
}
