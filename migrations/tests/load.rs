//! Bad migration folders are refused before anything runs, each with a
//! clear error naming the file.

use std::path::Path;

use dl_migrations::MigrationError;
use dl_migrations::script::{self, StoreKind};

fn folder(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("dir");
    for (name, body) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, body).expect("write");
    }
    dir
}

fn refused(files: &[(&str, &[u8])]) -> String {
    let dir = folder(files);
    let e = script::load(dir.path()).expect_err("refused");
    let text = e.to_string();
    assert!(!text.is_empty());
    text
}

#[test]
fn a_good_folder_loads_in_version_order() {
    let dir = folder(&[
        ("postgres/10_b.sql", b"SELECT 1;"),
        ("postgres/2_a.sql", b"SELECT 1;"),
        ("postgres/2_a.down.sql", b"SELECT 2;"),
        ("postgres/README.md", b"notes"),
        ("mongo/1_c.json", br#"[{"create": "c"}]"#),
        ("src/lib.rs", b"// the crate's own code is not a store"),
    ]);
    let all = script::load(dir.path()).expect("loads");
    let pg = &all[&StoreKind::Postgres];
    assert_eq!(
        pg.iter().map(|m| m.version).collect::<Vec<_>>(),
        vec![2, 10]
    );
    assert!(pg[0].down.is_some() && pg[1].down.is_none());
    assert_eq!(all[&StoreKind::Mongo].len(), 1);
    assert!(!pg[0].no_transaction);
}

#[test]
fn the_opt_out_of_transactions_is_read() {
    let dir = folder(&[(
        "postgres/1_idx.sql",
        b"-- dl:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (x);",
    )]);
    assert!(script::load(dir.path()).expect("loads")[&StoreKind::Postgres][0].no_transaction);
}

#[test]
fn unparseable_names() {
    for name in [
        "postgres/create.sql",
        "postgres/x_create.sql",
        "postgres/0_zero.sql",
        "postgres/1_Upper.sql",
        "postgres/1_a;drop table x.sql",
        "postgres/1_a.txt",
        "sqlite/1_a.json",
        "mongo/1_a.sql",
        "postgres/1_a.up.sql",
    ] {
        let text = refused(&[(name, b"SELECT 1;")]);
        assert!(text.contains("bad migration file name"), "{name}: {text}");
        let file = Path::new(name)
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(text.contains(&file), "{name}: {text}");
    }
}

#[test]
fn empty_and_comment_only_files() {
    let text = refused(&[("postgres/1_a.sql", b"  \n")]);
    assert!(text.contains("1_a.sql") && text.contains("empty"), "{text}");
    let text = refused(&[("sqlite/1_a.sql", b"-- nothing here\n")]);
    assert!(text.contains("no statements"), "{text}");
    let text = refused(&[("mongo/1_a.json", b"[]")]);
    assert!(text.contains("no commands"), "{text}");
}

#[test]
fn invalid_json_in_a_mongo_script() {
    let text = refused(&[("mongo/1_a.json", b"[\n  {\"create\": \"x\",}\n]")]);
    assert!(
        text.contains("1_a.json") && text.contains("invalid JSON at line 2"),
        "{text}"
    );
    let text = refused(&[("mongo/1_a.json", br#"{"create": "x"}"#)]);
    assert!(text.contains("JSON array of commands"), "{text}");
    let text = refused(&[("mongo/1_a.json", br#"[{"create": "x"}, 3]"#)]);
    assert!(text.contains("command 2"), "{text}");
}

#[test]
fn a_script_for_an_unknown_store() {
    let dir = folder(&[("mysql/1_a.sql", b"SELECT 1;")]);
    let e = script::load(dir.path()).expect_err("refused");
    assert!(matches!(e, MigrationError::UnknownStore { .. }));
    let text = e.to_string();
    assert!(
        text.contains("mysql") && text.contains("postgres, sqlite, mongo, scylla, redis"),
        "{text}"
    );
}

#[test]
fn a_duplicated_version() {
    let dir = folder(&[
        ("sqlite/3_a.sql", b"SELECT 1;"),
        ("sqlite/0003_b.sql", b"SELECT 2;"),
    ]);
    let e = script::load(dir.path()).expect_err("refused");
    assert!(
        matches!(e, MigrationError::DuplicateVersion { version: 3, .. }),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains("3_a.sql") && text.contains("0003_b.sql"),
        "{text}"
    );
}

#[test]
fn a_down_script_without_its_up_script() {
    let text = refused(&[
        ("postgres/1_a.sql", b"SELECT 1;"),
        ("postgres/1_b.down.sql", b"SELECT 1;"),
    ]);
    assert!(
        text.contains("1_b.down.sql") && text.contains("needs its up script"),
        "{text}"
    );
}

#[test]
fn broken_text() {
    let text = refused(&[("postgres/1_a.sql", b"SELECT 'unterminated;\n")]);
    assert!(
        text.contains("unterminated") && text.contains("line 1"),
        "{text}"
    );
    let text = refused(&[("postgres/1_a.sql", &[0xff, 0xfe, b'x'])]);
    assert!(text.contains("UTF-8"), "{text}");
    let big = vec![b'-'; usize::try_from(script::MAX_SCRIPT_BYTES).expect("fits") + 1];
    let text = refused(&[("postgres/1_a.sql", &big)]);
    assert!(text.contains("larger than"), "{text}");
}

#[test]
fn a_missing_folder() {
    let e = script::load(Path::new("/nonexistent/migrations")).expect_err("refused");
    assert!(e.to_string().contains("/nonexistent/migrations"), "{e}");
}

/// Scripts built into a binary get the same checks as files, and errors
/// name `<store>/<file>`.
#[test]
fn in_memory_scripts_are_checked_like_files() {
    let ok = script::from_texts(
        StoreKind::Sqlite,
        &[
            ("2_b.sql", "SELECT 2;"),
            ("1_a.down.sql", "SELECT 0;"),
            ("1_a.sql", "SELECT 1;"),
        ],
    )
    .expect("loads");
    assert_eq!(ok.iter().map(|m| m.version).collect::<Vec<_>>(), vec![1, 2]);
    assert!(ok[0].down.is_some() && ok[1].down.is_none());
    assert_eq!(ok[0].up.checksum, script::checksum("SELECT 1;"));

    let refused = |store: StoreKind, files: &[(&str, &str)]| -> String {
        script::from_texts(store, files)
            .expect_err("refused")
            .to_string()
    };
    let big = "-- x\n".repeat(1024 * 1024);
    for (store, files, expect) in [
        (
            StoreKind::Sqlite,
            vec![("one.sql", "SELECT 1;")],
            "sqlite/one.sql",
        ),
        (
            StoreKind::Sqlite,
            vec![("../1_x.sql", "SELECT 1;")],
            "version",
        ),
        (StoreKind::Sqlite, vec![("1_x.sql", "  \n")], "empty"),
        (
            StoreKind::Sqlite,
            vec![("1_x.sql", big.as_str())],
            "larger than",
        ),
        (
            StoreKind::Mongo,
            vec![("1_x.json", "[{\"create\": }]")],
            "invalid JSON",
        ),
        (
            StoreKind::Postgres,
            vec![("1_a.sql", "SELECT 1;"), ("1_b.sql", "SELECT 2;")],
            "1_b.sql",
        ),
        (
            StoreKind::Postgres,
            vec![("1_a.down.sql", "SELECT 1;")],
            "needs its up script",
        ),
        (StoreKind::Scylla, vec![("1_x.sql", "SELECT 1;")], ".cql"),
    ] {
        let e = refused(store, &files);
        assert!(e.contains(expect), "{files:?}: {e}");
    }
}
