//! The conformance suite and the model-based property test on a live Redis
//! (the test stack's). Redis serves eq/in on indexed fields only: the cases
//! that need more assert the precise Unsupported error, and are counted.

#![cfg(feature = "integration")]

use std::io::Write as _;

use dl_tests::harness::run_conformance;
use dl_tests::live::RedisNamespaces;
use dl_tests::model::run_model_test;

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_redis() {
    let ns = RedisNamespaces::new("conf").await;
    let report = run_conformance("redis", ns.factory(), 8).await;
    ns.drop_all().await;
    say(&report.summary());
    assert!(report.failed.is_empty(), "{}", report.summary());
    assert!(report.passed >= 60, "{}", report.summary());
}

#[test]
fn model_redis_matches_memory() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ns = rt.block_on(RedisNamespaces::new("model"));
    let result = run_model_test(ns.factory(), 48);
    rt.block_on(ns.drop_all());
    let report = result.expect("redis diverged from the model");
    say(&format!(
        "model[redis]: {} sequences, {} steps compared with the memory model, {} answered Unsupported",
        report.sequences, report.steps, report.unsupported_steps
    ));
}
