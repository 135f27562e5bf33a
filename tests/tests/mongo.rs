//! The conformance suite and the model-based property test on a live
//! MongoDB (the test stack's: SecantusDB's secantusd-rs without Docker, or
//! MongoDB 7 with it). Each case works in its own database, dropped at the end.

#![cfg(feature = "integration")]

use std::io::Write as _;

use dl_tests::harness::run_conformance_known;
use dl_tests::live::{MongoNamespaces, SECANTUSDB_DEFECTS, mongo_is_secantusdb};
use dl_tests::model::run_model_test_with;

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_mongo() {
    let ns = MongoNamespaces::new("conf").await;
    let (name, known) = if mongo_is_secantusdb().await {
        ("mongo (secantusdb)", SECANTUSDB_DEFECTS)
    } else {
        ("mongo", &[][..])
    };
    let report = run_conformance_known(name, ns.factory(), 8, known).await;
    ns.drop_all().await;
    say(&report.summary());
    assert!(report.failed.is_empty(), "{}", report.summary());
    assert!(report.passed >= 60, "{}", report.summary());
}

#[test]
fn model_mongo_matches_memory() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ns = rt.block_on(MongoNamespaces::new("model"));
    // SecantusDB's unique indexes never release a value (see
    // SECANTUSDB_DEFECTS): there the model runs with unique values off.
    let unique_codes = !rt.block_on(mongo_is_secantusdb());
    let result = run_model_test_with(ns.factory(), 48, unique_codes);
    rt.block_on(ns.drop_all());
    let report = result.expect("mongo diverged from the model");
    say(&format!(
        "model[mongo]: {} sequences, {} steps compared with the memory model, {} unsupported steps{}",
        report.sequences,
        report.steps,
        report.unsupported_steps,
        if unique_codes {
            ""
        } else {
            " (on Specimen, no unique field: known secantusdb defect)"
        }
    ));
}
