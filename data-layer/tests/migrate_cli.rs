//! `data-layer migrate` on the embedded default (no services): the
//! project's own scripts, every action, and broken input refused before
//! anything is written.

use std::path::{Path, PathBuf};
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

/// The repository's own migrations folder.
fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations")
}

#[test]
fn the_projects_scripts_bring_sqlite_up_and_the_repositories_use_them() {
    let dir = tempfile::tempdir().unwrap();
    let folder = scripts();
    let folder = folder.to_str().unwrap();
    let out = data_layer(dir.path(), &["migrate", "status", "--dir", folder]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("sqlite: version none; 0 applied, 4 pending"),
        "{stdout}"
    );

    let out = data_layer(
        dir.path(),
        &["migrate", "up", "--store", "all", "--dir", folder],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("sqlite   apply        1_clinical_schema"),
        "{stdout}"
    );
    assert!(
        stdout.contains("sqlite   apply        2_change_feed"),
        "{stdout}"
    );
    assert!(stdout.contains("sqlite   apply        3_cdc"), "{stdout}");
    assert!(stdout.contains("sqlite   apply        4_sagas"), "{stdout}");
    assert!(
        stdout.contains("sqlite: version 4; 4 applied, 0 pending, 0 failed"),
        "{stdout}"
    );

    // Nothing to do the second time; verify agrees; JSON for machines.
    let out = data_layer(dir.path(), &["migrate", "up", "--dir", folder, "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let runs: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(runs[0]["store"], "sqlite");
    assert_eq!(runs[0]["steps"].as_array().map(Vec::len), Some(0));
    assert_eq!(runs[0]["status"][0]["state"], "applied");
    let out = data_layer(dir.path(), &["migrate", "verify", "--dir", folder]);
    assert!(out.status.success(), "{}", text(&out).1);

    // The demo runs on the migrated tables.
    let out = data_layer(dir.path(), &["demo"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");

    // Down needs --to; down to 0 reverts; status shows it pending again.
    let out = data_layer(dir.path(), &["migrate", "down", "--dir", folder]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("--to"), "{}", text(&out).1);
    let out = data_layer(
        dir.path(),
        &["migrate", "down", "--to", "0", "--dir", folder],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("sqlite   revert       1_clinical_schema"),
        "{stdout}"
    );
    assert!(
        stdout.contains("sqlite   revert       2_change_feed"),
        "{stdout}"
    );
    assert!(stdout.contains("sqlite   revert       3_cdc"), "{stdout}");
    assert!(stdout.contains("sqlite   revert       4_sagas"), "{stdout}");
    assert!(stdout.contains("0 applied, 4 pending"), "{stdout}");
}

#[test]
fn broken_input_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    std::fs::create_dir_all(m.join("sqlite")).unwrap();
    std::fs::write(m.join("sqlite/1_ok.sql"), "CREATE TABLE t (x INTEGER);").unwrap();
    std::fs::write(m.join("sqlite/two_bad.sql"), "CREATE TABLE u (x INTEGER);").unwrap();
    let out = data_layer(dir.path(), &["migrate", "up", "--dir", "m"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("two_bad.sql") && stderr.contains("bad migration file name"),
        "{stderr}"
    );
    assert!(!stdout.contains("apply"), "{stdout}");
    // Nothing written: not even the database file.
    assert!(!dir.path().join("data/data-layer.db").exists());

    std::fs::remove_file(m.join("sqlite/two_bad.sql")).unwrap();
    std::fs::create_dir_all(m.join("oracle")).unwrap();
    let out = data_layer(dir.path(), &["migrate", "up", "--dir", "m"]);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("not a store's folder"),
        "{}",
        text(&out).1
    );
    std::fs::remove_dir(m.join("oracle")).unwrap();

    for (args, expect) in [
        (vec!["migrate", "up", "--store", "mysql"], "unknown store"),
        (
            vec!["migrate", "up", "--store", "mongo", "--dir", "m"],
            "mongo is not configured",
        ),
        (vec!["migrate", "up", "--to", "x"], "invalid value"),
        (vec!["migrate", "resolve", "--dir", "m"], "--version"),
        (vec!["migrate", "up", "--dir", "nonexistent"], "nonexistent"),
    ] {
        let out = data_layer(dir.path(), &args);
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr.contains(expect) || stdout.contains(expect),
            "{args:?}: {stdout}\n{stderr}"
        );
    }

    // A failing script: the error names the file, statement and line; the
    // earlier script stays applied; the failure is recorded and refused
    // until resolved.
    std::fs::write(
        m.join("sqlite/2_broken.sql"),
        "CREATE TABLE v (x INTEGER);\nINSERT INTO no_such_table VALUES (1);\n",
    )
    .unwrap();
    let out = data_layer(dir.path(), &["migrate", "up", "--dir", "m"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stdout.contains("2_broken.sql failed at statement 2 (line 2)"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 applied, 0 pending, 1 failed"),
        "{stdout}"
    );
    let out = data_layer(dir.path(), &["migrate", "up", "--dir", "m"]);
    assert!(
        text(&out).0.contains("failed on an earlier run"),
        "{}",
        text(&out).0
    );
    let out = data_layer(
        dir.path(),
        &["migrate", "resolve", "--version", "2", "--dir", "m"],
    );
    assert!(out.status.success(), "{}", text(&out).0);
    std::fs::write(
        m.join("sqlite/2_broken.sql"),
        "CREATE TABLE v (x INTEGER);\n",
    )
    .unwrap();
    let out = data_layer(dir.path(), &["migrate", "up", "--dir", "m"]);
    assert!(out.status.success(), "{}", text(&out).0);
    assert!(
        text(&out).0.contains("2 applied, 0 pending"),
        "{}",
        text(&out).0
    );

    // Drift: refused with both checksums; --allow-drift accepts.
    std::fs::write(
        m.join("sqlite/1_ok.sql"),
        "CREATE TABLE t (x INTEGER, y TEXT);",
    )
    .unwrap();
    let out = data_layer(dir.path(), &["migrate", "verify", "--dir", "m"]);
    assert!(!out.status.success());
    assert!(
        text(&out).0.contains("was applied with checksum"),
        "{}",
        text(&out).0
    );
    let out = data_layer(
        dir.path(),
        &["migrate", "up", "--allow-drift", "--dir", "m"],
    );
    assert!(out.status.success(), "{}", text(&out).0);
}
