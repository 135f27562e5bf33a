//! `data-layer saga` and the demo's saga on the embedded default (no
//! services): list, show, retry and abort, with --json, and bad input
//! refused with a clear error and nothing written.

use std::path::Path;
use std::process::{Command, Output};

const KEY: &str = "WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlo=";

fn data_layer(dir: &Path, key: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_data-layer"));
    c.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    if let Some(k) = key {
        c.env("DL_PRIVACY__KEY", k);
    }
    c.output().expect("run data-layer")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn the_demo_runs_a_saga_each_way_and_the_cli_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = data_layer(dir.path(), Some(KEY), &["demo"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("completed: patient registered and first appointment booked (patient in the store: true)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("compensated: `book_first_appointment` failed, the registration was undone (patient in the store: false)"),
        "{stdout}"
    );

    let out = data_layer(dir.path(), Some(KEY), &["saga", "list", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let rows: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let rows = rows.as_array().expect("array");
    assert_eq!(rows.len(), 2);
    let compensated = rows
        .iter()
        .find(|r| r["state"] == "compensated")
        .expect("a compensated saga");
    assert_eq!(compensated["steps"][0]["state"], "compensated");
    assert_eq!(compensated["steps"][1]["state"], "failed");
    assert!(
        compensated.get("input").is_none(),
        "no sealed part is printed"
    );
    let id = compensated["id"].as_str().expect("id");

    let out = data_layer(
        dir.path(),
        Some(KEY),
        &["saga", "list", "--state", "completed"],
    );
    let (stdout, _) = text(&out);
    assert!(stdout.contains("1 sagas"), "{stdout}");

    let out = data_layer(dir.path(), Some(KEY), &["saga", "show", id]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("reason: the appointment has no length"),
        "{stdout}"
    );
    assert!(stdout.contains("register_patient"), "{stdout}");

    // Neither can be retried (not stuck) nor aborted (ended).
    let out = data_layer(dir.path(), Some(KEY), &["saga", "retry", id]);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("only a stuck saga can be retried"),
        "{}",
        text(&out).1
    );
    let out = data_layer(dir.path(), Some(KEY), &["saga", "abort", id, "--json"]);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("only a running saga"),
        "{}",
        text(&out).1
    );

    // Another key opens no reason, and says so.
    let other = "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=";
    let out = data_layer(dir.path(), Some(other), &["saga", "show", id]);
    assert!(out.status.success());
    assert!(text(&out).0.contains("does not open"), "{}", text(&out).0);
}

#[test]
fn bad_saga_input_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        data_layer(
            dir.path(),
            Some(KEY),
            &[
                "migrate",
                "up",
                "--dir",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations")
            ]
        )
        .status
        .success()
    );
    let cases: &[(&[&str], Option<&str>, &str)] = &[
        (&["saga", "list"], None, "set privacy.key"),
        (
            &["saga", "list", "--state", "paused"],
            Some(KEY),
            "expected running, compensating",
        ),
        (
            &["saga", "list", "--state", "'; DROP TABLE dl_sagas; --"],
            Some(KEY),
            "expected running, compensating",
        ),
        (
            &["saga", "show", "x'; DROP TABLE dl_sagas;--"],
            Some(KEY),
            "expected a saga id",
        ),
        (
            &["saga", "show", &"9".repeat(5000)],
            Some(KEY),
            "expected a saga id",
        ),
        (
            &["saga", "retry", "00000000-0000-0000-0000-000000000000"],
            Some(KEY),
            "not found",
        ),
        (
            &["saga", "abort", "00000000-0000-0000-0000-000000000000"],
            Some(KEY),
            "not found",
        ),
        (
            &["saga", "list", "--limit", "many"],
            Some(KEY),
            "invalid value",
        ),
        (&["saga", "list"], Some("not base64!"), "privacy.key"),
    ];
    for (args, key, want) in cases {
        let out = data_layer(dir.path(), *key, args);
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?}: {stdout}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // The table is there and empty: nothing was written.
    let out = data_layer(dir.path(), Some(KEY), &["saga", "list", "--json"]);
    assert_eq!(text(&out).0.trim(), "[]");
    // Bad saga settings, by name.
    for (var, value, name) in [
        ("DL_SAGA__LEASE", "10ms", "saga.lease"),
        ("DL_SAGA__ATTEMPTS", "0", "saga.attempts"),
        ("DL_SAGA__STEP_TIMEOUT", "soon", "saga.step_timeout"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_data-layer"))
            .args(["saga", "list"])
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DL_PRIVACY__KEY", KEY)
            .env(var, value)
            .output()
            .expect("run");
        assert!(!out.status.success());
        assert!(text(&out).1.contains(name), "{}", text(&out).1);
    }
}
