//! A saga runner for the saga crash tests, a process the test kills
//! (`kill -9`) and restarts. Settings come from the environment, as a
//! service's. `SAGA_RUNNER_MODE` says what it does:
//!
//! - `crash`: starts one admission (`dl_tests::saga`) per input of the
//!   JSON file `SAGA_RUNNER_PLAN`, says `started <saga> <index>` for each,
//!   and `blocked <saga> <point>` when a saga reaches its kill point,
//!   where it stops dead; then waits to be killed.
//! - `flood`: starts `SAGA_RUNNER_COUNT` sagas of `flood`, each of which
//!   stops dead in its first step, says `flooded <n>` and waits.
//! - `recover`: resumes every saga left running, in rounds, until none is
//!   open (or `SAGA_RUNNER_DEADLINE` seconds, default 300, passed), and
//!   says `recovered <ms> <resumed> <completed> <compensated> <stuck>
//!   <left>`.

use std::io::Write as _;
use std::time::{Duration, Instant};

use data_layer::models::domain::AuditEvent;
use data_layer::saga::{SagaDefinition, SagaState, Step};
use data_layer::{DataLayer, Settings, Sources, Store};
use dl_tests::saga::{Admit, Stores, admission};

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn die(what: &str, e: &dyn std::fmt::Display) -> ! {
    eprintln!("saga-runner: {what}: {e}");
    std::process::exit(2)
}

/// `flood`: a first step that applies an audit event once (or, in flood
/// mode, stops dead), then a pivot that does nothing.
fn flood(dl: &DataLayer, runner: &str, blocking: bool) -> SagaDefinition {
    let (dl, runner) = (dl.clone(), runner.to_owned());
    SagaDefinition::new(
        "flood",
        1,
        vec![
            Step::compensatable(
                "hold",
                move |ctx| {
                    let (dl, runner) = (dl.clone(), runner.clone());
                    async move {
                        if blocking {
                            std::future::pending::<()>().await;
                        }
                        let event = AuditEvent {
                            id: uuid::Uuid::new_v4(),
                            at: chrono::Utc::now(),
                            actor: runner,
                            action: "action".into(),
                            entity: "hold".into(),
                            entity_key: ctx.saga_id().to_string(),
                            purpose: Some("saga-test".into()),
                            detail: None,
                        };
                        dl.once_in(Store::Postgres, &ctx, |tx| async move {
                            tx.repository::<AuditEvent>().await?.insert(&event).await
                        })
                        .await?;
                        Ok(serde_json::Value::Null)
                    }
                },
                |_| async { Ok(serde_json::Value::Null) },
            ),
            Step::pivot("done", |_| async { Ok(serde_json::Value::Null) }),
        ],
    )
    .expect("a valid definition")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mode = std::env::var("SAGA_RUNNER_MODE").unwrap_or_default();
    let settings = Settings::load(&Sources::default()).unwrap_or_else(|e| die("settings", &e));
    let dl = DataLayer::from_settings(settings)
        .await
        .unwrap_or_else(|e| die("data layer", &e));
    let sagas = dl.sagas().unwrap_or_else(|e| die("sagas", &e));
    let runner = format!("{}-{}", mode, std::process::id());
    let stores = Stores {
        dl: dl.clone(),
        scylla: None,
        blocking: mode == "crash",
        runner: runner.clone(),
        trace: None,
    };
    sagas
        .register(admission(&stores))
        .unwrap_or_else(|e| die("register", &e));
    sagas
        .register(flood(&dl, &runner, mode == "flood"))
        .unwrap_or_else(|e| die("register", &e));
    match mode.as_str() {
        "crash" => {
            let path = std::env::var("SAGA_RUNNER_PLAN").unwrap_or_default();
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| die("plan", &e));
            let plan: Vec<Admit> = serde_json::from_str(&text).unwrap_or_else(|e| die("plan", &e));
            for (i, input) in plan.iter().enumerate() {
                let id = sagas
                    .start("admission", input)
                    .await
                    .unwrap_or_else(|e| die("start", &e));
                say(&format!("started {id} {i}"));
            }
            std::future::pending::<()>().await;
        }
        "flood" => {
            let n: usize = std::env::var("SAGA_RUNNER_COUNT")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(100);
            for _ in 0..n {
                sagas
                    .start("flood", &serde_json::json!({}))
                    .await
                    .unwrap_or_else(|e| die("start", &e));
            }
            say(&format!("flooded {n}"));
            std::future::pending::<()>().await;
        }
        "recover" => {
            let deadline: u64 = std::env::var("SAGA_RUNNER_DEADLINE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(300);
            let started = Instant::now();
            let mut total = data_layer::saga::Recovery::default();
            // Rounds until no saga is open: one round takes the expired
            // leases; the killed runner's expire a lease after its death.
            while started.elapsed() < Duration::from_secs(deadline) {
                let r = sagas.recover().await.unwrap_or_else(|e| die("recover", &e));
                total.resumed += r.resumed;
                total.completed += r.completed;
                total.compensated += r.compensated;
                total.stuck += r.stuck;
                total.left += r.left;
                let counts = sagas
                    .log()
                    .counts()
                    .await
                    .unwrap_or_else(|e| die("counts", &e));
                let open: u64 = counts
                    .iter()
                    .filter(|(s, _)| {
                        s == SagaState::Running.name() || s == SagaState::Compensating.name()
                    })
                    .map(|(_, n)| n)
                    .sum();
                if open == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            say(&format!(
                "recovered {} {} {} {} {} {}",
                started.elapsed().as_millis(),
                total.resumed,
                total.completed,
                total.compensated,
                total.stuck,
                total.left
            ));
        }
        other => die(
            "SAGA_RUNNER_MODE",
            &format!("expected crash, flood or recover, not {other:?}"),
        ),
    }
}
