//! Faults for real: a TCP fault proxy between the client and each live
//! store (PostgreSQL and Redis here), or the store killing our sessions.
//! Every scenario is bounded in calls and time; all traffic stays on
//! loopback.

#![cfg(feature = "integration")]

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dl_repositories::backends::postgres::PostgresBackend;
use dl_repositories::backends::redis::RedisBackend;
use dl_repositories::guard::{BreakerSettings, BreakerState, Guarded, RetrySettings};
use dl_repositories::{Backend, Error, Filter, Probe as _, Repo, Repository};
use dl_tests::entities::{Note, Specimen};
use dl_tests::live::{postgres_url, redis_url, test_pool, unique_prefix};
use dl_tests::private::{Kind, PrivateServer};
use dl_tests::proxy::{Fault, FaultProxy};

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

const DEADLINE: Duration = Duration::from_millis(500);

/// The longest a failing idempotent call may take: the deadline for each
/// of 1 + 3 attempts (`RetrySettings::default`), the backoff between them
/// (full jitter, at most 50 + 100 + 200 ms), and 500 ms of scheduling slack
/// on a loaded 2-core machine.
fn worst_call() -> Duration {
    DEADLINE * 4 + Duration::from_millis(350 + 500)
}

fn breaker() -> BreakerSettings {
    BreakerSettings {
        window: 10,
        min_calls: 5,
        failure_rate: 0.5,
        slow_call: Duration::from_millis(450),
        slow_call_rate: 1.0,
        wait_in_open: Duration::from_millis(300),
        half_open_probes: 2,
    }
}

fn guarded(inner: Arc<dyn Backend>) -> Arc<Guarded> {
    Arc::new(Guarded::new(
        inner,
        DEADLINE,
        breaker(),
        RetrySettings::default(),
    ))
}

fn upstream(url: &dl_connections::SecretUrl) -> SocketAddr {
    let u = url::Url::parse(url.expose()).expect("url");
    let host = u.host_str().unwrap_or("127.0.0.1");
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{}", u.port_or_known_default().unwrap_or(0))
        .parse()
        .expect("a loopback socket address")
}

fn via(url: &dl_connections::SecretUrl, proxy: &FaultProxy) -> dl_connections::SecretUrl {
    let mut u = url::Url::parse(url.expose()).expect("url");
    u.set_host(Some("127.0.0.1")).expect("host");
    u.set_port(Some(proxy.addr().port())).expect("port");
    dl_connections::SecretUrl::parse(u.as_str()).expect("url")
}

fn pg_pool(url: &dl_connections::SecretUrl) -> sqlx::PgPool {
    let mut pool = test_pool(4);
    pool.acquire_timeout = Duration::from_millis(300);
    pool.connect_timeout = Duration::from_millis(300);
    pool.request_timeout = DEADLINE;
    dl_connections::postgres::connect_lazy(url, &pool).expect("pool")
}

async fn drop_schema(ns: &str) {
    let pool = pg_pool(&postgres_url());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{ns}\" CASCADE"
    )))
    .execute(&pool)
    .await
    .expect("drop");
}

/// Waits, bounded, until `f` holds.
async fn until(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f().await {
        assert!(
            started.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// A blackholed store: calls fail at their deadline (nothing hangs), the
/// breaker opens within its window, open calls fail in under a millisecond,
/// and half-open probes close it once the store answers again.
async fn blackhole_scenario(name: &str, guard: Arc<Guarded>, proxy: &FaultProxy) {
    let notes = Repo::<Note>::open(Arc::clone(&guard) as Arc<dyn Backend>)
        .await
        .expect("open");
    notes
        .insert(&Note {
            id: 1,
            body: "fake".into(),
        })
        .await
        .expect("insert");
    proxy.set(Fault::Blackhole);
    proxy.reset();
    let mut failed = 0;
    for _ in 0..10 {
        let started = Instant::now();
        let r = notes.get(&1).await;
        let took = started.elapsed();
        match r {
            Err(Error::CircuitOpen { .. }) => break,
            Err(e) => {
                assert!(
                    e.is_retryable(),
                    "{name}: a blackhole is a transient fault, got {e}"
                );
                assert!(took < worst_call(), "{name}: a call took {took:?}");
                failed += 1;
            }
            Ok(_) => panic!("{name}: a blackholed store answered"),
        }
    }
    assert_eq!(
        guard.breaker().state(),
        BreakerState::Open,
        "{name}: breaker after {failed} failures"
    );
    let started = Instant::now();
    let r = notes.get(&1).await;
    let fast = started.elapsed();
    assert!(matches!(r, Err(Error::CircuitOpen { .. })), "{name}: {r:?}");
    assert!(
        fast < Duration::from_millis(1),
        "{name}: an open call took {fast:?}"
    );
    proxy.set(Fault::Pass);
    proxy.reset();
    let recovery = until(
        &format!("{name}: recovery"),
        Duration::from_secs(15),
        async || {
            notes.get(&1).await.is_ok_and(|n| n.is_some())
                && guard.breaker().state() == BreakerState::Closed
        },
    )
    .await;
    // The pool serves at full capacity again.
    let reads = futures::future::join_all((0..4).map(|_| notes.get(&1))).await;
    assert!(
        reads.iter().all(|r| r.as_ref().is_ok_and(Option::is_some)),
        "{name}: {reads:?}"
    );
    say(&format!(
        "fault[{name}, blackhole]: {failed} calls failed at their deadline, breaker opened, open calls fail in {fast:?}, recovered {recovery:?} after the store returned"
    ));
}

/// Added latency: below the deadline, calls are slower and still served
/// with the breaker closed; beyond it, calls fail at their deadline (no
/// hang; a call that must reopen a connection may fail sooner, at the
/// connect or pool-acquire timeout), the breaker opens, and it closes again
/// once the latency is gone.
async fn latency_scenario(name: &str, guard: Arc<Guarded>, proxy: &FaultProxy) {
    let notes = Repo::<Note>::open(Arc::clone(&guard) as Arc<dyn Backend>)
        .await
        .expect("open");
    notes
        .insert(&Note {
            id: 1,
            body: "fake".into(),
        })
        .await
        .expect("insert");
    let delay = Duration::from_millis(20);
    proxy.set(Fault::Latency(delay));
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let got = notes.get(&1).await;
        let took = started.elapsed();
        assert!(got.as_ref().is_ok_and(Option::is_some), "{name}: {got:?}");
        assert!(
            took >= delay,
            "{name}: the latency was not applied ({took:?})"
        );
        slowest = slowest.max(took);
    }
    assert_eq!(guard.breaker().state(), BreakerState::Closed, "{name}");

    proxy.set(Fault::Latency(DEADLINE));
    let (mut timeouts, mut failed) = (0, 0);
    for _ in 0..10 {
        let started = Instant::now();
        let r = notes.get(&1).await;
        let took = started.elapsed();
        match r {
            Err(Error::CircuitOpen { .. }) => break,
            Err(e) => {
                assert!(
                    e.is_retryable(),
                    "{name}: latency is a transient fault, got {e}"
                );
                assert!(took < worst_call(), "{name}: a call took {took:?}");
                // The deadline, or a shorter driver timeout (connect,
                // pool acquire) when a connection has to be reopened.
                if matches!(e, Error::Timeout { .. }) {
                    timeouts += 1;
                }
                failed += 1;
            }
            Ok(_) => panic!("{name}: answered through a delay longer than the deadline"),
        }
    }
    assert_eq!(guard.breaker().state(), BreakerState::Open, "{name}");
    proxy.set(Fault::Pass);
    proxy.reset();
    let recovery = until(
        &format!("{name}: recovery from latency"),
        Duration::from_secs(15),
        async || {
            notes.get(&1).await.is_ok_and(|n| n.is_some())
                && guard.breaker().state() == BreakerState::Closed
        },
    )
    .await;
    say(&format!(
        "fault[{name}, latency]: +{delay:?} per hop served (slowest {slowest:?}), breaker closed; +{DEADLINE:?} per hop: {failed} calls failed ({timeouts} at the deadline, the others at a shorter connect or acquire timeout), breaker opened; recovered {recovery:?} after the latency was removed"
    ));
}

/// The test entities' migrations, straight to the store (not through the
/// proxy).
async fn migrated(what: Result<(), String>) {
    what.unwrap_or_else(|e| panic!("{e}"));
}

async fn pg_through(proxy: &FaultProxy, ns: &str) -> Arc<dyn Backend> {
    migrated(dl_tests::schema::postgres(&postgres_url(), ns).await).await;
    Arc::new(PostgresBackend::new(pg_pool(&via(&postgres_url(), proxy)), ns).expect("backend"))
}

async fn redis_through(proxy: &FaultProxy, ns: &str) -> Arc<dyn Backend> {
    let mut pool = test_pool(1);
    pool.connect_timeout = Duration::from_millis(300);
    pool.request_timeout = DEADLINE;
    let conn =
        dl_connections::redis::connect_lazy(&via(&redis_url(), proxy), &pool).expect("redis");
    Arc::new(
        RedisBackend::new(conn, ns, DEADLINE)
            .expect("backend")
            .with_privacy(dl_tests::live::test_privacy()),
    )
}

async fn mongo_through(proxy: &FaultProxy, ns: &str) -> Arc<dyn Backend> {
    migrated(dl_tests::schema::mongo(&dl_tests::live::mongo_url(), ns).await).await;
    let mut pool = test_pool(2);
    pool.connect_timeout = Duration::from_millis(300);
    pool.acquire_timeout = Duration::from_millis(400);
    let client = dl_connections::mongo::connect(&via(&dl_tests::live::mongo_url(), proxy), &pool)
        .await
        .expect("mongo");
    Arc::new(
        dl_repositories::backends::mongo::MongoBackend::new(&client, ns, DEADLINE)
            .expect("backend"),
    )
}

async fn drop_mongo(ns: &str) {
    let admin = dl_connections::mongo::connect(&dl_tests::live::mongo_url(), &test_pool(1))
        .await
        .expect("mongo");
    admin.database(ns).drop().await.expect("drop database");
}

fn scylla_node() -> SocketAddr {
    dl_tests::live::scylla_settings().nodes[0]
        .parse()
        .expect("a loopback contact point")
}

async fn scylla_through(proxy: &FaultProxy, ns: &str) -> Arc<dyn Backend> {
    let mut settings = dl_tests::live::scylla_settings();
    migrated(dl_tests::schema::scylla(&settings, ns).await).await;
    settings.nodes = vec![proxy.addr().to_string()];
    let mut pool = test_pool(1);
    pool.connect_timeout = Duration::from_millis(300);
    pool.request_timeout = DEADLINE;
    let session = dl_connections::scylla::connect(&settings, &pool)
        .await
        .expect("scylla");
    Arc::new(
        dl_repositories::backends::scylla::ScyllaBackend::new(
            session,
            ns,
            settings.lightweight_transactions,
            DEADLINE,
        )
        .expect("backend"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_latency() {
    let proxy = FaultProxy::start(upstream(&postgres_url())).await;
    let ns = unique_prefix("lat_pg");
    latency_scenario("postgres", guarded(pg_through(&proxy, &ns).await), &proxy).await;
    drop(proxy);
    drop_schema(&ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_latency() {
    let proxy = FaultProxy::start(upstream(&redis_url())).await;
    let ns = unique_prefix("lat_redis");
    latency_scenario("redis", guarded(redis_through(&proxy, &ns).await), &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_latency() {
    let proxy = FaultProxy::start(upstream(&dl_tests::live::mongo_url())).await;
    let ns = unique_prefix("lat_mongo");
    latency_scenario("mongo", guarded(mongo_through(&proxy, &ns).await), &proxy).await;
    drop(proxy);
    drop_mongo(&ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_latency() {
    let proxy = FaultProxy::start(scylla_node()).await;
    let ns = unique_prefix("lat_scylla");
    latency_scenario("scylla", guarded(scylla_through(&proxy, &ns).await), &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_blackhole() {
    let proxy = FaultProxy::start(upstream(&postgres_url())).await;
    let ns = unique_prefix("fault_pg");
    blackhole_scenario("postgres", guarded(pg_through(&proxy, &ns).await), &proxy).await;
    drop(proxy);
    drop_schema(&ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_blackhole() {
    let proxy = FaultProxy::start(upstream(&redis_url())).await;
    let ns = unique_prefix("fault_redis");
    blackhole_scenario("redis", guarded(redis_through(&proxy, &ns).await), &proxy).await;
}

/// PostgreSQL ends our sessions (`pg_terminate_backend`): the next calls
/// are served with no caller action (the pool drops dead connections; the
/// guard retries idempotent reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_terminated_sessions_recover() {
    let ns = unique_prefix("fault_term");
    let app = format!("dl-fault-{ns}");
    let opts: sqlx::postgres::PgConnectOptions = postgres_url().expose().parse().expect("options");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .test_before_acquire(true)
        .connect_lazy_with(opts.application_name(&app));
    migrated(dl_tests::schema::postgres(&postgres_url(), &ns).await).await;
    let guard = guarded(Arc::new(PostgresBackend::new(pool, &ns).expect("backend")));
    let notes = Repo::<Note>::open(Arc::clone(&guard) as Arc<dyn Backend>)
        .await
        .expect("open");
    notes
        .insert_many(
            &(0..50)
                .map(|id| Note {
                    id,
                    body: "fake".into(),
                })
                .collect::<Vec<_>>(),
        )
        .await
        .expect("seed");
    let admin = pg_pool(&postgres_url());
    for round in 0..3 {
        let killed: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(&app)
        .fetch_all(&admin)
        .await
        .expect("terminate");
        assert!(!killed.is_empty(), "round {round}: no session to end");
        let started = Instant::now();
        let n = notes
            .count(&Filter::all())
            .await
            .expect("count after termination, with no caller retry");
        assert_eq!(n, 50);
        let got = notes.get(&7).await.expect("get after termination");
        assert!(got.is_some());
        say(&format!(
            "fault[postgres, pg_terminate_backend round {round}]: {} sessions ended, served again in {:?}",
            killed.len(),
            started.elapsed()
        ));
    }
    drop_schema(&ns).await;
}

/// Redis connections cut under the client: the connection manager
/// reconnects and the next calls are served with no caller action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connections_cut_recover() {
    let url = redis_url();
    let proxy = FaultProxy::start(upstream(&url)).await;
    let ns = unique_prefix("fault_cut");
    let mut pool = test_pool(1);
    pool.request_timeout = DEADLINE;
    let conn = dl_connections::redis::connect_lazy(&via(&url, &proxy), &pool).expect("redis");
    let guard = guarded(Arc::new(
        RedisBackend::new(conn, &ns, DEADLINE).expect("backend"),
    ));
    let notes = Repo::<Note>::open(Arc::clone(&guard) as Arc<dyn Backend>)
        .await
        .expect("open");
    notes
        .insert(&Note {
            id: 1,
            body: "fake".into(),
        })
        .await
        .expect("insert");
    for round in 0..3 {
        proxy.reset();
        let started = Instant::now();
        let got = notes
            .get(&1)
            .await
            .expect("get after the connection was cut, with no caller retry");
        assert!(got.is_some());
        say(&format!(
            "fault[redis, connection cut round {round}]: served again in {:?}",
            started.elapsed()
        ));
    }
}

/// A steady write load through connection resets: every write acknowledged
/// to the caller is present afterwards, and every other one returned an
/// error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_acknowledged_writes_survive_resets() {
    let url = postgres_url();
    let proxy = Arc::new(FaultProxy::start(upstream(&url)).await);
    let ns = unique_prefix("fault_ack");
    migrated(dl_tests::schema::postgres(&url, &ns).await).await;
    let backend =
        Arc::new(PostgresBackend::new(pg_pool(&via(&url, &proxy)), &ns).expect("backend"));
    let guard = Arc::new(Guarded::new(
        backend,
        DEADLINE,
        BreakerSettings {
            min_calls: 1000,
            window: 1000,
            ..breaker()
        },
        RetrySettings::default(),
    ));
    let notes = Arc::new(
        Repo::<Note>::open(Arc::clone(&guard) as Arc<dyn Backend>)
            .await
            .expect("open"),
    );
    let chaos = {
        let proxy = Arc::clone(&proxy);
        tokio::spawn(async move {
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                proxy.reset();
            }
        })
    };
    let (mut acked, mut failed) = (Vec::new(), 0usize);
    let started = Instant::now();
    for id in 0..400i64 {
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
        match notes
            .insert(&Note {
                id,
                body: format!("fake {id}"),
            })
            .await
        {
            Ok(()) => acked.push(id),
            Err(_) => failed += 1,
        }
    }
    chaos.await.expect("chaos");
    proxy.set(Fault::Pass);
    let stored = notes.get_many(&acked).await.expect("read back");
    assert_eq!(
        stored.len(),
        acked.len(),
        "every acknowledged write is present"
    );
    say(&format!(
        "fault[postgres, resets under write load]: {} writes acknowledged, all present; {failed} returned an error",
        acked.len()
    ));
    drop(proxy);
    drop_schema(&ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_blackhole() {
    let proxy = FaultProxy::start(upstream(&dl_tests::live::mongo_url())).await;
    let ns = unique_prefix("fault_mongo");
    blackhole_scenario("mongo", guarded(mongo_through(&proxy, &ns).await), &proxy).await;
    drop(proxy);
    drop_mongo(&ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_blackhole() {
    let proxy = FaultProxy::start(scylla_node()).await;
    let ns = unique_prefix("fault_scylla");
    blackhole_scenario("scylla", guarded(scylla_through(&proxy, &ns).await), &proxy).await;
}

/// A store stopped and started again (a private server on a free loopback
/// port, so the shared stack is untouched): calls fail fast and retryably
/// while it is down, and are served again after the restart with no caller
/// action. `durable`: the data written before the stop must still be there
/// (PostgreSQL); the in-memory test servers lose it, so the migrations run
/// again and the entity is opened again before writing. `migrate` makes
/// the test entities' schema (none on Redis).
async fn restart_scenario(
    name: &str,
    server: &mut PrivateServer,
    backend: Arc<dyn Backend>,
    durable: bool,
    migrate: Option<Migrate>,
) {
    if let Some(m) = &migrate {
        m().await
            .unwrap_or_else(|e| panic!("{name}: migrations: {e}"));
    }
    let guard = guarded(backend);
    let notes = Repo::<Note>::open(Arc::clone(&guard) as Arc<dyn Backend>)
        .await
        .unwrap_or_else(|e| panic!("{name}: open: {e}"));
    notes
        .insert(&Note {
            id: 1,
            body: "fake".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: insert: {e}"));

    server.stop();
    let stopped = Instant::now();
    let started = Instant::now();
    let down = notes.get(&1).await;
    let took = started.elapsed();
    assert!(
        down.as_ref()
            .is_err_and(|e| e.is_retryable() || matches!(e, Error::CircuitOpen { .. })),
        "{name} while down: {down:?}"
    );
    assert!(
        took < worst_call(),
        "{name}: a call to the stopped store took {took:?}"
    );

    server.resume().await;
    let recovered = until(
        &format!("{name}: calls served after the restart"),
        Duration::from_secs(30),
        async || {
            if !durable {
                if let Some(m) = &migrate
                    && m().await.is_err()
                {
                    return false;
                }
                if Repo::<Note>::open(Arc::clone(&guard) as Arc<dyn Backend>)
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            notes
                .upsert(&Note {
                    id: 2,
                    body: "fake".into(),
                })
                .await
                .is_ok()
        },
    )
    .await;
    assert!(
        notes.get(&2).await.expect("get after restart").is_some(),
        "{name}"
    );
    if durable {
        assert!(
            notes.get(&1).await.expect("get after restart").is_some(),
            "{name}: a write acknowledged before the stop is present after the restart"
        );
    }
    say(&format!(
        "fault[{name}, restart]: a call while down failed in {took:?}; served again {recovered:?} after the server was back ({:?} after it stopped)",
        stopped.elapsed()
    ));
}

/// Applies the test entities' migrations to a private server.
type Migrate =
    Box<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

fn restart_pool() -> dl_connections::PoolSettings {
    let mut pool = test_pool(2);
    pool.connect_timeout = Duration::from_millis(300);
    pool.acquire_timeout = Duration::from_millis(400);
    pool.request_timeout = DEADLINE;
    pool
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_recovers() {
    let mut server = PrivateServer::start(Kind::Redis).await;
    let url = dl_connections::SecretUrl::parse(&server.url()).expect("url");
    let conn = dl_connections::redis::connect_lazy(&url, &restart_pool()).expect("redis");
    let backend = Arc::new(RedisBackend::new(conn, "restart", DEADLINE).expect("backend"));
    restart_scenario("redis", &mut server, backend, false, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_recovers() {
    let mut server = PrivateServer::start(Kind::Postgres).await;
    let url = dl_connections::SecretUrl::parse(&server.url()).expect("url");
    // The cluster accepts TCP before it accepts sessions.
    let pool = pg_pool(&url);
    until(
        "private postgres ready",
        Duration::from_secs(30),
        async || sqlx::query("SELECT 1").execute(&pool).await.is_ok(),
    )
    .await;
    let backend = Arc::new(PostgresBackend::new(pool, "restart").expect("backend"));
    let migrate: Migrate = Box::new(move || {
        let url = url.clone();
        Box::pin(async move { dl_tests::schema::postgres(&url, "restart").await })
    });
    restart_scenario("postgres", &mut server, backend, true, Some(migrate)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_restart_recovers() {
    let mut server = PrivateServer::start(Kind::Mongo).await;
    let url = dl_connections::SecretUrl::parse(&server.url()).expect("url");
    let client = dl_connections::mongo::connect(&url, &restart_pool())
        .await
        .expect("mongo");
    let backend = Arc::new(
        dl_repositories::backends::mongo::MongoBackend::new(&client, "restart", DEADLINE)
            .expect("backend"),
    );
    let migrate: Migrate = Box::new(move || {
        let url = url.clone();
        Box::pin(async move { dl_tests::schema::mongo(&url, "restart").await })
    });
    restart_scenario("mongo", &mut server, backend, false, Some(migrate)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_restart_recovers() {
    let mut server = PrivateServer::start(Kind::Cql(env!("CARGO_BIN_EXE_cql-test-server"))).await;
    let mut settings = dl_tests::live::scylla_settings();
    settings.nodes = vec![server.url()];
    let session = dl_connections::scylla::connect(&settings, &restart_pool())
        .await
        .expect("scylla");
    let backend = Arc::new(
        dl_repositories::backends::scylla::ScyllaBackend::new(
            session, "restart", false, // the CQL test server has no LWT
            DEADLINE,
        )
        .expect("backend"),
    );
    let migrate: Migrate = Box::new(move || {
        let settings = settings.clone();
        Box::pin(async move { dl_tests::schema::scylla(&settings, "restart").await })
    });
    restart_scenario("scylla", &mut server, backend, false, Some(migrate)).await;
}

/// Log events captured by a test: level, message and `store` field.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<(tracing::Level, String, String)>>>);

impl Captured {
    fn count(&self, level: tracing::Level, message: &str, store: &str) -> usize {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .filter(|(l, m, s)| *l == level && m == message && s == store)
            .count()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        #[derive(Default)]
        struct Fields(String, String);
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "store" {
                    value.clone_into(&mut self.1);
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.0
            .lock()
            .expect("lock")
            .push((*event.metadata().level(), fields.0, fields.1));
    }
}

/// The background health checker notices a store going down and coming
/// back with no request made, and logs each transition exactly once
/// however many rounds it stays there.
#[tokio::test(flavor = "current_thread")]
async fn health_checker_logs_each_transition_once() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let captured = Captured::default();
    let _log =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(captured.clone()));
    let mut server = PrivateServer::start(Kind::Redis).await;
    let dir = tempfile::tempdir().expect("dir");
    let settings = data_layer::Settings::load(
        &data_layer::Sources::isolated()
            .var(
                "DATABASE_URL",
                &format!("sqlite://{}/hc.db", dir.path().display()),
            )
            .var("REDIS_URL", &server.url())
            .var("DL_REDIS__OPTIONAL", "true")
            .var("DL_REDIS__CONNECT_TIMEOUT", "300ms")
            .var("DL_REDIS__REQUEST_TIMEOUT", "500ms")
            .var("DL_HEALTH__INTERVAL", "100ms"),
    )
    .expect("settings");
    let dl = data_layer::DataLayer::from_settings(settings)
        .await
        .expect("data layer");
    let checker = dl.start_health_checker();
    let status = |want: &'static str| {
        let checker = &checker;
        async move || checker.latest().is_some_and(|r| r.status == want)
    };
    until("first report: up", Duration::from_secs(10), status("up")).await;

    server.stop();
    let noticed = until(
        "the checker notices the store down",
        Duration::from_secs(10),
        status("degraded"),
    )
    .await;
    // Several more rounds while down: still one log line.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.resume().await;
    let back = until(
        "the checker notices the store back",
        Duration::from_secs(10),
        status("up"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(checker);

    use tracing::Level;
    assert_eq!(captured.count(Level::WARN, "store is down", "redis"), 1);
    assert_eq!(captured.count(Level::INFO, "store is back up", "redis"), 1);
    assert_eq!(captured.count(Level::WARN, "store is down", "sqlite"), 0);
    say(&format!(
        "health checker: noticed redis down {noticed:?} after it stopped and back {back:?} after it restarted, one log line each"
    ));
}

/// `get_many` of 100 keys takes one round trip to PostgreSQL (`= ANY($1)`;
/// the proxy also sees sqlx's ping of the connection on its way back to the
/// pool, which the caller does not wait for), MongoDB (`$in`, one batch)
/// and Redis (one pipeline), counted by the proxy after a warm-up call
/// (which prepares statements). ScyllaDB reads
/// each partition with its own request, in parallel (its advice for key
/// lookups, instead of a multi-partition `IN`): that is asserted too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_round_trips() {
    let notes: Vec<Note> = (0..100)
        .map(|id| Note {
            id,
            body: "fake".into(),
        })
        .collect();
    let keys: Vec<i64> = (0..100).collect();
    let mut lines = Vec::new();
    for store in ["postgres", "mongo", "redis", "scylla"] {
        let ns = unique_prefix("trips");
        let proxy = match store {
            "postgres" => FaultProxy::start(upstream(&postgres_url())).await,
            "mongo" => FaultProxy::start(upstream(&dl_tests::live::mongo_url())).await,
            "redis" => FaultProxy::start(upstream(&redis_url())).await,
            _ => FaultProxy::start(scylla_node()).await,
        };
        let backend = match store {
            // One connection, so the warm-up prepared the statement on it.
            "postgres" => {
                migrated(dl_tests::schema::postgres(&postgres_url(), &ns).await).await;
                let mut pool = test_pool(1);
                pool.request_timeout = DEADLINE;
                let pool =
                    dl_connections::postgres::connect_lazy(&via(&postgres_url(), &proxy), &pool)
                        .expect("pool");
                Arc::new(PostgresBackend::new(pool, &ns).expect("backend")) as Arc<dyn Backend>
            }
            "mongo" => mongo_through(&proxy, &ns).await,
            "redis" => redis_through(&proxy, &ns).await,
            _ => scylla_through(&proxy, &ns).await,
        };
        let repo = Repo::<Note>::open(backend).await.expect("open");
        repo.insert_many(&notes).await.expect("insert_many");
        assert_eq!(repo.get_many(&keys).await.expect("warm-up").len(), 100);
        // Quiet before and after: sqlx pings a connection as it goes back
        // to the pool (off the caller's path); let those land in the window
        // of the call they belong to.
        tokio::time::sleep(Duration::from_millis(200)).await;
        proxy.reset_round_trips();
        assert_eq!(repo.get_many(&keys).await.expect("get_many").len(), 100);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let trips = proxy.round_trips();
        let expected = match store {
            // Parallel reads, one per key.
            "scylla" => None,
            // The query, and sqlx's ping as the connection goes back to the
            // pool (which the caller does not wait for).
            "postgres" => Some(2),
            _ => Some(1),
        };
        match expected {
            None => assert!(trips > 1, "scylla: {trips} round trips"),
            Some(n) => assert_eq!(
                trips, n,
                "{store}: get_many of 100 took {trips} round trips"
            ),
        }
        lines.push(format!("{store} {trips}"));
        drop(proxy);
        match store {
            "postgres" => drop_schema(&ns).await,
            "mongo" => drop_mongo(&ns).await,
            _ => {}
        }
    }
    say(&format!(
        "round trips of get_many(100): {} (scylla: one request per key, in parallel)",
        lines.join(", ")
    ));
}

/// An update by patch on Redis is one round trip (one script that splices
/// the stored record), counted by the proxy after a warm-up call (which
/// loads the script).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_update_by_patch_is_one_round_trip() {
    let nss = dl_tests::live::RedisNamespaces::new("patchtrip").await;
    let proxy = FaultProxy::start(upstream(&redis_url())).await;
    let notes = Repo::<Note>::open(redis_through(&proxy, &nss.namespace()).await)
        .await
        .expect("open");
    notes
        .insert(&Note {
            id: 1,
            body: "fake".into(),
        })
        .await
        .expect("insert");
    let patch = |body: &str| dl_repositories::Patch::new().set("body", body);
    notes.update(&1, &patch("warm-up")).await.expect("warm-up");
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.reset_round_trips();
    let after = notes.update(&1, &patch("fake 2")).await.expect("update");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let trips = proxy.round_trips();
    assert_eq!(after.map(|n| n.body), Some("fake 2".to_owned()));
    assert_eq!(trips, 1, "redis: update by patch took {trips} round trips");
    drop(proxy);
    nss.drop_all().await;
    say("round trips of a Redis update by patch: 1");
}

/// What the store holds for one key after a write whose answer was lost:
/// absent, or present at a version with a label.
/// Waits (bounded, generously) while the client reconnects after the
/// proxy cut its connections: a transient fault or an open breaker is
/// tried again; any other error fails the test.
async fn held(repo: &Repo<Specimen>, key: &str) -> Option<(i64, String)> {
    let started = Instant::now();
    loop {
        match repo.get(&key.to_owned()).await {
            Ok(found) => return found.map(|s| (s.version, s.label)),
            Err(e) if e.is_retryable() || matches!(e, Error::CircuitOpen { .. }) => {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the store did not answer again within 60 s: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("read after the fault: {e}"),
        }
    }
}

/// Every write, its answer dropped by the proxy after the store got the
/// request: the caller gets an error that says the outcome is unknown (a
/// timeout; never retried, so never a false `Conflict`, `NotFound` or a
/// double version bump), and the store then holds either what it held
/// before or the write applied exactly once. Returns how many of the six
/// writes the store applied.
async fn lost_answer_scenario(name: &str, guard: Arc<Guarded>, proxy: &FaultProxy) -> usize {
    let repo = Repo::<Specimen>::open(Arc::clone(&guard) as Arc<dyn Backend>)
        .await
        .expect("open");
    let mut applied = 0;
    for op in [
        "insert",
        "insert_many",
        "update",
        "replace",
        "upsert",
        "delete",
    ] {
        // Once with the proxy passing (so statements are prepared and
        // scripts loaded: the faulted call is then one round trip), then
        // with its answer dropped.
        for faulted in [false, true] {
            let key = format!("lost-{op}-{faulted}");
            let mut s = Specimen::new(&key, 1);
            let before = if op.starts_with("insert") {
                None
            } else {
                repo.insert(&s).await.expect("seed");
                Some((1, s.label.clone()))
            };
            // One read first, so a connection is open and idle.
            assert_eq!(held(&repo, &key).await, before);
            s.label = format!("after-{op}");
            if faulted {
                // A pool that tests connections on release (sqlx pings
                // each one it takes back) is let finish, so the faulted
                // call finds an idle connection.
                let idle = Instant::now();
                while guard
                    .pool_stats()
                    .is_some_and(|p| p.in_use > 0 || p.idle == 0)
                    && idle.elapsed() < Duration::from_secs(5)
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                proxy.set(Fault::DropReplies);
            }
            let sent_before = proxy.forwarded();
            let result = match op {
                "insert" => repo.insert(&s).await,
                "insert_many" => repo.insert_many(std::slice::from_ref(&s)).await,
                "update" => repo
                    .update(
                        &key,
                        &dl_repositories::Patch::new()
                            .set("label", s.label.as_str())
                            .expect_version(1),
                    )
                    .await
                    .map(|_| ()),
                "replace" => repo.replace(&s).await.map(|_| ()),
                "upsert" => repo.upsert(&s).await.map(|_| ()),
                _ => repo.delete(&key).await.map(|_| ()),
            };
            let once = match op {
                "delete" => None,
                "insert" | "insert_many" => Some((1, s.label.clone())),
                _ => Some((2, s.label.clone())),
            };
            if !faulted {
                result.unwrap_or_else(|e| panic!("{name} {op} with the proxy passing: {e}"));
                assert_eq!(held(&repo, &key).await, once, "{name} {op}");
                continue;
            }
            // The call gave up at its deadline; on a loaded machine the
            // proxy may not have passed the request on yet: wait (bounded)
            // until it has, so the store gets what the client sent.
            until(
                "the request reaches the store",
                Duration::from_secs(30),
                async || proxy.forwarded() > sent_before,
            )
            .await;
            proxy.set(Fault::Pass);
            proxy.reset();
            let e = result.expect_err("the answer was dropped");
            assert!(
                e.outcome_unknown() || e.never_sent(),
                "{name} {op}: a lost answer must say the outcome is unknown, got {e}"
            );
            // The store may apply the request a moment after it arrived.
            let mut now = held(&repo, &key).await;
            let started = Instant::now();
            while now != once && started.elapsed() < Duration::from_secs(3) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                now = held(&repo, &key).await;
            }
            assert!(
                now == before || now == once,
                "{name} {op}: the store holds {now:?}: neither {before:?} (not applied) nor {once:?} (applied once)"
            );
            assert!(
                !e.never_sent() || now == before,
                "{name} {op}: the error says the write was never sent ({e}), but the store holds it"
            );
            if now == once {
                applied += 1;
            }
        }
    }
    say(&format!(
        "fault[{name}, answers dropped]: 6 writes, {applied} applied by the store, every caller told the outcome is unknown, none retried"
    ));
    applied
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lost_answers() {
    let proxy = FaultProxy::start(upstream(&postgres_url())).await;
    let ns = unique_prefix("lost_pg");
    migrated(dl_tests::schema::postgres(&postgres_url(), &ns).await).await;
    // One connection, so the statements prepared before the fault are the
    // ones the faulted calls use.
    let mut pool = test_pool(1);
    pool.acquire_timeout = Duration::from_millis(300);
    pool.connect_timeout = Duration::from_millis(300);
    pool.request_timeout = DEADLINE;
    let pool =
        dl_connections::postgres::connect_lazy(&via(&postgres_url(), &proxy), &pool).expect("pool");
    let backend = Arc::new(PostgresBackend::new(pool, &ns).expect("backend"));
    let applied = lost_answer_scenario("postgres", guarded(backend), &proxy).await;
    // Each write is one statement on an open connection: all arrive.
    assert_eq!(applied, 6, "postgres applies every write it was sent");
    drop(proxy);
    drop_schema(&ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_answers() {
    let proxy = FaultProxy::start(upstream(&redis_url())).await;
    let ns = unique_prefix("lost_redis");
    let applied =
        lost_answer_scenario("redis", guarded(redis_through(&proxy, &ns).await), &proxy).await;
    // insert and insert_many are one script call each. An update that
    // moves an indexed field (label) and a delete first learn from the
    // script which index keys the record owns, to declare them in KEYS
    // (that call writes nothing, and its answer is the one dropped);
    // replace and upsert read first.
    assert_eq!(applied, 2, "redis applies the one-call writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_lost_answers() {
    let proxy = FaultProxy::start(upstream(&dl_tests::live::mongo_url())).await;
    let ns = unique_prefix("lost_mongo");
    let applied =
        lost_answer_scenario("mongo", guarded(mongo_through(&proxy, &ns).await), &proxy).await;
    assert!(applied >= 1, "mongo applied {applied} of 6");
    drop(proxy);
    drop_mongo(&ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_lost_answers() {
    let proxy = FaultProxy::start(scylla_node()).await;
    let ns = unique_prefix("lost_scylla");
    // Without lightweight transactions (the CQL test server ignores them)
    // every checked write reads first, and that read's answer is dropped:
    // the scenario shows that nothing contradicts the store.
    lost_answer_scenario("scylla", guarded(scylla_through(&proxy, &ns).await), &proxy).await;
}
