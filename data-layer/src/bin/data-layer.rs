//! The `data-layer` command: `demo` runs the main job on the configured
//! store (the embedded SQLite default needs no services); `config` prints
//! the effective settings with secrets redacted.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use chrono::{Duration, NaiveDate, Utc};
use clap::{Parser, Subcommand};
use data_layer::models::domain::{Appointment, Patient, PatientStatus};
use data_layer::{DataLayer, Error, Filter, Patch, Query, Settings, Sources};
use uuid::Uuid;

/// Writes a line to stdout; a closed pipe (`data-layer config | head`) ends
/// the output quietly instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

#[derive(Debug, Parser)]
#[command(
    name = "data-layer",
    version,
    about = "One typed data layer over SQLite, PostgreSQL, MongoDB, Redis and ScyllaDB"
)]
struct Cli {
    /// Read settings from this env file (instead of ./.env).
    #[arg(long, global = true, value_name = "PATH")]
    env_file: Option<PathBuf>,
    /// Read settings from this TOML file (instead of ./data-layer.toml).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Override one setting, e.g. --set sqlite.max_connections=2 (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the schema, write and read patients and appointments, list
    /// with filters and pages, and show a version conflict being caught.
    Demo,
    /// Ping every configured store and print its health; exit 1 when a
    /// required store is down.
    Health {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move each store's schema with the scripts in migrations/<store>/:
    /// status, up, down (--to), verify, resolve (--version).
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
        /// postgres, sqlite, mongo, scylla, redis or all (the configured ones).
        #[arg(long, global = true, default_value = "all")]
        store: String,
        /// up: stop after this version; down: revert the versions above it.
        #[arg(long, global = true, value_name = "VERSION")]
        to: Option<u64>,
        /// Show what would run; change nothing.
        #[arg(long, global = true)]
        dry_run: bool,
        /// Print JSON instead of lines and tables.
        #[arg(long, global = true)]
        json: bool,
        /// Accept applied scripts whose files changed (records the new checksum).
        #[arg(long, global = true)]
        allow_drift: bool,
        /// Apply pending scripts older than the newest applied one.
        #[arg(long, global = true)]
        allow_out_of_order: bool,
        /// The migrations folder.
        #[arg(long, global = true, default_value = "migrations", value_name = "PATH")]
        dir: PathBuf,
    },
    /// The change feed of each store: `status` (consumers, their lag, the
    /// feed's size) or `tail` (the last events: entity, operation, key
    /// token, sequence and time; never a field's value).
    Feed {
        #[command(subcommand)]
        action: FeedAction,
        /// sqlite, postgres, ... (default: the relational store).
        #[arg(long, global = true)]
        store: Option<String>,
    },
    /// CDC into analytics: `run` the relay (redact, deliver, record),
    /// its `status`, `replay` events to the sinks again, `dead-letters`.
    Cdc {
        #[command(subcommand)]
        action: CdcAction,
        /// The store whose feed is relayed (default: the relational store).
        #[arg(long, global = true)]
        store: Option<String>,
    },
    /// Sagas in the saga log: `list` (by state), `show` one, `retry` a
    /// stuck one, `abort` a running one (its compensations run). Inputs,
    /// outputs and reasons stay sealed except the reason `show` opens.
    Saga {
        #[command(subcommand)]
        action: SagaAction,
    },
    /// Print the effective settings (secrets redacted) and where each came from.
    Config {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum FeedAction {
    /// The feed's size and each consumer's checkpoint and lag.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The last events (without their records).
    Tail {
        /// Only this entity's events.
        #[arg(long)]
        entity: Option<String>,
        /// How many of the last events to print first (at most 10000).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Keep printing new events as they are written (until interrupted).
        #[arg(long)]
        follow: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CdcAction {
    /// Relay until interrupted (Ctrl-C stops it between batches), with a
    /// progress line on stderr each second.
    Run {
        /// Relay what the feed holds now, then stop.
        #[arg(long)]
        once: bool,
    },
    /// The relay's checkpoint, lag, dead letters and sinks.
    Status {
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Deliver the events from an event (its id) or a time (RFC 3339) up
    /// to the relay's checkpoint to every sink again; each sink keeps what
    /// it already has.
    Replay {
        /// An event id the relay emitted or dead-lettered, or a time.
        #[arg(long)]
        from: String,
    },
    /// The changes not emitted because they did not match the schema: id,
    /// entity, position and reason (never a value).
    DeadLetters {
        /// How many, oldest first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
enum SagaAction {
    /// The newest sagas, of one state or all.
    List {
        /// running, compensating, completed, compensated or stuck.
        #[arg(long)]
        state: Option<String>,
        /// How many (at most 10000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One saga: its state, each step's state and attempts, its lease and
    /// why it turned back or is stuck.
    Show {
        /// The saga's id.
        id: String,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Put a stuck saga back to work, the way it was going.
    Retry {
        /// The saga's id.
        id: String,
        /// Print JSON instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// Turn a running saga back (before its pivot): its compensations run.
    Abort {
        /// The saga's id.
        id: String,
        /// Print JSON instead of a line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum MigrateAction {
    /// Each script's state per store.
    Status,
    /// Apply the pending scripts.
    Up,
    /// Revert the scripts above --to, newest first.
    Down,
    /// Check checksums, failures and pending scripts without changing anything.
    Verify,
    /// Clear a recorded failure so the next `up` runs that script again.
    Resolve {
        /// The failed script's version.
        #[arg(long)]
        version: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Only the top-level message: driver errors below it may quote data.
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn sources(cli: &Cli) -> anyhow::Result<Sources> {
    let mut sources = Sources {
        file: cli.config.clone(),
        env_file: cli.env_file.clone(),
        ..Sources::default()
    };
    for pair in &cli.set {
        let Some((k, v)) = pair.split_once('=') else {
            anyhow::bail!("--set takes KEY=VALUE, e.g. --set sqlite.max_connections=2");
        };
        sources.flags.push((k.trim().to_owned(), v.to_owned()));
    }
    Ok(sources)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(&sources(&cli)?)?;
    match cli.command {
        Command::Config { json } => {
            print_config(&settings, json);
            Ok(())
        }
        Command::Health { json } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let report = rt.block_on(async {
                let dl = DataLayer::from_settings(settings).await?;
                anyhow::Ok(dl.health().await)
            })?;
            if json {
                out!("{}", serde_json::to_string(&report)?);
            } else {
                out!("data-layer: {}", report.status);
                for s in &report.stores {
                    let pool = s.pool.map_or_else(
                        || "-".to_owned(),
                        |p| format!("{}/{} in use ({})", p.in_use, p.max, s.pool_level),
                    );
                    let breaker = s
                        .breaker
                        .map_or_else(|| "-".to_owned(), |b| format!("{b:?}").to_lowercase());
                    out!(
                        "  {:<8} {:<4} {:>8.2} ms  {:<8} breaker {:<9} pool {}{}",
                        s.store,
                        s.status,
                        s.latency_ms,
                        if s.required { "required" } else { "optional" },
                        breaker,
                        pool,
                        s.error
                            .as_ref()
                            .map(|e| format!("  ({e})"))
                            .unwrap_or_default()
                    );
                    if let Some(f) = &s.feed {
                        out!(
                            "  {:<8} feed: {} events, {} consumers, max lag {}, oldest unacknowledged {}{}",
                            "",
                            f.events,
                            f.consumers,
                            f.max_lag,
                            f.oldest_unacked_age_s
                                .map_or_else(|| "none".to_owned(), |a| format!("{a:.1} s")),
                            f.error
                                .as_ref()
                                .map(|e| format!("  ({e})"))
                                .unwrap_or_default()
                        );
                    }
                }
                for r in &report.cdc {
                    out!(
                        "  cdc relay {} ({}): lag {} events, checkpoint {}, {} dead letters{}",
                        r.relay,
                        r.store,
                        r.lag_events,
                        r.checkpoint,
                        r.dead_letters,
                        r.error
                            .as_ref()
                            .map(|e| format!("  ({e})"))
                            .unwrap_or_default()
                    );
                }
            }
            if report.status == "down" {
                anyhow::bail!("a required store is down");
            }
            Ok(())
        }
        Command::Migrate {
            action,
            store,
            to,
            dry_run,
            json,
            allow_drift,
            allow_out_of_order,
            dir,
        } => {
            use data_layer::migrate::{self, Action};
            let stores = migrate::stores(&store).map_err(anyhow::Error::msg)?;
            let action = match action {
                MigrateAction::Status => Action::Status,
                MigrateAction::Up => Action::Up,
                MigrateAction::Down => Action::Down,
                MigrateAction::Verify => Action::Verify,
                MigrateAction::Resolve { version } => Action::Resolve(version),
            };
            if action == Action::Down && to.is_none() {
                anyhow::bail!("migrate down needs --to VERSION (0 reverts everything)");
            }
            let options = dl_migrations::Options {
                to,
                dry_run,
                allow_drift,
                allow_out_of_order,
                ..dl_migrations::Options::default()
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let scripts = migrate::load(&dir)?;
            let runs = rt.block_on(migrate::run(
                &settings,
                &scripts,
                &stores,
                action,
                &options,
                &mut |s| {
                    if !json {
                        out!(
                            "{:<8} {:<12} {}_{:<32} {:<6} {} ms",
                            s.store.name(),
                            s.action,
                            s.version,
                            s.name,
                            s.outcome,
                            s.duration_ms
                        );
                    }
                },
            ));
            if json {
                out!("{}", serde_json::to_string(&runs)?);
            } else {
                print_migrations(&runs);
            }
            // Redis: the PHI index entries of the built-in entities as keyed
            // tokens under privacy.key (a keyspace from before tokens, or
            // under a rotated-out key, is converted; otherwise nothing).
            #[cfg(feature = "redis")]
            if action == Action::Up
                && !dry_run
                && stores.contains(&dl_migrations::StoreKind::Redis)
                && settings.redis_url.is_some()
                && settings.privacy.is_configured()
                && runs.iter().all(|r| r.error.is_none())
            {
                let rekeyed = rt.block_on(migrate::rekey_redis_phi(
                    &settings,
                    &migrate::domain_schemas(),
                ))?;
                for (entity, n) in rekeyed.into_iter().filter(|(_, n)| *n > 0) {
                    if !json {
                        out!(
                            "redis    rekey        {entity}: {n} records' PHI index entries as keyed tokens"
                        );
                    }
                }
            }
            let failed: Vec<&str> = runs
                .iter()
                .filter(|r| r.error.is_some())
                .map(|r| r.store.name())
                .collect();
            if !failed.is_empty() {
                anyhow::bail!("migrate failed on {}", failed.join(", "));
            }
            Ok(())
        }
        Command::Feed { action, store } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(feed(settings, store.as_deref(), action))
        }
        Command::Cdc { action, store } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(cdc(settings, store.as_deref(), action))
        }
        Command::Saga { action } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(saga(settings, action))
        }
        Command::Demo => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(demo(settings))
        }
    }
}

/// The store `--store` names (default: the relational one).
fn store_of(dl: &DataLayer, store: Option<&str>) -> anyhow::Result<data_layer::Store> {
    Ok(match store {
        None => dl.relational().store(),
        Some(name) => dl
            .stores()
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--store: no configured store is named `{}` (configured: {})",
                    data_layer::models::truncate_name(name),
                    dl.stores()
                        .iter()
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?,
    })
}

/// `data-layer feed status | tail`.
async fn feed(settings: Settings, store: Option<&str>, action: FeedAction) -> anyhow::Result<()> {
    let dl = DataLayer::from_settings(settings).await?;
    let store = store_of(&dl, store)?;
    let feed = dl.feed(store).await?;
    match action {
        FeedAction::Status { json } => {
            let status = feed.status().await?;
            if json {
                out!("{}", serde_json::to_string(&status)?);
                return Ok(());
            }
            out!(
                "{store} change feed: {} events kept, last position {}, oldest unacknowledged {}",
                status.events,
                status.last_position,
                status.oldest_unacked_age.map_or_else(
                    || "none".to_owned(),
                    |d| format!("{:.1} s ago", d.as_secs_f64())
                )
            );
            if status.consumers.is_empty() {
                out!("  no consumers registered");
            }
            for c in &status.consumers {
                out!(
                    "  {:<24} at {:>10}  lag {:>8}  acknowledged {}",
                    c.name,
                    c.position,
                    c.lag,
                    c.acked_at.map_or_else(
                        || "never".to_owned(),
                        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
                    )
                );
            }
            Ok(())
        }
        FeedAction::Tail {
            entity,
            limit,
            follow,
        } => {
            anyhow::ensure!(
                (1..=10_000).contains(&limit),
                "--limit takes 1 to 10000 events"
            );
            let last = feed.status().await?.last_position;
            let mut after = tail_start(&*feed, last, entity.as_deref(), limit).await?;
            loop {
                let events = feed.events_after(after, entity.as_deref(), limit).await?;
                for e in &events {
                    out!(
                        "{:>10}  {}  {:<16} {:<7} {}  seq {}",
                        e.position,
                        e.committed_at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
                        e.entity,
                        e.op,
                        e.key_token(),
                        e.seq
                    );
                }
                // Past the last event read (or, filtered, past what was
                // looked at: the feed's end when nothing matched).
                after = match events.last() {
                    Some(e) => e.position,
                    None if entity.is_some() => feed.status().await?.last_position.max(after),
                    None => after,
                };
                if !follow {
                    return Ok(());
                }
                if events.len() < limit {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// `data-layer cdc run | status | replay | dead-letters`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn cdc(settings: Settings, store: Option<&str>, action: CdcAction) -> anyhow::Result<()> {
    let dl = DataLayer::from_settings(settings).await?;
    let store = store_of(&dl, store)?;
    let relay = dl.cdc_relay(store).await?;
    match action {
        CdcAction::Run { once } => {
            if once {
                let r = relay.drain(usize::MAX).await?;
                let checkpoint = relay.ledger().checkpoint(relay.name()).await?;
                out!(
                    "cdc: relay `{}` read {} events: {} delivered, {} dead-lettered, {} already done; checkpoint {}",
                    relay.name(),
                    r.read,
                    r.emitted,
                    r.dead_lettered,
                    r.skipped,
                    checkpoint
                );
                return Ok(());
            }
            let (mut read, mut emitted, mut dead) = (0usize, 0usize, 0usize);
            let mut last = Instant::now();
            let stop = tokio::signal::ctrl_c();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    r = relay.step() => match r {
                        Ok(r) => {
                            read += r.read;
                            emitted += r.emitted;
                            dead += r.dead_lettered;
                            if r.read == 0 {
                                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                            }
                        }
                        Err(e) => {
                            eprintln!("cdc: a batch failed (tried again in 1 s): {e}");
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        }
                    },
                }
                if last.elapsed() >= std::time::Duration::from_secs(1) {
                    last = Instant::now();
                    eprintln!(
                        "cdc: relay `{}`: {read} read, {emitted} delivered, {dead} dead-lettered",
                        relay.name()
                    );
                }
            }
            out!(
                "cdc: relay `{}` stopped: {read} read, {emitted} delivered, {dead} dead-lettered",
                relay.name()
            );
        }
        CdcAction::Status { json } => {
            let status = relay.feed().status().await?;
            let consumer = status.consumers.iter().find(|c| c.name == relay.name());
            let checkpoint = relay.ledger().checkpoint(relay.name()).await?;
            let dead = relay.ledger().dead_letter_count(relay.name()).await?;
            let mut sinks = Vec::new();
            for s in relay.sinks() {
                let count = match s.sink().count().await {
                    Ok(n) => serde_json::json!(n),
                    Err(e) => serde_json::json!(format!("unreadable: {e}")),
                };
                sinks.push(serde_json::json!({"sink": s.sink().name(), "events": count, "breaker": format!("{:?}", s.guard().breaker().state())}));
            }
            let v = serde_json::json!({
                "relay": relay.name(),
                "store": store.name(),
                "checkpoint": checkpoint,
                "feed_last_position": status.last_position,
                "lag_events": consumer.map_or(status.last_position, |c| c.lag),
                "dead_letters": dead,
                "sinks": sinks,
            });
            if json {
                out!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                out!(
                    "cdc relay `{}` on {store}: checkpoint {checkpoint} of {}, lag {} events, {dead} dead letters",
                    relay.name(),
                    status.last_position,
                    v["lag_events"]
                );
                for s in &sinks {
                    out!(
                        "  sink {:<9} events {}  breaker {}",
                        s["sink"].as_str().unwrap_or(""),
                        s["events"],
                        s["breaker"].as_str().unwrap_or("")
                    );
                }
            }
        }
        CdcAction::Replay { from } => {
            let position = match chrono::DateTime::parse_from_rfc3339(&from) {
                Ok(t) => first_at_or_after(&**relay.feed(), t.with_timezone(&Utc)).await?,
                Err(_) => relay
                    .ledger()
                    .position_of(relay.name(), &from)
                    .await?
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--from: relay `{}` has emitted or dead-lettered no event with this id",
                            relay.name()
                        )
                    })?,
            };
            let r = relay.replay(position).await?;
            out!(
                "cdc: replayed {} events from position {position} to every sink ({} delivered, {} dead-lettered; each sink kept what it had)",
                r.read,
                r.emitted,
                r.dead_lettered
            );
        }
        CdcAction::DeadLetters { limit } => {
            let dead = relay
                .ledger()
                .dead_letters(relay.name(), limit.min(10_000))
                .await?;
            out!(
                "{} dead letters of relay `{}` (oldest first):",
                dead.len(),
                relay.name()
            );
            for d in dead {
                out!(
                    "  {:>8}  {:<14} {}  {}",
                    d.position,
                    d.entity,
                    d.event_id,
                    d.reason
                );
            }
        }
    }
    Ok(())
}

/// `data-layer saga list | show | retry | abort`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn saga(settings: Settings, action: SagaAction) -> anyhow::Result<()> {
    use data_layer::saga::SagaState;
    let dl = DataLayer::from_settings(settings).await?;
    let sagas = dl.sagas()?;
    let line = |r: &data_layer::saga::SagaRow| {
        format!(
            "{}  {:<12} {:<24} v{:<3} step {}/{}  {}",
            r.id,
            r.state.name(),
            r.name,
            r.version,
            r.cursor,
            r.steps.len(),
            r.error_kind.as_deref().unwrap_or("")
        )
    };
    match action {
        SagaAction::List { state, limit, json } => {
            let state = state.as_deref().map(SagaState::parse).transpose()?;
            let rows = sagas.log().list(state, limit.clamp(1, 10_000)).await?;
            if json {
                let v: Vec<serde_json::Value> = rows
                    .iter()
                    .map(data_layer::saga::SagaRow::summary)
                    .collect();
                out!("{}", serde_json::Value::Array(v));
            } else {
                out!("{} sagas (newest first):", rows.len());
                for r in &rows {
                    out!("  {}", line(r));
                }
            }
        }
        SagaAction::Show { id, json } => {
            let row = sagas.row(&id).await?;
            let reason = sagas.reason(&row).unwrap_or_else(|e| Some(e.to_string()));
            if json {
                let mut v = row.summary();
                v["reason"] = serde_json::json!(reason);
                out!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                out!("{}", line(&row));
                out!(
                    "  going {:?}, pivot passed: {}, recoveries: {}, fence: {}",
                    row.direction,
                    row.pivoted,
                    row.recoveries,
                    row.fence
                );
                out!(
                    "  lease: {} until {}",
                    row.owner.as_deref().unwrap_or("none"),
                    row.lease_until
                );
                if let Some(r) = reason {
                    out!("  reason: {r}");
                }
                for (i, s) in row.steps.iter().enumerate() {
                    out!(
                        "  {i:>2}. {:<24} {:<12} attempts {} (compensation {})  {}",
                        s.name,
                        format!("{:?}", s.state).to_lowercase(),
                        s.attempts,
                        s.compensation_attempts,
                        s.error_kind.as_deref().unwrap_or("")
                    );
                }
            }
        }
        SagaAction::Retry { id, json } => {
            let row = sagas.retry(&id).await?;
            if json {
                out!("{}", row.summary());
            } else {
                out!(
                    "saga {}: {} again; a runner resumes it",
                    row.id,
                    row.state.name()
                );
            }
        }
        SagaAction::Abort { id, json } => {
            let row = sagas.abort(&id).await?;
            if json {
                out!("{}", row.summary());
            } else {
                out!("saga {}: aborted; a runner runs its compensations", row.id);
            }
        }
    }
    Ok(())
}

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
#[allow(clippy::unused_async)]
async fn saga(_: Settings, _: SagaAction) -> anyhow::Result<()> {
    anyhow::bail!("saga needs a relational store (build with the sqlite or postgres feature)")
}

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
#[allow(clippy::unused_async)]
async fn cdc(_: Settings, _: Option<&str>, _: CdcAction) -> anyhow::Result<()> {
    anyhow::bail!("cdc needs a relational store (build with the sqlite or postgres feature)")
}

/// The position of the first event committed at or after `t` (the feed's
/// end + 1 when none is).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn first_at_or_after(
    feed: &dyn data_layer::feed::ChangeFeed,
    t: chrono::DateTime<Utc>,
) -> anyhow::Result<u64> {
    let mut after = 0;
    loop {
        let page = feed.events_after(after, None, 10_000).await?;
        let Some(last) = page.last() else {
            return Ok(after + 1);
        };
        if let Some(e) = page.iter().find(|e| e.committed_at >= t) {
            return Ok(e.position);
        }
        after = last.position;
    }
}

/// Where `feed tail` starts so that it prints the last `limit` events (of
/// `entity`, if given): windows back from the end, doubling, until one
/// holds enough (at most 40 windows).
async fn tail_start(
    feed: &dyn data_layer::feed::ChangeFeed,
    last: u64,
    entity: Option<&str>,
    limit: usize,
) -> anyhow::Result<u64> {
    let want = limit as u64;
    let mut window = want;
    for _ in 0..40 {
        let from = last.saturating_sub(window);
        // The positions of the matching events in the window, in pages.
        let mut found: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
        let mut after = from;
        for _ in 0..1000 {
            let page = feed.events_after(after, entity, 10_000).await?;
            let Some(end) = page.last().map(|e| e.position) else {
                break;
            };
            for e in &page {
                found.push_back(e.position);
                if found.len() > limit {
                    found.pop_front();
                }
            }
            after = end;
        }
        if found.len() >= limit || from == 0 {
            return Ok(found.front().map_or(from, |p| p.saturating_sub(1)));
        }
        window = window.saturating_mul(2);
    }
    Ok(0)
}

fn print_config(settings: &Settings, json: bool) {
    if json {
        let rows: Vec<serde_json::Value> = settings
            .effective
            .iter()
            .map(|(k, v, o)| serde_json::json!({ "key": k, "value": v, "origin": o.to_string() }))
            .collect();
        out!("{}", serde_json::Value::Array(rows));
        return;
    }
    let width = settings
        .effective
        .iter()
        .map(|(k, ..)| k.len())
        .max()
        .unwrap_or(0);
    let vwidth = settings
        .effective
        .iter()
        .map(|(_, v, _)| v.len().min(48))
        .max()
        .unwrap_or(0);
    for (k, v, o) in &settings.effective {
        out!("{k:<width$}  {v:<vwidth$}  ({o})");
    }
}

fn print_migrations(runs: &[data_layer::migrate::StoreRun]) {
    if runs.is_empty() {
        out!("no configured store to migrate");
    }
    for r in runs {
        let count = |state: &str| r.status.iter().filter(|l| l.state == state).count();
        let latest = r
            .status
            .iter()
            .filter(|l| l.state == "applied")
            .map(|l| l.version)
            .max()
            .map_or_else(|| "none".to_owned(), |v| v.to_string());
        out!(
            "{}: version {latest}; {} applied, {} pending, {} failed, {} drifted{}",
            r.store.name(),
            count("applied"),
            count("pending"),
            count("failed"),
            count("drifted"),
            r.error
                .as_ref()
                .map(|e| format!("\n  error: {e}"))
                .unwrap_or_default()
        );
        for l in &r.status {
            out!(
                "  {:>6}  {:<32} {:<8} {}",
                l.version,
                l.name,
                l.state,
                l.applied_at.map_or_else(String::new, |t| t
                    .format("%Y-%m-%d %H:%M:%S UTC")
                    .to_string())
            );
        }
    }
}

const GIVEN: [&str; 6] = ["Alex", "Sam", "Robin", "Kim", "Jo", "Lee"];
const FAMILY: [&str; 4] = ["Testperson", "Example", "Sample", "Fakename"];

async fn demo(mut settings: Settings) -> anyhow::Result<()> {
    let started = Instant::now();
    let where_ = settings.database_url.to_string();
    // The demo captures its two entities into the change feed unless the
    // settings name others (cdc.entities).
    if settings.cdc.entities.is_empty() {
        settings.cdc.entities = vec!["patients".into(), "appointments".into()];
    }
    // CDC into analytics: the relational store's feed into its own
    // analytics table, under the demo's relay name. Tokens need a key: a
    // random one for this run when privacy.key is unset.
    if settings.cdc.sinks.is_empty() {
        settings.cdc.sinks = vec![match settings.database_url {
            data_layer::connections::DatabaseUrl::Postgres(_) => "postgres".into(),
            _ => "sqlite".into(),
        }];
        settings.cdc.relay = "demo".into();
    }
    let demo_key = !settings.privacy.is_configured();
    if demo_key
        && let Some(k) =
            data_layer::connections::PrivacyKeys::with_current("demo", &dl_privacy_key_text())
    {
        settings.privacy = k;
    }
    // The built-in clinical schema, as `data-layer migrate up` would apply
    // it from migrations/ (repositories never create tables themselves).
    let runs =
        data_layer::migrate::apply(&settings, &data_layer::migrate::domain_scripts()).await?;
    let dl = DataLayer::from_settings(settings).await?;
    let patients = dl.repository::<Patient>().await?;
    let appointments = dl.repository::<Appointment>().await?;
    let store = patients.store();
    out!("data-layer demo on {store} ({where_})");
    // Where the feed stands before this run writes, and a consumer of this
    // run registered now: it starts after the events already there.
    let run = Uuid::new_v4().simple().to_string()[..8].to_uppercase();
    let (feed_start, reader) = match dl.feed(store).await {
        Ok(feed) => {
            let start = feed.status().await?.last_position;
            let reader = dl
                .consumer(store, &format!("demo-{}", run.to_lowercase()), false)
                .await?;
            (Some(start), Some(reader))
        }
        Err(_) => (None, None),
    };
    for run in &runs {
        let applied = run.steps.len();
        let current = run.status.iter().filter(|s| s.state == "applied").count();
        out!(
            "  migrations on {}: {applied} applied now, {current} applied in all (the built-in clinical schema)",
            run.store
        );
    }

    // The run tag (above) keeps this run's rows apart from earlier runs' in
    // the same file.
    let now = Utc::now();
    let people: Vec<Patient> = (0..12usize)
        .map(|i| Patient {
            id: Uuid::new_v4(),
            mrn: format!("DEMO-{run}-{i:03}"),
            given_name: GIVEN[i % GIVEN.len()].to_owned(),
            family_name: FAMILY[i % FAMILY.len()].to_owned(),
            date_of_birth: NaiveDate::from_ymd_opt(
                1950 + i32::try_from(i * 4).unwrap_or(0),
                1 + u32::try_from(i % 12).unwrap_or(0),
                15,
            )
            .unwrap_or_default(),
            phone: (i % 3 == 0).then(|| format!("+1-555-01{i:02}")),
            email: None,
            status: if i % 4 == 3 {
                PatientStatus::Inactive
            } else {
                PatientStatus::Active
            },
            created_at: now,
            version: 1,
        })
        .collect();
    patients.insert_many(&people).await?;
    let visits: Vec<Appointment> = people
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            (0..2i64).map(move |k| Appointment {
                id: Uuid::new_v4(),
                patient_id: p.id,
                starts_at: now + Duration::days(i64::try_from(i).unwrap_or(0) + 7 * k - 3),
                duration_minutes: 30,
                kind: if k == 0 {
                    "checkup".into()
                } else {
                    "follow_up".into()
                },
                status: "scheduled".into(),
                notes: Some("fake clinical note".into()),
                version: 1,
            })
        })
        .collect();
    appointments.insert_many(&visits).await?;
    out!(
        "  inserted {} patients and {} appointments (insert_many: one atomic batch each)",
        people.len(),
        visits.len()
    );

    let first = patients
        .get(&people[0].id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("patient vanished"))?;
    out!(
        "  get by id: patient {} found, status {:?}, version {} (names, MRN and birth date are PHI: not printed)",
        short(first.id),
        first.status,
        first.version
    );
    let some: Vec<Uuid> = people.iter().take(3).map(|p| p.id).collect();
    out!(
        "  get_many of {} keys: {} found",
        some.len(),
        patients.get_many(&some).await?.len()
    );

    // Filtered, sorted, paginated.
    let active_this_run =
        Filter::prefix("mrn", format!("DEMO-{run}-")).and(Filter::eq("status", "active"));
    let mut query = Query::new()
        .filter(active_this_run.clone())
        .sort_asc("family_name")
        .limit(4);
    let mut pages = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut first_cursor = None;
    loop {
        let page = patients.list(&query).await?;
        pages.push(page.items.len());
        for p in &page.items {
            anyhow::ensure!(seen.insert(p.id), "a patient appeared twice across pages");
        }
        match page.next {
            Some(cursor) => {
                first_cursor.get_or_insert_with(|| cursor.clone());
                query = query.after(cursor);
            }
            None => break,
        }
    }
    out!(
        "  list active patients of this run, by family name, 4 per page: pages of {pages:?} = {} patients, none repeated",
        seen.len()
    );
    if let Some(cursor) = first_cursor {
        // Cursors are sealed: they show nothing, and an altered one is refused.
        let text = cursor.as_str().to_owned();
        let mut altered: Vec<char> = text.chars().collect();
        let last = altered.len() - 1;
        altered[last] = if altered[last] == 'A' { 'B' } else { 'A' };
        let refused = patients
            .list(
                &Query::new()
                    .filter(active_this_run.clone())
                    .sort_asc("family_name")
                    .limit(4)
                    .after(data_layer::Cursor(altered.into_iter().collect())),
            )
            .await;
        out!(
            "  a cursor is sealed ({} opaque characters, key `{}`); altered by one character it is refused: {}",
            text.len(),
            text.split('.').next().unwrap_or_default(),
            match refused {
                Err(e) => e.to_string(),
                Ok(_) => anyhow::bail!("an altered cursor was accepted"),
            }
        );
    }
    let count = patients.count(&active_this_run).await?;
    out!("  count of the same filter: {count}");

    let upcoming = appointments
        .list(
            &Query::new()
                .filter(
                    Filter::is_in("patient_id", some.clone()).and(Filter::gte("starts_at", now)),
                )
                .sort_asc("starts_at")
                .limit(10),
        )
        .await?;
    out!(
        "  upcoming appointments of 3 patients: {} (first: {} on {})",
        upcoming.items.len(),
        upcoming.items.first().map_or("-", |a| a.kind.as_str()),
        upcoming.items.first().map_or_else(
            || "-".to_owned(),
            |a| a.starts_at.format("%Y-%m-%d %H:%M UTC").to_string()
        )
    );

    // Optimistic concurrency: two writers read version 1; the second loses.
    let target = people[1].id;
    let read_by_both = patients
        .get(&target)
        .await?
        .ok_or_else(|| anyhow::anyhow!("patient vanished"))?
        .version;
    let won = patients
        .update(
            &target,
            &Patch::new()
                .set("status", "inactive")
                .expect_version(read_by_both),
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("patient vanished"))?;
    out!(
        "  writer A updated patient {} with version {read_by_both}: now version {}",
        short(target),
        won.version
    );
    match patients
        .update(
            &target,
            &Patch::new()
                .set("phone", "+1-555-0199")
                .expect_version(read_by_both),
        )
        .await
    {
        Err(e @ Error::Conflict { .. }) => {
            out!("  writer B, also expecting version {read_by_both}, was refused: {e}")
        }
        Ok(_) => anyhow::bail!("a stale write went through"),
        Err(e) => return Err(e.into()),
    }

    // A transaction that fails half-way rolls back whole: its insert is
    // undone, and neither write becomes a change event.
    let visit = Appointment {
        id: Uuid::new_v4(),
        patient_id: target,
        starts_at: now + Duration::days(30),
        duration_minutes: 15,
        kind: "follow_up".into(),
        status: "scheduled".into(),
        notes: None,
        version: 1,
    };
    let events_before = match &feed_start {
        Some(_) => Some(dl.feed(store).await?.status().await?.last_position),
        None => None,
    };
    let failed: Result<(), Error> = dl
        .transaction(store, |tx| {
            let visit = visit.clone();
            async move {
                tx.repository::<Appointment>().await?.insert(&visit).await?;
                // Stale: writer A moved the patient past this version.
                tx.repository::<Patient>()
                    .await?
                    .update(
                        &target,
                        &Patch::new()
                            .set("status", "active")
                            .expect_version(read_by_both),
                    )
                    .await?;
                Ok(())
            }
        })
        .await;
    match failed {
        Err(e) => out!(
            "  a transaction inserted an appointment, then its update was refused ({e}): rolled back, the appointment {} ({} new events)",
            if appointments.get(&visit.id).await?.is_none() {
                "is not there"
            } else {
                anyhow::bail!("a rolled-back insert is visible")
            },
            match events_before {
                Some(before) =>
                    (dl.feed(store).await?.status().await?.last_position - before).to_string(),
                None => "no feed:".to_owned(),
            }
        ),
        Ok(()) => anyhow::bail!("a transaction with a stale update committed"),
    }

    // The change feed: every committed write above is one event, in commit
    // order. A consumer reads from its checkpoint; the tail shows no values.
    if let Some(start) = feed_start {
        let feed = dl.feed(store).await?;
        let events = feed.events_after(start, None, 10_000).await?;
        let count = |op| events.iter().filter(|e| e.op == op).count();
        out!(
            "  change feed: this run wrote {} events ({} created, {} updated, {} deleted), positions {}..{}",
            events.len(),
            count(data_layer::feed::ChangeOp::Created),
            count(data_layer::feed::ChangeOp::Updated),
            count(data_layer::feed::ChangeOp::Deleted),
            events.first().map_or(0, |e| e.position),
            events.last().map_or(0, |e| e.position),
        );
        out!("  feed tail (entity, operation, key token, sequence; never a value):");
        for e in events.iter().rev().take(4).rev() {
            out!(
                "    {:>6}  {:<12} {:<7} {}  seq {}",
                e.position,
                e.entity,
                e.op,
                e.key_token(),
                e.seq
            );
        }
    }
    if let Some(reader) = reader {
        // Batches of 16, each acknowledged once handled: after a crash the
        // consumer would resume after the last batch it acknowledged.
        let (mut batches, mut read) = (0, 0);
        for _ in 0..1000 {
            let batch = reader.next_batch(16).await?;
            let Some(last) = batch.last() else { break };
            reader.ack(last).await?;
            batches += 1;
            read += batch.len();
        }
        let feed = reader.feed();
        let lag = feed
            .status()
            .await?
            .consumers
            .iter()
            .find(|c| c.name == reader.name())
            .map_or(0, |c| c.lag);
        out!(
            "  consumer `{}` read {read} events in {batches} acknowledged batches; lag now {lag} (removed, so it holds back no pruning)",
            reader.name()
        );
        feed.unregister(reader.name()).await?;
    }

    demo_saga(&dl, &run).await?;
    if let Some(start) = feed_start {
        demo_cdc(&dl, store, start, demo_key).await?;
    }

    let total = patients
        .count(&Filter::prefix("mrn", format!("DEMO-{run}-")))
        .await?;
    let all_rows = patients.count(&Filter::all()).await?;
    out!(
        "done in {} ms: {total} patients written by this run ({all_rows} in the store, earlier runs included)",
        started.elapsed().as_millis()
    );
    Ok(())
}

/// The demo's CDC step: the relay redacts each change by the schema's
/// rules and delivers it to analytics as a CloudEvent, with a record of
/// what it redacted (never a value).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn demo_cdc(
    dl: &DataLayer,
    store: data_layer::Store,
    start: u64,
    demo_key: bool,
) -> anyhow::Result<()> {
    // CDC: the relay redacts each change by the schema's rules and
    // delivers it to analytics as a CloudEvent, with a record of what it
    // redacted (never a value).
    let relay = dl.cdc_relay(store).await?;
    let report = relay.drain(10_000).await?;
    out!(
        "  cdc: relay `{}` delivered {} events to the {} analytics table ({} dead-lettered), profile {}{}",
        relay.name(),
        report.emitted,
        relay.sinks()[0].sink().name(),
        report.dead_lettered,
        dl.settings().cdc.profile,
        if demo_key {
            " (privacy.key unset: tokens from a random key of this run)"
        } else {
            ""
        }
    );
    let last = dl
        .feed(store)
        .await?
        .events_after(start, Some("patients"), 10_000)
        .await?
        .into_iter()
        .rfind(|e| e.op == data_layer::feed::ChangeOp::Created);
    if let Some(e) = last {
        if let Some(seen) = dl.cdc_sink_event(&e.id()).await? {
            let v: serde_json::Value = serde_json::from_str(&seen)?;
            out!("  what analytics sees of a new patient:");
            for line in serde_json::to_string_pretty(&v)?.lines() {
                out!("    {line}");
            }
        }
        if let Some(record) = dl.cdc_ledger()?.redaction(relay.name(), &e.id()).await? {
            out!("  its redaction record (kept beside the relay's checkpoint):");
            for f in record["fields"].as_array().into_iter().flatten() {
                out!(
                    "    {:<14} rule {:<10} -> {}",
                    f["field"].as_str().unwrap_or(""),
                    f["rule"].as_str().unwrap_or(""),
                    f["action"].as_str().unwrap_or("")
                );
            }
        }
    }
    // The demo's own relay holds back no pruning once it is done; a relay
    // of the settings (cdc.relay) keeps its consumer.
    if dl.settings().cdc.relay == "demo" {
        relay.feed().unregister(relay.name()).await?;
    }
    Ok(())
}

/// The demo's saga: register a patient, then book their first
/// appointment (the pivot). Run twice: once it completes; once the booking
/// fails and the registration is undone by its compensation.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn demo_saga(dl: &DataLayer, run: &str) -> anyhow::Result<()> {
    use data_layer::saga::{Outcome, SagaDefinition, Step, StepError};
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Visit {
        patient: Patient,
        minutes: i32,
    }
    let sagas = dl.sagas()?;
    let (register, undo, book) = (dl.clone(), dl.clone(), dl.clone());
    sagas.register(SagaDefinition::new(
        "demo_first_visit",
        1,
        vec![
            Step::compensatable(
                "register_patient",
                move |ctx| {
                    let dl = register.clone();
                    async move {
                        let visit: Visit = ctx.input()?;
                        let patients = dl.repository::<Patient>().await?;
                        // Once: a resumed saga finds the patient there.
                        if patients.get(&visit.patient.id).await?.is_none() {
                            patients.insert(&visit.patient).await?;
                        }
                        Ok(serde_json::Value::Null)
                    }
                },
                move |ctx| {
                    let dl = undo.clone();
                    async move {
                        let visit: Visit = ctx.input()?;
                        dl.repository::<Patient>()
                            .await?
                            .delete(&visit.patient.id)
                            .await?;
                        Ok(serde_json::Value::Null)
                    }
                },
            ),
            Step::pivot("book_first_appointment", move |ctx| {
                let dl = book.clone();
                async move {
                    let visit: Visit = ctx.input()?;
                    if visit.minutes <= 0 {
                        return Err(StepError::failed("the appointment has no length"));
                    }
                    let appointment = Appointment {
                        // The same id for every attempt: booked once.
                        id: Uuid::new_v5(&ctx.saga_id(), b"first_appointment"),
                        patient_id: visit.patient.id,
                        starts_at: Utc::now() + Duration::days(7),
                        duration_minutes: visit.minutes,
                        kind: "first_visit".into(),
                        status: "scheduled".into(),
                        notes: None,
                        version: 1,
                    };
                    let appointments = dl.repository::<Appointment>().await?;
                    if appointments.get(&appointment.id).await?.is_none() {
                        appointments.insert(&appointment).await?;
                    }
                    Ok(serde_json::json!(appointment.id))
                }
            }),
        ],
    )?)?;
    let patients = dl.repository::<Patient>().await?;
    for (n, minutes) in [(1, 30), (2, 0)] {
        let patient = Patient {
            id: Uuid::new_v4(),
            mrn: format!("SAGA-{run}-{n}"),
            given_name: "Ada".into(),
            family_name: "Byron".into(),
            date_of_birth: NaiveDate::from_ymd_opt(1980, 12, 10).unwrap_or_default(),
            phone: None,
            email: None,
            status: PatientStatus::Active,
            created_at: Utc::now(),
            version: 1,
        };
        let id = patient.id;
        let (saga, outcome) = sagas
            .run("demo_first_visit", &Visit { patient, minutes })
            .await?;
        let kept = patients.get(&id).await?.is_some();
        let what = match outcome {
            Outcome::Completed => {
                "completed: patient registered and first appointment booked".to_owned()
            }
            Outcome::Compensated { step } => {
                format!("compensated: `{step}` failed, the registration was undone")
            }
            other => format!("{other:?}"),
        };
        out!("  saga {saga}: {what} (patient in the store: {kept})");
    }
    Ok(())
}

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
#[allow(clippy::unused_async)]
async fn demo_saga(_: &DataLayer, _: &str) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
#[allow(clippy::unused_async)]
async fn demo_cdc(_: &DataLayer, _: data_layer::Store, _: u64, _: bool) -> anyhow::Result<()> {
    Ok(())
}

/// A random key for a demo run (base64 of 32 random bytes).
fn dl_privacy_key_text() -> String {
    data_layer::privacy::new_key_text()
}

fn short(id: Uuid) -> String {
    id.simple().to_string()[..8].to_owned()
}
