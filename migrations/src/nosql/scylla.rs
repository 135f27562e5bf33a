//! The ScyllaDB runner.

#![allow(unused_imports)] // the shared imports, not all used by every runner

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::DateTime;
use futures::TryStreamExt as _;

use super::{i64_of, ttl_ms, u64_of};
use crate::engine::{AfterRun, Applied, Target};
use crate::error::MigrationError;
use crate::script::{ScriptFile, StoreKind};

// ----------------------------------------------------------------- ScyllaDB

/// The ScyllaDB runner.
#[derive(Debug, Clone)]
pub struct ScyllaTarget {
    session: Arc<scylla::client::session::Session>,
    keyspace: String,
    lwt: bool,
    create_keyspace: bool,
}

impl ScyllaTarget {
    /// A runner in `keyspace`, which must exist (its replication is the
    /// cluster's decision: a runner that made it would choose replication
    /// factor 1, one lost node from lost data); see
    /// [`ScyllaTarget::create_keyspace_for_development`].
    /// `lightweight_transactions`: take the lease atomically;
    /// without it (servers that lack LWT) concurrent runners are not safe.
    ///
    /// `session` must be the runner's own: scripts run after `USE
    /// <keyspace>`, which changes the keyspace of every connection of the
    /// session (a service's session would then resolve its unqualified
    /// names there).
    ///
    /// # Errors
    /// A keyspace name that is not `[a-z_][a-z0-9_]*`.
    pub fn new(
        session: Arc<scylla::client::session::Session>,
        keyspace: &str,
        lightweight_transactions: bool,
    ) -> Result<Self, MigrationError> {
        let ok = !keyspace.is_empty()
            && keyspace.len() <= 48
            && keyspace
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !keyspace.as_bytes()[0].is_ascii_digit();
        if !ok {
            return Err(MigrationError::Unsupported {
                store: StoreKind::Scylla,
                reason: "a keyspace must match [a-z_][a-z0-9_]* (at most 48 bytes)".into(),
            });
        }
        Ok(ScyllaTarget {
            session,
            keyspace: keyspace.to_owned(),
            lwt: lightweight_transactions,
            create_keyspace: false,
        })
    }

    /// Creates a missing keyspace with SimpleStrategy and replication
    /// factor 1: for development and test servers only
    /// (`scylla.create_keyspace`). Without it a missing keyspace is an
    /// error that says how to create it.
    #[must_use]
    pub fn create_keyspace_for_development(mut self, create: bool) -> Self {
        self.create_keyspace = create;
        self
    }

    /// Whether the keyspace exists: a statement in it fails when it does
    /// not (asked of the server, so it works where schema metadata is not
    /// served).
    async fn keyspace_exists(&self) -> Result<bool, MigrationError> {
        let r = self
            .session
            .query_unpaged(
                format!(
                    "CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, owner text, expires_at timestamp)",
                    self.table("dl_migrations_lock")
                ),
                (),
            )
            .await;
        match r {
            Ok(_) => Ok(true),
            // The statement is fixed and valid: the server finds it invalid
            // only when its keyspace does not exist ("Cannot add table ...
            // to non existing keyspace").
            Err(scylla::errors::ExecutionError::LastAttemptError(
                scylla::errors::RequestAttemptError::DbError(scylla::errors::DbError::Invalid, _),
            )) => Ok(false),
            Err(e) => Err(Self::err("cannot create the history table", e)),
        }
    }

    fn err(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> MigrationError {
        MigrationError::store(StoreKind::Scylla, what, e)
    }

    fn table(&self, name: &str) -> String {
        format!("{}.{name}", self.keyspace)
    }

    /// The lease row: its owner and expiry (ms since the epoch).
    async fn lease(&self) -> Result<Option<(String, i64)>, MigrationError> {
        let r = self
            .session
            .query_unpaged(
                format!(
                    "SELECT owner, expires_at FROM {} WHERE id = 'lock'",
                    self.table("dl_migrations_lock")
                ),
                (),
            )
            .await
            .map_err(|e| Self::err("cannot read the migration lease", e))?
            .into_rows_result()
            .map_err(|e| Self::err("cannot read the migration lease", e))?;
        let row = r
            .maybe_first_row::<(Option<String>, Option<scylla::value::CqlTimestamp>)>()
            .map_err(|e| Self::err("cannot read the migration lease", e))?;
        Ok(row.and_then(|(o, t)| Some((o?, t.map_or(0, |t| t.0)))))
    }

    /// [`MigrationError::LeaseLost`] unless the lease row names `owner` (a
    /// SERIAL read where the server has lightweight transactions; a plain
    /// read without, as on the CQL test server). Scylla has no
    /// transactions: a takeover right after the check is not fenced.
    async fn fence(&self, owner: &str) -> Result<(), MigrationError> {
        let held = if self.lwt {
            // A SERIAL read: linearizable with the lightweight transactions
            // that take and renew the lease (and writes nothing).
            let mut read = scylla::statement::unprepared::Statement::new(format!(
                "SELECT owner FROM {} WHERE id = 'lock'",
                self.table("dl_migrations_lock")
            ));
            read.set_consistency(scylla::statement::Consistency::Serial);
            let rows = self
                .session
                .query_unpaged(read, ())
                .await
                .map_err(|e| Self::err("cannot check the migration lease", e))?
                .into_rows_result()
                .map_err(|e| Self::err("cannot check the migration lease", e))?;
            rows.maybe_first_row::<(Option<String>,)>()
                .map_err(|e| Self::err("cannot check the migration lease", e))?
                .and_then(|(o,)| o)
                .is_some_and(|o| o == owner)
        } else {
            self.lease().await?.is_some_and(|(o, _)| o == owner)
        };
        if held {
            Ok(())
        } else {
            Err(MigrationError::LeaseLost {
                store: StoreKind::Scylla,
            })
        }
    }

    async fn lwt(
        &self,
        cql: String,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<bool, MigrationError> {
        let r = self
            .session
            .query_unpaged(cql, values)
            .await
            .map_err(|e| Self::err("cannot take the migration lease", e))?
            .into_rows_result()
            .map_err(|e| Self::err("cannot take the migration lease", e))?;
        Self::applied(&r)
    }

    fn applied(
        r: &scylla::response::query_result::QueryRowsResult,
    ) -> Result<bool, MigrationError> {
        // An LWT answers with its `[applied]` column first.
        let row = r
            .maybe_first_row::<scylla::value::Row>()
            .map_err(|e| Self::err("cannot read the lease answer", e))?;
        Ok(matches!(
            row.as_ref()
                .and_then(|row| row.columns.first())
                .and_then(Option::as_ref),
            Some(scylla::value::CqlValue::Boolean(true))
        ))
    }
}

#[async_trait]
impl Target for ScyllaTarget {
    fn store(&self) -> StoreKind {
        StoreKind::Scylla
    }

    async fn ensure_history(&self) -> Result<(), MigrationError> {
        if !self.keyspace_exists().await? {
            if !self.create_keyspace {
                return Err(MigrationError::Unsupported {
                    store: StoreKind::Scylla,
                    reason: format!(
                        "keyspace `{}` does not exist: create it with the replication your cluster needs \
                         (CREATE KEYSPACE {} WITH replication = {{'class': 'NetworkTopologyStrategy', '<dc>': 3}}), \
                         or, for development only, set scylla.create_keyspace = true (replication factor 1)",
                        self.keyspace, self.keyspace
                    ),
                });
            }
            self.session
                .query_unpaged(
                    format!(
                        "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}",
                        self.keyspace
                    ),
                    (),
                )
                .await
                .map_err(|e| Self::err("cannot create the keyspace", e))?;
        }
        for cql in [
            format!(
                "CREATE TABLE IF NOT EXISTS {} (version bigint PRIMARY KEY, name text, checksum text, \
                 applied_at timestamp, duration_ms bigint, outcome text, error text)",
                self.table("dl_migrations")
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, owner text, expires_at timestamp)",
                self.table("dl_migrations_lock")
            ),
        ] {
            self.session
                .query_unpaged(cql, ())
                .await
                .map_err(|e| Self::err("cannot create the history table", e))?;
        }
        Ok(())
    }

    async fn try_lock(&self, owner: &str, ttl: Duration) -> Result<bool, MigrationError> {
        // The expiry is a column (the lease logic does not depend on the
        // server honouring TTLs); the TTL only cleans the row up later.
        let secs = i32::try_from(ttl.as_secs().max(1).saturating_mul(2)).unwrap_or(i32::MAX);
        let now = chrono::Utc::now().timestamp_millis();
        let until = scylla::value::CqlTimestamp(now.saturating_add(ttl_ms(ttl)));
        let now = scylla::value::CqlTimestamp(now);
        let table = self.table("dl_migrations_lock");
        if self.lwt {
            // Renew our own lease, take over an expired one, or take a free
            // one: each a lightweight transaction.
            let set = format!(
                "UPDATE {table} USING TTL {secs} SET owner = ?, expires_at = ? WHERE id = ?"
            );
            if self
                .lwt(format!("{set} IF owner = ?"), (owner, until, "lock", owner))
                .await?
                || self
                    .lwt(
                        format!("{set} IF expires_at < ?"),
                        (owner, until, "lock", now),
                    )
                    .await?
            {
                return Ok(true);
            }
            return self
                .lwt(
                    format!("INSERT INTO {table} (id, owner, expires_at) VALUES (?, ?, ?) IF NOT EXISTS USING TTL {secs}"),
                    ("lock", owner, until),
                )
                .await;
        }
        // No LWT: read, then write. Two runners can both pass the read.
        match self.lease().await? {
            Some((o, expires)) if o != owner && expires >= now.0 => Ok(false),
            _ => {
                tracing::warn!(
                    store = "scylla",
                    "taking the migration lease without lightweight transactions: not safe if several runners start at once"
                );
                self.session
                    .query_unpaged(
                        format!("INSERT INTO {table} (id, owner, expires_at) VALUES (?, ?, ?) USING TTL {secs}"),
                        ("lock", owner, until),
                    )
                    .await
                    .map_err(|e| Self::err("cannot take the migration lease", e))?;
                Ok(true)
            }
        }
    }

    async fn unlock(&self, owner: &str) -> Result<(), MigrationError> {
        let table = self.table("dl_migrations_lock");
        if self.lwt {
            self.session
                .query_unpaged(
                    format!("DELETE FROM {table} WHERE id = ? IF owner = ?"),
                    ("lock", owner),
                )
                .await
                .map_err(|e| Self::err("cannot release the migration lease", e))?;
        } else if self.lease().await?.is_some_and(|(o, _)| o == owner) {
            self.session
                .query_unpaged(format!("DELETE FROM {table} WHERE id = 'lock'"), ())
                .await
                .map_err(|e| Self::err("cannot release the migration lease", e))?;
        }
        Ok(())
    }

    async fn history(&self) -> Result<Vec<Applied>, MigrationError> {
        type HistoryRow = (
            i64,
            Option<String>,
            Option<String>,
            Option<scylla::value::CqlTimestamp>,
            Option<i64>,
            Option<String>,
            Option<String>,
        );
        let result = self
            .session
            .query_unpaged(
                format!(
                    "SELECT version, name, checksum, applied_at, duration_ms, outcome, error FROM {}",
                    self.table("dl_migrations")
                ),
                (),
            )
            .await;
        let result = match result {
            Ok(r) => r,
            // No history table yet (status before the first run).
            // (ScyllaDB: "unconfigured table"; the CQL test server:
            // "Keyspace or table does nor exist".)
            Err(e) if is_missing_table(&e.to_string()) => {
                return Ok(Vec::new());
            }
            Err(e) => return Err(Self::err("cannot read the history", e)),
        };
        let rows = result
            .into_rows_result()
            .map_err(|e| Self::err("cannot read the history", e))?;
        let mut out = Vec::new();
        for row in rows
            .rows::<HistoryRow>()
            .map_err(|e| Self::err("cannot read the history", e))?
        {
            let r = row.map_err(|e| Self::err("cannot read the history", e))?;
            out.push(Applied {
                version: u64_of(r.0),
                name: r.1.unwrap_or_default(),
                checksum: r.2.unwrap_or_default(),
                applied_at: r
                    .3
                    .and_then(|t| DateTime::from_timestamp_millis(t.0))
                    .unwrap_or_default(),
                duration_ms: u64_of(r.4.unwrap_or_default()),
                outcome: r.5.unwrap_or_default(),
                error: r.6,
            });
        }
        Ok(out)
    }

    async fn run(
        &self,
        script: &ScriptFile,
        _transactional: bool,
        after: &AfterRun,
        owner: &str,
    ) -> Result<(), MigrationError> {
        let statements =
            crate::split::statements(&script.body, StoreKind::Scylla).map_err(|reason| {
                MigrationError::BadScript {
                    path: script.path.clone(),
                    reason,
                }
            })?;
        // No transactions: the lease is checked before the first
        // statement and before the history row.
        self.fence(owner).await?;
        self.session
            .use_keyspace(&self.keyspace, false)
            .await
            .map_err(|e| Self::err("cannot use the keyspace", e))?;
        for (i, stmt) in statements.iter().enumerate() {
            if let Err(e) = self.session.query_unpaged(stmt.text.clone(), ()).await {
                return Err(MigrationError::ScriptFailed {
                    store: StoreKind::Scylla,
                    path: script.path.clone(),
                    statement: i + 1,
                    line: Some(stmt.line),
                    message: e.to_string(),
                });
            }
        }
        self.fence(owner).await?;
        match after {
            AfterRun::Record(row) => self.record(row).await,
            AfterRun::Forget(v) => self.forget(*v).await,
        }
    }

    async fn record(&self, row: &Applied) -> Result<(), MigrationError> {
        self.session
            .query_unpaged(
                format!(
                    "INSERT INTO {} (version, name, checksum, applied_at, duration_ms, outcome, error) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    self.table("dl_migrations")
                ),
                (
                    i64_of(row.version),
                    &row.name,
                    &row.checksum,
                    scylla::value::CqlTimestamp(row.applied_at.timestamp_millis()),
                    i64_of(row.duration_ms),
                    &row.outcome,
                    &row.error,
                ),
            )
            .await
            .map(|_| ())
            .map_err(|e| Self::err("cannot record the history", e))
    }

    async fn forget(&self, version: u64) -> Result<(), MigrationError> {
        self.session
            .query_unpaged(
                format!(
                    "DELETE FROM {} WHERE version = ?",
                    self.table("dl_migrations")
                ),
                (i64_of(version),),
            )
            .await
            .map(|_| ())
            .map_err(|e| Self::err("cannot update the history", e))
    }
}

fn is_missing_table(message: &str) -> bool {
    let m = message.to_lowercase();
    m.contains("unconfigured table")
        || ((m.contains("table") || m.contains("keyspace")) && m.contains("exist"))
}
