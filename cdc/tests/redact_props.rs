//! The redactor over generated entities: any field types, any rules, any
//! values. Every PHI text value holds a canary; after redaction no canary
//! is left anywhere in the output, every PHI field has exactly one record
//! and no other field has one, public values pass unchanged, and a
//! profile that forbids a rule refuses the entity naming the field.

use std::sync::Arc;

use dl_cdc::{Profile, Redactor};
use dl_models::{EntitySchema, FieldDef, FieldType, Redaction, Sensitivity};
use dl_privacy::{Privacy, SecretKey};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const TYPES: [FieldType; 8] = [
    FieldType::Text,
    FieldType::Int,
    FieldType::Float,
    FieldType::Bool,
    FieldType::Date,
    FieldType::Timestamp,
    FieldType::Uuid,
    FieldType::Json,
];

fn sensitivity() -> impl Strategy<Value = Sensitivity> {
    prop_oneof![
        2 => Just(Sensitivity::Public),
        1 => Just(Sensitivity::Phi(Redaction::Drop)),
        1 => Just(Sensitivity::Phi(Redaction::Hash)),
        1 => Just(Sensitivity::Phi(Redaction::Mask)),
        1 => Just(Sensitivity::Phi(Redaction::Generalize)),
    ]
}

/// A generated entity: a key (text, int or uuid; PHI or not) and up to 11
/// more fields of any type and rule.
fn entity() -> impl Strategy<Value = &'static EntitySchema> {
    let key = (
        prop_oneof![
            Just(FieldType::Text),
            Just(FieldType::Int),
            Just(FieldType::Uuid)
        ],
        prop_oneof![
            Just(Sensitivity::Public),
            Just(Sensitivity::Phi(Redaction::Hash))
        ],
    );
    let field = (0..TYPES.len(), sensitivity(), any::<bool>());
    (
        key,
        proptest::collection::vec(field, 0..11),
        0u32..1_000_000,
    )
        .prop_map(|((kty, ks), fields, n)| {
            let mut defs = vec![FieldDef {
                name: "id",
                ty: kty,
                nullable: false,
                indexed: false,
                unique: false,
                sensitivity: ks,
                max_len: None,
            }];
            for (i, (t, s, nullable)) in fields.into_iter().enumerate() {
                defs.push(FieldDef {
                    name: Box::leak(format!("f{i}").into_boxed_str()),
                    ty: TYPES[t],
                    nullable,
                    indexed: false,
                    unique: false,
                    sensitivity: s,
                    max_len: None,
                });
            }
            let schema = EntitySchema {
                name: Box::leak(format!("gen_{n}").into_boxed_str()),
                rust_name: "Generated",
                fields: Box::leak(defs.into_boxed_slice()),
                key: 0,
                version: None,
            };
            &*Box::leak(Box::new(schema))
        })
}

/// A value of `def`'s type; PHI text (and every string inside PHI JSON)
/// holds `canary`.
fn value(def: &FieldDef, canary: &str, seed: u64, null: bool) -> Value {
    if null && def.nullable {
        return Value::Null;
    }
    let phi = def.sensitivity.is_phi();
    match def.ty {
        FieldType::Text if phi => json!(format!("{canary}-{seed}")),
        FieldType::Text => json!(format!("public-{seed}")),
        FieldType::Int => json!(i64::try_from(seed % 200).unwrap_or(0)),
        FieldType::Float => json!(f64::from(u32::try_from(seed % 2000).unwrap_or(0)) / 10.0),
        FieldType::Bool => json!(seed.is_multiple_of(2)),
        FieldType::Date => json!(format!(
            "19{:02}-0{}-1{}",
            seed % 100,
            1 + seed % 9,
            seed % 10
        )),
        FieldType::Timestamp => json!(format!("20{:02}-01-02T03:04:05.678Z", seed % 100)),
        FieldType::Uuid => json!(uuid::Uuid::from_u128(u128::from(seed) << 64 | 7).to_string()),
        FieldType::Json if phi => {
            json!({"note": format!("{canary}-n{seed}"), "list": [format!("{canary}-l"), 93], "zip": "02139"})
        }
        FieldType::Json => json!({"public": seed}),
    }
}

fn privacy() -> Arc<Privacy> {
    Arc::new(Privacy::new(
        SecretKey::from_bytes("p1", [3u8; 32]).expect("key"),
    ))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn no_phi_survives_and_every_phi_field_is_recorded(
        schema in entity(),
        seed in any::<u64>(),
        nulls in any::<u16>(),
    ) {
        let canary = format!("CANARY{}", seed % 1_000_000_007);
        let mut record = Map::new();
        for (i, f) in schema.fields.iter().enumerate() {
            let null = (nulls >> (i % 16)) & 1 == 1;
            let v = if i == schema.key {
                match (f.ty, f.sensitivity.is_phi()) {
                    (FieldType::Text, true) => json!(format!("{canary}-key")),
                    (FieldType::Text, false) => json!(format!("key-{seed}")),
                    (FieldType::Int, _) => json!(i64::try_from(seed % 1_000_000).unwrap_or(0)),
                    _ => json!(uuid::Uuid::from_u128(u128::from(seed)).to_string()),
                }
            } else {
                value(f, &canary, seed.wrapping_add(i as u64), null)
            };
            record.insert(f.name.to_owned(), v);
        }
        let text = Value::Object(record.clone()).to_string();

        let redactor = Redactor::new(&[schema], Profile::Pseudonymous, "v1", Some(privacy()))
            .expect("pseudonymous serves every rule");
        let key_token = schema.key_field().sensitivity.is_phi().then_some("p1.the-feed-token");
        let (out, fields) = redactor.redact_json(schema.name, &text, key_token).expect("the record matches");
        let out_text = Value::Object(out.clone()).to_string();
        prop_assert!(!out_text.contains(&canary), "a canary in {}", out_text);

        for f in schema.fields {
            let recorded = fields.iter().filter(|r| r.field == f.name).count();
            if f.sensitivity.is_phi() {
                prop_assert_eq!(recorded, 1, "{} has {} records", f.name, recorded);
            } else {
                prop_assert_eq!(recorded, 0);
                prop_assert_eq!(out.get(f.name), record.get(f.name), "public {} changed", f.name);
            }
            if f.sensitivity == Sensitivity::Phi(Redaction::Drop) {
                prop_assert!(out.get(f.name).is_none(), "dropped {} is there", f.name);
            }
            if matches!(f.ty, FieldType::Date | FieldType::Timestamp)
                && f.sensitivity == Sensitivity::Phi(Redaction::Generalize)
                && !record[f.name].is_null()
            {
                prop_assert!(out[f.name].is_i64(), "a date generalized to its year");
            }
        }
        if let Some(t) = key_token {
            prop_assert_eq!(&out["id"], &json!(t));
        }
        // The same record, the same output.
        let again = redactor.redact_json(schema.name, &text, key_token).expect("again");
        prop_assert_eq!((out, fields), again);

        // Safe Harbor: refused naming the field when it holds a mask rule or
        // a PHI key; else no canary and no token of any kind.
        let forbidden = schema.key_field().sensitivity.is_phi()
            || schema.fields.iter().any(|f| f.sensitivity == Sensitivity::Phi(Redaction::Mask));
        match Redactor::new(&[schema], Profile::SafeHarbor, "v1", Some(privacy())) {
            Err(e) => {
                prop_assert!(forbidden, "refused: {}", e);
                let named = schema.fields.iter().any(|f| e.to_string().contains(&format!("`{}`", f.name)) || e.to_string().contains(f.name));
                prop_assert!(named, "{}", e);
            }
            Ok(r) => {
                prop_assert!(!forbidden);
                let (out, _) = r.redact_json(schema.name, &text, None).expect("matches");
                let out_text = Value::Object(out).to_string();
                prop_assert!(!out_text.contains(&canary));
                prop_assert!(!out_text.contains("p1."), "a token under safe harbor: {}", out_text);
            }
        }
    }
}
