//! No PHI in Redis key names: canary values in every PHI field of
//! patients, written through every Redis write path (insert, insert_many,
//! update by patch (quick and whole pass), replace, upsert, delete) and read
//! back by the PHI index (eq and in filters, a unique claim taken); then
//! every key of the namespace is scanned (names, and the field names of the
//! claim hashes), and `MONITOR` has watched the session: a canary may
//! appear only inside a stored JSON value, never as a key, a claim or any
//! other argument.

#![cfg(feature = "integration")]

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use dl_models::domain::{Patient, PatientStatus};
use dl_repositories::backends::redis::RedisBackend;
use dl_repositories::{Backend, ConflictKind, Error, Filter, Patch, Query, Repo, Repository};
use dl_tests::canary::canary;
use dl_tests::live::{RedisNamespaces, redis_url, test_pool, test_privacy};

fn patient(tag: &str) -> (Patient, Vec<String>) {
    let p = Patient {
        id: uuid::Uuid::new_v4(),
        mrn: canary(&format!("{tag}m")),
        given_name: canary(&format!("{tag}-given")),
        family_name: canary(&format!("{tag}-family")),
        date_of_birth: NaiveDate::from_ymd_opt(1961, 3, 4).expect("date"),
        phone: Some(canary(&format!("{tag}-phone"))),
        email: Some(canary(&format!("{tag}-email"))),
        status: PatientStatus::Active,
        created_at: chrono::Utc::now(),
        version: 1,
    };
    let c = vec![
        p.mrn.clone(),
        p.given_name.clone(),
        p.family_name.clone(),
        p.phone.clone().unwrap_or_default(),
        p.email.clone().unwrap_or_default(),
    ];
    (p, c)
}

/// The arguments of one `MONITOR` line (`ts [db addr] "a" "b" ...`),
/// unescaped.
fn monitor_args(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut arg = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => arg.push('\n'),
                    Some('r') => arg.push('\r'),
                    Some('t') => arg.push('\t'),
                    Some(other) => arg.push(other),
                    None => {}
                },
                other => arg.push(other),
            }
        }
        args.push(arg);
    }
    args
}

/// The `redis-cli monitor` process, stopped when dropped: a failing test
/// must not leave a MONITOR client behind (it slows every later command).
struct Monitor(std::process::Child, tempfile::NamedTempFile);

impl Monitor {
    /// Starts `redis-cli monitor` and waits (bounded) until it watches.
    async fn start() -> Monitor {
        let out = tempfile::NamedTempFile::new().expect("temp file");
        let monitor = Monitor(
            Command::new("redis-cli")
                .args(["-u", redis_url().expose(), "monitor"])
                .stdout(Stdio::from(out.reopen().expect("reopen")))
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-cli monitor (Debian's redis-tools)"),
            out,
        );
        let started = Instant::now();
        loop {
            if monitor.seen().contains("OK") {
                return monitor;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "redis-cli monitor did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What it printed so far.
    fn seen(&self) -> String {
        let mut text = String::new();
        let _ = self.1.reopen().expect("reopen").read_to_string(&mut text);
        text
    }

    /// Stops it and answers everything it printed.
    fn finish(&mut self) -> String {
        self.stop();
        self.seen()
    }

    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The keys a command run by a script names (the commands the backend's
/// scripts use; any other fails the test until it is taught here).
fn command_keys(args: &[String]) -> Vec<String> {
    let Some(cmd) = args.first() else {
        return Vec::new();
    };
    match cmd.to_ascii_uppercase().as_str() {
        "EXISTS" | "DEL" | "MGET" | "UNLINK" => args[1..].to_vec(),
        "GET" | "SET" | "ZADD" | "ZREM" | "HGET" | "HSET" | "HDEL" | "PEXPIRE" | "ZRANGE"
        | "ZRANGEBYLEX" | "ZSCORE" | "ZCARD" | "HLEN" | "TYPE" | "INCR" | "HINCRBY" | "XADD" => {
            args[1..2].to_vec()
        }
        "TIME" => Vec::new(),
        other => panic!("a script ran {other}: teach command_keys where its keys are"),
    }
}

/// Every command a script ran on the namespace (`[db lua]` lines of
/// `MONITOR`, which follow their `EVALSHA`/`EVAL` at once: a script runs
/// atomically) names only keys that the call passed in `KEYS`, as Redis
/// Cluster and ACL rules require. Answers how many such commands it checked.
fn assert_scripts_declare_their_keys(seen: &str, ns: &str) -> usize {
    let mut declared: Option<Vec<String>> = None;
    let mut checked = 0;
    for line in seen.lines() {
        let args = monitor_args(line);
        if line.contains(" lua]") {
            let keys = command_keys(&args);
            let Some(declared) = &declared else {
                continue;
            };
            if !keys.iter().chain(declared.iter()).any(|k| k.contains(ns)) {
                continue;
            }
            for k in &keys {
                assert!(
                    declared.contains(k),
                    "a script touched {k:.120} without it in KEYS ({:.60}; KEYS: {:.300})",
                    args.join(" "),
                    declared.join(" ")
                );
            }
            checked += 1;
        } else {
            declared = match args.first().map(|a| a.to_ascii_uppercase()) {
                Some(c) if c == "EVALSHA" || c == "EVAL" => {
                    let n: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
                    Some(args.iter().skip(3).take(n).cloned().collect())
                }
                _ => None,
            };
        }
    }
    checked
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The answer to a write that takes another patient's mrn.
fn assert_mrn_taken(e: &Error) {
    assert!(
        matches!(
            e,
            Error::Conflict {
                kind: ConflictKind::Unique { field: Some("mrn") },
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phi_never_reaches_redis_key_names() {
    let spaces = RedisNamespaces::new("phikeys").await;
    let ns = spaces.namespace();
    let pool = test_pool(1);
    let conn = dl_connections::redis::connect_lazy(&redis_url(), &pool).expect("redis");

    // MONITOR, in a process of its own, until the writes are done.
    let mut monitor = Monitor::start().await;

    // Captured: the change feed's commands run in the same scripts, on
    // keys declared with the rest.
    let capture =
        dl_repositories::feed::Capture::new(["patients"], test_privacy()).expect("capture");
    let backend: Arc<dyn Backend> = Arc::new(
        RedisBackend::new(conn.clone(), &ns, pool.request_timeout)
            .expect("backend")
            .with_privacy(test_privacy())
            .with_capture(Arc::new(capture)),
    );
    let repo = Repo::<Patient>::open(Arc::clone(&backend))
        .await
        .expect("open");
    let mut canaries = Vec::new();
    let mut make = |tag: &str| {
        let (p, c) = patient(tag);
        canaries.extend(c);
        p
    };
    let p1 = make("a");
    let p2 = make("b");
    let p3 = make("c");
    let p4 = make("d");
    let (renamed, _) = patient("e");
    let new_family = renamed.family_name.clone();
    let new_phone = renamed.phone.clone().unwrap_or_default();
    let new_mrn = renamed.mrn.clone();
    canaries.extend([new_family.clone(), new_phone.clone(), new_mrn.clone()]);

    repo.insert(&p1).await.expect("insert");
    repo.insert_many(&[p2.clone(), p3.clone()])
        .await
        .expect("insert_many");
    // Patch: an indexed PHI field moves (whole pass), then a plain one
    // (the quick path).
    let p1b = repo
        .update(
            &p1.id,
            &Patch::new().set("family_name", new_family.as_str()),
        )
        .await
        .expect("update")
        .expect("present");
    repo.update(&p1.id, &Patch::new().set("phone", new_phone.as_str()))
        .await
        .expect("update")
        .expect("present");
    let mut p2b = p2.clone();
    p2b.mrn = new_mrn.clone();
    repo.replace(&p2b).await.expect("replace");
    repo.upsert(&p4).await.expect("upsert (insert)");
    let mut p3b = p3.clone();
    p3b.given_name = p4.given_name.clone();
    repo.upsert(&p3b).await.expect("upsert (overwrite)");

    // Equality lookups on tokens work as on values.
    let page = repo
        .list(&Query::new().filter(Filter::eq("family_name", new_family.as_str())))
        .await
        .expect("list by a PHI index");
    assert_eq!(
        page.items.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![p1.id]
    );
    assert_eq!(p1b.family_name, new_family);
    let n = repo
        .count(&Filter::is_in(
            "mrn",
            [new_mrn.as_str(), p3.mrn.as_str(), p2.mrn.as_str()],
        ))
        .await
        .expect("count by a PHI unique index");
    assert_eq!(n, 2, "p2's old mrn was released by the replace");
    // The unique claim holds, under its token.
    let (mut dup, _) = patient("f");
    dup.mrn = p3.mrn.clone();
    let e = repo.insert(&dup).await.expect_err("a taken mrn");
    assert_mrn_taken(&e);
    // A unique conflict by patch and by insert_many: a claim owner's
    // record is checked (and declared first).
    let e = repo
        .update(&p1.id, &Patch::new().set("mrn", p3.mrn.as_str()))
        .await
        .expect_err("a taken mrn by patch");
    assert_mrn_taken(&e);
    let e = repo
        .insert_many(&[dup.clone()])
        .await
        .expect_err("a taken mrn by insert_many");
    assert_mrn_taken(&e);
    // An indexed PHI field moved by patch to a free value.
    let (free, _) = patient("g");
    canaries.push(free.mrn.clone());
    repo.update(&p1.id, &Patch::new().set("mrn", free.mrn.as_str()))
        .await
        .expect("update")
        .expect("present");
    assert!(repo.delete(&p2.id).await.expect("delete"));
    let left = repo
        .list(&Query::new().filter(Filter::eq("mrn", new_mrn.as_str())))
        .await
        .expect("list");
    assert!(left.items.is_empty(), "the deleted patient's claim is gone");

    // Every key name, and every field of every hash, under the namespace.
    let mut scan = conn.clone();
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{ns}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut scan)
            .await
            .expect("scan");
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert!(keys.len() > 5, "the writes made keys: {keys:?}");
    let mut names = keys.join("\n");
    for k in &keys {
        let kind: String = redis::cmd("TYPE")
            .arg(k)
            .query_async(&mut scan)
            .await
            .expect("type");
        if kind == "hash" {
            let fields: Vec<String> = redis::cmd("HKEYS")
                .arg(k)
                .query_async(&mut scan)
                .await
                .expect("hkeys");
            names.push('\n');
            names.push_str(&fields.join("\n"));
        }
    }
    let refs: Vec<&str> = canaries.iter().map(String::as_str).collect();
    dl_tests::canary::assert_no_canary("redis key names and hash fields", &names, &refs);

    // What MONITOR saw: a canary only inside a JSON value.
    let seen = monitor.finish();
    let script_commands = assert_scripts_declare_their_keys(&seen, &ns);
    assert!(
        script_commands > 20,
        "the scripts' commands were seen ({script_commands})"
    );
    let mut lines = 0;
    let mut values_with_phi = 0;
    for line in seen.lines().filter(|l| l.contains(&ns)) {
        lines += 1;
        for arg in monitor_args(line) {
            if !refs.iter().any(|c| arg.contains(c)) {
                continue;
            }
            let json = arg.starts_with('{') || arg.starts_with('[') || arg.starts_with('"');
            assert!(
                json,
                "MONITOR shows a canary outside a stored value (a key name, a claim or an argument): {arg:.200}"
            );
            values_with_phi += 1;
        }
    }
    assert!(lines > 10, "MONITOR saw the session ({lines} lines)");
    spaces.drop_all().await;
    eprintln!(
        "redis-phi: {} keys scanned, {lines} MONITOR lines read, {values_with_phi} stored values hold PHI (as values), no canary in any key name, claim or other argument; {script_commands} commands run by scripts, each on keys passed in KEYS",
        keys.len()
    );
}

/// An entity whose key is PHI.
#[derive(Clone, PartialEq, serde::Serialize, serde::Deserialize, dl_models::Entity)]
#[entity(name = "by_mrn")]
struct ByMrn {
    #[key]
    #[phi(hash)]
    #[field(max_len = 32)]
    mrn: String,
    #[field(max_len = 32)]
    note: String,
}

/// Without a key, an entity with an indexed PHI field is refused (tokens
/// made with a random key would be lost at the next start); a PHI key is
/// refused whatever the settings (a key is a key name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phi_indexes_need_a_key_and_phi_keys_are_refused() {
    let spaces = RedisNamespaces::new("phikeys").await;
    let pool = test_pool(1);
    let conn = dl_connections::redis::connect_lazy(&redis_url(), &pool).expect("redis");
    let keyless: Arc<dyn Backend> = Arc::new(
        RedisBackend::new(conn.clone(), &spaces.namespace(), pool.request_timeout)
            .expect("backend"),
    );
    let e = Repo::<Patient>::open(Arc::clone(&keyless))
        .await
        .expect_err("no key for the PHI indexes");
    assert!(
        matches!(&e, Error::Unsupported { .. }) && e.to_string().contains("privacy.key"),
        "{e}"
    );
    let keyed: Arc<dyn Backend> = Arc::new(
        RedisBackend::new(conn, &spaces.namespace(), pool.request_timeout)
            .expect("backend")
            .with_privacy(test_privacy()),
    );
    for backend in [keyless, keyed] {
        let e = Repo::<ByMrn>::open(backend).await.expect_err("a PHI key");
        assert!(
            matches!(&e, Error::Unsupported { .. }) && e.to_string().contains("surrogate key"),
            "{e}"
        );
    }
    spaces.drop_all().await;
}

/// Expired records leave their index entries, key-order places and unique
/// claims behind; the sweep removes them (bounded calls, resumed by
/// cursor), and leaves the entries of a live record alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_records_are_swept_from_indexes_and_claims() {
    let spaces = RedisNamespaces::new("sweep").await;
    let ns = spaces.namespace();
    let pool = test_pool(1);
    let conn = dl_connections::redis::connect_lazy(&redis_url(), &pool).expect("redis");
    let backend = Arc::new(
        RedisBackend::new(conn.clone(), &ns, pool.request_timeout)
            .expect("backend")
            .with_privacy(test_privacy())
            .with_ttl("patients", Duration::from_millis(300)),
    );
    let repo = Repo::<Patient>::open(Arc::clone(&backend) as Arc<dyn Backend>)
        .await
        .expect("open");
    let mut expired = Vec::new();
    for tag in ["x", "y", "z"] {
        let (p, _) = patient(tag);
        repo.insert(&p).await.expect("insert");
        expired.push(p);
    }
    // Wait (bounded, generously) until Redis has expired all three.
    let started = Instant::now();
    loop {
        let mut left = 0;
        for p in &expired {
            if repo.exists(&p.id).await.expect("exists") {
                left += 1;
            }
        }
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{left} records did not expire"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let entries = |conn: redis::aio::ConnectionManager| {
        let ns = ns.clone();
        async move {
            let mut conn = conn;
            let keys: Vec<String> = {
                let mut out = Vec::new();
                let mut at: u64 = 0;
                loop {
                    let (n, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(at)
                        .arg("MATCH")
                        .arg(format!("{ns}:patients:*"))
                        .query_async(&mut conn)
                        .await
                        .expect("scan");
                    out.extend(batch);
                    if n == 0 {
                        break out;
                    }
                    at = n;
                }
            };
            let mut n = 0_usize;
            for k in keys {
                let kind: String = redis::cmd("TYPE")
                    .arg(&k)
                    .query_async(&mut conn)
                    .await
                    .expect("type");
                let len: usize = match kind.as_str() {
                    "zset" => redis::cmd("ZCARD").arg(&k).query_async(&mut conn).await,
                    "hash" => redis::cmd("HLEN").arg(&k).query_async(&mut conn).await,
                    _ => Ok(0),
                }
                .expect("length");
                n += len;
            }
            n
        }
    };
    // Per patient: 3 index entries (mrn, family_name, status), its place
    // in the key order, one claim (mrn).
    assert_eq!(entries(conn.clone()).await, 15, "left behind by expiry");
    let (live, _) = patient("w");
    let live_repo = Repo::<Patient>::open(Arc::new(
        RedisBackend::new(conn.clone(), &ns, pool.request_timeout)
            .expect("backend")
            .with_privacy(test_privacy()),
    ) as Arc<dyn Backend>)
    .await
    .expect("open");
    live_repo.insert(&live).await.expect("a live record");

    let mut monitor = Monitor::start().await;
    let mut cursor = 0;
    let mut removed = 0;
    let mut calls = 0;
    loop {
        let sweep = backend
            .sweep_expired(<Patient as dl_models::Entity>::schema(), cursor, 2)
            .await
            .expect("sweep");
        removed += sweep.removed;
        calls += 1;
        cursor = sweep.cursor;
        assert!(calls < 1000, "the sweep did not finish a pass");
        if cursor == 0 {
            break;
        }
    }
    let script_commands = assert_scripts_declare_their_keys(&monitor.finish(), &ns);
    assert!(
        script_commands >= 15,
        "the sweep scripts' commands were seen ({script_commands})"
    );
    assert_eq!(removed, 15, "every entry of the expired records");
    assert_eq!(
        entries(conn.clone()).await,
        5,
        "the live record's entries stay"
    );
    let found = live_repo
        .list(&Query::new().filter(Filter::eq("mrn", live.mrn.as_str())))
        .await
        .expect("list");
    assert_eq!(found.items.len(), 1);
    spaces.drop_all().await;
    eprintln!(
        "redis-sweep: 3 expired records, {removed} entries removed in {calls} bounded calls; the live record kept its 5"
    );
}

/// A keyspace whose PHI index entries were made before keyed tokens (named
/// by values) or under another key is refused (`SchemaNotReady`, never a
/// silent empty answer), and `rekey_phi_entries` converts it in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspaces_from_before_tokens_are_refused_then_rekeyed() {
    let spaces = RedisNamespaces::new("rekey").await;
    let ns = spaces.namespace();
    let pool = test_pool(1);
    let conn = dl_connections::redis::connect_lazy(&redis_url(), &pool).expect("redis");
    let backend = |id: &str, byte: u8| {
        Arc::new(
            RedisBackend::new(conn.clone(), &ns, pool.request_timeout)
                .expect("backend")
                .with_privacy(Arc::new(dl_privacy::Privacy::new(
                    dl_privacy::SecretKey::from_bytes(id, [byte; 32]).expect("key"),
                ))),
        )
    };
    let old = backend("old", 1);
    let repo = Repo::<Patient>::open(Arc::clone(&old) as Arc<dyn Backend>)
        .await
        .expect("open");
    let mut patients = Vec::new();
    for tag in ["r1", "r2", "r3"] {
        let (p, _) = patient(tag);
        repo.insert(&p).await.expect("insert");
        patients.push(p);
    }
    let new = backend("new", 2);
    let e = Repo::<Patient>::open(Arc::clone(&new) as Arc<dyn Backend>)
        .await
        .expect_err("made under another key");
    assert!(
        matches!(&e, Error::SchemaNotReady { .. }) && e.to_string().contains("`old`"),
        "{e}"
    );
    let schema = <Patient as dl_models::Entity>::schema();
    let mut monitor = Monitor::start().await;
    assert_eq!(new.rekey_phi_entries(schema).await.expect("rekey"), 3);
    let script_commands = assert_scripts_declare_their_keys(&monitor.finish(), &ns);
    assert!(
        script_commands > 3,
        "the re-keying scripts' commands were seen ({script_commands})"
    );
    let repo = Repo::<Patient>::open(Arc::clone(&new) as Arc<dyn Backend>)
        .await
        .expect("opens after re-keying");
    for p in &patients {
        let found = repo
            .list(&Query::new().filter(Filter::eq("family_name", p.family_name.as_str())))
            .await
            .expect("list");
        assert_eq!(found.items.len(), 1, "found by its new token");
    }
    // No entry under the old key is left.
    let mut scan = conn.clone();
    let mut names = Vec::new();
    let mut at: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(at)
            .arg("MATCH")
            .arg(format!("{ns}:patients:*"))
            .query_async(&mut scan)
            .await
            .expect("scan");
        names.extend(batch);
        if next == 0 {
            break;
        }
        at = next;
    }
    assert!(!names.iter().any(|n| n.contains(":old.")), "{names:?}");
    let claims: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("{ns}:patients:u:mrn"))
        .query_async(&mut scan)
        .await
        .expect("claims");
    assert_eq!(claims.len(), 3);
    assert!(claims.iter().all(|c| c.starts_with("new.")), "{claims:?}");
    // A keyspace from before tokens (no mark, records present) is refused
    // the same way, and converted the same way.
    let () = redis::cmd("DEL")
        .arg(format!("{ns}:patients:phi"))
        .query_async(&mut scan)
        .await
        .map(|_: i64| ())
        .expect("del");
    let e = Repo::<Patient>::open(Arc::clone(&new) as Arc<dyn Backend>)
        .await
        .expect_err("unmarked");
    assert!(e.to_string().contains("before keyed tokens"), "{e}");
    new.rekey_phi_entries(schema).await.expect("rekey again");
    Repo::<Patient>::open(new as Arc<dyn Backend>)
        .await
        .expect("opens");
    spaces.drop_all().await;
}
