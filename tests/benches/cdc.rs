//! The CDC relay's speed on the test stack (a bench binary; it prints its
//! figures):
//! - throughput: 20,000 patients written (captured) into PostgreSQL, then
//!   relayed (read, redacted, delivered, recorded, acknowledged) into the
//!   PostgreSQL sink, into NATS JetStream, and into both, in batches of
//!   1,000: events per second;
//! - latency: a steady 1,000 writes/s for 10 s with the relay running in
//!   the background (`start_cdc`), then commit-to-sink latency per event
//!   from the sink's own clock (`delivered_at - time`): p50 and p99.
//!
//! ```sh
//! scripts/stack.sh up && set -a && . ./.env.test && set +a
//! cargo bench -p dl-tests --bench cdc
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};
use data_layer::models::domain::{Patient, PatientStatus};
use data_layer::{DataLayer, Settings, Sources, Store};

const KEY: &str = "WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlo=";

fn patient(n: usize) -> Patient {
    Patient {
        id: uuid::Uuid::new_v4(),
        mrn: format!("BENCH-{n:08}"),
        given_name: "Josephine".into(),
        family_name: "Montgomery-Smith".into(),
        date_of_birth: NaiveDate::from_ymd_opt(1948, 7, 21).expect("date"),
        phone: Some("+1 617 555 0142".into()),
        email: Some("josephine.montgomery@example.org".into()),
        status: PatientStatus::Active,
        created_at: Utc::now(),
        version: 1,
    }
}

fn settings(schema: &str, sinks: &str, relay: &str, stream: &str, batch: &str) -> Settings {
    let url = dl_tests::live::postgres_url();
    let nats = dl_tests::live::nats_url();
    let scylla = dl_tests::live::scylla_settings();
    Settings::load(
        &Sources::isolated()
            .var("SCYLLA_URI", &scylla.nodes.join(","))
            .var("DL_SCYLLA__KEYSPACE", schema)
            .var("DL_SCYLLA__CREATE_KEYSPACE", "true")
            .var("DL_SCYLLA__AUTO_AWAIT_SCHEMA_AGREEMENT", "false")
            .var("DL_SCYLLA__FETCH_SCHEMA_METADATA", "false")
            .var(
                "DL_SCYLLA__LIGHTWEIGHT_TRANSACTIONS",
                &scylla.lightweight_transactions.to_string(),
            )
            .var("DATABASE_URL", url.expose())
            .var("DL_POSTGRES__SCHEMA", schema)
            .var("DL_CDC__ENTITIES", "patients")
            .var("DL_CDC__SINKS", sinks)
            .var("DL_CDC__RELAY", relay)
            .var("DL_CDC__BATCH", batch)
            .var("DL_CDC__NATS_URL", &nats)
            .var("DL_CDC__NATS_STREAM", stream)
            .var("DL_CDC__NATS_SUBJECT_ROOT", stream)
            .var("DL_PRIVACY__KEY", KEY),
    )
    .expect("settings")
}

async fn relay_rate(schema: &str, sinks: &str, relay: &str, stream: &str, events: usize) -> f64 {
    let dl = DataLayer::from_settings(settings(schema, sinks, relay, stream, "1000"))
        .await
        .expect("data layer");
    let r = dl.cdc_relay(Store::Postgres).await.expect("relay");
    let started = Instant::now();
    let report = r.drain(1_000_000).await.expect("drain");
    let took = started.elapsed().as_secs_f64();
    assert_eq!(report.emitted, events);
    #[allow(clippy::cast_precision_loss)]
    let rate = events as f64 / took;
    println!("relay into {sinks:<14} {events} events in {took:.2} s: {rate:.0} events/s");
    rate
}

#[allow(clippy::too_many_lines)]
async fn run() {
    let ns = dl_tests::live::PgNamespaces::new("cdcbench").await;
    let schema = ns.name("b");
    let stream = dl_tests::live::nats_namespace("cdcbench");
    let base = settings(&schema, "postgres", "load", &stream, "1000");
    data_layer::migrate::apply(&base, &data_layer::migrate::domain_scripts())
        .await
        .expect("migrate");
    let dl = DataLayer::from_settings(base).await.expect("data layer");
    let patients = dl.repository::<Patient>().await.expect("patients");

    // Throughput.
    let n = 20_000;
    let rows: Vec<Patient> = (0..n).map(patient).collect();
    for chunk in rows.chunks(500) {
        patients.insert_many(chunk).await.expect("insert_many");
    }
    println!("wrote {n} captured patients");
    let pg = relay_rate(&schema, "postgres", "tp_pg", &stream, n).await;
    let nats = relay_rate(&schema, "nats", "tp_nats", &stream, n).await;
    let both = relay_rate(&schema, "postgres,nats", "tp_both", &stream, n).await;
    // ScyllaDB here is the CQL test server (one in-memory engine behind a
    // lock): a figure of the sink's path, not of ScyllaDB.
    let scylla = relay_rate(&schema, "scylla", "tp_scylla", &stream, n).await;

    // Latency at a steady 1,000 writes/s (4 writers at 250/s each), the
    // relay (its own settings: postgres sink, batches of 500) in the
    // background.
    let live = DataLayer::from_settings(settings(&schema, "postgres", "live", &stream, "500"))
        .await
        .expect("data layer");
    // It starts after what is there: the throughput events are not timed.
    let feed = live.feed(Store::Postgres).await.expect("feed");
    let start = feed.status().await.expect("status").last_position;
    feed.register("live_postgres", false)
        .await
        .expect("register");
    let handle = live.start_cdc().await.expect("start");
    let seconds = 10;
    let began = Utc::now();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let repo = Arc::clone(&patients);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(4));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut written = 0usize;
                let end = Instant::now() + Duration::from_secs(seconds);
                while Instant::now() < end {
                    tick.tick().await;
                    repo.insert(&patient(1_000_000 * (w + 1) + written))
                        .await
                        .expect("insert");
                    written += 1;
                }
                written
            })
        })
        .collect();
    let mut written = 0;
    for w in writers {
        written += w.await.expect("writer");
    }
    // Until the relay has caught up (bounded).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = feed.status().await.expect("status");
        let lag = s
            .consumers
            .iter()
            .find(|c| c.name == "live_postgres")
            .map_or(u64::MAX, |c| c.lag);
        if lag == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.shutdown().await;
    let pool = dl_connections::postgres::connect_lazy(
        &dl_tests::live::postgres_url(),
        &dl_tests::live::test_pool(1),
    )
    .expect("pool");
    let (p50, p99, count): (f64, f64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), count(*) \
         FROM (SELECT extract(epoch FROM delivered_at - \"time\") * 1000 AS ms FROM \"{schema}\".ce_events \
               WHERE \"time\" >= $1) AS l"
    )))
    .bind(began)
    .fetch_one(&pool)
    .await
    .expect("latency");
    #[allow(clippy::cast_precision_loss)]
    let rate = written as f64 / seconds as f64;
    println!(
        "steady load: {written} writes in {seconds} s ({rate:.0}/s), {count} events in the sink after position {start}: \
         commit-to-sink p50 {p50:.1} ms, p99 {p99:.1} ms"
    );
    println!(
        "summary: postgres {pg:.0} events/s, nats {nats:.0} events/s, both {both:.0} events/s, \
         scylla (CQL test server) {scylla:.0} events/s; p50 {p50:.1} ms, p99 {p99:.1} ms"
    );
    ns.drop_all().await;
    dl_tests::live::drop_nats_stream(&stream).await;
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // useful either: this binary only measures when run as a benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        println!("cdc bench: run with `cargo bench -p dl-tests --bench cdc`");
        return;
    }
    // RUST_LOG=dl_cdc=debug shows each batch's phases (read, redact,
    // deliver, record, ack) in milliseconds.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run());
}
