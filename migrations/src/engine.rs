//! The one engine every store's runner shares: history, checksums, order,
//! the lock, up, down, verify and status. A store supplies a [`Target`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::MigrationError;
use crate::script::{Migration, ScriptFile, StoreKind};

/// One row of a store's migration history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    /// The version.
    pub version: u64,
    /// The name.
    pub name: String,
    /// The up script's checksum when it ran.
    pub checksum: String,
    /// When it finished.
    pub applied_at: DateTime<Utc>,
    /// How long it took.
    pub duration_ms: u64,
    /// `applied` or `failed`.
    pub outcome: String,
    /// For a failure: the error (file, statement, line, the store's
    /// message).
    pub error: Option<String>,
}

/// What to do in the history when a script succeeds (in the same
/// transaction as the script where the store has one).
#[derive(Debug, Clone)]
pub enum AfterRun {
    /// Record (insert or overwrite) this row.
    Record(Applied),
    /// Remove this version's row (a down).
    Forget(u64),
}

/// One store as the engine sees it.
#[async_trait]
pub trait Target: Send + Sync {
    /// Which store.
    fn store(&self) -> StoreKind;
    /// Creates the history (and lock) table or collection if missing.
    async fn ensure_history(&self) -> Result<(), MigrationError>;
    /// Takes or renews the migration lock for `owner` for `ttl`; `false`
    /// when another live owner holds it.
    async fn try_lock(&self, owner: &str, ttl: Duration) -> Result<bool, MigrationError>;
    /// Releases the lock if `owner` holds it.
    async fn unlock(&self, owner: &str) -> Result<(), MigrationError>;
    /// The history, any order (empty when it does not exist yet).
    async fn history(&self) -> Result<Vec<Applied>, MigrationError>;
    /// Runs one script (in a transaction when `transactional` and the store
    /// has them) and then `after`, **fenced** by the lease of `owner`: the
    /// script's transaction and its history row commit only while `owner`
    /// still holds the lease (checked in the same transaction, or the same
    /// atomic script, where the store can), else
    /// [`MigrationError::LeaseLost`]. A failing statement is
    /// [`MigrationError::ScriptFailed`].
    async fn run(
        &self,
        script: &ScriptFile,
        transactional: bool,
        after: &AfterRun,
        owner: &str,
    ) -> Result<(), MigrationError>;
    /// Writes one history row (insert or overwrite by version).
    async fn record(&self, row: &Applied) -> Result<(), MigrationError>;
    /// Removes one history row.
    async fn forget(&self, version: u64) -> Result<(), MigrationError>;
}

/// Options of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Up: stop after this version; down: revert the versions above it.
    pub to: Option<u64>,
    /// Report what would run; change nothing (no lock, no history).
    pub dry_run: bool,
    /// Accept applied scripts whose files changed (their new checksum is
    /// recorded).
    pub allow_drift: bool,
    /// Apply pending scripts older than the newest applied one.
    pub allow_out_of_order: bool,
    /// How long to wait for another runner's lock.
    pub lock_wait: Duration,
    /// The lock's lease: a runner that dies holding it blocks others at
    /// most this long.
    pub lease: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            to: None,
            dry_run: false,
            allow_drift: false,
            allow_out_of_order: false,
            lock_wait: Duration::from_secs(120),
            lease: Duration::from_secs(60),
        }
    }
}

/// One script's line in a run's output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    /// The store.
    pub store: StoreKind,
    /// The version.
    pub version: u64,
    /// The name.
    pub name: String,
    /// `apply`, `revert`, `would apply` or `would revert`.
    pub action: &'static str,
    /// `ok` or `failed`.
    pub outcome: &'static str,
    /// How long it took.
    pub duration_ms: u64,
}

/// A script's state in `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusLine {
    /// The version.
    pub version: u64,
    /// The name.
    pub name: String,
    /// `applied`, `pending`, `failed`, `drifted` (applied, file changed) or
    /// `missing` (applied, no file).
    pub state: &'static str,
    /// When it was applied (or failed).
    pub applied_at: Option<DateTime<Utc>>,
}

/// A unique owner name for this runner's lock.
#[must_use]
pub fn owner_id() -> String {
    format!(
        "{}-{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into()),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

fn by_version(history: Vec<Applied>) -> BTreeMap<u64, Applied> {
    history.into_iter().map(|a| (a.version, a)).collect()
}

/// Every script's state, and every history row without a file.
///
/// # Errors
/// When the history cannot be read.
pub async fn status(
    target: &dyn Target,
    migrations: &[Migration],
) -> Result<Vec<StatusLine>, MigrationError> {
    let mut history = by_version(target.history().await?);
    let mut out = Vec::new();
    for m in migrations {
        let line = match history.remove(&m.version) {
            None => StatusLine {
                version: m.version,
                name: m.name.clone(),
                state: "pending",
                applied_at: None,
            },
            Some(a) => StatusLine {
                version: m.version,
                name: m.name.clone(),
                state: if a.outcome == "failed" {
                    "failed"
                } else if a.checksum != m.up.checksum {
                    "drifted"
                } else {
                    "applied"
                },
                applied_at: Some(a.applied_at),
            },
        };
        out.push(line);
    }
    for (_, a) in history {
        out.push(StatusLine {
            version: a.version,
            name: a.name,
            state: if a.outcome == "failed" {
                "failed"
            } else {
                "missing"
            },
            applied_at: Some(a.applied_at),
        });
    }
    out.sort_by_key(|l| l.version);
    Ok(out)
}

/// The checks `up` makes before running anything: failed scripts left
/// unresolved, drift, out-of-order pending scripts. Returns the pending
/// migrations, in order, up to `options.to`.
fn plan<'m>(
    store: StoreKind,
    migrations: &'m [Migration],
    history: &BTreeMap<u64, Applied>,
    options: &Options,
) -> Result<Vec<&'m Migration>, MigrationError> {
    for m in migrations {
        let Some(a) = history.get(&m.version) else {
            continue;
        };
        if a.outcome == "failed" {
            if a.checksum == m.up.checksum {
                return Err(MigrationError::PreviouslyFailed {
                    store,
                    label: m.label(),
                    version: m.version,
                    reason: a.error.clone().unwrap_or_default(),
                });
            }
            continue; // fixed since: it runs again
        }
        if a.checksum != m.up.checksum && !options.allow_drift {
            return Err(MigrationError::Drift {
                store,
                path: m.up.path.clone(),
                recorded: a.checksum.clone(),
                actual: m.up.checksum.clone(),
            });
        }
    }
    let latest = history
        .values()
        .filter(|a| a.outcome == "applied")
        .map(|a| a.version)
        .max();
    let pending: Vec<&Migration> = migrations
        .iter()
        .filter(|m| {
            history
                .get(&m.version)
                .is_none_or(|a| a.outcome == "failed")
        })
        .filter(|m| options.to.is_none_or(|to| m.version <= to))
        .collect();
    if let (Some(latest), false) = (latest, options.allow_out_of_order)
        && let Some(m) = pending.iter().find(|m| m.version < latest)
    {
        return Err(MigrationError::OutOfOrder {
            store,
            path: m.up.path.clone(),
            version: m.version,
            latest,
        });
    }
    Ok(pending)
}

/// Holds the lock for a run; released by [`Lease::release`].
struct Lease<'t> {
    target: &'t dyn Target,
    owner: String,
    ttl: Duration,
}

impl<'t> Lease<'t> {
    async fn take(target: &'t dyn Target, options: &Options) -> Result<Self, MigrationError> {
        let owner = owner_id();
        let started = Instant::now();
        while !target.try_lock(&owner, options.lease).await? {
            if started.elapsed() >= options.lock_wait {
                return Err(MigrationError::Locked {
                    store: target.store(),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Lease {
            target,
            owner,
            ttl: options.lease,
        })
    }

    /// Renews the lease between scripts; fails if another runner took it
    /// over (this one was too slow).
    async fn renew(&self) -> Result<(), MigrationError> {
        if self.target.try_lock(&self.owner, self.ttl).await? {
            Ok(())
        } else {
            Err(MigrationError::Locked {
                store: self.target.store(),
                waited: Duration::ZERO,
            })
        }
    }

    /// Runs `work` while renewing the lease every third of its length, so
    /// a script that outlasts the lease is not taken over by another
    /// runner. A renewal that fails (the store busy with the script) is
    /// retried at the next beat; the renewal before the next script checks
    /// the lease is still ours.
    async fn while_held<T>(&self, work: impl Future<Output = T>) -> T {
        let beat = (self.ttl / 3).max(Duration::from_millis(50));
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                () = tokio::time::sleep(beat) => {
                    if let Err(e) = self.target.try_lock(&self.owner, self.ttl).await {
                        tracing::warn!(store = %self.target.store(), error = %e, "could not renew the migration lease");
                    }
                }
            }
        }
    }

    async fn release(self) -> Result<(), MigrationError> {
        self.target.unlock(&self.owner).await
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Applies the pending scripts in version order, under the store's lock,
/// calling `progress` after each. Stops at the first failure, which is
/// recorded in the history (earlier scripts stay applied).
///
/// # Errors
/// A failed check (drift, order, an unresolved failure), the lock, or the
/// failing script.
pub async fn up(
    target: &dyn Target,
    migrations: &[Migration],
    options: &Options,
    progress: &mut (dyn FnMut(&Step) + Send),
) -> Result<Vec<Step>, MigrationError> {
    let store = target.store();
    if options.dry_run {
        let history = by_version(target.history().await?);
        let pending = plan(store, migrations, &history, options)?;
        let steps = pending
            .into_iter()
            .map(|m| Step {
                store,
                version: m.version,
                name: m.name.clone(),
                action: "would apply",
                outcome: "ok",
                duration_ms: 0,
            })
            .inspect(|s| progress(s))
            .collect();
        return Ok(steps);
    }
    target.ensure_history().await?;
    let lease = Lease::take(target, options).await?;
    let result = up_locked(target, migrations, options, progress, &lease).await;
    let released = lease.release().await;
    let steps = result?;
    released?;
    Ok(steps)
}

async fn up_locked(
    target: &dyn Target,
    migrations: &[Migration],
    options: &Options,
    progress: &mut (dyn FnMut(&Step) + Send),
    lease: &Lease<'_>,
) -> Result<Vec<Step>, MigrationError> {
    let store = target.store();
    // Read under the lock: another runner may have applied them meanwhile.
    let history = by_version(target.history().await?);
    let pending = plan(store, migrations, &history, options)?;
    if options.allow_drift {
        for m in migrations {
            if let Some(a) = history.get(&m.version)
                && a.outcome == "applied"
                && a.checksum != m.up.checksum
            {
                target
                    .record(&Applied {
                        checksum: m.up.checksum.clone(),
                        ..a.clone()
                    })
                    .await?;
            }
        }
    }
    let mut steps = Vec::new();
    for m in pending {
        lease.renew().await?;
        let started = Instant::now();
        let row = |outcome: &str, error: Option<String>| Applied {
            version: m.version,
            name: m.name.clone(),
            checksum: m.up.checksum.clone(),
            applied_at: Utc::now(),
            duration_ms: millis(started.elapsed()),
            outcome: outcome.to_owned(),
            error,
        };
        let after = AfterRun::Record(row("applied", None));
        let result = lease
            .while_held(target.run(&m.up, !m.no_transaction, &after, &lease.owner))
            .await;
        let mut step = Step {
            store,
            version: m.version,
            name: m.name.clone(),
            action: "apply",
            outcome: "ok",
            duration_ms: millis(started.elapsed()),
        };
        if let Err(e) = result {
            step.outcome = "failed";
            progress(&step);
            if matches!(e, MigrationError::ScriptFailed { .. }) {
                target.record(&row("failed", Some(e.to_string()))).await?;
            }
            return Err(e);
        }
        progress(&step);
        steps.push(step);
    }
    Ok(steps)
}

/// Reverts the applied scripts above `options.to` (required), newest
/// first, with their down scripts, under the store's lock.
///
/// # Errors
/// No `--to`, a script without a down script (checked before anything
/// runs), the lock, or the failing script.
pub async fn down(
    target: &dyn Target,
    migrations: &[Migration],
    options: &Options,
    progress: &mut (dyn FnMut(&Step) + Send),
) -> Result<Vec<Step>, MigrationError> {
    let store = target.store();
    let Some(to) = options.to else {
        return Err(MigrationError::Unsupported {
            store,
            reason: "down needs --to VERSION (0 reverts everything)".into(),
        });
    };
    let lease = if options.dry_run {
        None
    } else {
        target.ensure_history().await?;
        Some(Lease::take(target, options).await?)
    };
    let result = async {
        let history = by_version(target.history().await?);
        let files: BTreeMap<u64, &Migration> = migrations.iter().map(|m| (m.version, m)).collect();
        let mut todo = Vec::new();
        for a in history.values().rev() {
            if a.version <= to || a.outcome != "applied" {
                continue;
            }
            let Some(m) = files.get(&a.version) else {
                return Err(MigrationError::NoDown {
                    store,
                    label: format!("{}_{}", a.version, a.name),
                    ext: store.extension(),
                });
            };
            let Some(down) = &m.down else {
                return Err(MigrationError::NoDown {
                    store,
                    label: m.label(),
                    ext: store.extension(),
                });
            };
            todo.push((*m, down));
        }
        let mut steps = Vec::new();
        for (m, down) in todo {
            let started = Instant::now();
            let mut step = Step {
                store,
                version: m.version,
                name: m.name.clone(),
                action: if options.dry_run {
                    "would revert"
                } else {
                    "revert"
                },
                outcome: "ok",
                duration_ms: 0,
            };
            if !options.dry_run {
                if let Some(lease) = &lease {
                    lease.renew().await?;
                }
                let after = AfterRun::Forget(m.version);
                let owner = lease.as_ref().map_or("", |l| l.owner.as_str());
                let run = target.run(down, !m.no_transaction, &after, owner);
                let r = match &lease {
                    Some(lease) => lease.while_held(run).await,
                    None => run.await,
                };
                step.duration_ms = millis(started.elapsed());
                if let Err(e) = r {
                    step.outcome = "failed";
                    progress(&step);
                    return Err(e);
                }
            }
            progress(&step);
            steps.push(step);
        }
        Ok(steps)
    }
    .await;
    if let Some(lease) = lease {
        let released = lease.release().await;
        let steps = result?;
        released?;
        return Ok(steps);
    }
    result
}

/// Checks without changing anything: unresolved failures, drift, order,
/// and pending scripts are all errors; `Ok` when the store is up to date.
///
/// # Errors
/// The first problem found; pending scripts are reported as
/// `Unsupported` naming how many and the first.
pub async fn verify(
    target: &dyn Target,
    migrations: &[Migration],
    options: &Options,
) -> Result<(), MigrationError> {
    let store = target.store();
    let history = by_version(target.history().await?);
    let pending = plan(store, migrations, &history, options)?;
    if let Some(first) = pending.first() {
        return Err(MigrationError::Unsupported {
            store,
            reason: format!(
                "{} pending script(s), first {}",
                pending.len(),
                first.up.path.display()
            ),
        });
    }
    Ok(())
}

/// Marks a failed script resolved: its failure is removed from the
/// history, so the next `up` runs it again (after you fixed the file or
/// undid its partial effects by hand).
///
/// # Errors
/// When that version has no failure recorded.
pub async fn resolve(target: &dyn Target, version: u64) -> Result<(), MigrationError> {
    let store = target.store();
    let history = by_version(target.history().await?);
    match history.get(&version) {
        Some(a) if a.outcome == "failed" => target.forget(version).await,
        _ => Err(MigrationError::Unsupported {
            store,
            reason: format!("version {version} has no failure to resolve"),
        }),
    }
}
