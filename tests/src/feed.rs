//! Change-feed scenarios, run on every store that keeps a feed: every
//! acknowledged write of a captured entity is exactly one event, in commit
//! order, with its record after the write; failed, rolled-back and
//! uncaptured writes are none; consumers read from durable checkpoints.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dl_repositories::feed::{ChangeEvent, ChangeFeed, ChangeOp, EventKey};
use dl_repositories::{Backend, Error, Patch, Repo, Repository};

use crate::entities::{Note, Specimen};

/// Every event of the feed, in order (at most 10,000).
///
/// # Panics
/// When the feed cannot be read.
pub async fn all_events(feed: &dyn ChangeFeed) -> Vec<ChangeEvent> {
    let mut out = Vec::new();
    let mut after = 0;
    for _ in 0..100 {
        let batch = feed
            .events_after(after, None, 1000)
            .await
            .expect("read the feed");
        let Some(last) = batch.last() else { break };
        after = last.position;
        out.extend(batch);
    }
    out
}

/// What a scenario expects of one event.
type Expect = (ChangeOp, &'static str, u64);

fn key_of(e: &ChangeEvent) -> String {
    match e.key() {
        EventKey::Plain(serde_json::Value::String(s)) => s,
        EventKey::Plain(other) => other.to_string(),
        EventKey::Token(t) => t,
    }
}

/// Every write operation, once each, on `Specimen` (captured) and `Note`
/// (not), with failing writes and a rolled-back transaction between them:
/// the feed holds exactly the events of the acknowledged writes, in order,
/// each with the record as written.
///
/// # Panics
/// On any difference.
pub async fn every_write_is_one_event(backend: Arc<dyn Backend>) {
    let repo = Repo::<Specimen>::open(Arc::clone(&backend))
        .await
        .expect("open specimens");
    let notes = Repo::<Note>::open(Arc::clone(&backend))
        .await
        .expect("open notes");
    let feed = backend.change_feed().await.expect("the store's feed");
    let mut expect: Vec<Expect> = Vec::new();

    let a = Specimen::new("a", 1);
    repo.insert(&a).await.expect("insert a");
    expect.push((ChangeOp::Created, "a", 1));
    repo.insert_many(&[Specimen::new("b", 2), Specimen::new("c", 3)])
        .await
        .expect("insert_many");
    expect.push((ChangeOp::Created, "b", 1));
    expect.push((ChangeOp::Created, "c", 1));
    // Failing writes: a duplicate key, a stale version, a missing key.
    assert!(matches!(repo.insert(&a).await, Err(Error::Conflict { .. })));
    assert!(matches!(
        repo.insert_many(&[Specimen::new("z", 9), Specimen::new("b", 2)])
            .await,
        Err(Error::Conflict { .. } | Error::Batch { .. })
    ));
    let updated = repo
        .update(&"a".to_owned(), &Patch::new().set("label", "patched"))
        .await
        .expect("update a")
        .expect("a exists");
    expect.push((ChangeOp::Updated, "a", 2));
    assert!(
        repo.update(&"nope".to_owned(), &Patch::new().set("label", "x"))
            .await
            .expect("update of a missing key")
            .is_none()
    );
    let mut stale = updated.clone();
    stale.version = 1;
    assert!(matches!(
        repo.replace(&stale).await,
        Err(Error::Conflict { .. })
    ));
    let mut b = Specimen::new("b", 2);
    b.body = Some("replaced".into());
    repo.replace(&b).await.expect("replace b");
    expect.push((ChangeOp::Updated, "b", 2));
    repo.upsert(&Specimen::new("d", 4))
        .await
        .expect("upsert new d");
    expect.push((ChangeOp::Created, "d", 1));
    repo.upsert(&Specimen::new("a", 5)).await.expect("upsert a");
    expect.push((ChangeOp::Updated, "a", 3));
    assert!(repo.delete(&"c".to_owned()).await.expect("delete c"));
    expect.push((ChangeOp::Deleted, "c", 2));
    assert!(!repo.delete(&"c".to_owned()).await.expect("delete c again"));
    // Not captured.
    notes
        .insert(&Note {
            id: 1,
            body: "not captured".into(),
        })
        .await
        .expect("insert a note");
    // A transaction that commits, and one that rolls back (where the store
    // has transactions; elsewhere the precise answer).
    if backend.capabilities().transactions {
        let tx = backend.begin().await.expect("begin");
        let in_tx = Repo::<Specimen>::open(tx.backend())
            .await
            .expect("open in tx");
        in_tx
            .insert(&Specimen::new("e", 6))
            .await
            .expect("insert e");
        in_tx
            .update(&"e".to_owned(), &Patch::new().set("rank", 60_i64))
            .await
            .expect("update e");
        tx.commit().await.expect("commit");
        expect.push((ChangeOp::Created, "e", 1));
        expect.push((ChangeOp::Updated, "e", 2));
        let tx = backend.begin().await.expect("begin");
        let in_tx = Repo::<Specimen>::open(tx.backend())
            .await
            .expect("open in tx");
        in_tx
            .insert(&Specimen::new("f", 7))
            .await
            .expect("insert f");
        in_tx.delete(&"a".to_owned()).await.expect("delete a");
        tx.rollback().await.expect("rollback");
    } else {
        match backend.begin().await {
            Err(Error::Unsupported { operation, .. }) => {
                assert_eq!(operation, dl_repositories::Operation::Transaction);
            }
            Err(other) => panic!("begin on a store without transactions: {other}"),
            Ok(_) => panic!("begin on a store without transactions succeeded"),
        }
    }
    // Re-inserting a deleted key continues its sequence.
    repo.insert(&Specimen::new("c", 8))
        .await
        .expect("insert c again");
    expect.push((ChangeOp::Created, "c", 3));

    let events = all_events(&*feed).await;
    let got: Vec<(ChangeOp, String, u64)> =
        events.iter().map(|e| (e.op, key_of(e), e.seq)).collect();
    let want: Vec<(ChangeOp, String, u64)> = expect
        .iter()
        .map(|(op, k, s)| (*op, (*k).to_owned(), *s))
        .collect();
    assert_eq!(got, want, "the feed's events");
    for pair in events.windows(2) {
        assert_eq!(
            pair[1].position,
            pair[0].position + 1,
            "positions increase without gaps"
        );
    }
    for e in &events {
        assert_eq!(e.entity, "specimens");
        assert_eq!(
            e.schema_version,
            <Specimen as dl_models::Entity>::schema().shape_version()
        );
        assert_eq!(e.id(), format!("specimens/{}/{}", e.key_token(), e.seq));
        let after: Option<Specimen> = e.after().expect("the record reads as a Specimen");
        match e.op {
            ChangeOp::Deleted => assert!(after.is_none(), "a delete has no record"),
            _ => assert_eq!(
                after.expect("a record").id,
                key_of(e),
                "the record is the key's"
            ),
        }
    }
    // The last event of each live key holds the record as stored now.
    let mut last: BTreeMap<String, &ChangeEvent> = BTreeMap::new();
    for e in &events {
        last.insert(key_of(e), e);
    }
    for (k, e) in last {
        let stored = repo.get(&k).await.expect("get");
        let after: Option<Specimen> = e.after().expect("decode");
        assert!(
            after == stored,
            "the last event of {k} holds the stored record"
        );
    }
}

/// A consumer reads from its checkpoint, again until it acknowledges, and
/// resumes after a new handle; bad names, unknown consumers and positions
/// past the end are refused and change nothing; pruning keeps what a
/// consumer has not acknowledged.
///
/// # Panics
/// On any difference.
pub async fn consumers_read_from_checkpoints(backend: Arc<dyn Backend>) {
    let repo = Repo::<Specimen>::open(Arc::clone(&backend))
        .await
        .expect("open specimens");
    let feed = backend.change_feed().await.expect("the store's feed");
    for i in 0..5 {
        repo.insert(&Specimen::new(&format!("k{i}"), i))
            .await
            .expect("insert");
    }
    // A consumer from the start, one from now.
    assert_eq!(feed.register("analytics", true).await.expect("register"), 0);
    assert_eq!(feed.register("cache", false).await.expect("register"), 5);
    assert_eq!(
        feed.register("analytics", false).await.expect("again"),
        0,
        "registering again keeps the checkpoint"
    );
    let first = feed.read("analytics", 2).await.expect("read");
    assert_eq!(first.len(), 2);
    let again = feed.read("analytics", 2).await.expect("read again");
    assert_eq!(
        again.iter().map(|e| e.position).collect::<Vec<_>>(),
        first.iter().map(|e| e.position).collect::<Vec<_>>(),
        "unacknowledged events come again"
    );
    feed.ack("analytics", first[1].position).await.expect("ack");
    let next = feed.read("analytics", 10).await.expect("read on");
    assert_eq!(next.len(), 3);
    assert_eq!(next[0].position, first[1].position + 1);
    assert!(feed.read("cache", 10).await.expect("read").is_empty());

    // Bad input: nothing written.
    let before = feed.status().await.expect("status");
    let past = feed.ack("analytics", 1_000).await.unwrap_err();
    assert!(
        matches!(past, Error::Invalid { .. }) && past.to_string().contains("past the feed's last"),
        "{past}"
    );
    assert!(matches!(
        feed.read("nobody", 10).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        feed.ack("nobody", 1).await,
        Err(Error::NotFound { .. })
    ));
    let long = "n".repeat(65);
    for bad in [
        "",
        "Analytics",
        "a b",
        "x'; DROP TABLE dl_feed; --",
        "a:b",
        "{tag}",
        long.as_str(),
    ] {
        for err in [
            feed.register(bad, true).await.map(|_| ()).unwrap_err(),
            feed.read(bad, 1).await.map(|_| ()).unwrap_err(),
            feed.ack(bad, 1).await.unwrap_err(),
        ] {
            assert!(matches!(err, Error::Invalid { .. }), "{bad:?}: {err}");
        }
    }
    assert!(matches!(
        feed.read("analytics", 0).await,
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        feed.events_after(0, Some("x'; --"), 1).await,
        Err(Error::Invalid { .. })
    ));
    let after = feed.status().await.expect("status");
    let still = |mut s: dl_repositories::feed::FeedStatus| {
        s.oldest_unacked_age = None;
        s
    };
    assert_eq!(
        still(before),
        still(after.clone()),
        "refused calls changed nothing"
    );
    assert_eq!(after.consumers.len(), 2);
    let analytics = &after.consumers[0];
    assert_eq!(analytics.name, "analytics");
    assert_eq!(analytics.lag, 3);
    assert!(after.oldest_unacked_age.is_some());

    // Pruning: only what every consumer acknowledged (and older than the
    // retention: none with a day's).
    assert_eq!(
        feed.prune(Duration::from_secs(86_400))
            .await
            .expect("prune"),
        0
    );
    assert_eq!(
        feed.prune(Duration::ZERO).await.expect("prune"),
        2,
        "the two events analytics acknowledged (cache started after them)"
    );
    let left = all_events(&*feed).await;
    assert_eq!(left.len(), 3);
    assert_eq!(feed.read("analytics", 10).await.expect("read").len(), 3);
    // A consumer removed no longer holds events back.
    assert!(feed.unregister("analytics").await.expect("unregister"));
    assert_eq!(feed.prune(Duration::ZERO).await.expect("prune"), 3);
    let status = feed.status().await.expect("status");
    assert_eq!(status.events, 0);
    assert_eq!(status.last_position, 5, "positions are not reused");
    assert_eq!(status.consumers[0].lag, 0);
    assert!(status.oldest_unacked_age.is_none());
}

/// What the writer processes said about each label, over every round.
#[derive(Debug, Default)]
pub struct WriterLog {
    /// Labels tried, in order.
    pub tried: Vec<String>,
    /// Outcome per label: `ack`, `fail` or `err`; none: in flight when
    /// the writer was killed.
    pub outcome: BTreeMap<String, &'static str>,
    /// Writer processes killed with SIGKILL.
    pub kills: usize,
}

/// Starts `binary` with only `env` and `extra` in its environment, in
/// `cwd`; its stdout comes line by line on the receiver (the thread that
/// reads it ends with the process).
fn start_child(
    binary: &str,
    env: &[(String, String)],
    extra: (&str, &str),
    cwd: &std::path::Path,
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<()>,
) {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(binary)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env(extra.0, extra.1)
        .current_dir(cwd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {binary}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx, reader)
}

/// Runs the `feed-writer` binary `rounds` times with `env` (plus
/// `FEED_WRITER_RUN`), killing each with SIGKILL after a random number of
/// acknowledged writes (3 to 60; or 60 s), and collects what it said.
/// `between` runs while a writer writes (say, resetting a proxy's
/// connections) until the writer is killed.
///
/// # Panics
/// When a writer cannot start, or says nothing within 60 s.
pub fn kill_writer_rounds(
    binary: &str,
    env: &[(String, String)],
    rounds: usize,
    between: &(dyn Fn() + Sync),
) -> WriterLog {
    let mut log = WriterLog::default();
    let cwd = tempfile::tempdir().expect("a working folder");
    for round in 0..rounds {
        let run = format!("r{round}x{}", fastrand::u32(..));
        let (mut child, rx, reader) =
            start_child(binary, env, ("FEED_WRITER_RUN", &run), cwd.path());
        let kill_after = fastrand::usize(3..=60);
        // Generous: a writer killed inside a MongoDB transaction leaves it
        // holding the feed clock until the server aborts it (MongoDB's
        // transactionLifetimeLimitSeconds, 60 s by default), and the next
        // writer's captured writes conflict until then.
        let deadline = std::time::Instant::now() + Duration::from_secs(150);
        let mut acks = 0;
        let mut ready = false;
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    between();
                }
            });
            while acks < kill_after && std::time::Instant::now() < deadline {
                let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) else {
                    continue;
                };
                ready |= line == "ready";
                acks += usize::from(record_line(&mut log, &line));
            }
            // SIGKILL: no destructor, no flush, no rollback in the process.
            child.kill().expect("kill the writer");
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let _ = child.wait();
        log.kills += 1;
        // What it printed before it died.
        let _ = reader.join();
        for line in rx.try_iter() {
            record_line(&mut log, &line);
        }
        assert!(ready, "round {round}: the writer never became ready");
        assert!(
            acks > 0,
            "round {round}: the writer acknowledged nothing in 150 s"
        );
    }
    log
}

/// Notes one line of a writer; whether it was an acknowledgement.
fn record_line(log: &mut WriterLog, line: &str) -> bool {
    let Some((word, label)) = line.split_once(' ') else {
        return false;
    };
    let word = match word {
        "try" => {
            log.tried.push(label.to_owned());
            return false;
        }
        "ack" => "ack",
        "fail" => "fail",
        "err" => "err",
        _ => return false,
    };
    log.outcome.insert(label.to_owned(), word);
    word == "ack"
}

/// The counts of a kill test's check.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KillCounts {
    /// Writer processes killed.
    pub kills: usize,
    /// Acknowledged writes (each with exactly one event).
    pub acknowledged: usize,
    /// Refused or rolled-back writes (each with none).
    pub refused: usize,
    /// Writes whose outcome was unknown or in flight at a kill (at most
    /// one event each), and how many of them had one.
    pub unknown: usize,
    /// Of the unknown, those that turned out committed.
    pub unknown_committed: usize,
    /// Events checked.
    pub events: usize,
}

/// Checks the feed against the writers' log: every acknowledged write has
/// exactly one event, every refused one none, every unknown one at most
/// one; no event without a write that was tried; positions without gaps;
/// each key's sequence 1, 2, 3, … in position order; each key's last event
/// is the record as stored now (or a delete, and the record is gone).
///
/// # Panics
/// On any difference, naming it.
pub async fn check_feed_against(backend: Arc<dyn Backend>, log: &WriterLog) -> KillCounts {
    let feed = backend.change_feed().await.expect("the store's feed");
    let repo = Repo::<Specimen>::open(Arc::clone(&backend))
        .await
        .expect("open specimens");
    let mut events = Vec::new();
    let mut after = 0;
    for _ in 0..10_000 {
        let batch = feed
            .events_after(after, None, 1000)
            .await
            .expect("read the feed");
        let Some(last) = batch.last() else { break };
        after = last.position;
        events.extend(batch);
    }
    let mut per_label: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_key: BTreeMap<String, Vec<&ChangeEvent>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.position,
            events[0].position + i as u64,
            "positions have no gaps"
        );
        let key = key_of(e);
        let label = match e.op {
            ChangeOp::Deleted => format!("D:{key}"),
            _ => {
                e.after::<Specimen>()
                    .expect("decode")
                    .expect("a record")
                    .label
            }
        };
        *per_label.entry(label).or_default() += 1;
        per_key.entry(key).or_default().push(e);
    }
    let tried: std::collections::BTreeSet<&String> = log.tried.iter().collect();
    for label in per_label.keys() {
        assert!(
            tried.contains(label),
            "an event for {label}, which no writer tried"
        );
    }
    let mut counts = KillCounts {
        kills: log.kills,
        events: events.len(),
        ..KillCounts::default()
    };
    for label in &log.tried {
        let n = per_label.get(label).copied().unwrap_or(0);
        match log.outcome.get(label).copied() {
            Some("ack") => {
                assert_eq!(n, 1, "acknowledged {label}: {n} events");
                counts.acknowledged += 1;
            }
            Some("fail") => {
                assert_eq!(n, 0, "refused {label}: {n} events");
                counts.refused += 1;
            }
            _ => {
                assert!(n <= 1, "unknown {label}: {n} events");
                counts.unknown += 1;
                counts.unknown_committed += n;
            }
        }
    }
    for (key, evs) in &per_key {
        for (i, e) in evs.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1, "{key}: sequence in position order");
        }
        let last = evs.last().expect("one event at least");
        let stored = repo.get(key).await.expect("get");
        match last.op {
            ChangeOp::Deleted => assert!(stored.is_none(), "{key}: deleted last, yet stored"),
            _ => assert!(
                last.after::<Specimen>().expect("decode") == stored,
                "{key}: the last event is not the stored record"
            ),
        }
    }
    counts
}

/// The PHI canary of the feed: unique canaries in every PHI field (and a
/// PHI key), written by every write operation, refused ones too; then
/// everything the feed shows is scanned: each event's `Debug`, id, key
/// and key token, the feed's status (`Debug` and JSON), the errors of
/// refused writes and of bad feed calls. The record after the write is
/// the one place a canary may be (it is the primary store's record).
/// Returns the canaries, for the caller to scan the feed's own tables.
///
/// # Panics
/// On a leak.
pub async fn feed_shows_no_phi(backend: Arc<dyn Backend>) -> Vec<String> {
    use crate::canary::{assert_error_clean, assert_no_canary, canary};
    use crate::entities::Enrollment;
    let specimens = Repo::<Specimen>::open(Arc::clone(&backend))
        .await
        .expect("open specimens");
    // A PHI key: Redis refuses it (a key is a key name there), precisely.
    let enrollments = match Repo::<Enrollment>::open(Arc::clone(&backend)).await {
        Ok(r) => Some(r),
        Err(Error::Unsupported {
            store: dl_repositories::Store::Redis,
            operation: dl_repositories::Operation::Prepare,
            ..
        }) => None,
        Err(e) => panic!("open enrollments: {e}"),
    };
    let feed = backend.change_feed().await.expect("the store's feed");
    let owner = canary("owner");
    let owner2 = canary("owner2");
    let mrn = canary("mrn");
    let mrn2 = canary("mrn2");
    let name = canary("name");
    let name2 = canary("name2");
    let all = [&owner, &owner2, &mrn, &mrn2, &name, &name2];
    let refs: Vec<&str> = all.iter().map(|s| s.as_str()).collect();

    let mut s = Specimen::new("phi-1", 1);
    s.owner = Some(owner.clone());
    specimens.insert(&s).await.expect("insert");
    specimens
        .update(
            &"phi-1".to_owned(),
            &Patch::new().set("owner", owner2.as_str()),
        )
        .await
        .expect("update")
        .expect("exists");
    let mut many = Specimen::new("phi-2", 2);
    many.owner = Some(owner.clone());
    specimens.insert_many(&[many]).await.expect("insert_many");
    if let Some(enrollments) = &enrollments {
        let e = Enrollment {
            mrn: mrn.clone(),
            name: name.clone(),
            status: "active".into(),
        };
        enrollments.insert(&e).await.expect("insert enrollment");
        let dup = enrollments.insert(&e).await.unwrap_err();
        assert_error_clean("a duplicate PHI key", &dup, &refs);
        enrollments
            .update(&mrn, &Patch::new().set("name", name2.as_str()))
            .await
            .expect("update enrollment");
        enrollments
            .upsert(&Enrollment {
                mrn: mrn2.clone(),
                name: name.clone(),
                status: "new".into(),
            })
            .await
            .expect("upsert");
        let mut replaced = e.clone();
        replaced.name = name2.clone();
        enrollments.replace(&replaced).await.expect("replace");
        assert!(enrollments.delete(&mrn).await.expect("delete"));
    }
    specimens.delete(&"phi-2".to_owned()).await.expect("delete");

    let events = all_events(&*feed).await;
    let expected = if enrollments.is_some() { 9 } else { 4 };
    assert_eq!(events.len(), expected, "one event per write");
    let mut shown = String::new();
    for e in &events {
        use std::fmt::Write as _;
        let _ = writeln!(shown, "{e:?} {} {} {:?}", e.id(), e.key_token(), e.key());
        if e.entity == "enrollments" {
            assert!(
                matches!(e.key(), EventKey::Token(_)),
                "a PHI key is named by its token"
            );
        }
    }
    // The records after the writes hold the canaries (the primary store's
    // record): the one place they may be.
    let after: String = events
        .iter()
        .filter_map(ChangeEvent::after_json)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(after.contains(&owner2));
    assert!(enrollments.is_none() || after.contains(&name2));
    let status = feed.status().await.expect("status");
    shown.push_str(&format!(
        "{status:?}\n{}\n",
        serde_json::to_string(&status).expect("json")
    ));
    for err in [
        feed.ack("nobody", 1).await.unwrap_err(),
        feed.read("nobody", 1).await.unwrap_err(),
        feed.events_after(0, Some("Bad Entity"), 1)
            .await
            .unwrap_err(),
    ] {
        shown.push_str(&crate::canary::every_rendering(&err));
    }
    assert_no_canary("the feed's events and status", &shown, &refs);
    all.iter().map(|s| (*s).clone()).collect()
}

/// What a killed consumer saw over all its lives.
#[derive(Debug, Default)]
pub struct ConsumerLog {
    /// Positions seen (with repeats: at least once).
    pub seen: std::collections::BTreeSet<u64>,
    /// Deliveries in all (repeats included).
    pub deliveries: usize,
    /// Consumer processes killed with SIGKILL.
    pub kills: usize,
}

/// Runs the consumer mode of `feed-writer` `rounds` times, killing each
/// after a random number of deliveries (1 to 200), while `write` adds
/// events between rounds; then once more until it is caught up. Checks
/// that each life's deliveries are in position order with each key's
/// sequence increasing, and that a life resumes from its checkpoint: after
/// what it acknowledged, no later than just after what it had seen.
///
/// # Panics
/// On a difference, or a consumer that says nothing in 60 s.
pub fn kill_consumer_rounds(
    binary: &str,
    env: &[(String, String)],
    rounds: usize,
    write: &(dyn Fn() + Sync),
) -> ConsumerLog {
    let mut log = ConsumerLog::default();
    let cwd = tempfile::tempdir().expect("a working folder");
    let mut acked = 0u64;
    let mut max_seen = 0u64;
    for round in 0..=rounds {
        write();
        let last_round = round == rounds;
        let (mut child, rx, reader) =
            start_child(binary, env, ("FEED_WRITER_MODE", "consume"), cwd.path());
        let kill_after = fastrand::usize(1..=200);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut lines = Vec::new();
        let mut deliveries = 0;
        let mut caught_up = false;
        while std::time::Instant::now() < deadline {
            let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            deliveries += usize::from(line.starts_with("saw "));
            caught_up |= line == "caught-up";
            lines.push(line);
            if (!last_round && deliveries >= kill_after) || caught_up {
                break;
            }
        }
        child.kill().expect("kill the consumer");
        let _ = child.wait();
        let _ = reader.join();
        lines.extend(rx.try_iter());
        if !last_round {
            log.kills += 1;
        } else {
            assert!(caught_up, "the last consumer never caught up in 60 s");
        }
        // This life: in order, each key's sequence increasing, starting
        // right after the last acknowledged position.
        let mut last_seq: BTreeMap<String, u64> = BTreeMap::new();
        let mut previous: Option<u64> = None;
        for line in &lines {
            let mut parts = line.split(' ');
            match parts.next() {
                Some("saw") => {
                    let pos: u64 = parts.next().and_then(|p| p.parse().ok()).expect("position");
                    let key = parts.next().expect("key").to_owned();
                    let seq: u64 = parts.next().and_then(|p| p.parse().ok()).expect("seq");
                    match previous {
                        // A new life starts after what it acknowledged and
                        // no later than just after what it had seen (an
                        // ack may have landed unreported before the kill).
                        None => assert!(
                            pos > acked && pos <= max_seen + 1,
                            "round {round}: resumed at {pos} (acknowledged {acked}, seen {max_seen})"
                        ),
                        Some(p) => assert!(pos > p, "round {round}: {pos} after {p}"),
                    }
                    if let Some(s) = last_seq.get(&key) {
                        assert!(seq > *s, "round {round}: {key} seq {seq} after {s}");
                    }
                    last_seq.insert(key, seq);
                    previous = Some(pos);
                    max_seen = max_seen.max(pos);
                    log.seen.insert(pos);
                    log.deliveries += 1;
                }
                Some("acked") => {
                    acked = parts.next().and_then(|p| p.parse().ok()).expect("acked");
                }
                _ => {}
            }
        }
    }
    log
}
