//! MongoDB, Redis and ScyllaDB runners.
//!
//! | store | history | lock | a script |
//! | --- | --- | --- | --- |
//! | MongoDB | collection `dl_migrations` (`_id` = version) | lease document `dl_migrations_lock`, taken by one conditional upsert, with an expiry | its commands in order (`runCommand`) |
//! | Redis | hash `<prefix>:dl_migrations` | `SET <prefix>:dl_migrations_lock NX PX`, renewed and released by owner | one `EVAL` (atomic) |
//! | ScyllaDB | table `dl_migrations` in the keyspace | lease row with a TTL, by lightweight transaction (`IF NOT EXISTS` / `IF owner = ?`); without LWT (the CQL test server) a read-then-write that is **not** safe for concurrent runners, and says so in a warning | its statements in order |
//!
//! None of them has multi-statement transactions: a script that fails
//! part-way leaves its earlier statements applied; the failure is recorded
//! and later runs refuse until the file is fixed or the failure resolved.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::DateTime;
use futures::TryStreamExt as _;
use mongodb::bson::{self, Bson, Document, doc};

use crate::engine::{AfterRun, Applied, Target};
use crate::error::MigrationError;
use crate::script::{ScriptFile, StoreKind};

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

// ------------------------------------------------------------------ MongoDB

/// The MongoDB runner.
#[derive(Debug, Clone)]
pub struct MongoTarget {
    db: mongodb::Database,
}

impl MongoTarget {
    /// A runner on database `db`.
    #[must_use]
    pub fn new(db: mongodb::Database) -> Self {
        MongoTarget { db }
    }

    fn err(what: &str, e: mongodb::error::Error) -> MigrationError {
        MigrationError::store(StoreKind::Mongo, what, e)
    }

    fn history_coll(&self) -> mongodb::Collection<Document> {
        self.db.collection("dl_migrations")
    }

    fn lock_coll(&self) -> mongodb::Collection<Document> {
        self.db.collection("dl_migrations_lock")
    }

    /// [`MigrationError::LeaseLost`] unless the lease document names
    /// `owner`.
    async fn fence(&self, owner: &str) -> Result<(), MigrationError> {
        let held = self
            .lock_coll()
            .count_documents(doc! { "_id": "lock", "owner": owner })
            .await
            .map_err(|e| Self::err("cannot check the migration lease", e))?;
        if held == 1 {
            Ok(())
        } else {
            Err(MigrationError::LeaseLost {
                store: StoreKind::Mongo,
            })
        }
    }

    async fn after(&self, after: &AfterRun) -> Result<(), MigrationError> {
        match after {
            AfterRun::Record(row) => self.record(row).await,
            AfterRun::Forget(v) => self.forget(*v).await,
        }
    }
}

pub use crate::split::mongo_documents;

fn mongo_message(e: &mongodb::error::Error) -> String {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => {
            format!("{} ({}): {}", c.code_name, c.code, c.message)
        }
        _ => e.to_string(),
    }
}

#[async_trait]
impl Target for MongoTarget {
    fn store(&self) -> StoreKind {
        StoreKind::Mongo
    }

    async fn ensure_history(&self) -> Result<(), MigrationError> {
        // Collections appear on first write.
        Ok(())
    }

    async fn try_lock(&self, owner: &str, ttl: Duration) -> Result<bool, MigrationError> {
        let now = bson::DateTime::now();
        let until = bson::DateTime::from_millis(now.timestamp_millis().saturating_add(ttl_ms(ttl)));
        let r = self
            .lock_coll()
            .update_one(
                doc! { "_id": "lock", "$or": [ { "owner": owner }, { "expires_at": { "$lt": now } } ] },
                doc! { "$set": { "owner": owner, "expires_at": until } },
            )
            .upsert(true)
            .await;
        match r {
            Ok(_) => Ok(true),
            // The upsert collided with a live lease held by another owner.
            Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) if w.code == 11000) => {
                Ok(false)
            }
            Err(e) if e.to_string().contains("E11000") => Ok(false),
            Err(e) => Err(Self::err("cannot take the migration lease", e)),
        }
    }

    async fn unlock(&self, owner: &str) -> Result<(), MigrationError> {
        self.lock_coll()
            .delete_one(doc! { "_id": "lock", "owner": owner })
            .await
            .map(|_| ())
            .map_err(|e| Self::err("cannot release the migration lease", e))
    }

    async fn history(&self) -> Result<Vec<Applied>, MigrationError> {
        let docs: Vec<Document> = self
            .history_coll()
            .find(doc! {})
            .await
            .map_err(|e| Self::err("cannot read the history", e))?
            .try_collect()
            .await
            .map_err(|e| Self::err("cannot read the history", e))?;
        Ok(docs
            .iter()
            .map(|d| Applied {
                version: u64_of(d.get_i64("_id").unwrap_or_default()),
                name: d.get_str("name").unwrap_or_default().to_owned(),
                checksum: d.get_str("checksum").unwrap_or_default().to_owned(),
                applied_at: d
                    .get_datetime("applied_at")
                    .map(|t| {
                        DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or_default()
                    })
                    .unwrap_or_default(),
                duration_ms: u64_of(d.get_i64("duration_ms").unwrap_or_default()),
                outcome: d.get_str("outcome").unwrap_or_default().to_owned(),
                error: d.get_str("error").ok().map(str::to_owned),
            })
            .collect())
    }

    async fn run(
        &self,
        script: &ScriptFile,
        _transactional: bool,
        after: &AfterRun,
        owner: &str,
    ) -> Result<(), MigrationError> {
        let commands =
            mongo_documents(&script.body).map_err(|reason| MigrationError::BadScript {
                path: script.path.clone(),
                reason,
            })?;
        // MongoDB runs a script's commands without a transaction: the
        // lease is checked before the first command and before the history
        // row (a takeover between the two is not fenced for the commands
        // themselves; a re-run must tolerate them, as after a failure).
        self.fence(owner).await?;
        for (i, command) in commands.into_iter().enumerate() {
            let result = self.db.run_command(command).await;
            let failure = match result {
                Err(e) => Some(mongo_message(&e)),
                // Write commands report per-document errors in the reply.
                Ok(reply) => reply
                    .get_array("writeErrors")
                    .ok()
                    .and_then(|errors| errors.first())
                    .and_then(Bson::as_document)
                    .map(|w| format!("write error: {}", w.get_str("errmsg").unwrap_or("unknown"))),
            };
            if let Some(message) = failure {
                return Err(MigrationError::ScriptFailed {
                    store: StoreKind::Mongo,
                    path: script.path.clone(),
                    statement: i + 1,
                    line: None,
                    message,
                });
            }
        }
        // The history row is written only while the lease still names
        // this runner.
        self.fence(owner).await?;
        self.after(after).await
    }

    async fn record(&self, row: &Applied) -> Result<(), MigrationError> {
        let mut d = doc! {
            "_id": i64_of(row.version),
            "name": &row.name,
            "checksum": &row.checksum,
            "applied_at": bson::DateTime::from_millis(row.applied_at.timestamp_millis()),
            "duration_ms": i64_of(row.duration_ms),
            "outcome": &row.outcome,
        };
        if let Some(e) = &row.error {
            d.insert("error", e);
        }
        self.history_coll()
            .replace_one(doc! { "_id": i64_of(row.version) }, d)
            .upsert(true)
            .await
            .map(|_| ())
            .map_err(|e| Self::err("cannot record the history", e))
    }

    async fn forget(&self, version: u64) -> Result<(), MigrationError> {
        self.history_coll()
            .delete_one(doc! { "_id": i64_of(version) })
            .await
            .map(|_| ())
            .map_err(|e| Self::err("cannot update the history", e))
    }
}

// -------------------------------------------------------------------- Redis

/// The Redis runner.
#[derive(Clone)]
pub struct RedisTarget {
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

const RENEW: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur == false then
  return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) and 1 or 0
elseif cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

impl RedisTarget {
    /// A runner whose keys start with `prefix` (the store's key prefix).
    #[must_use]
    pub fn new(conn: redis::aio::ConnectionManager, prefix: &str) -> Self {
        RedisTarget {
            conn,
            prefix: prefix.to_owned(),
        }
    }

    fn err(what: &str, e: redis::RedisError) -> MigrationError {
        MigrationError::store(StoreKind::Redis, what, e)
    }

    fn history_key(&self) -> String {
        format!("{}:dl_migrations", self.prefix)
    }

    fn lock_key(&self) -> String {
        format!("{}:dl_migrations_lock", self.prefix)
    }

    fn row_json(row: &Applied) -> String {
        serde_json::to_string(&StoredRow {
            name: row.name.clone(),
            checksum: row.checksum.clone(),
            applied_at_ms: row.applied_at.timestamp_millis(),
            duration_ms: row.duration_ms,
            outcome: row.outcome.clone(),
            error: row.error.clone(),
        })
        .unwrap_or_default()
    }
}

/// The line of a Lua error (`user_script:3: ...`).
fn lua_line(message: &str) -> Option<u32> {
    let rest = &message[message.find("user_script:")? + "user_script:".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredRow {
    name: String,
    checksum: String,
    applied_at_ms: i64,
    duration_ms: u64,
    outcome: String,
    error: Option<String>,
}

#[async_trait]
impl Target for RedisTarget {
    fn store(&self) -> StoreKind {
        StoreKind::Redis
    }

    async fn ensure_history(&self) -> Result<(), MigrationError> {
        Ok(())
    }

    async fn try_lock(&self, owner: &str, ttl: Duration) -> Result<bool, MigrationError> {
        let got: i64 = redis::Script::new(RENEW)
            .key(self.lock_key())
            .arg(owner)
            .arg(ttl_ms(ttl))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| Self::err("cannot take the migration lease", e))?;
        Ok(got == 1)
    }

    async fn unlock(&self, owner: &str) -> Result<(), MigrationError> {
        let _: i64 = redis::Script::new(RELEASE)
            .key(self.lock_key())
            .arg(owner)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| Self::err("cannot release the migration lease", e))?;
        Ok(())
    }

    async fn history(&self) -> Result<Vec<Applied>, MigrationError> {
        let all: Vec<(u64, String)> = redis::cmd("HGETALL")
            .arg(self.history_key())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| Self::err("cannot read the history", e))?;
        all.into_iter()
            .map(|(version, json)| {
                let r: StoredRow =
                    serde_json::from_str(&json).map_err(|e| MigrationError::Store {
                        store: StoreKind::Redis,
                        reason: format!("history entry {version} does not parse"),
                        source: Some(Box::new(e)),
                    })?;
                Ok(Applied {
                    version,
                    name: r.name,
                    checksum: r.checksum,
                    applied_at: DateTime::from_timestamp_millis(r.applied_at_ms)
                        .unwrap_or_default(),
                    duration_ms: r.duration_ms,
                    outcome: r.outcome,
                    error: r.error,
                })
            })
            .collect()
    }

    /// The script, the lease check and the history row in one `EVAL`
    /// (atomic): the script runs, and its row is written, only while the
    /// lease key still names this runner. KEYS: the lease, the history.
    /// ARGV: the key prefix (as scripts expect it as ARGV[1]), the owner,
    /// then the history change (`record`, version, row JSON / `forget`,
    /// version).
    async fn run(
        &self,
        script: &ScriptFile,
        _transactional: bool,
        after: &AfterRun,
        owner: &str,
    ) -> Result<(), MigrationError> {
        let wrapped = format!(
            "if redis.call('GET', KEYS[1]) ~= ARGV[2] then return redis.error_reply('DLLEASE lost') end\n\
             local function dl_script()\n{}\nend\n\
             local r = dl_script()\n\
             if ARGV[3] == 'record' then redis.call('HSET', KEYS[2], ARGV[4], ARGV[5]) \
             else redis.call('HDEL', KEYS[2], ARGV[4]) end\n\
             return r",
            script.body
        );
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(&wrapped)
            .arg(2)
            .arg(self.lock_key())
            .arg(self.history_key())
            .arg(&self.prefix)
            .arg(owner);
        match after {
            AfterRun::Record(row) => {
                cmd.arg("record").arg(row.version).arg(Self::row_json(row));
            }
            AfterRun::Forget(v) => {
                cmd.arg("forget").arg(*v);
            }
        }
        let r: Result<redis::Value, _> = cmd.query_async(&mut self.conn.clone()).await;
        if let Err(e) = r {
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                return Err(Self::err("cannot run the script", e));
            }
            let message = e.to_string();
            if message.contains("DLLEASE") {
                return Err(MigrationError::LeaseLost {
                    store: StoreKind::Redis,
                });
            }
            return Err(MigrationError::ScriptFailed {
                store: StoreKind::Redis,
                path: script.path.clone(),
                statement: 1,
                // The script starts on the wrapper's third line.
                line: lua_line(&message).map(|l| l.saturating_sub(2)),
                message,
            });
        }
        Ok(())
    }

    async fn record(&self, row: &Applied) -> Result<(), MigrationError> {
        let json = Self::row_json(row);
        let _: i64 = redis::cmd("HSET")
            .arg(self.history_key())
            .arg(row.version)
            .arg(json)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| Self::err("cannot record the history", e))?;
        Ok(())
    }

    async fn forget(&self, version: u64) -> Result<(), MigrationError> {
        let _: i64 = redis::cmd("HDEL")
            .arg(self.history_key())
            .arg(version)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| Self::err("cannot update the history", e))?;
        Ok(())
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lua_lines() {
        assert_eq!(
            lua_line("ERR user_script:2: Unknown Redis command called from script script: 1234"),
            Some(2)
        );
        assert_eq!(
            lua_line("Unknown Redis command called from script script: ca90, on @user_script:2."),
            Some(2)
        );
        assert_eq!(lua_line("something else"), None);
    }

    #[test]
    fn extended_json_commands() {
        let docs = mongo_documents(r#"[{"createIndexes": "x", "indexes": [{"key": {"at": 1}, "name": "ttl", "expireAfterSeconds": 60}]}]"#)
            .expect("parses");
        assert_eq!(docs.len(), 1);
        assert!(
            mongo_documents(r#"[{"insert": "x", "documents": [{"n": {"$numberLong": "x"}}]}]"#)
                .is_err()
        );
    }
}
