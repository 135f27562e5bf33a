//! The guard's cost: a `get` on the memory backend with and without the
//! guard (closed breaker), and a call on an open breaker (the fast fail).
//! `cargo bench -p dl-repositories --bench guard`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use dl_models::{EntitySchema, Record, Value};
use dl_repositories::backends::memory::MemoryBackend;
use dl_repositories::guard::{BreakerSettings, Guarded, RetrySettings};
use dl_repositories::{Backend, Capabilities, Error, Operation, Store};

static FIELDS: [dl_models::FieldDef; 2] = [
    dl_models::FieldDef {
        name: "id",
        ty: dl_models::FieldType::Int,
        nullable: false,
        indexed: false,
        unique: false,
        sensitivity: dl_models::Sensitivity::Public,
        max_len: None,
    },
    dl_models::FieldDef {
        name: "body",
        ty: dl_models::FieldType::Text,
        nullable: false,
        indexed: false,
        unique: false,
        sensitivity: dl_models::Sensitivity::Public,
        max_len: None,
    },
];
static SCHEMA: EntitySchema = EntitySchema {
    name: "bench_notes",
    rust_name: "BenchNote",
    fields: &FIELDS,
    key: 0,
    version: None,
};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let raw: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    rt.block_on(async {
        raw.prepare(&SCHEMA).await.expect("prepare");
        raw.insert(
            &SCHEMA,
            &Record(vec![Value::Int(1), Value::Text("fake".into())]),
        )
        .await
        .expect("insert");
    });
    let guarded = Guarded::new(
        Arc::clone(&raw),
        Duration::from_secs(10),
        BreakerSettings::default(),
        RetrySettings::default(),
    );
    let key = Value::Int(1);
    let guarded: &dyn Backend = &guarded;

    let mut group = c.benchmark_group("guard");
    group.bench_function("get, unguarded", |b| {
        b.to_async(&rt)
            .iter(|| async { raw.get(&SCHEMA, &key).await.expect("get") })
    });
    group.bench_function("get, guarded (closed breaker)", |b| {
        b.to_async(&rt)
            .iter(|| async { guarded.get(&SCHEMA, &key).await.expect("get") });
    });

    // An open breaker: trip it with transient failures, then time the fast fail.
    let failing = Guarded::new(
        Arc::new(Failing),
        Duration::from_secs(10),
        BreakerSettings::default(),
        RetrySettings {
            max_retries: 0,
            ..RetrySettings::default()
        },
    );
    let failing: &dyn Backend = &failing;
    rt.block_on(async {
        for _ in 0..20 {
            let _ = failing.get(&SCHEMA, &key).await;
        }
    });
    group.bench_function("get, open breaker (fast fail)", |b| {
        b.to_async(&rt).iter(|| async {
            assert!(matches!(
                failing.get(&SCHEMA, &key).await,
                Err(Error::CircuitOpen { .. })
            ))
        });
    });
    group.finish();
}

/// A store that is always unavailable (to open a breaker).
#[derive(Debug)]
struct Failing;

fn down(op: Operation) -> Error {
    Error::Unavailable {
        store: Store::Memory,
        operation: op,
        reason: "bench".into(),
        sent: false,
        source: None,
    }
}

#[async_trait::async_trait]
impl Backend for Failing {
    fn store(&self) -> Store {
        Store::Memory
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::full()
    }
    async fn call(
        &self,
        _: &'static EntitySchema,
        request: dl_repositories::Request<'_>,
    ) -> dl_repositories::Result<dl_repositories::Response> {
        Err(down(request.operation()))
    }
    async fn begin(&self) -> dl_repositories::Result<Box<dyn dl_repositories::Transaction>> {
        Err(down(dl_repositories::Operation::Transaction))
    }
    async fn change_feed(
        &self,
    ) -> dl_repositories::Result<std::sync::Arc<dyn dl_repositories::ChangeFeed>> {
        Err(down(dl_repositories::Operation::Feed))
    }
}

#[async_trait::async_trait]
impl dl_repositories::Probe for Failing {
    async fn ping(&self) -> dl_repositories::Result<()> {
        Err(down(Operation::Ping))
    }
    fn pool_stats(&self) -> Option<dl_repositories::PoolStats> {
        None
    }
    fn breaker_state(&self) -> Option<dl_repositories::BreakerState> {
        None
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
