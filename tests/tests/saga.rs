//! Sagas across the stores: each step's effect applied once by its
//! store's helper, a failure at each step compensated in reverse, a
//! runner killed (`kill -9`) at every kill point and resumed by another
//! process, two recoverers at once, 10,000 sagas recovered, and the saga
//! log scanned for canary PHI. On SQLite always; on the test stack with
//! the `integration` feature.

use std::sync::{Arc, Mutex};

use data_layer::models::domain::{Patient, PatientStatus};
use data_layer::saga::{Once, Outcome, SagaDefinition, Step, StepError};
use data_layer::{DataLayer, Settings, Sources, Store};
use serde_json::json;

/// The tests' privacy key (32 bytes of 0x5a, as the other tests use).
const KEY: &str = "WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlo=";

async fn sqlite_layer() -> DataLayer {
    let dir = tempfile::tempdir().expect("temp dir").keep();
    let url = format!("sqlite://{}/sagas.db", dir.display());
    let settings = Settings::load(
        &Sources::isolated()
            .var("DATABASE_URL", &url)
            .var("DL_PRIVACY__KEY", KEY)
            .var("DL_SAGA__ATTEMPTS", "3"),
    )
    .expect("settings");
    data_layer::migrate::apply(&settings, &data_layer::migrate::domain_scripts())
        .await
        .expect("migrate");
    DataLayer::from_settings(settings).await.expect("layer")
}

fn patient(id: uuid::Uuid, mrn: &str) -> Patient {
    Patient {
        id,
        mrn: mrn.into(),
        given_name: "Test".into(),
        family_name: "Testperson".into(),
        date_of_birth: chrono::NaiveDate::from_ymd_opt(1980, 5, 17).expect("date"),
        phone: None,
        email: None,
        status: PatientStatus::Active,
        created_at: chrono::Utc::now(),
        version: 1,
    }
}

/// The SQL guard row: an attempt that applied its effect and then lost
/// its answer is tried again and finds it applied; a second call in the
/// same attempt is refused the same way; nothing is written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_once_in_applies_an_effect_once() {
    let dl = sqlite_layer().await;
    let sagas = dl.sagas().expect("sagas");
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let (layer, log) = (dl.clone(), Arc::clone(&seen));
    sagas
        .register(
            SagaDefinition::new(
                "register",
                1,
                vec![Step::pivot("patient", move |ctx| {
                    let (dl, log) = (layer.clone(), Arc::clone(&log));
                    async move {
                        let p = patient(ctx.id_for("patient"), "MRN-ONCE-1");
                        let first = dl
                            .once_in(Store::Sqlite, &ctx, |tx| {
                                let p = p.clone();
                                async move { tx.repository::<Patient>().await?.insert(&p).await }
                            })
                            .await?;
                        let again = dl
                            .once_in(Store::Sqlite, &ctx, |tx| async move {
                                tx.repository::<Patient>().await?.insert(&p).await
                            })
                            .await?;
                        log.lock().expect("log").push(format!(
                            "{} {:?} {:?}",
                            ctx.attempt(),
                            first.is_applied(),
                            again
                        ));
                        if ctx.attempt() == 1 {
                            return Err(StepError::unknown("the answer was lost"));
                        }
                        Ok(json!({}))
                    }
                })],
            )
            .expect("definition"),
        )
        .expect("register");
    let (_, outcome) = sagas.run("register", &json!({})).await.expect("run");
    assert_eq!(outcome, Outcome::Completed);
    assert_eq!(
        *seen.lock().expect("log"),
        vec![
            "1 true AlreadyApplied".to_owned(),
            "2 false AlreadyApplied".to_owned()
        ]
    );
    let patients = dl.repository::<Patient>().await.expect("patients");
    assert_eq!(
        patients
            .count(&data_layer::Filter::eq("mrn", "MRN-ONCE-1"))
            .await
            .expect("count"),
        1
    );
}

/// A failed effect rolls its guard back with it: the next attempt applies
/// it. The helpers of stores that are not configured, or have no
/// transactions, answer a clear failure and write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_once_in_rolls_back_with_the_effect_and_refuses_other_stores() {
    let dl = sqlite_layer().await;
    let sagas = dl.sagas().expect("sagas");
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let (layer, log) = (dl.clone(), Arc::clone(&seen));
    sagas
        .register(
            SagaDefinition::new(
                "retry_then_apply",
                1,
                vec![Step::pivot("patient", move |ctx| {
                    let (dl, log) = (layer.clone(), Arc::clone(&log));
                    async move {
                        let p = patient(ctx.id_for("patient"), "MRN-ONCE-2");
                        let attempt = ctx.attempt();
                        let r = dl
                            .once_in(Store::Sqlite, &ctx, |tx| async move {
                                tx.repository::<Patient>().await?.insert(&p).await?;
                                if attempt == 1 {
                                    // After the insert: it is rolled back,
                                    // and the guard with it.
                                    return Err(data_layer::Error::invalid(
                                        "patients",
                                        None,
                                        "changed my mind",
                                    ));
                                }
                                Ok(())
                            })
                            .await;
                        let redis = dl.once_redis(&ctx, &[redis::cmd("PING")]).await;
                        let mongo = dl.once_in(Store::Mongo, &ctx, |_| async { Ok(()) }).await;
                        log.lock().expect("log").push(format!(
                            "{attempt} {:?} | {} | {}",
                            r.as_ref().map(Once::is_applied).map_err(|e| e.kind()),
                            redis.expect_err("no redis"),
                            mongo.expect_err("no mongo"),
                        ));
                        r?;
                        Ok(json!({}))
                    }
                })],
            )
            .expect("definition"),
        )
        .expect("register");
    let (_, outcome) = sagas
        .run("retry_then_apply", &json!({}))
        .await
        .expect("run");
    // A plain failure (`invalid`) is not retried: the saga turns back.
    assert_eq!(
        outcome,
        Outcome::Compensated {
            step: "patient".into()
        }
    );
    let seen = seen.lock().expect("log").clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].starts_with("1 Err(Failed) | "), "{seen:?}");
    assert!(
        seen[0].contains("step failed (redis: not configured (set REDIS_URL))"),
        "{seen:?}"
    );
    assert!(seen[0].contains("mongo"), "{seen:?}");
    let patients = dl.repository::<Patient>().await.expect("patients");
    assert_eq!(
        patients
            .count(&data_layer::Filter::eq("mrn", "MRN-ONCE-2"))
            .await
            .expect("count"),
        0,
        "rolled back"
    );
    let guards = dl
        .repository::<data_layer::saga::SagaEffect>()
        .await
        .expect("guards");
    assert_eq!(
        guards
            .count(&data_layer::Filter::all())
            .await
            .expect("count"),
        0,
        "the guard rolled back with the effect"
    );
}

#[cfg(feature = "integration")]
mod live {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use data_layer::saga::{Outcome, SagaState, Sagas};
    use data_layer::{DataLayer, Store};
    use dl_tests::saga::{Admit, Stores, admission, applications, effects_present, step_names};
    use uuid::Uuid;

    async fn layer(ns: &str) -> DataLayer {
        let settings = dl_tests::live::all_stores_settings(ns);
        data_layer::migrate::apply(&settings, &data_layer::migrate::domain_scripts())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        dl_tests::saga::prepare(ns).await;
        DataLayer::from_settings(settings).await.expect("layer")
    }

    async fn scylla_session() -> Arc<scylla::client::session::Session> {
        dl_connections::scylla::connect(
            &dl_tests::live::scylla_settings(),
            &dl_tests::live::test_pool(2),
        )
        .await
        .expect("scylla")
    }

    async fn visits(session: &scylla::client::session::Session, ks: &str, id: Uuid) -> usize {
        let r = session
            .query_unpaged(
                format!("SELECT id FROM {ks}.appointments WHERE id = ?"),
                (id,),
            )
            .await
            .expect("select visit");
        r.into_rows_result().map_or(0, |rows| rows.rows_num())
    }

    async fn cleanup(ns: &str) {
        dl_tests::live::drop_postgres_namespaces(ns).await;
        dl_tests::live::drop_mongo_namespaces(ns).await;
        dl_tests::live::drop_redis_namespaces(ns).await;
    }

    /// A four-store admission (patient in PostgreSQL, chart in MongoDB,
    /// profile in Redis, visit in ScyllaDB), failed at each step in turn,
    /// before its effect and (for the compensatable steps) after it: the
    /// effects done are compensated, last first, each once, and the stores
    /// read as before the saga.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn four_stores_a_failure_at_each_step_is_compensated_in_reverse() {
        let ns = dl_tests::live::unique_prefix("saga4");
        let dl = layer(&ns).await;
        let session = scylla_session().await;
        let lwt = dl_tests::live::scylla_settings().lightweight_transactions;
        let trace = Arc::new(Mutex::new(Vec::new()));
        let stores = Stores {
            dl: dl.clone(),
            scylla: Some((Arc::clone(&session), ns.clone(), lwt)),
            blocking: false,
            runner: "test".into(),
            trace: Some(Arc::clone(&trace)),
        };
        let sagas = dl.sagas().expect("sagas");
        sagas.register(admission(&stores)).expect("register");
        let names = step_names(&stores);
        assert_eq!(names, ["patient", "chart", "profile", "visit"]);
        let mut cases: Vec<(Option<&str>, bool)> = vec![(None, false)];
        for (i, step) in names.iter().enumerate() {
            cases.push((Some(step), false));
            if i < 3 {
                cases.push((Some(step), true));
            }
        }
        for (fail_at, after) in cases {
            trace.lock().expect("trace").clear();
            let mut input = Admit::canaries("s4");
            input.fail_at = fail_at.map(str::to_owned);
            input.fail_after = after;
            let (id, outcome) = sagas.run("admission", &input).await.expect("run");
            let what = format!("fail at {fail_at:?} after {after}");
            let counts = applications(&stores, id).await;
            let present = effects_present(&stores, id, &input).await;
            let visit = visits(&session, &ns, Uuid::new_v5(&id, b"visit/visit")).await;
            let seen = trace.lock().expect("trace").clone();
            match fail_at {
                None => {
                    assert_eq!(outcome, Outcome::Completed, "{what}");
                    assert_eq!(present, (true, true, true), "{what}");
                    assert_eq!(visit, 1, "{what}");
                    assert_eq!(
                        seen,
                        [
                            "patient.action",
                            "chart.action",
                            "profile.action",
                            "visit.action"
                        ],
                        "{what}"
                    );
                    for step in ["patient", "chart", "profile"] {
                        assert_eq!(counts[&(step.into(), "action".into())], 1, "{what} {step}");
                        assert_eq!(
                            counts[&(step.into(), "compensation".into())],
                            0,
                            "{what} {step}"
                        );
                    }
                }
                Some(failed) => {
                    assert_eq!(
                        outcome,
                        Outcome::Compensated {
                            step: failed.into()
                        },
                        "{what}"
                    );
                    // The stores read as before the saga.
                    assert_eq!(
                        present,
                        (false, false, false),
                        "{what}: {seen:?} {counts:?}"
                    );
                    assert_eq!(visit, 0, "{what}");
                    let k = names.iter().position(|s| *s == failed).expect("a step");
                    // Applied: the steps before, and the failed one when it
                    // failed after its effect.
                    let applied: Vec<&str> = names[..k + usize::from(after)].to_vec();
                    let mut expect: Vec<String> =
                        applied.iter().map(|s| format!("{s}.action")).collect();
                    expect.extend(applied.iter().rev().map(|s| format!("{s}.compensation")));
                    assert_eq!(seen, expect, "{what}: effects in order, each once");
                    for step in ["patient", "chart", "profile"] {
                        let n = u64::from(applied.contains(&step));
                        assert_eq!(counts[&(step.into(), "action".into())], n, "{what} {step}");
                        assert_eq!(
                            counts[&(step.into(), "compensation".into())],
                            n,
                            "{what} {step}"
                        );
                    }
                }
            }
        }
        cleanup(&ns).await;
    }

    /// `once::scylla`: with lightweight transactions the insert is `IF NOT
    /// EXISTS` and a second attempt finds it applied; the CQL test server
    /// answers without `[applied]`, which the helper refuses to guess at
    /// (an unknown outcome). Without them the insert is an upsert of the
    /// same row: a second attempt leaves one row.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scylla_once_is_if_not_exists_or_an_upsert_of_one_row() {
        let ns = dl_tests::live::unique_prefix("saga_cql");
        let _dl = layer(&ns).await;
        let session = scylla_session().await;
        let lwt = dl_tests::live::scylla_settings().lightweight_transactions;
        let id = Uuid::new_v4();
        let insert = format!(
            "INSERT INTO {ns}.appointments (id, patient_id, kind, status, version) VALUES (?, ?, ?, ?, ?)"
        );
        let values = (id, Uuid::new_v4(), "admission", "scheduled", 1_i64);
        let first = data_layer::saga::once::scylla(&session, &insert, values, lwt).await;
        let second = data_layer::saga::once::scylla(&session, &insert, values, lwt).await;
        if lwt {
            assert_eq!(first.expect("first"), data_layer::saga::Once::Applied(()));
            assert_eq!(
                second.expect("second"),
                data_layer::saga::Once::AlreadyApplied
            );
        } else {
            assert!(first.expect("first").is_applied());
            assert!(second.expect("second").is_applied());
            // The test server: the LWT form is answered without [applied].
            let e = data_layer::saga::once::scylla(&session, &insert, values, true)
                .await
                .expect_err("no [applied]");
            assert_eq!(e.kind(), data_layer::saga::FailureKind::Unknown);
            assert!(e.reason().contains("without [applied]"), "{e}");
        }
        assert_eq!(visits(&session, &ns, id).await, 1, "one row");
        // Bad statements: refused before anything is sent.
        for bad in [
            format!("UPDATE {ns}.appointments SET kind = ? WHERE id = ?"),
            format!("{insert} IF NOT EXISTS"),
            format!("{insert} USING TTL 5"),
            format!("{insert}; DROP TABLE {ns}.appointments"),
        ] {
            let e = data_layer::saga::once::scylla(&session, &bad, values, lwt)
                .await
                .expect_err("refused");
            assert_eq!(e.kind(), data_layer::saga::FailureKind::Failed, "{bad}");
        }
        assert_eq!(visits(&session, &ns, id).await, 1, "nothing else written");
    }

    /// The kill points of the crash test: each saga stops dead at one of
    /// them (every step boundary and inside each transaction, forward and
    /// backward), in a scenario that reaches it.
    fn kill_plan() -> Vec<Admit> {
        let io = |step: &str, phase: &str, redis: bool| -> Vec<String> {
            let mut v = vec![format!("{step}.{phase}.before")];
            if !redis {
                v.push(format!("{step}.{phase}.inside"));
            }
            v.push(format!("{step}.{phase}.after"));
            v
        };
        let steps = [("patient", false), ("chart", false), ("profile", true)];
        let mut plan = Vec::new();
        let mut add = |fail_at: Option<&str>, after: bool, points: Vec<String>| {
            for p in points {
                let mut a = Admit::canaries("k");
                a.fail_at = fail_at.map(str::to_owned);
                a.fail_after = after;
                a.block_at = Some(p);
                plan.push(a);
            }
        };
        // Forward: every point of every action, and of confirm.
        let mut fwd: Vec<String> = steps
            .iter()
            .flat_map(|(s, r)| io(s, "action", *r))
            .collect();
        fwd.extend(io("confirm", "action", false));
        add(None, false, fwd);
        // Failing at step k (before its effect): the actions before it,
        // then the compensations, last first.
        for k in 1..=3 {
            let failed = ["patient", "chart", "profile", "confirm"][k];
            let mut pts: Vec<String> = steps[..k]
                .iter()
                .flat_map(|(s, r)| io(s, "action", *r))
                .collect();
            pts.push(format!("{failed}.action.before"));
            pts.extend(
                steps[..k]
                    .iter()
                    .rev()
                    .flat_map(|(s, r)| io(s, "compensation", *r)),
            );
            add(Some(failed), false, pts);
        }
        // The chart fails after its effect (an unknown outcome): its own
        // compensation runs too.
        let mut pts: Vec<String> = steps[..2]
            .iter()
            .flat_map(|(s, r)| io(s, "action", *r))
            .collect();
        pts.extend(
            steps[..2]
                .iter()
                .rev()
                .flat_map(|(s, r)| io(s, "compensation", *r)),
        );
        add(Some("chart"), true, pts);
        plan
    }

    /// The environment of a runner process: the stack's settings and a
    /// short lease (a killed runner's sagas move after 5 s; long enough
    /// that a runner on a loaded machine renews it in time, which the
    /// fence assertions rely on).
    fn runner_env(ns: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = dl_tests::live::all_stores_env(ns);
        for (k, v) in [
            ("DL_SAGA__LEASE", "5s"),
            ("DL_SAGA__STEP_TIMEOUT", "600s"),
            // Enough tries to outlast a transaction a killed runner left
            // open in MongoDB (the server aborts it after its lifetime
            // limit, 60 s by default): until then it conflicts.
            ("DL_SAGA__ATTEMPTS", "40"),
            ("DL_SAGA__STUCK_AFTER", "200"),
            ("DL_POSTGRES__MAX_CONNECTIONS", "40"),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        {
            env.push((k.to_owned(), v.to_owned()));
        }
        if let Ok(path) = std::env::var("PATH") {
            env.push(("PATH".into(), path));
        }
        env
    }

    fn spawn(env: &[(String, String)]) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_saga-runner"))
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start saga-runner");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    }

    /// Reads lines until `done` says so or `within` passes: the lines.
    fn read_until(
        rx: &std::sync::mpsc::Receiver<String>,
        within: Duration,
        mut done: impl FnMut(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut lines = Vec::new();
        while Instant::now() < deadline && !done(&lines) {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                lines.push(line);
            }
        }
        lines
    }

    /// Runs a recovery process to its end: its report line's numbers.
    fn recover(env: &[(String, String)]) -> Vec<u64> {
        let (mut child, rx) = spawn(env);
        let lines = read_until(&rx, Duration::from_secs(400), |l| {
            l.iter().any(|l| l.starts_with("recovered "))
        });
        let status = child.wait().expect("wait");
        assert!(status.success(), "the recovery failed: {status}");
        let line = lines
            .iter()
            .find(|l| l.starts_with("recovered "))
            .expect("a report");
        line.split(' ')
            .skip(1)
            .map(|n| n.parse().expect("a number"))
            .collect()
    }

    /// Every saga of the log: id → row.
    async fn rows(sagas: &Sagas) -> BTreeMap<String, data_layer::saga::SagaRow> {
        sagas
            .log()
            .list(None, 100_000)
            .await
            .expect("list")
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect()
    }

    /// Every text of the saga log's tables (PostgreSQL), for a scan.
    async fn log_text(ns: &str) -> String {
        let pool = sqlx::PgPool::connect(dl_tests::live::postgres_url().expose())
            .await
            .expect("pg");
        let mut out = String::new();
        for table in ["dl_sagas", "dl_saga_effects"] {
            let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT row_to_json(t)::text FROM \"{ns}\".{table} t"
            )))
            .fetch_all(&pool)
            .await
            .expect("scan");
            for (r,) in rows {
                out.push_str(&r);
                out.push('\n');
            }
        }
        out
    }

    /// A runner killed (`kill -9`) with each of its sagas stopped at a
    /// different kill point — every step boundary and inside each
    /// transaction, in PostgreSQL, MongoDB and Redis steps, forward and
    /// backward — then a new process resumes them: every saga ends
    /// completed (nothing failed) or compensated (a step failed), each
    /// effect applied at most once and its compensation with it, no lease
    /// left, and no canary in the saga log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_at_every_kill_point_then_recover() {
        let ns = dl_tests::live::unique_prefix("saga_kill");
        let dl = layer(&ns).await;
        let stores = Stores {
            dl: dl.clone(),
            scylla: None,
            blocking: false,
            runner: "test".into(),
            trace: None,
        };
        let plan = kill_plan();
        assert!(plan.len() >= 50, "{} kill points", plan.len());
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("plan.json");
        std::fs::write(&path, serde_json::to_vec(&plan).expect("json")).expect("plan");
        let path = path.display().to_string();
        let env = runner_env(
            &ns,
            &[("SAGA_RUNNER_MODE", "crash"), ("SAGA_RUNNER_PLAN", &path)],
        );
        let (mut child, rx) = spawn(&env);
        let n = plan.len();
        let lines = read_until(&rx, Duration::from_secs(300), |l| {
            l.iter().filter(|l| l.starts_with("blocked ")).count() >= n
        });
        // SIGKILL: no destructor, no rollback, no lease given back.
        child.kill().expect("kill");
        let _ = child.wait();
        let mut ids: Vec<Uuid> = vec![Uuid::nil(); n];
        let mut blocked: BTreeMap<Uuid, String> = BTreeMap::new();
        for l in &lines {
            let parts: Vec<&str> = l.split(' ').collect();
            match parts[..] {
                ["started", id, i] => {
                    ids[i.parse::<usize>().expect("index")] = id.parse().expect("id");
                }
                ["blocked", id, point] => {
                    blocked.insert(id.parse().expect("id"), point.to_owned());
                }
                _ => {}
            }
        }
        assert_eq!(
            blocked.len(),
            n,
            "every saga reached its kill point: {lines:?}"
        );
        for (i, a) in plan.iter().enumerate() {
            assert_eq!(blocked.get(&ids[i]), a.block_at.as_ref(), "saga {i}");
        }
        let sagas = dl.sagas().expect("sagas");
        let before = rows(&sagas).await;
        assert_eq!(
            before.values().filter(|r| !r.state.is_final()).count(),
            n,
            "all left open by the killed runner"
        );
        let report = recover(&runner_env(&ns, &[("SAGA_RUNNER_MODE", "recover")]));
        assert_eq!(report[1], n as u64, "resumed: {report:?}");
        let after = rows(&sagas).await;
        let (mut completed, mut compensated) = (0, 0);
        for (i, a) in plan.iter().enumerate() {
            let id = ids[i];
            let row = &after[&id.to_string()];
            let what = format!("saga {i} killed at {:?}", a.block_at);
            assert!(
                row.owner.is_none() && row.lease_until == 0,
                "{what}: no lease left"
            );
            assert_eq!(row.fence, 2, "{what}: taken over once");
            let counts = applications(&stores, id).await;
            let present = effects_present(&stores, id, a).await;
            if a.fail_at.is_none() {
                assert_eq!(row.state, SagaState::Completed, "{what}");
                completed += 1;
                assert_eq!(present, (true, true, true), "{what}");
                for step in ["patient", "chart", "profile", "confirm"] {
                    assert_eq!(counts[&(step.into(), "action".into())], 1, "{what}: {step}");
                    assert_eq!(counts[&(step.into(), "compensation".into())], 0, "{what}");
                }
            } else {
                assert_eq!(row.state, SagaState::Compensated, "{what}");
                compensated += 1;
                assert_eq!(present, (false, false, false), "{what}");
                for step in ["patient", "chart", "profile"] {
                    let (act, comp) = (
                        counts[&(step.into(), "action".into())],
                        counts[&(step.into(), "compensation".into())],
                    );
                    // An applied action is compensated, once. A step that
                    // was running when the runner died may have applied
                    // its effect: it is compensated too, even when the
                    // attempt after the crash failed before any effect.
                    assert!(
                        act <= 1 && comp <= 1 && comp >= act,
                        "{what}: {step} {act} {comp}"
                    );
                }
                assert_eq!(counts[&("confirm".into(), "action".into())], 0, "{what}");
            }
        }
        let text = log_text(&ns).await;
        let canaries: Vec<String> = plan.iter().flat_map(Admit::phi).collect();
        let hits: Vec<&String> = canaries
            .iter()
            .filter(|c| text.contains(c.as_str()))
            .collect();
        assert!(hits.is_empty(), "canaries in the saga log: {hits:?}");
        eprintln!(
            "saga crash test: {n} kill points in one killed runner; {completed} completed, \
             {compensated} compensated; recovery {} ms; {} canaries, 0 hits in {} bytes of log",
            report[0],
            canaries.len(),
            text.len()
        );
        cleanup(&ns).await;
    }

    /// Two recovery processes at once over one killed runner's sagas: each
    /// saga is taken over once (fence 2) and its effects after the crash
    /// are all by one of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_recoverers_drive_each_saga_once() {
        let ns = dl_tests::live::unique_prefix("saga_two");
        let dl = layer(&ns).await;
        let n = 200;
        let env = runner_env(
            &ns,
            &[("SAGA_RUNNER_MODE", "flood"), ("SAGA_RUNNER_COUNT", "200")],
        );
        let (mut child, rx) = spawn(&env);
        let lines = read_until(&rx, Duration::from_secs(120), |l| {
            l.iter().any(|l| l.starts_with("flooded "))
        });
        assert!(lines.iter().any(|l| l == "flooded 200"), "{lines:?}");
        child.kill().expect("kill");
        let _ = child.wait();
        let renv = runner_env(&ns, &[("SAGA_RUNNER_MODE", "recover")]);
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| recover(&renv));
            let b = s.spawn(|| recover(&renv));
            (a.join().expect("a"), b.join().expect("b"))
        });
        assert_eq!(a[1] + b[1], n, "resumed once in all: {a:?} {b:?}");
        let sagas = dl.sagas().expect("sagas");
        let rows = rows(&sagas).await;
        assert_eq!(rows.len() as u64, n);
        let audit = dl
            .repository_in::<data_layer::models::domain::AuditEvent>(Store::Postgres)
            .await
            .expect("audit");
        for (id, row) in &rows {
            assert_eq!(row.state, SagaState::Completed, "{id}");
            assert_eq!(row.fence, 2, "{id}: taken over once");
            let events = audit
                .list(
                    &data_layer::Query::new()
                        .filter(data_layer::Filter::eq("entity_key", id.clone())),
                )
                .await
                .expect("events")
                .items;
            assert_eq!(events.len(), 1, "{id}: the effect once");
        }
        eprintln!(
            "two recoverers: {} and {} of {n} sagas, {} and {} ms",
            a[1], b[1], a[0], b[0]
        );
        cleanup(&ns).await;
    }

    /// 10,000 sagas left running by a killed runner are all completed by
    /// one recovery process: how long it took.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_thousand_sagas_recovered_after_a_kill() {
        let ns = dl_tests::live::unique_prefix("saga_10k");
        let dl = layer(&ns).await;
        let env = runner_env(
            &ns,
            &[
                ("SAGA_RUNNER_MODE", "flood"),
                ("SAGA_RUNNER_COUNT", "10000"),
            ],
        );
        let (mut child, rx) = spawn(&env);
        let lines = read_until(&rx, Duration::from_secs(600), |l| {
            l.iter().any(|l| l.starts_with("flooded "))
        });
        assert!(lines.iter().any(|l| l == "flooded 10000"), "{lines:?}");
        child.kill().expect("kill");
        let _ = child.wait();
        let report = recover(&runner_env(&ns, &[("SAGA_RUNNER_MODE", "recover")]));
        assert_eq!(report[1], 10_000, "{report:?}");
        assert_eq!(report[2], 10_000, "completed: {report:?}");
        let sagas = dl.sagas().expect("sagas");
        let counts = sagas.log().counts().await.expect("counts");
        assert_eq!(counts, vec![("completed".to_owned(), 10_000)]);
        eprintln!(
            "recovery at scale: 10000 sagas completed in {} ms after the kill",
            report[0]
        );
        cleanup(&ns).await;
    }
}
