//! A writer for the change feed's kill tests: it writes `specimens`
//! through a `DataLayer` with capture on, with every write operation,
//! single and batched, in and out of transactions, from a few concurrent
//! tasks, and says on stdout what it did, one line per step:
//!
//! - `try <label>` before a write whose record will carry `label` (a
//!   delete's label is `D:<key>`);
//! - `ack <label>` when the write was acknowledged: its event must exist,
//!   exactly once;
//! - `fail <label>` when the store refused it or it was rolled back: no
//!   event may exist;
//! - `err <label>` when the outcome is unknown (a connection fault): at
//!   most one event.
//!
//! The test kills it (`kill -9`) at random points and checks the feed
//! against these lines. Settings come from the environment (`DATABASE_URL`
//! and the rest, as a service's); `FEED_WRITER_RUN` tags its keys,
//! `FEED_WRITER_STORE` names the store (`redis`; default the relational
//! one) and `FEED_WRITER_TASKS` sets the concurrency (default 3). On a
//! store without transactions the transaction steps are left out. Runs until killed,
//! or for `FEED_WRITER_MAX_STEPS` steps per task (default 100,000).

use std::io::Write as _;
use std::sync::{Arc, Mutex};

use data_layer::{DataLayer, Error, Patch, Repository, Settings, Sources, Store};
use dl_tests::entities::Specimen;

/// One line to stdout, flushed (the test reads it as it comes).
fn say(out: &Mutex<std::io::Stdout>, line: &str) {
    let mut out = out
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn record(key: &str, label: &str, rank: i64) -> Specimen {
    let mut s = Specimen::new(key, rank);
    s.label = label.to_owned();
    s
}

/// Reports a write's outcome: acknowledged, refused (nothing written:
/// the store said no, or the call never reached it), or unknown. After a
/// fault it pauses a little, as a service backing off would, rather than
/// spinning on an open breaker.
async fn outcome(out: &Mutex<std::io::Stdout>, labels: &[String], r: &Result<(), Error>) {
    let word = match r {
        Ok(()) => "ack",
        Err(e) if refused(e) || e.never_sent() => "fail",
        Err(_) => "err",
    };
    for l in labels {
        say(out, &format!("{word} {l}"));
    }
    if matches!(r, Err(e) if !refused(e)) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Errors that say nothing was written.
fn refused(e: &Error) -> bool {
    matches!(
        e,
        Error::Conflict { .. }
            | Error::NotFound { .. }
            | Error::Invalid { .. }
            | Error::Batch { .. }
    )
}

#[allow(clippy::too_many_lines)]
async fn task(
    dl: DataLayer,
    repo: Arc<dyn Repository<Specimen>>,
    out: Arc<Mutex<std::io::Stdout>>,
    run: String,
    t: usize,
    max: usize,
) {
    let store = repo.store();
    let transactions = !matches!(store, Store::Redis | Store::Scylla);
    // This task's live keys and their versions.
    let mut live: Vec<(String, i64)> = Vec::new();
    let mut next_key = 0usize;
    let new_key = |next_key: &mut usize| {
        *next_key += 1;
        format!("{run}-t{t}-k{next_key}")
    };
    for step in 0..max {
        let label = format!("{run}-t{t}-s{step}");
        let rank = i64::try_from(step).unwrap_or(0);
        match step % 10 {
            // Insert a new key.
            0 | 5 => {
                let key = new_key(&mut next_key);
                say(&out, &format!("try {label}"));
                let r = repo.insert(&record(&key, &label, rank)).await;
                outcome(&out, &[label], &r).await;
                if r.is_ok() {
                    live.push((key, 1));
                }
            }
            // Update by patch.
            1 | 6 => {
                let Some((key, version)) = live.last_mut() else {
                    continue;
                };
                say(&out, &format!("try {label}"));
                let r = repo
                    .update(key, &Patch::new().set("label", label.as_str()))
                    .await
                    .map(|found| {
                        if let Some(s) = found {
                            *version = s.version;
                        }
                    });
                outcome(&out, &[label], &r).await;
            }
            // Upsert of a live key (or a new one).
            2 => {
                let key = live
                    .first()
                    .map_or_else(|| new_key(&mut next_key), |(k, _)| k.clone());
                say(&out, &format!("try {label}"));
                let r = repo.upsert(&record(&key, &label, rank)).await;
                if let Ok(s) = &r {
                    match live.iter_mut().find(|(k, _)| *k == key) {
                        Some(e) => e.1 = s.version,
                        None => live.push((key, s.version)),
                    }
                }
                outcome(&out, &[label], &r.map(|_| ())).await;
            }
            // Replace with the right version, then a stale one (refused).
            3 => {
                let Some((key, version)) = live.first().cloned() else {
                    continue;
                };
                let mut s = record(&key, &label, rank);
                s.version = version;
                say(&out, &format!("try {label}"));
                let r = repo.replace(&s).await;
                if let Ok(w) = &r
                    && let Some(e) = live.iter_mut().find(|(k, _)| *k == key)
                {
                    e.1 = w.version;
                }
                outcome(&out, std::slice::from_ref(&label), &r.map(|_| ())).await;
                let stale_label = format!("{label}-stale");
                let mut stale = record(&key, &stale_label, rank);
                stale.version = version;
                say(&out, &format!("try {stale_label}"));
                let r = repo.replace(&stale).await.map(|_| ());
                outcome(&out, &[stale_label], &r).await;
            }
            // Delete a live key.
            4 => {
                if live.len() < 2 {
                    continue;
                }
                let (key, _) = live.remove(0);
                let label = format!("D:{key}");
                say(&out, &format!("try {label}"));
                let r = repo.delete(&key).await.map(|_| ());
                outcome(&out, &[label], &r).await;
            }
            // insert_many of three new keys; then a batch with a duplicate
            // (refused whole).
            7 => {
                let items: Vec<(String, String)> = (0..3)
                    .map(|j| (new_key(&mut next_key), format!("{label}.{j}")))
                    .collect();
                let labels: Vec<String> = items.iter().map(|(_, l)| l.clone()).collect();
                for l in &labels {
                    say(&out, &format!("try {l}"));
                }
                let batch: Vec<Specimen> = items.iter().map(|(k, l)| record(k, l, rank)).collect();
                let r = repo.insert_many(&batch).await;
                outcome(&out, &labels, &r).await;
                if r.is_ok() {
                    live.extend(items.iter().map(|(k, _)| (k.clone(), 1)));
                    let dup_label = format!("{label}.dup");
                    say(&out, &format!("try {dup_label}"));
                    let fresh = new_key(&mut next_key);
                    let r = repo
                        .insert_many(&[
                            record(&fresh, &dup_label, rank),
                            record(&items[0].0, &dup_label, rank),
                        ])
                        .await;
                    outcome(&out, &[dup_label], &r).await;
                }
            }
            // A transaction that commits two writes.
            8 if transactions => {
                let Some((old, _)) = live.last().cloned() else {
                    continue;
                };
                let key = new_key(&mut next_key);
                let (a, b) = (format!("{label}.a"), format!("{label}.b"));
                say(&out, &format!("try {a}"));
                say(&out, &format!("try {b}"));
                let (ra, rb) = (record(&key, &a, rank), b.clone());
                let r: Result<(), Error> = dl
                    .transaction(store, |tx| async move {
                        let repo = tx.repository::<Specimen>().await?;
                        repo.insert(&ra).await?;
                        repo.update(&old, &Patch::new().set("label", rb.as_str()))
                            .await?;
                        Ok(())
                    })
                    .await;
                outcome(&out, &[a, b], &r).await;
                if r.is_ok() {
                    live.push((key, 1));
                    // The updated key's version moved: read it back.
                    if let Some(e) = live.iter_mut().rev().nth(1)
                        && let Ok(Some(s)) = repo.get(&e.0).await
                    {
                        e.1 = s.version;
                    }
                }
            }
            // No transactions here: a duplicate insert.
            8 => {
                if let Some((key, _)) = live.first().cloned() {
                    let dup = format!("{label}.dup");
                    say(&out, &format!("try {dup}"));
                    let r = repo.insert(&record(&key, &dup, rank)).await;
                    outcome(&out, &[dup], &r).await;
                }
            }
            // A transaction that rolls back, and a duplicate insert.
            _ => {
                if transactions {
                    let key = new_key(&mut next_key);
                    let rolled = format!("{label}.rolled");
                    say(&out, &format!("try {rolled}"));
                    let r0 = record(&key, &rolled, rank);
                    let r: Result<(), Error> = dl
                        .transaction(store, |tx| async move {
                            tx.repository::<Specimen>().await?.insert(&r0).await?;
                            Err(Error::invalid("specimens", None, "rolled back on purpose"))
                        })
                        .await;
                    outcome(&out, &[rolled], &r).await;
                }
                if let Some((key, _)) = live.first().cloned() {
                    let dup = format!("{label}.dup");
                    say(&out, &format!("try {dup}"));
                    let r = repo.insert(&record(&key, &dup, rank)).await;
                    outcome(&out, &[dup], &r).await;
                }
            }
        }
    }
}

/// `FEED_WRITER_MODE=consume`: a consumer (`FEED_CONSUMER`, from the
/// start) reads batches of 1 to 50 events, says `saw <position> <key
/// token> <seq>` for each, acknowledges the batch (`acked <position>`),
/// prunes the feed now and then (with `cdc.retention` as set) and says
/// `caught-up` when a read comes back empty.
async fn consume(dl: DataLayer, out: Arc<Mutex<std::io::Stdout>>) {
    let name = std::env::var("FEED_CONSUMER").unwrap_or_else(|_| "killed".into());
    let store = store_of(&dl);
    let mut consumer = None;
    for _ in 0..100 {
        match dl.consumer(store, &name, true).await {
            Ok(c) => {
                consumer = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    let consumer = consumer.expect("a consumer within 100 attempts");
    say(&out, "ready");
    for round in 0..1_000_000usize {
        let Ok(batch) = consumer.next_batch(fastrand::usize(1..=50)).await else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let Some(last) = batch.last() else {
            say(&out, "caught-up");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        for e in &batch {
            say(
                &out,
                &format!("saw {} {} {}", e.position, e.key_token(), e.seq),
            );
        }
        if consumer.ack(last).await.is_ok() {
            say(&out, &format!("acked {}", last.position));
        }
        if round % 3 == 0 {
            let _ = dl.prune_feeds().await;
        }
    }
}

/// The store to write: `FEED_WRITER_STORE` (`redis`), else the
/// relational one.
fn store_of(dl: &DataLayer) -> Store {
    match std::env::var("FEED_WRITER_STORE").as_deref() {
        Ok("redis") => Store::Redis,
        Ok("mongodb") => Store::Mongo,
        _ => dl.relational().store(),
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let env = |k: &str| std::env::var(k).ok();
    let run = env("FEED_WRITER_RUN").unwrap_or_else(|| "w".into());
    let tasks: usize = env("FEED_WRITER_TASKS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let max: usize = env("FEED_WRITER_MAX_STEPS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    rt.block_on(async move {
        let settings = Settings::load(&Sources::default()).expect("settings");
        let dl = DataLayer::from_settings(settings)
            .await
            .expect("data layer");
        if std::env::var("FEED_WRITER_MODE").is_ok_and(|m| m == "consume") {
            consume(dl, Arc::new(Mutex::new(std::io::stdout()))).await;
            return;
        }
        // The connection may be cut while the repository opens (the test
        // resets it): try again, a bounded number of times.
        let mut repo = None;
        for _ in 0..100 {
            match dl.repository_in::<Specimen>(store_of(&dl)).await {
                Ok(r) => {
                    repo = Some(r);
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
        let repo = repo.expect("specimens opened within 100 attempts");
        let out = Arc::new(Mutex::new(std::io::stdout()));
        say(&out, "ready");
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                tokio::spawn(task(
                    dl.clone(),
                    Arc::clone(&repo),
                    Arc::clone(&out),
                    run.clone(),
                    t,
                    max,
                ))
            })
            .collect();
        for h in handles {
            let _ = h.await;
        }
        say(&out, "done");
    });
}
