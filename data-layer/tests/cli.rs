//! The `data-layer` command, run as a user would: on a fresh folder with no
//! services, with broken settings, with an env file holding a password.

use std::path::Path;
use std::process::{Command, Output};

fn data_layer(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_data-layer"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("run data-layer")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn demo_runs_on_a_fresh_folder_with_no_services() {
    let dir = tempfile::tempdir().unwrap();
    let out = data_layer(dir.path(), &["demo"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("data-layer demo on sqlite"), "{stdout}");
    assert!(
        stdout.contains("inserted 12 patients and 24 appointments"),
        "{stdout}"
    );
    assert!(stdout.contains("none repeated"), "{stdout}");
    assert!(
        stdout.contains("was refused") && stdout.contains("version mismatch"),
        "{stdout}"
    );
    assert!(dir.path().join("data/data-layer.db").is_file());
    // CDC: the relay's redacted event and its record.
    assert!(
        stdout.contains("cdc: relay `demo_sqlite` delivered")
            && stdout.contains("\"type\": \"ce.patients.created\"")
            && stdout.contains("mrn            rule hash       -> tokenized"),
        "{stdout}"
    );
    // The demo's fake PHI never reaches the output.
    for phi in [
        "Testperson",
        "Example",
        "DEMO-",
        "+1-555",
        "fake clinical note",
    ] {
        assert!(
            !stdout.contains(phi) && !stderr.contains(phi),
            "{phi} printed"
        );
    }
    // A second run adds its own rows to the same file.
    let again = data_layer(dir.path(), &["demo"]);
    let (stdout, _) = text(&again);
    assert!(again.status.success());
    assert!(stdout.contains("(26 in the store"), "{stdout}");
    // The second run's relay delivers this run's events only.
    assert!(
        stdout.contains("cdc: relay `demo_sqlite` delivered 41 events"),
        "{stdout}"
    );
}

#[test]
fn config_redacts_secrets_and_honours_env_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("custom.env"),
        "DATABASE_URL=postgres://app:Do-Not-Print-Me@db:5432/clinic\nDL_POSTGRES__MAX_CONNECTIONS=33\n",
    )
    .unwrap();
    let out = data_layer(dir.path(), &["--env-file", "custom.env", "config"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains("Do-Not-Print-Me"), "{stdout}");
    assert!(
        stdout.contains("postgres://app:***@db:5432/clinic"),
        "{stdout}"
    );
    assert!(
        stdout.contains("postgres.max_connections") && stdout.contains("33"),
        "{stdout}"
    );
    assert!(stdout.contains("env file custom.env"), "{stdout}");

    let out = data_layer(
        dir.path(),
        &["--env-file", "custom.env", "config", "--json"],
    );
    let (stdout, _) = text(&out);
    let rows: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert!(rows.as_array().is_some_and(|r| r.len() > 40));
    assert!(!stdout.contains("Do-Not-Print-Me"));
}

#[test]
fn set_flag_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let out = data_layer(dir.path(), &["--set", "sqlite.max_connections=2", "config"]);
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("sqlite.max_connections")
                && l.contains(" 2 ")
                && l.contains("(flag)")),
        "{stdout}"
    );
}

#[test]
fn broken_settings_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("data-layer.toml"),
        "[sqlite]\nmax_connections = \"lots\"\n",
    )
    .unwrap();
    let out = data_layer(dir.path(), &["demo"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("sqlite.max_connections") && stderr.contains("a whole number"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "nothing written");

    let empty = tempfile::tempdir().unwrap();
    for args in [
        &["--env-file", "missing.env", "demo"][..],
        &["--config", "missing.toml", "config"][..],
        &["--set", "no-equals-sign", "config"][..],
        &["--set", "postgres.max_conns=3", "config"][..],
    ] {
        let out = data_layer(empty.path(), args);
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn unopenable_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("blocker"),
        "a file where a folder should be",
    )
    .unwrap();
    let out = data_layer(
        dir.path(),
        &["--set", "database_url=sqlite://blocker/db.sqlite", "demo"],
    );
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("sqlite") && stderr.contains("cannot open"),
        "{stderr}"
    );
}

#[test]
fn health_reports_up_degraded_and_down() {
    let dir = tempfile::tempdir().unwrap();
    let out = data_layer(dir.path(), &["health"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("data-layer: up")
            && stdout.contains("sqlite")
            && stdout.contains("breaker closed"),
        "{stdout}"
    );

    // An optional store that is down (a closed loopback port) degrades.
    let closed = "redis://127.0.0.1:1";
    let out = data_layer(
        dir.path(),
        &[
            "--set",
            &format!("redis_url={closed}"),
            "--set",
            "redis.optional=true",
            "--set",
            "redis.request_timeout=500ms",
            "health",
            "--json",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(report["status"], "degraded", "{stdout}");
    let redis = report["stores"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["store"] == "redis")
        .unwrap();
    assert_eq!(redis["status"], "down");
    assert!(
        redis["latency_ms"].as_f64().unwrap() < 2000.0,
        "fails within its timeout: {stdout}"
    );

    // A required store that is down: non-zero exit, a clear line.
    let out = data_layer(
        dir.path(),
        &[
            "--set",
            &format!("redis_url={closed}"),
            "--set",
            "redis.request_timeout=500ms",
            "health",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stdout.starts_with("data-layer: down") && stdout.contains("redis    down"),
        "{stdout}"
    );
    assert!(stderr.contains("a required store is down"), "{stderr}");
}

/// `data-layer cdc`: status, run --once, dead-letters and replay on the
/// embedded default (a `.env` in the folder, as a user would set it up);
/// bad input answered with a clear error.
#[test]
fn cdc_commands_on_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "DL_CDC__ENTITIES=patients,appointments\nDL_CDC__SINKS=sqlite\n\
         DL_PRIVACY__KEY=WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlo=\n",
    )
    .unwrap();
    let demo = data_layer(dir.path(), &["demo"]);
    let (stdout, stderr) = text(&demo);
    assert!(demo.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("cdc: relay `analytics_sqlite` delivered 41 events"),
        "{stdout}"
    );

    let status = data_layer(dir.path(), &["cdc", "status", "--json"]);
    let (stdout, stderr) = text(&status);
    assert!(status.status.success(), "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(v["checkpoint"], 41);
    assert_eq!(v["dead_letters"], 0);
    assert_eq!(v["sinks"][0]["events"], 41);

    // The relay of the settings kept its consumer: nothing new to relay.
    let run = data_layer(dir.path(), &["cdc", "run", "--once"]);
    let (stdout, _) = text(&run);
    assert!(run.status.success());
    assert!(
        stdout.contains("read 0 events") && stdout.contains("checkpoint 41"),
        "{stdout}"
    );

    let replay = data_layer(
        dir.path(),
        &["cdc", "replay", "--from", "2000-01-01T00:00:00Z"],
    );
    let (stdout, stderr) = text(&replay);
    assert!(replay.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("replayed 41 events from position 1"),
        "{stdout}"
    );
    let again = data_layer(dir.path(), &["cdc", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&text(&again).0).expect("json");
    assert_eq!(
        v["sinks"][0]["events"], 41,
        "each event once after a replay"
    );

    // Health shows the relay: caught up, nothing dead-lettered.
    let health = data_layer(dir.path(), &["health", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&text(&health).0).expect("json");
    assert_eq!(v["cdc"][0]["relay"], "analytics_sqlite");
    assert_eq!(v["cdc"][0]["lag_events"], 0);
    assert_eq!(v["cdc"][0]["checkpoint"], 41);
    assert_eq!(v["cdc"][0]["dead_letters"], 0);

    let dead = data_layer(dir.path(), &["cdc", "dead-letters"]);
    assert!(dead.status.success());
    assert!(text(&dead).0.contains("0 dead letters"));

    // Bad input: an unknown event id, an injection string as a store
    // name, a sink that is not one.
    for (args, says) in [
        (
            &[
                "cdc",
                "replay",
                "--from",
                "patients/k.0000/1'; DROP TABLE ce_events;--",
            ][..],
            "--from",
        ),
        (
            &["cdc", "status", "--store", "x'); DROP TABLE dl_feed;--"][..],
            "--store",
        ),
    ] {
        let out = data_layer(dir.path(), args);
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?}: {stdout}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_data-layer"))
        .args(["cdc", "status"])
        .current_dir(dir.path())
        .env_clear()
        .env("DL_CDC__SINKS", "kafka")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(text(&out).1.contains("cdc.sinks"), "{}", text(&out).1);
    let status = data_layer(dir.path(), &["cdc", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&text(&status).0).expect("json");
    assert_eq!(v["sinks"][0]["events"], 41, "nothing written by bad input");
}
