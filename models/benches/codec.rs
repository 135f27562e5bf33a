//! The entity codec's cost per record: an `Appointment` (two UUIDs, a
//! timestamp, texts, integers) encoded to its record and decoded back, as
//! every read and write through a repository does.
//! `cargo bench -p dl-models --bench codec`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dl_models::domain::Appointment;
use dl_models::{decode, encode};

fn appointment() -> Appointment {
    Appointment {
        id: uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        patient_id: uuid::Uuid::from_u128(0xfedc_ba98_7654_3210_fedc_ba98_7654_3210),
        starts_at: chrono::DateTime::from_timestamp_millis(1_800_000_123_456).expect("time"),
        duration_minutes: 30,
        kind: "checkup".into(),
        status: "scheduled".into(),
        notes: Some("fake note for a benchmark".into()),
        version: 1,
    }
}

fn codec(c: &mut Criterion) {
    let a = appointment();
    let record = encode(&a).expect("encode");
    c.bench_function("appointment/encode", |b| {
        b.iter(|| encode(black_box(&a)).expect("encode"));
    });
    c.bench_function("appointment/decode", |b| {
        b.iter(|| decode::<Appointment>(black_box(&record)).expect("decode"));
    });
}

criterion_group!(benches, codec);
criterion_main!(benches);
