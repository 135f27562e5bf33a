//! A step's effect, applied once: each store's own way to keep a step's
//! idempotency key ([`StepContext::idempotency_key`]) beside its effect,
//! in one atomic write, so that an attempt run again (after a timeout, or
//! by the runner that took a dead one's saga over) finds it applied.
//!
//! | store | how | helper |
//! | --- | --- | --- |
//! | SQLite, PostgreSQL | a guard row in `dl_saga_effects`, in the same transaction | `DataLayer::once_in` (data-layer) with [`SagaEffect`] |
//! | MongoDB | a guard document in `dl_saga_effects` (its key is `_id`, a unique index), in the same session transaction | `DataLayer::once_in` |
//! | Redis | `SET NX` of a guard key in the same script as the step's commands | [`redis`] (`DataLayer::once_redis`) |
//! | ScyllaDB | `INSERT … IF NOT EXISTS` of the effect's own row, keyed by [`StepContext::id_for`] | [`scylla`] |
//!
//! An effect found applied answers [`Once::AlreadyApplied`]: the step's
//! output is then what it would have been, if the step derives it from
//! the saga (its input, [`StepContext::id_for`]) rather than from the
//! store's answer.

use serde::{Deserialize, Serialize};

use crate::context::StepContext;
#[cfg(any(feature = "redis", feature = "scylla"))]
use crate::context::StepError;

/// What a helper of this module did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Once<R> {
    /// The effect was applied now; what the step's closure returned.
    Applied(R),
    /// The effect had been applied before (by an earlier attempt, here or
    /// in another process): nothing was done.
    AlreadyApplied,
}

impl<R> Once<R> {
    /// Whether the effect was applied now.
    #[must_use]
    pub fn is_applied(&self) -> bool {
        matches!(self, Once::Applied(_))
    }

    /// What the closure returned, if it ran now.
    #[must_use]
    pub fn applied(self) -> Option<R> {
        match self {
            Once::Applied(r) => Some(r),
            Once::AlreadyApplied => None,
        }
    }
}

/// The guard of an effect applied once: a row (document) of
/// `dl_saga_effects` keyed by the step's idempotency key, written in the
/// same transaction as the effect (migration `4_sagas` on SQLite and
/// PostgreSQL, `3_sagas` on MongoDB). The key names a saga id, a step and
/// a phase: no value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, dl_models::Entity)]
#[entity(name = "dl_saga_effects")]
pub struct SagaEffect {
    /// `<saga id>.<step>.<action|compensation>`.
    #[key]
    #[field(max_len = 200)]
    pub key: String,
    /// When it was applied (milliseconds since the Unix epoch).
    pub at: i64,
}

impl SagaEffect {
    /// The guard of the effect of `ctx`'s attempt, applied now.
    #[must_use]
    pub fn of(ctx: &StepContext) -> Self {
        SagaEffect {
            key: ctx.idempotency_key(),
            at: chrono::Utc::now().timestamp_millis(),
        }
    }
}

/// The Redis key of `ctx`'s guard under `prefix` (a valid key prefix):
/// `<prefix>:dl_saga_once:<idempotency key>`.
#[must_use]
pub fn redis_guard_key(prefix: &str, ctx: &StepContext) -> String {
    format!("{prefix}:dl_saga_once:{}", ctx.idempotency_key())
}

/// The script: `SET NX` of the guard, then each command; a command that
/// fails deletes the guard again and fails the script.
#[cfg(feature = "redis")]
const ONCE_SCRIPT: &str = r"
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[1]) then return 0 end
local i = 4
for c = 1, tonumber(ARGV[3]) do
  local n = tonumber(ARGV[i])
  local args = {}
  for k = 1, n do args[k] = ARGV[i + k] end
  local r = redis.pcall(unpack(args))
  if type(r) == 'table' and r.err then
    redis.call('DEL', KEYS[1])
    return redis.error_reply('DL_ONCE command ' .. c .. ' failed')
  end
  i = i + n + 1
end
return 1
";

/// The most commands one [`redis`] call runs.
pub const MAX_REDIS_COMMANDS: usize = 64;

/// Runs `commands` on Redis once for `ctx`'s step: in one script, after
/// `SET <prefix>:dl_saga_once:<idempotency key> NX PX <guard_ttl>`. A
/// guard found set answers [`Once::AlreadyApplied`] and runs nothing. A
/// command Redis refuses (a wrong type, say) deletes the guard and fails
/// the step as `unknown`: the commands before it stay applied (Redis
/// has no rollback), and the step's compensation runs if the saga turns
/// back. The guard must outlive every retry of the saga: keep `guard_ttl`
/// longer than a saga can stay stuck (days).
///
/// # Errors
/// `failed` for no commands, more than [`MAX_REDIS_COMMANDS`], a bad
/// prefix or a TTL under a second; the store's error as a [`StepError`].
#[cfg(feature = "redis")]
pub async fn redis<C>(
    conn: &mut C,
    prefix: &str,
    ctx: &StepContext,
    guard_ttl: std::time::Duration,
    commands: &[::redis::Cmd],
) -> Result<Once<()>, StepError>
where
    C: ::redis::aio::ConnectionLike + Send,
{
    if commands.is_empty() || commands.len() > MAX_REDIS_COMMANDS {
        return Err(StepError::failed(
            "once::redis runs 1 to 64 commands in its script",
        ));
    }
    if !dl_models::is_valid_identifier(prefix) {
        return Err(StepError::failed(
            "a key prefix must match [a-z_][a-z0-9_]* (at most 48 bytes)",
        ));
    }
    if guard_ttl < std::time::Duration::from_secs(1) {
        return Err(StepError::failed(
            "the guard's TTL must be at least a second",
        ));
    }
    let script = ::redis::Script::new(ONCE_SCRIPT);
    let mut inv = script.key(redis_guard_key(prefix, ctx));
    inv.arg(u64::try_from(guard_ttl.as_millis()).unwrap_or(u64::MAX))
        .arg(chrono::Utc::now().timestamp_millis())
        .arg(commands.len());
    for cmd in commands {
        let args: Vec<&[u8]> = cmd
            .args_iter()
            .filter_map(|a| match a {
                ::redis::Arg::Simple(b) => Some(b),
                _ => None,
            })
            .collect();
        inv.arg(args.len());
        for a in args {
            inv.arg(a);
        }
    }
    let applied: i64 = inv.invoke_async(conn).await.map_err(|e| {
        if e.to_string().contains("DL_ONCE") {
            StepError::unknown(
                "a command of the step's Redis script failed: the commands before it may have applied",
            )
        } else if e.is_timeout() || e.is_connection_dropped() || e.is_io_error() {
            StepError::unknown("Redis did not answer the step's script")
        } else {
            StepError::retry("Redis refused the step's script")
        }
    })?;
    Ok(if applied == 1 {
        Once::Applied(())
    } else {
        Once::AlreadyApplied
    })
}

/// Runs `insert` (an `INSERT INTO … VALUES …` of one row whose key the
/// step derives from the saga, [`StepContext::id_for`]) on ScyllaDB once:
/// as a lightweight transaction, `IF NOT EXISTS` appended, when
/// `lightweight_transactions` is on — `[applied] = false` answers
/// [`Once::AlreadyApplied`]. With it off (a server without LWT, such as
/// the CQL test server) the insert runs as it is: an upsert of the same
/// row, the same values, which a second attempt writes again (no second
/// row), but which cannot tell whether it ran before.
///
/// # Errors
/// `failed` for a statement that is not a plain `INSERT` (or has an `IF`
/// or `USING` of its own); `unknown` when the server did not answer, or
/// answered an LWT without `[applied]`; `retry` for other store errors.
#[cfg(feature = "scylla")]
pub async fn scylla(
    session: &::scylla::client::session::Session,
    insert: &str,
    values: impl ::scylla::serialize::row::SerializeRow,
    lightweight_transactions: bool,
) -> Result<Once<()>, StepError> {
    let upper = insert.trim().to_ascii_uppercase();
    if !upper.starts_with("INSERT INTO ")
        || upper.contains(" IF ")
        || upper.contains(" USING ")
        || upper.contains(';')
    {
        return Err(StepError::failed(
            "once::scylla takes one plain INSERT INTO … VALUES … (no IF, USING or ;)",
        ));
    }
    let cql = if lightweight_transactions {
        format!("{} IF NOT EXISTS", insert.trim())
    } else {
        insert.trim().to_owned()
    };
    let result = session.query_unpaged(cql, values).await.map_err(|e| {
        use ::scylla::errors::{ExecutionError, RequestAttemptError};
        match e {
            ExecutionError::RequestTimeout(_)
            | ExecutionError::LastAttemptError(RequestAttemptError::BrokenConnectionError(_)) => {
                StepError::unknown("ScyllaDB did not answer the step's insert")
            }
            _ => StepError::retry("ScyllaDB refused the step's insert"),
        }
    })?;
    if !lightweight_transactions {
        return Ok(Once::Applied(()));
    }
    let applied = result.into_rows_result().ok().and_then(|rows| {
        rows.first_row::<::scylla::value::Row>()
            .ok()
            .and_then(|row| row.columns.into_iter().next().flatten())
    });
    match applied {
        Some(::scylla::value::CqlValue::Boolean(true)) => Ok(Once::Applied(())),
        Some(::scylla::value::CqlValue::Boolean(false)) => Ok(Once::AlreadyApplied),
        _ => Err(StepError::unknown(
            "the server answered the insert without [applied]: it has no lightweight transactions \
             (call once::scylla with lightweight_transactions = false for it)",
        )),
    }
}
