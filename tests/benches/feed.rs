//! The change feed's cost: a single write with capture on against the same
//! write with capture off, in the same run, on the same table; and the
//! rate at which a consumer reads and acknowledges events.
//!
//! ```sh
//! scripts/stack.sh up && set -a && . ./.env.test && set +a
//! cargo bench -p dl-tests --bench feed            # the interleaved ratios, then criterion
//! DL_BENCH_STORES=sqlite,redis cargo bench -p dl-tests --bench feed
//! ```
//!
//! The ratios come from interleaved blocks: capture off and capture on
//! alternate (which goes first alternating) in blocks of about 20 ms, 31
//! rounds, so that drift of the shared machine falls on both; the ratio is
//! the median of the per-round ratios on / off, with its quartiles. Both
//! sides are the framework (repository and guard) over one pool; only the
//! capture differs. The criterion groups `<store>_capture_<op>` measure each
//! side on its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use dl_repositories::feed::Capture;
use dl_repositories::guard::{BreakerSettings, Guarded, RetrySettings};
use dl_repositories::{Backend, Patch, Repo, Repository};
use dl_tests::entities::Specimen;

/// Keys updated by the update benchmark, seeded on each side.
const SEED: usize = 200;
/// Rounds of the interleaved run.
const ROUNDS: usize = 31;

fn guarded(b: Arc<dyn Backend>) -> Arc<dyn Backend> {
    Arc::new(Guarded::new(
        b,
        Duration::from_secs(10),
        BreakerSettings::default(),
        RetrySettings::default(),
    ))
}

fn capture() -> Arc<Capture> {
    Arc::new(Capture::new(["specimens"], dl_tests::live::test_privacy()).expect("capture"))
}

/// The two sides of one store: the same pool and table, capture off / on.
struct Sides {
    store: &'static str,
    off: Arc<dyn Repository<Specimen>>,
    on: Arc<dyn Repository<Specimen>>,
    on_backend: Arc<dyn Backend>,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn fresh(tag: &str) -> Specimen {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut s = Specimen::new(&format!("{tag}-{n}"), i64::try_from(n).unwrap_or(0));
    s.body = Some("a benchmark body of some length, as a record has".into());
    s
}

async fn sides(store: &'static str, off: Arc<dyn Backend>, on: Arc<dyn Backend>) -> Sides {
    let off_repo: Arc<dyn Repository<Specimen>> = Arc::new(
        Repo::<Specimen>::open(guarded(off))
            .await
            .expect("open off"),
    );
    let on_backend = guarded(on);
    let on_repo: Arc<dyn Repository<Specimen>> = Arc::new(
        Repo::<Specimen>::open(Arc::clone(&on_backend))
            .await
            .expect("open on"),
    );
    for side in ["off", "on"] {
        let repo = if side == "off" { &off_repo } else { &on_repo };
        let seed: Vec<Specimen> = (0..SEED)
            .map(|i| Specimen::new(&format!("seed-{side}-{i}"), 0))
            .collect();
        repo.insert_many(&seed).await.expect("seed");
    }
    Sides {
        store,
        off: off_repo,
        on: on_repo,
        on_backend,
    }
}

async fn sqlite() -> Sides {
    let dir = tempfile::tempdir().expect("temp dir").keep();
    let settings =
        dl_connections::Settings::load(&dl_connections::Sources::isolated()).expect("defaults");
    let pool = dl_connections::sqlite::connect(
        dir.join("feed-bench.db").to_str().expect("utf-8"),
        &settings.sqlite,
    )
    .await
    .expect("open sqlite");
    dl_tests::schema::sqlite(&pool).await.expect("migrations");
    use dl_repositories::backends::sqlite::SqliteBackend;
    sides(
        "sqlite",
        Arc::new(SqliteBackend::new(pool.clone())),
        Arc::new(SqliteBackend::new(pool).with_capture(capture())),
    )
    .await
}

async fn postgres(ns: &str) -> Sides {
    use dl_repositories::backends::postgres::PostgresBackend;
    let url = dl_tests::live::postgres_url();
    dl_tests::schema::postgres(&url, ns)
        .await
        .expect("migrations");
    let pool = dl_connections::postgres::connect_lazy(&url, &dl_tests::live::test_pool(4))
        .expect("postgres options");
    sides(
        "postgres",
        Arc::new(PostgresBackend::new(pool.clone(), ns).expect("namespace")),
        Arc::new(
            PostgresBackend::new(pool, ns)
                .expect("namespace")
                .with_capture(capture()),
        ),
    )
    .await
}

async fn redis(prefix: &str) -> Sides {
    use dl_repositories::backends::redis::RedisBackend;
    let pool = dl_tests::live::test_pool(1);
    let conn = dl_connections::redis::connect_lazy(&dl_tests::live::redis_url(), &pool)
        .expect("redis options");
    let make = || {
        RedisBackend::new(conn.clone(), prefix, pool.request_timeout)
            .expect("prefix")
            .with_privacy(dl_tests::live::test_privacy())
    };
    sides(
        "redis",
        Arc::new(make()),
        Arc::new(make().with_capture(capture())),
    )
    .await
}

async fn mongo(ns: &dl_tests::live::MongoNamespaces) -> Sides {
    use dl_repositories::backends::mongo::MongoBackend;
    let db = ns.migrated().await;
    let pool = dl_tests::live::test_pool(4);
    let client = dl_connections::mongo::connect(&dl_tests::live::mongo_url(), &pool)
        .await
        .expect("mongo options");
    let make = || MongoBackend::new(&client, &db, pool.request_timeout).expect("database");
    sides(
        "mongodb",
        Arc::new(make()),
        Arc::new(make().with_capture(capture())),
    )
    .await
}

/// One write of `op` on `repo`.
async fn write(repo: &dyn Repository<Specimen>, side: &str, op: &str, i: usize) {
    match op {
        "insert" => repo.insert(&fresh(side)).await.expect("insert"),
        _ => {
            let key = format!("seed-{side}-{}", i % SEED);
            repo.update(
                &key,
                &Patch::new().set("rank", i64::try_from(i).unwrap_or(0)),
            )
            .await
            .expect("update")
            .expect("seeded");
        }
    }
}

/// Per-iteration time of `n` writes.
async fn block(repo: &dyn Repository<Specimen>, side: &str, op: &str, n: usize) -> f64 {
    let started = Instant::now();
    for i in 0..n {
        write(repo, side, op, i).await;
    }
    #[allow(clippy::cast_precision_loss)]
    let per = started.elapsed().as_secs_f64() / n as f64;
    per
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The interleaved ratio of one store and operation: `(off p50, on p50,
/// ratio, p25, p75)`.
async fn paired(s: &Sides, op: &str) -> (f64, f64, f64, f64, f64) {
    // Block size: about 20 ms of writes, from a warm-up.
    let warm = block(&*s.off, "off", op, 20).await;
    block(&*s.on, "on", op, 20).await;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = ((0.02 / warm) as usize).clamp(5, 500);
    let (mut offs, mut ons, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (off, on) = if round % 2 == 0 {
            let off = block(&*s.off, "off", op, n).await;
            (off, block(&*s.on, "on", op, n).await)
        } else {
            let on = block(&*s.on, "on", op, n).await;
            (block(&*s.off, "off", op, n).await, on)
        };
        offs.push(off);
        ons.push(on);
        ratios.push(on / off);
    }
    let ratio = median(&mut ratios);
    let (p25, p75) = (ratios[ROUNDS / 4], ratios[ROUNDS * 3 / 4]);
    (median(&mut offs), median(&mut ons), ratio, p25, p75)
}

/// Events per second a consumer reads and acknowledges, in batches of
/// `batch`, over `total` events written before.
async fn read_rate(s: &Sides, total: usize, batch: usize) -> f64 {
    let many: Vec<Specimen> = (0..total).map(|_| fresh("feed")).collect();
    for chunk in many.chunks(1000) {
        s.on.insert_many(chunk).await.expect("seed the feed");
    }
    let feed = s.on_backend.change_feed().await.expect("feed");
    let name = format!("bench-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    feed.register(&name, true).await.expect("register");
    let started = Instant::now();
    let mut read = 0usize;
    for _ in 0..100_000 {
        let events = feed.read(&name, batch).await.expect("read");
        let Some(last) = events.last() else { break };
        feed.ack(&name, last.position).await.expect("ack");
        read += events.len();
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = read as f64 / started.elapsed().as_secs_f64();
    feed.unregister(&name).await.expect("unregister");
    rate
}

fn us(s: f64) -> String {
    format!("{:.1} µs", s * 1e6)
}

fn wanted(store: &str) -> bool {
    std::env::var("DL_BENCH_STORES").map_or(true, |v| v.split(',').any(|s| s.trim() == store))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let prefix = dl_tests::live::unique_prefix("feedbench");
    let mut all = Vec::new();
    if wanted("sqlite") {
        all.push(rt.block_on(sqlite()));
    }
    if wanted("postgres") {
        all.push(rt.block_on(postgres(&format!("{prefix}_pg"))));
    }
    if wanted("redis") {
        all.push(rt.block_on(redis(&format!("{prefix}_redis"))));
    }
    let mongo_ns =
        wanted("mongodb").then(|| rt.block_on(dl_tests::live::MongoNamespaces::new("feedbench")));
    if let Some(ns) = &mongo_ns {
        all.push(rt.block_on(mongo(ns)));
    }
    println!("| store | operation | capture off p50 | capture on p50 | ratio | ratio p25–p75 |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for s in &all {
        for op in ["insert", "update"] {
            let (off, on, r, p25, p75) = rt.block_on(paired(s, op));
            println!(
                "| {} | {op} | {} | {} | {r:.2} | {p25:.2}–{p75:.2} |",
                s.store,
                us(off),
                us(on)
            );
        }
    }
    for s in all.iter().filter(|s| s.store != "sqlite") {
        for batch in [100, 1000] {
            let rate = rt.block_on(read_rate(s, 20_000, batch));
            println!(
                "| {} | feed read + ack, batches of {batch} | {rate:.0} events/s |",
                s.store
            );
        }
    }

    let mut c = Criterion::default().configure_from_args();
    for s in &all {
        for op in ["insert", "update"] {
            let mut g = c.benchmark_group(format!("{}_capture_{op}", s.store));
            g.throughput(Throughput::Elements(1));
            for (side, repo) in [("off", &s.off), ("on", &s.on)] {
                g.bench_function(side, |b| {
                    let i = AtomicUsize::new(0);
                    b.to_async(&rt).iter(|| {
                        let n = i.fetch_add(1, Ordering::Relaxed);
                        async move { write(&**repo, side, op, n).await }
                    });
                });
            }
            g.finish();
        }
    }
    c.final_summary();
    rt.block_on(dl_tests::live::drop_postgres_namespaces(&prefix));
    rt.block_on(dl_tests::live::drop_redis_namespaces(&prefix));
    if let Some(ns) = &mongo_ns {
        rt.block_on(ns.drop_all());
    }
}
