//! Redaction of a Patient-sized record (10 fields, 6 PHI), from the feed's
//! JSON text to the redacted object and its field records, on one core.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dl_cdc::{Profile, Redactor};
use dl_models::Entity as _;
use dl_models::domain::Patient;
use dl_privacy::{Privacy, SecretKey};

fn redact(c: &mut Criterion) {
    let privacy = Arc::new(Privacy::new(
        SecretKey::from_bytes("k1", [7u8; 32]).expect("key"),
    ));
    let redactor = Redactor::new(
        &[Patient::schema()],
        Profile::Pseudonymous,
        "v1",
        Some(privacy),
    )
    .expect("redactor");
    let record = serde_json::json!({
        "id": "7b0e3f3a-8a43-4c1e-9d55-0b4b5f1f2a10",
        "mrn": "MRN-0000123456",
        "given_name": "Josephine",
        "family_name": "Montgomery-Smith",
        "date_of_birth": "1948-07-21",
        "phone": "+1 617 555 0142",
        "email": "josephine.montgomery@example.org",
        "status": "active",
        "created_at": "2026-12-07T10:00:00.000Z",
        "version": 3
    })
    .to_string();
    let mut g = c.benchmark_group("redact");
    g.throughput(Throughput::Elements(1));
    g.bench_function("patient_pseudonymous", |b| {
        b.iter(|| {
            redactor
                .redact_json("patients", std::hint::black_box(&record), None)
                .expect("redacts")
        });
    });
    g.finish();
}

criterion_group!(benches, redact);
criterion_main!(benches);
