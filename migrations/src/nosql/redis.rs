//! The Redis runner.

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
        // A migration script walks a whole keyspace (SCAN), so it cannot
        // name its keys in KEYS as the backend's scripts do: it says
        // `no-cluster`, and a Redis Cluster refuses it outright instead of
        // running it on one node's part of the data.
        let wrapped = format!(
            "#!lua flags=no-cluster\n\
             if redis.call('GET', KEYS[1]) ~= ARGV[2] then return redis.error_reply('DLLEASE lost') end\n\
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
                // The script starts on the wrapper's fourth line.
                line: lua_line(&message).map(|l| l.saturating_sub(3)),
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

#[cfg(test)]
mod tests {
    use super::lua_line;

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
}
