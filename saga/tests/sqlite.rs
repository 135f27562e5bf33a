//! The saga runner on SQLite (a real file): outcomes, compensation order,
//! stuck sagas, leases taken over under an injected clock, bad input and
//! a canary scan of the log.

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dl_privacy::{Privacy, SecretKey};
use dl_repositories::sql_target::SqlTarget;
use dl_saga::{
    Clock, Outcome, SagaDefinition, SagaLog, SagaOptions, SagaState, Sagas, Step, StepError,
    StepKind, StepState,
};
use serde_json::{Value, json};

async fn pool() -> (tempfile::TempDir, sqlx::SqlitePool) {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}/sagas.db?mode=rwc", dir.path().display());
    let pool = sqlx::SqlitePool::connect(&url).await.expect("sqlite");
    sqlx::raw_sql(sqlx::AssertSqlSafe(include_str!(
        "../../migrations/sqlite/4_sagas.sql"
    )))
    .execute(&pool)
    .await
    .expect("migration");
    (dir, pool)
}

fn privacy() -> Arc<Privacy> {
    Arc::new(Privacy::new(
        SecretKey::from_bytes("k1", [7u8; 32]).expect("key"),
    ))
}

fn fast() -> SagaOptions {
    SagaOptions {
        backoff_min: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        stuck_after: 4,
        ..SagaOptions::default()
    }
}

/// What the steps did, in order: (step, phase).
type Calls = Arc<Mutex<Vec<String>>>;

fn record(calls: &Calls, what: String) {
    calls.lock().expect("calls").push(what);
}

/// A step that records its calls and fails its action when `fail` names
/// it (`failed`) or `unknown` does (times out).
fn step(
    kind: StepKind,
    name: &'static str,
    calls: &Calls,
    fail: &'static str,
    unknown: &'static str,
) -> Step {
    let c = Arc::clone(calls);
    let action = move |ctx: dl_saga::StepContext| {
        let c = Arc::clone(&c);
        async move {
            record(&c, format!("{}:action", ctx.step()));
            if ctx.step() == fail {
                return Err(StepError::failed("injected failure"));
            }
            if ctx.step() == unknown {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Ok(json!({ "from": ctx.step() }))
        }
    };
    let s = Step::new(kind, name, action).timeout(Duration::from_millis(200));
    if kind == StepKind::Compensatable {
        let c = Arc::clone(calls);
        s.compensate(move |ctx: dl_saga::StepContext| {
            let c = Arc::clone(&c);
            async move {
                record(&c, format!("{}:compensation", ctx.step()));
                Ok(Value::Null)
            }
        })
    } else {
        s
    }
}

fn four_steps(calls: &Calls, fail: &'static str, unknown: &'static str) -> SagaDefinition {
    SagaDefinition::new(
        "visit",
        1,
        vec![
            step(StepKind::Compensatable, "patient", calls, fail, unknown),
            step(StepKind::Compensatable, "chart", calls, fail, unknown),
            step(StepKind::Compensatable, "profile", calls, fail, unknown),
            step(StepKind::Pivot, "visit", calls, fail, unknown),
        ],
    )
    .expect("definition")
}

#[tokio::test]
async fn a_saga_completes_and_its_steps_see_earlier_outputs() {
    let (_dir, pool) = pool().await;
    let sagas =
        Sagas::new(SagaLog::new(SqlTarget::Sqlite(pool)), privacy(), fast()).expect("sagas");
    sagas
        .register(
            SagaDefinition::new(
                "chain",
                1,
                vec![
                    Step::compensatable(
                        "first",
                        |ctx| async move {
                            let n: i64 = ctx.input::<Value>()?["n"].as_i64().unwrap_or(0);
                            Ok(json!(n + 1))
                        },
                        |_| async { Ok(Value::Null) },
                    ),
                    Step::pivot("second", |ctx| async move {
                        let n: i64 = ctx.output("first")?;
                        Ok(json!(n * 10))
                    }),
                    Step::retriable("third", |ctx| async move {
                        let n: i64 = ctx.output("second")?;
                        assert!(ctx.output_json("third").is_none());
                        Ok(json!(n + 2))
                    }),
                ],
            )
            .expect("definition"),
        )
        .expect("register");
    let (id, outcome) = sagas.run("chain", &json!({ "n": 4 })).await.expect("run");
    assert_eq!(outcome, Outcome::Completed);
    let row = sagas
        .log()
        .get(&id.to_string())
        .await
        .expect("get")
        .expect("row");
    assert_eq!(row.state, SagaState::Completed);
    assert!(row.pivoted);
    assert_eq!(row.owner, None, "the lease is released");
    assert!(
        row.steps
            .iter()
            .all(|s| s.state == StepState::Done && s.attempts == 1)
    );
}

#[tokio::test]
async fn a_failure_at_each_step_compensates_the_earlier_ones_in_reverse_once() {
    let names = ["patient", "chart", "profile", "visit"];
    for (i, fail) in names.iter().enumerate() {
        let (_dir, pool) = pool().await;
        let calls: Calls = Arc::default();
        let sagas =
            Sagas::new(SagaLog::new(SqlTarget::Sqlite(pool)), privacy(), fast()).expect("sagas");
        sagas
            .register(four_steps(&calls, fail, ""))
            .expect("register");
        let (id, outcome) = sagas.run("visit", &json!({})).await.expect("run");
        assert_eq!(
            outcome,
            Outcome::Compensated {
                step: (*fail).to_owned()
            }
        );
        let mut want: Vec<String> = names[..=i].iter().map(|n| format!("{n}:action")).collect();
        want.extend(names[..i].iter().rev().map(|n| format!("{n}:compensation")));
        assert_eq!(*calls.lock().expect("calls"), want, "failing at {fail}");
        let row = sagas
            .log()
            .get(&id.to_string())
            .await
            .expect("get")
            .expect("row");
        assert_eq!(row.state, SagaState::Compensated);
        assert_eq!(
            row.error_kind.as_deref(),
            Some(format!("{fail}:failed").as_str())
        );
        assert_eq!(
            sagas.reason(&row).expect("reason").as_deref(),
            Some("injected failure")
        );
    }
}

#[tokio::test]
async fn a_step_that_timed_out_is_compensated_too() {
    let (_dir, pool) = pool().await;
    let calls: Calls = Arc::default();
    let options = SagaOptions {
        attempts: 2,
        ..fast()
    };
    let sagas =
        Sagas::new(SagaLog::new(SqlTarget::Sqlite(pool)), privacy(), options).expect("sagas");
    sagas
        .register(four_steps(&calls, "", "profile"))
        .expect("register");
    let (_, outcome) = sagas.run("visit", &json!({})).await.expect("run");
    assert_eq!(
        outcome,
        Outcome::Compensated {
            step: "profile".into()
        }
    );
    assert_eq!(
        *calls.lock().expect("calls"),
        [
            "patient:action",
            "chart:action",
            "profile:action",
            "profile:action",
            "profile:compensation",
            "chart:compensation",
            "patient:compensation",
        ]
    );
}

#[tokio::test]
async fn a_retriable_step_that_keeps_failing_is_stuck_until_retried() {
    let (_dir, pool) = pool().await;
    let failures = Arc::new(AtomicU32::new(6));
    let f = Arc::clone(&failures);
    let sagas =
        Sagas::new(SagaLog::new(SqlTarget::Sqlite(pool)), privacy(), fast()).expect("sagas");
    sagas
        .register(
            SagaDefinition::new(
                "notify",
                1,
                vec![
                    Step::pivot("book", |_| async { Ok(Value::Null) }),
                    Step::retriable("send", move |_| {
                        let f = Arc::clone(&f);
                        async move {
                            if f.load(Ordering::SeqCst) > 0 {
                                f.fetch_sub(1, Ordering::SeqCst);
                                return Err(StepError::retry("mail server down"));
                            }
                            Ok(Value::Null)
                        }
                    }),
                ],
            )
            .expect("definition"),
        )
        .expect("register");
    let (id, outcome) = sagas.run("notify", &json!({})).await.expect("run");
    assert_eq!(
        outcome,
        Outcome::Stuck {
            step: Some("send".into())
        }
    );
    let row = sagas
        .log()
        .get(&id.to_string())
        .await
        .expect("get")
        .expect("row");
    assert_eq!(row.state, SagaState::Stuck);
    assert_eq!(row.steps[1].attempts, 4);
    assert_eq!(
        sagas
            .log()
            .list(Some(SagaState::Stuck), 10)
            .await
            .expect("list")
            .len(),
        1
    );
    // Not resumed by itself; an operator's retry puts it back to work.
    assert_eq!(sagas.recover().await.expect("recover").resumed, 0);
    let err = sagas
        .abort(&id.to_string())
        .await
        .expect_err("past the pivot");
    assert!(err.to_string().contains("past its pivot"), "{err}");
    sagas.retry(&id.to_string()).await.expect("retry");
    let r = sagas.recover().await.expect("recover");
    assert_eq!((r.resumed, r.completed), (1, 1));
    let row = sagas
        .log()
        .get(&id.to_string())
        .await
        .expect("get")
        .expect("row");
    assert_eq!(row.state, SagaState::Completed);
    assert_eq!(row.steps[1].attempts, 7);
    assert_eq!(row.recoveries, 1);
}

/// A clock the test moves.
#[derive(Debug)]
struct TestClock(AtomicI64);

impl Clock for TestClock {
    fn now_millis(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_lease_that_ran_out_is_taken_over_and_the_old_runner_is_fenced() {
    let (_dir, pool) = pool().await;
    let clock = Arc::new(TestClock(AtomicI64::new(1_000_000)));
    let log = SagaLog::new(SqlTarget::Sqlite(pool));
    let gate = Arc::new(tokio::sync::Notify::new());
    let entered = Arc::new(tokio::sync::Notify::new());
    let runs = Arc::new(AtomicU32::new(0));
    let def = |gate: Arc<tokio::sync::Notify>,
               entered: Arc<tokio::sync::Notify>,
               runs: Arc<AtomicU32>,
               wait: bool| {
        SagaDefinition::new(
            "slow",
            1,
            vec![
                Step::compensatable(
                    "hold",
                    move |_| {
                        let (gate, entered, runs) =
                            (Arc::clone(&gate), Arc::clone(&entered), Arc::clone(&runs));
                        async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            if wait {
                                entered.notify_one();
                                gate.notified().await;
                            }
                            Ok(Value::Null)
                        }
                    },
                    |_| async { Ok(Value::Null) },
                ),
                Step::pivot("end", |_| async { Ok(Value::Null) }),
            ],
        )
        .expect("definition")
    };
    let options = SagaOptions {
        lease: Duration::from_secs(10),
        step_timeout: Duration::from_secs(3600),
        ..fast()
    };
    let a = Sagas::with_clock(log.clone(), privacy(), options.clone(), clock.clone()).expect("a");
    a.register(def(
        Arc::clone(&gate),
        Arc::clone(&entered),
        Arc::clone(&runs),
        true,
    ))
    .expect("register");
    let b = Sagas::with_clock(log.clone(), privacy(), options, clock.clone()).expect("b");
    b.register(def(
        Arc::clone(&gate),
        Arc::clone(&entered),
        Arc::clone(&runs),
        false,
    ))
    .expect("register");

    let a2 = a.clone();
    let first = tokio::spawn(async move { a2.run("slow", &json!({})).await });
    entered.notified().await;
    // B finds nothing to take while A's lease runs.
    assert_eq!(b.recover().await.expect("recover").resumed, 0);
    // A's lease runs out (A is stuck inside its step, renewing nothing).
    clock.0.fetch_add(60_000, Ordering::SeqCst);
    let r = b.recover().await.expect("recover");
    assert_eq!((r.resumed, r.completed), (1, 1));
    // A wakes up: its write is refused by the fencing token.
    gate.notify_one();
    let (id, outcome) = first.await.expect("join").expect("run");
    assert_eq!(outcome, Outcome::TakenOver);
    let row = log.get(&id.to_string()).await.expect("get").expect("row");
    assert_eq!(row.state, SagaState::Completed);
    assert_eq!(row.fence, 2);
    assert_eq!(row.owner, None);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the step ran in each runner: its idempotency key keeps the effect once"
    );
}

#[tokio::test]
async fn an_unknown_version_is_stuck_naming_it() {
    let (_dir, pool) = pool().await;
    let clock = Arc::new(TestClock(AtomicI64::new(1_000_000)));
    let log = SagaLog::new(SqlTarget::Sqlite(pool));
    let v2 = Sagas::with_clock(log.clone(), privacy(), fast(), clock.clone()).expect("v2");
    v2.register(
        SagaDefinition::new(
            "admit",
            2,
            vec![Step::pivot("admit", |_| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Value::Null)
            })],
        )
        .expect("definition"),
    )
    .expect("register");
    let id = v2.start("admit", &json!({})).await.expect("start");
    clock.0.fetch_add(600_000, Ordering::SeqCst);
    let v1 = Sagas::with_clock(log.clone(), privacy(), fast(), clock.clone()).expect("v1");
    v1.register(
        SagaDefinition::new(
            "admit",
            1,
            vec![Step::pivot("admit", |_| async { Ok(Value::Null) })],
        )
        .expect("definition"),
    )
    .expect("register");
    let r = v1.recover().await.expect("recover");
    assert_eq!((r.resumed, r.stuck), (1, 1));
    let row = log.get(&id.to_string()).await.expect("get").expect("row");
    assert_eq!(row.state, SagaState::Stuck);
    assert_eq!(row.error_kind.as_deref(), Some("unknown_version"));
    assert_eq!(
        v1.reason(&row).expect("reason").as_deref(),
        Some("saga admit version 2 is not registered in this runner")
    );
    // Unknown names and versions are refused at start.
    let e = v1.run("nope", &json!({})).await.expect_err("unknown");
    assert!(e.to_string().contains("no saga of this name"), "{e}");
    let e = v1
        .run_version("admit", Some(9), &json!({}))
        .await
        .expect_err("unknown");
    assert!(e.to_string().contains("name and version"), "{e}");
}

#[tokio::test]
async fn an_aborted_saga_is_compensated() {
    let (_dir, pool) = pool().await;
    let clock = Arc::new(TestClock(AtomicI64::new(1_000_000)));
    let calls: Calls = Arc::default();
    let log = SagaLog::new(SqlTarget::Sqlite(pool));
    let sagas = Sagas::with_clock(log.clone(), privacy(), fast(), clock.clone()).expect("sagas");
    // Its third step never answers; the saga is aborted meanwhile.
    let c = Arc::clone(&calls);
    sagas
        .register(
            SagaDefinition::new(
                "visit",
                1,
                vec![
                    step(StepKind::Compensatable, "patient", &calls, "", ""),
                    step(StepKind::Compensatable, "chart", &calls, "", ""),
                    Step::pivot("visit", move |_| {
                        let c = Arc::clone(&c);
                        async move {
                            record(&c, "visit:action".into());
                            std::future::pending::<()>().await;
                            Ok(Value::Null)
                        }
                    }),
                ],
            )
            .expect("definition"),
        )
        .expect("register");
    let id = sagas.start("visit", &json!({})).await.expect("start");
    for _ in 0..500 {
        if calls.lock().expect("calls").len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sagas.abort(&id.to_string()).await.expect("abort");
    let r = sagas.recover().await.expect("recover");
    assert_eq!((r.resumed, r.compensated), (1, 1));
    assert_eq!(
        *calls.lock().expect("calls"),
        [
            "patient:action",
            "chart:action",
            "visit:action",
            "chart:compensation",
            "patient:compensation"
        ]
    );
    let e = sagas.abort(&id.to_string()).await.expect_err("ended");
    assert!(e.to_string().contains("only a running saga"), "{e}");
    let e = sagas.retry("not-a-uuid").await.expect_err("bad id");
    assert!(e.to_string().contains("expected a saga id"), "{e}");
    let e = sagas
        .retry(&uuid::Uuid::new_v4().to_string())
        .await
        .expect_err("none");
    assert!(e.to_string().contains("not found"), "{e}");
}

#[tokio::test]
async fn bad_definitions_are_refused_before_anything_runs() {
    let ok = || Step::pivot("p", |_| async { Ok(Value::Null) });
    let long = "a".repeat(64);
    let comp = |n: &str| {
        Step::compensatable(
            n,
            |_| async { Ok(Value::Null) },
            |_| async { Ok(Value::Null) },
        )
    };
    let cases: Vec<(Vec<Step>, &str, &str)> = vec![
        (vec![], "ok_name", "at least one step"),
        (
            vec![ok(), Step::pivot("q", |_| async { Ok(Value::Null) })],
            "ok_name",
            "at most one pivot",
        ),
        (
            vec![
                ok(),
                Step::retriable("r", |_| async { Ok(Value::Null) })
                    .compensate(|_| async { Ok(Value::Null) }),
            ],
            "ok_name",
            "never compensated",
        ),
        (
            vec![ok().compensate(|_| async { Ok(Value::Null) })],
            "ok_name",
            "no compensation",
        ),
        (
            vec![Step::new(StepKind::Compensatable, "c", |_| async {
                Ok(Value::Null)
            })],
            "ok_name",
            "needs a compensation",
        ),
        (vec![ok(), comp("c")], "ok_name", "before the pivot"),
        (
            vec![Step::retriable("r", |_| async { Ok(Value::Null) })],
            "ok_name",
            "after the pivot",
        ),
        (
            vec![comp("c"), comp("c")],
            "ok_name",
            "two steps have this name",
        ),
        (
            vec![comp("x'; DROP TABLE dl_sagas; --")],
            "ok_name",
            "expected 1 to 63 characters",
        ),
        (
            vec![ok()],
            "Robert'); DROP TABLE dl_sagas;--",
            "expected 1 to 63 characters",
        ),
        (vec![ok()], &long, "expected 1 to 63 characters"),
        (vec![ok().attempts(0)], "ok_name", "at least 1 attempt"),
        (
            vec![ok().timeout(Duration::ZERO)],
            "ok_name",
            "timeout above 0",
        ),
    ];
    for (steps, name, want) in cases {
        let e = SagaDefinition::new(name, 1, steps).expect_err(want);
        assert!(e.to_string().contains(want), "{e} (wanted {want})");
    }
    let e = SagaDefinition::new("v", 0, vec![ok()]).expect_err("version");
    assert!(e.to_string().contains("version of 1 or more"), "{e}");
    let too_many: Vec<Step> = (0..65).map(|i| comp(&format!("s{i}"))).collect();
    assert!(SagaDefinition::new("many", 1, too_many).is_err());

    let (_dir, pool) = pool().await;
    let bad = SagaOptions {
        lease: Duration::from_millis(10),
        ..SagaOptions::default()
    };
    let e = Sagas::new(
        SagaLog::new(SqlTarget::Sqlite(pool.clone())),
        privacy(),
        bad,
    )
    .expect_err("lease");
    assert!(e.to_string().contains("saga.lease"), "{e}");
    let sagas = Sagas::new(
        SagaLog::new(SqlTarget::Sqlite(pool.clone())),
        privacy(),
        fast(),
    )
    .expect("sagas");
    sagas
        .register(SagaDefinition::new("one", 1, vec![ok()]).expect("def"))
        .expect("register");
    let e = sagas
        .register(SagaDefinition::new("one", 1, vec![ok()]).expect("def"))
        .expect_err("twice");
    assert!(e.to_string().contains("registered already"), "{e}");
    // Nothing was written by any of it.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM dl_sagas")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(n, 0);
    assert!(dl_saga::SagaState::parse("paused").is_err());
}

#[tokio::test]
async fn the_log_holds_no_canary_in_readable_form() {
    let (_dir, pool) = pool().await;
    let sagas = Sagas::new(
        SagaLog::new(SqlTarget::Sqlite(pool.clone())),
        privacy(),
        fast(),
    )
    .expect("sagas");
    let canaries = [
        "CANARY-NAME-7f3a91",
        "CANARY-MRN-55c02e",
        "CANARY-OUT-d41e77",
    ];
    sagas
        .register(
            SagaDefinition::new(
                "phi",
                1,
                vec![
                    Step::compensatable(
                        "echo",
                        |ctx| async move { Ok(json!({ "mrn": ctx.input::<Value>()?["mrn"], "note": "CANARY-OUT-d41e77" })) },
                        |_| async { Ok(Value::Null) },
                    ),
                    Step::pivot("fail", |_| async { Err(StepError::failed("refused by the ward")) }),
                ],
            )
            .expect("definition"),
        )
        .expect("register");
    let (_, outcome) = sagas
        .run("phi", &json!({ "name": canaries[0], "mrn": canaries[1] }))
        .await
        .expect("run");
    assert_eq!(
        outcome,
        Outcome::Compensated {
            step: "fail".into()
        }
    );
    let dump: Vec<String> = sqlx::query_scalar(
        "SELECT id || name || state || input || steps || coalesce(error_kind, '') || coalesce(error, '') FROM dl_sagas",
    )
    .fetch_all(&pool)
    .await
    .expect("dump");
    let text = dump.join("\n");
    for c in canaries {
        assert!(!text.contains(c), "canary {c} in the saga log");
    }
    assert!(
        !text.contains("refused by the ward"),
        "the reason is sealed"
    );
}
