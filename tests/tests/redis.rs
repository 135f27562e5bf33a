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
    report.assert_exactly(&dl_tests::harness::joined(
        dl_tests::harness::INDEXED_EQUALITY_UNSUPPORTED,
        dl_tests::harness::TRANSACTION_CASES,
    ));
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

/// One command on one key, on a clone of the connection (test probes).
async fn ask<T: redis::FromRedisValue>(
    conn: &redis::aio::ConnectionManager,
    command: &str,
    key: &str,
) -> T {
    redis::cmd(command)
        .arg(key)
        .query_async(&mut conn.clone())
        .await
        .expect(command)
}

/// The layout changes of issue 6 come with migrations: index entries
/// written as plain sets (migration 1) and records written as hashes
/// (migration 2), as before, are converted with their members, records,
/// index entries and TTLs, and reads and filters work again; the down
/// scripts turn them back. Before a keyspace is converted, the backend
/// answers `SchemaNotReady` naming the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspaces_from_before_are_migrated() {
    use data_layer::migrate::{self, Action, Options};
    use data_layer::models::domain::Appointment;
    use data_layer::{DataLayer, Filter, Query, Store};

    let nss = RedisNamespaces::new("ixmig").await;
    let ns = nss.namespace();
    let settings = dl_connections::Settings::load(
        &dl_connections::Sources::isolated()
            .var("REDIS_URL", dl_tests::live::redis_url().expose())
            .var("DL_REDIS__KEY_PREFIX", &ns),
    )
    .expect("settings");
    let scripts = migrate::domain_scripts();
    let stores = migrate::stores("redis").expect("redis");
    let migrate_to = |action, to| {
        let o = Options {
            to,
            ..Options::default()
        };
        let (settings, scripts, stores) = (&settings, &scripts, &stores);
        async move {
            let runs = migrate::run(settings, scripts, stores, action, &o, &mut |_| {}).await;
            assert!(runs.iter().all(|r| r.error.is_none()), "{runs:?}");
        }
    };
    migrate_to(Action::Up, None).await;

    let dl = DataLayer::from_settings(settings.clone())
        .await
        .expect("data layer");
    let repo = dl
        .repository_in::<Appointment>(Store::Redis)
        .await
        .expect("repository");
    let mut scheduled = Vec::new();
    for i in 0..6 {
        let a = Appointment {
            id: uuid::Uuid::new_v4(),
            patient_id: uuid::Uuid::new_v4(),
            starts_at: chrono::DateTime::from_timestamp_millis(1_800_000_000_000 + i * 60_000)
                .expect("time"),
            duration_minutes: 30,
            kind: "checkup".into(),
            status: if i % 2 == 0 { "scheduled" } else { "done" }.into(),
            notes: None,
            version: 1,
        };
        repo.insert(&a).await.expect("insert");
        if i % 2 == 0 {
            scheduled.push(a.id);
        }
    }
    scheduled.sort();
    let index = format!("{ns}:appointments:i:status:scheduled");
    let mut conn = dl_connections::redis::connect_lazy(
        &dl_tests::live::redis_url(),
        &dl_tests::live::test_pool(1),
    )
    .expect("redis");
    assert_eq!(ask::<String>(&conn, "TYPE", &index).await, "zset");
    let member = scheduled[0].hyphenated().to_string();
    let record_key = format!("{ns}:appointments:r:{member}");
    assert_eq!(ask::<String>(&conn, "TYPE", &record_key).await, "string");
    // Two lines of what the record owns, then the record.
    let stored = ask::<String>(&conn, "GET", &record_key).await;
    let lines: Vec<&str> = stored.splitn(3, '\n').collect();
    assert!(
        lines[0].contains(&format!("{ns}:appointments:i:status:scheduled")),
        "{}",
        lines[0]
    );
    assert_eq!(lines[1], "[]");
    assert!(lines[2].starts_with('{'));
    // An expiring record keeps its TTL through both conversions.
    let () = redis::cmd("PEXPIRE")
        .arg(&record_key)
        .arg(600_000)
        .query_async(&mut conn)
        .await
        .map(|_: i64| ())
        .expect("pexpire");

    // Back to records as hashes (migration 1's layout).
    migrate_to(Action::Down, Some(1)).await;
    assert_eq!(ask::<String>(&conn, "TYPE", &record_key).await, "hash");
    assert!(ask::<i64>(&conn, "PTTL", &record_key).await > 500_000);
    match repo.get(&scheduled[0]).await {
        Err(data_layer::Error::SchemaNotReady { reason, .. }) => {
            assert!(reason.contains("migrate up --store redis"), "{reason}");
        }
        other => panic!(
            "expected SchemaNotReady, got {:?}",
            other.map(|a| a.map(|a| a.id))
        ),
    }

    // Back to the layout written before: plain sets.
    migrate_to(Action::Down, Some(0)).await;
    assert_eq!(ask::<String>(&conn, "TYPE", &index).await, "set");
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&index)
        .query_async(&mut conn)
        .await
        .expect("smembers");
    assert_eq!(members.len(), 3);
    // The backend of this version names the cause and the command.
    let query = Query::new()
        .filter(Filter::eq("status", "scheduled"))
        .limit(10);
    match repo.list(&query).await {
        Err(data_layer::Error::SchemaNotReady { reason, .. }) => {
            assert!(reason.contains("migrate up --store redis"), "{reason}");
        }
        other => panic!("expected SchemaNotReady, got {other:?}"),
    }

    // Up again: converted, members kept, the filter reads them in key order.
    migrate_to(Action::Up, None).await;
    assert_eq!(ask::<String>(&conn, "TYPE", &index).await, "zset");
    let page = repo
        .list(
            &Query::new()
                .filter(Filter::eq("status", "scheduled"))
                .limit(10),
        )
        .await
        .expect("list");
    let ids: Vec<uuid::Uuid> = page.items.iter().map(|a| a.id).collect();
    assert_eq!(ids, scheduled);
    assert_eq!(ask::<String>(&conn, "TYPE", &record_key).await, "string");
    assert_eq!(ask::<String>(&conn, "GET", &record_key).await, stored);
    assert!(ask::<i64>(&conn, "PTTL", &record_key).await > 500_000);
    let got = repo
        .get(&scheduled[0])
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got.id, scheduled[0]);
    // Writes after the round trip move the index entries the stored value
    // names: the record leaves the `scheduled` index.
    repo.update(
        &scheduled[0],
        &data_layer::Patch::new().set("status", "done"),
    )
    .await
    .expect("update")
    .expect("present");
    let page = repo
        .list(
            &Query::new()
                .filter(Filter::eq("status", "scheduled"))
                .limit(10),
        )
        .await
        .expect("list");
    assert_eq!(page.items.len(), 2);
    assert!(repo.delete(&scheduled[1]).await.expect("delete"));
    let left: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{ns}:appointments:i:status:scheduled"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("zrange");
    assert_eq!(left, vec![scheduled[2].hyphenated().to_string()]);
    nss.drop_all().await;
    say(
        "redis[migrations]: index sets and record hashes written before: converted down and up again, 3 of 3 members, records and TTLs kept, list reads them in key order",
    );
}

/// An update by patch is one script that splices the stored JSON text
/// (issue 6): it must read any valid stored text exactly. Nested JSON that
/// reuses top-level names, quotes and braces inside strings, whitespace, a
/// field an older record lacks, an unknown field, versions past 2^53 (no
/// number goes through Lua's doubles); text or a version the script cannot
/// handle as text takes the general path with the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_script_reads_stored_text_exactly() {
    use std::sync::Arc;

    use data_layer::models::{Entity as _, Record, Value};
    use dl_repositories::backends::redis::RedisBackend;
    use dl_repositories::{
        Backend, ConflictKind, Error, Filter, Patch, Query, Repo, Repository as _,
    };
    use dl_tests::entities::Specimen;
    use serde_json::json;

    let nss = RedisNamespaces::new("patch").await;
    let ns = nss.namespace();
    let pool = dl_tests::live::test_pool(1);
    let conn =
        dl_connections::redis::connect_lazy(&dl_tests::live::redis_url(), &pool).expect("redis");
    let backend: Arc<dyn Backend> = Arc::new(
        RedisBackend::new(conn.clone(), &ns, pool.request_timeout)
            .expect("backend")
            .with_privacy(dl_tests::live::test_privacy()),
    );
    let schema = Specimen::schema();
    let repo = Repo::<Specimen>::open(Arc::clone(&backend))
        .await
        .expect("open");

    // Through the repository: strings that look like JSON structure, a
    // version past 2^53, an index entry that moves.
    let mut s = Specimen::new("s1", 1);
    s.tags = vec![r#""version":1,}"#.into(), "{[".into(), r"a\\b\".into()];
    s.code = Some("C-1".into());
    s.version = (1 << 53) + 1;
    repo.insert(&s).await.expect("insert");
    let after = repo
        .update(
            &"s1".to_owned(),
            &Patch::new()
                .set("label", "new")
                .set("code", "C-2")
                .expect_version((1 << 53) + 1),
        )
        .await
        .expect("update")
        .expect("present");
    assert_eq!(after.version, (1 << 53) + 2);
    assert_eq!(after.tags, s.tags);
    assert_eq!(after.label, "new");
    assert_eq!(repo.get(&"s1".to_owned()).await.expect("get"), Some(after));
    let by_code = |code: &'static str| {
        let repo = &repo;
        async move {
            repo.list(&Query::new().filter(Filter::eq("code", code)).limit(10))
                .await
                .expect("list")
                .items
                .len()
        }
    };
    assert_eq!((by_code("C-1").await, by_code("C-2").await), (0, 1));

    // Stored text as another writer may have left it.
    let record_key = |id: &str| format!("{ns}:specimens:r:{id}");
    let store = |id: &str, text: &str| {
        let key = record_key(id);
        let text = text.to_owned();
        let mut conn = conn.clone();
        async move {
            // (A record that owns no index entries or claims.)
            let () = redis::cmd("SET")
                .arg(&key)
                .arg(format!("[]\n[]\n{text}"))
                .query_async(&mut conn)
                .await
                .expect("set");
        }
    };
    let stored = |id: &str| {
        let key = record_key(id);
        let mut conn = conn.clone();
        async move {
            let v: String = redis::cmd("GET")
                .arg(key)
                .query_async(&mut conn)
                .await
                .expect("get");
            let (_, d) = v.split_once("\n[]\n").expect("the record line");
            serde_json::from_str::<serde_json::Value>(d).expect("stored JSON")
        }
    };
    let patch = |p: Patch| p.check(schema).expect("valid patch");
    let key = |id: &str| Value::Text(id.to_owned());

    store(
        "s2",
        r#" { "id" : "s2", "label":"a \"quoted\" } label" , "tags":{"version":5,"label":["x","}",{"y":"\\"}]},"rank": 3,"extra":[1,{"a":null}],"version":18446744073709 } "#,
    )
    .await;
    let got: Record = backend
        .update(
            schema,
            &key("s2"),
            &patch(
                Patch::new()
                    .set("label", "new")
                    .expect_version(18_446_744_073_709),
            ),
        )
        .await
        .expect("update")
        .expect("present");
    let field = |name: &str| {
        schema
            .fields
            .iter()
            .position(|f| f.name == name)
            .expect("field")
    };
    assert_eq!(got.get(field("version")), &Value::Int(18_446_744_073_710));
    assert_eq!(got.get(field("label")), &Value::Text("new".into()));
    assert_eq!(got.get(field("code")), &Value::Null);
    assert_eq!(
        stored("s2").await,
        json!({"id": "s2", "label": "new", "tags": {"version": 5, "label": ["x", "}", {"y": "\\"}]},
               "rank": 3, "extra": [1, {"a": null}], "version": 18_446_744_073_710_i64})
    );
    // A field the older record lacks is added.
    backend
        .update(schema, &key("s2"), &patch(Patch::new().set("code", "C-9")))
        .await
        .expect("update");
    assert_eq!(stored("s2").await["code"], json!("C-9"));
    // (Through the index: this record does not read as a `Specimen`.)
    let indexed: Option<f64> = redis::cmd("ZSCORE")
        .arg(format!("{ns}:specimens:i:code:C-9"))
        .arg("s2")
        .query_async(&mut conn.clone())
        .await
        .expect("zscore");
    assert_eq!(indexed, Some(0.0));

    // Versions the script bumps as decimal text: 19 digits; the largest
    // stays (saturating, as in every store); the wrong expected version is
    // a conflict naming the stored one.
    store("s3", r#"{"id":"s3","version":1999999999999999999}"#).await;
    backend
        .update(schema, &key("s3"), &patch(Patch::new().set("rank", 2)))
        .await
        .expect("update");
    // (Fields the stored text lacks stay absent, but for the patched one:
    // the script wrote this, not the general path, which writes them all.)
    assert_eq!(
        stored("s3").await,
        json!({"id": "s3", "version": 2_000_000_000_000_000_000_i64, "rank": 2})
    );
    store("s9", r#"{"id":"s9","version":9999999999999999}"#).await;
    backend
        .update(schema, &key("s9"), &patch(Patch::new().set("rank", 2)))
        .await
        .expect("update");
    assert_eq!(
        stored("s9").await,
        json!({"id": "s9", "version": 10_000_000_000_000_000_i64, "rank": 2})
    );
    store("s10", " { } ").await;
    backend
        .update(schema, &key("s10"), &patch(Patch::new().set("rank", 2)))
        .await
        .expect("update");
    assert_eq!(stored("s10").await, json!({"rank": 2}));
    store("s4", r#"{"id":"s4","version":9223372036854775807}"#).await;
    backend
        .update(schema, &key("s4"), &patch(Patch::new().set("rank", 2)))
        .await
        .expect("update");
    assert_eq!(
        stored("s4").await,
        json!({"id": "s4", "version": i64::MAX, "rank": 2})
    );
    match backend
        .update(
            schema,
            &key("s4"),
            &patch(Patch::new().set("rank", 3).expect_version(5)),
        )
        .await
    {
        Err(Error::Conflict {
            kind: ConflictKind::VersionMismatch { expected, actual },
            ..
        }) => assert_eq!((expected, actual), (5, i64::MAX)),
        other => panic!("expected a version conflict, got {other:?}"),
    }
    assert_eq!(stored("s4").await["rank"], json!(2), "nothing written");

    // Compact text with no nesting, as the backend writes it: the script
    // finds the patched fields by name instead of walking every field.
    // Strings that hold what a key looks like (escaped), a string ending
    // in a backslash; then texts where finding by name is not exact (a
    // name twice: the last one is the one read; a space; a bracket in a
    // string) and the whole pass decides. The same answers either way.
    for (id, text, want) in [
        (
            "f1",
            r#"{"id":"f1","label":"x\",\"rank\":7,\"version\":3","rank":1,"version":4}"#,
            r#"{"id":"f1","label":"x\",\"rank\":7,\"version\":3","rank":2,"version":5}"#,
        ),
        (
            "f2",
            r#"{"id":"f2","label":"ends \\","rank":-1,"version":4}"#,
            r#"{"id":"f2","label":"ends \\","rank":2,"version":5}"#,
        ),
        (
            "f3",
            r#"{"id":"f3","rank":1,"version":4,"rank":9}"#,
            r#"{"id":"f3","rank":1,"version":5,"rank":2}"#,
        ),
        (
            "f4",
            r#"{"id":"f4","rank": 1,"version":4}"#,
            r#"{"id":"f4","rank": 2,"version":5}"#,
        ),
        (
            "f5",
            r#"{"id":"f5","label":"[{","rank":1,"version":4}"#,
            r#"{"id":"f5","label":"[{","rank":2,"version":5}"#,
        ),
    ] {
        store(id, text).await;
        let got = backend
            .update(
                schema,
                &key(id),
                &patch(Patch::new().set("rank", 2).expect_version(4)),
            )
            .await
            .expect("update")
            .expect("present");
        assert_eq!(got.get(field("rank")), &Value::Int(2), "{id}");
        assert_eq!(got.get(field("version")), &Value::Int(5), "{id}");
        let v: String = redis::cmd("GET")
            .arg(record_key(id))
            .query_async(&mut conn.clone())
            .await
            .expect("get");
        // (`rank` is indexed: its entry moved into the first line.)
        let lines: Vec<&str> = v.splitn(3, '\n').collect();
        assert_eq!(lines[0], format!(r#"["{ns}:specimens:i:rank:2"]"#), "{id}");
        assert_eq!(lines[2], want, "{id}: only the patched spans change");
    }

    // A patch that moves no index entry, on flat text: the quick path of
    // the script (a few finds and one splice). The same answers as the
    // whole pass: escapes elsewhere, a value with an escape, a version of
    // 15 digits (and of 16, which takes the pass), a version conflict.
    for (id, text, set, expect, want) in [
        (
            "q1",
            r#"{"id":"q1","label":"x\",\"score\":7,\"version\":3","score":1.5,"version":4}"#,
            ("score", Value::Float(2.5)),
            Some(4),
            Ok(r#"{"id":"q1","label":"x\",\"score\":7,\"version\":3","score":2.5,"version":5}"#),
        ),
        (
            "q2",
            r#"{"id":"q2","body":"a \"b\"","version":999999999999999}"#,
            ("body", Value::Text("c".into())),
            None,
            Ok(r#"{"id":"q2","body":"c","version":1000000000000000}"#),
        ),
        (
            "q3",
            r#"{"id":"q3","body":null,"version":9999999999999999}"#,
            ("body", Value::Text(r#"c"d"#.into())),
            Some(9_999_999_999_999_999),
            Ok(r#"{"id":"q3","body":"c\"d","version":10000000000000000}"#),
        ),
        (
            "q4",
            r#"{"id":"q4","score":1,"version":7}"#,
            ("score", Value::Float(3.0)),
            Some(6),
            Err(7),
        ),
    ] {
        store(id, text).await;
        let mut p = Patch::new().set(set.0, set.1);
        if let Some(v) = expect {
            p = p.expect_version(v);
        }
        let got = backend.update(schema, &key(id), &patch(p)).await;
        let v: String = redis::cmd("GET")
            .arg(record_key(id))
            .query_async(&mut conn.clone())
            .await
            .expect("get");
        match (got, want) {
            (Ok(Some(r)), Ok(want)) => {
                assert_eq!(v, format!("[]\n[]\n{want}"), "{id}");
                let version =
                    serde_json::from_str::<serde_json::Value>(want).expect("json")["version"]
                        .as_i64();
                assert_eq!(
                    Some(r.get(field("version"))),
                    version.map(Value::Int).as_ref()
                );
            }
            (
                Err(Error::Conflict {
                    kind: ConflictKind::VersionMismatch { actual, .. },
                    ..
                }),
                Err(stored),
            ) => {
                assert_eq!(actual, stored, "{id}");
                assert_eq!(v, format!("[]\n[]\n{text}"), "{id}: nothing written");
            }
            (other, _) => panic!("{id}: {:?}", other.map(|r| r.is_some())),
        }
    }

    // Through the repository, reads and updates hand the stored JSON
    // straight to serde; a record serde cannot read goes through the
    // record path, whose error names the field and never the value.
    store(
        "r1",
        r#"{"id":"r1","label":"a","code":null,"rank":"fake-secret-value","score":null,"active":true,"born":null,"seen_at":null,"ref_id":null,"tags":[],"body":null,"owner":null,"version":1}"#,
    )
    .await;
    for result in [
        repo.get(&"r1".to_owned()).await.map(|_| ()),
        repo.update(&"r1".to_owned(), &Patch::new().set("label", "b"))
            .await
            .map(|_| ()),
    ] {
        match result {
            Err(Error::Backend { message, .. }) => {
                assert!(message.contains("`rank`"), "{message}");
                assert!(!message.contains("fake-secret"), "{message}");
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    // The general path: a negative version past 2^53, then text that is
    // not a record (an error naming no value; nothing written).
    store("s5", r#"{"id":"s5","version":-12345678901234567}"#).await;
    backend
        .update(schema, &key("s5"), &patch(Patch::new().set("rank", 2)))
        .await
        .expect("update");
    assert_eq!(
        stored("s5").await,
        json!({"id": "s5", "label": null, "code": null, "rank": 2, "score": null,
               "active": null, "born": null, "seen_at": null, "ref_id": null,
               "tags": null, "body": null, "owner": null,
               "version": -12_345_678_901_234_566_i64})
    );
    for (id, text) in [
        ("s6", r#"{"id":"s6","rank":"#),
        ("s7", r#"{"id":"s7","version":99999999999999999999}"#),
        ("s8", r#"["id","s8"]"#),
    ] {
        store(id, text).await;
        match backend
            .update(schema, &key(id), &patch(Patch::new().set("rank", 2)))
            .await
        {
            Err(Error::Backend { message, .. }) => {
                assert!(message.contains("stored"), "{message}");
            }
            other => panic!("{id}: expected an error, got {other:?}"),
        }
        let v: String = redis::cmd("GET")
            .arg(record_key(id))
            .query_async(&mut conn.clone())
            .await
            .expect("get");
        assert_eq!(v, format!("[]\n[]\n{text}"), "{id}: nothing written");
    }
    nss.drop_all().await;
    say(
        "redis[patch]: the one-script update read 16 stored texts exactly (nested names, escapes, whitespace, repeated, missing and unknown fields, 19-digit versions); 4 others took the general path",
    );
}

/// `RedisBackend::with_ttl`: an entity expires its TTL after its last
/// write. Insert sets it, an update by patch (the one-script path) sets it
/// again, and an expired entity reads as absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_expire_their_ttl_after_the_last_write() {
    use std::sync::Arc;
    use std::time::Duration;

    use dl_repositories::backends::redis::RedisBackend;
    use dl_repositories::{Backend, Patch, Repo, Repository as _};
    use dl_tests::entities::Note;

    let nss = RedisNamespaces::new("ttl").await;
    let ns = nss.namespace();
    let pool = dl_tests::live::test_pool(1);
    let conn =
        dl_connections::redis::connect_lazy(&dl_tests::live::redis_url(), &pool).expect("redis");
    let ttl = Duration::from_millis(800);
    let backend: Arc<dyn Backend> = Arc::new(
        RedisBackend::new(conn.clone(), &ns, pool.request_timeout)
            .expect("backend")
            .with_privacy(dl_tests::live::test_privacy())
            .with_ttl("notes", ttl),
    );
    let notes = Repo::<Note>::open(backend).await.expect("open");
    let pttl = || {
        let mut conn = conn.clone();
        let key = format!("{ns}:notes:r:{:016x}", 1_u64 ^ 0x8000_0000_0000_0000);
        async move {
            let ms: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .expect("pttl");
            ms
        }
    };
    notes
        .insert(&Note {
            id: 1,
            body: "fake".into(),
        })
        .await
        .expect("insert");
    let after_insert = pttl().await;
    assert!(after_insert > 0 && after_insert <= 800, "{after_insert}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    notes
        .update(&1, &Patch::new().set("body", "fake 2"))
        .await
        .expect("update")
        .expect("present");
    let after_update = pttl().await;
    assert!(
        after_update > 600,
        "the update set the TTL again: {after_update}"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(notes.get(&1).await.expect("get"), None);
    nss.drop_all().await;
    say(&format!(
        "redis[ttl]: {after_insert} ms left after insert, {after_update} ms after an update 400 ms later, absent after expiry"
    ));
}
