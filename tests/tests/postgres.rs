//! The conformance suite and the model-based property test on a live
//! PostgreSQL (the test stack's; see scripts/stack.sh). Each case works in
//! its own PostgreSQL schema; all are dropped at the end.

#![cfg(feature = "integration")]

use std::io::Write as _;

use dl_tests::harness::run_conformance;
use dl_tests::live::PgNamespaces;
use dl_tests::model::run_model_test;

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_postgres() {
    let ns = PgNamespaces::new("conf").await;
    let report = run_conformance("postgres", ns.factory(2), 8).await;
    ns.drop_all().await;
    say(&report.summary());
    assert!(report.failed.is_empty(), "{}", report.summary());
    report.assert_exactly(&[]);
}

#[test]
fn model_postgres_matches_memory() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ns = rt.block_on(PgNamespaces::new("model"));
    let result = run_model_test(ns.factory(1), 48);
    rt.block_on(ns.drop_all());
    let report = result.expect("postgres diverged from the model");
    say(&format!(
        "model[postgres]: {} sequences, {} steps compared with the memory model, {} unsupported steps",
        report.sequences, report.steps, report.unsupported_steps
    ));
}

/// Statements are cached per entity type, not per table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_entity_types_share_a_table() {
    let ns = PgNamespaces::new("shared").await;
    let backend = ns.factory(1)().await;
    let result = dl_tests::entities::two_entity_types_share_a_table(backend).await;
    ns.drop_all().await;
    result.unwrap_or_else(|e| panic!("postgres: {e}"));
}
