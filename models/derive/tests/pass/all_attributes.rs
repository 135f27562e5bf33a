use dl_models::{Entity, FieldType, Redaction, Sensitivity};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Serialize, Deserialize, Debug)]
#[serde(rename_all = "snake_case")]
enum Kind {
    One,
}

#[derive(Clone, Serialize, Deserialize, Debug)]
struct Extra {
    a: Vec<u32>,
}

#[derive(Clone, Serialize, Deserialize, Entity)]
#[entity(name = "everything")]
struct Everything {
    #[key]
    #[phi(hash)]
    id: i64,
    #[indexed(unique)]
    #[field(max_len = 10)]
    code: String,
    #[field(text)]
    kind: Kind,
    #[field(json)]
    extra: Extra,
    doc: Option<serde_json::Value>,
    #[phi]
    secret: Option<String>,
    at: chrono::DateTime<chrono::Utc>,
    day: chrono::NaiveDate,
    uid: uuid::Uuid,
    small: u8,
    ratio: f32,
    flag: bool,
    #[version]
    version: i64,
}

fn main() {
    let s = Everything::schema();
    assert_eq!(s.name, "everything");
    assert_eq!(s.key_field().sensitivity, Sensitivity::Phi(Redaction::Hash));
    assert_eq!(s.field("kind").unwrap().ty, FieldType::Text);
    assert_eq!(s.field("extra").unwrap().ty, FieldType::Json);
    assert_eq!(s.field("doc").unwrap().ty, FieldType::Json);
    assert!(s.field("doc").unwrap().nullable);
    assert_eq!(s.field("secret").unwrap().sensitivity, Sensitivity::Phi(Redaction::Drop));
    assert_eq!(s.field("small").unwrap().ty, FieldType::Int);
    assert!(s.field("code").unwrap().unique && s.field("code").unwrap().indexed);
    assert_eq!(s.field("code").unwrap().max_len, Some(10));
    assert_eq!(s.version_field().unwrap().name, "version");
    let e = Everything {
        id: 1,
        code: "c".into(),
        kind: Kind::One,
        extra: Extra { a: vec![] },
        doc: None,
        secret: Some("hidden-value".into()),
        at: chrono::Utc::now(),
        day: chrono::NaiveDate::from_ymd_opt(2000, 1, 1).unwrap(),
        uid: uuid::Uuid::nil(),
        small: 1,
        ratio: 0.5,
        flag: true,
        version: 0,
    };
    let shown = format!("{e:?}");
    assert!(!shown.contains("hidden-value") && shown.contains("<redacted>"), "{shown}");
    let _ = e.key();
}
