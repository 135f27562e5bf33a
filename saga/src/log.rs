//! The saga log in the relational store (`migrations/<store>/4_sagas.sql`):
//! one row per saga, written once per step, every write fenced by the
//! lease's token.

use dl_repositories::sql_target::SqlTarget;
use dl_repositories::{Error, Operation};
use serde::{Deserialize, Serialize};

/// A saga's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaState {
    /// Going forward.
    Running,
    /// Going backward: running the compensations.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// Turned back: every compensation needed has run.
    Compensated,
    /// A compensation or a retriable step kept failing past the limit, or
    /// its definition's version is not registered: waits for an operator
    /// (`data-layer saga retry`), never dropped.
    Stuck,
}

impl SagaState {
    /// Its name in the log and the CLI.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            SagaState::Running => "running",
            SagaState::Compensating => "compensating",
            SagaState::Completed => "completed",
            SagaState::Compensated => "compensated",
            SagaState::Stuck => "stuck",
        }
    }

    /// The state named `name`.
    ///
    /// # Errors
    /// `Invalid` naming `--state`.
    pub fn parse(name: &str) -> Result<Self, Error> {
        Ok(match name {
            "running" => SagaState::Running,
            "compensating" => SagaState::Compensating,
            "completed" => SagaState::Completed,
            "compensated" => SagaState::Compensated,
            "stuck" => SagaState::Stuck,
            _ => {
                return Err(Error::invalid(
                    "saga",
                    Some("--state"),
                    "expected running, compensating, completed, compensated or stuck",
                ));
            }
        })
    }

    /// Whether it has ended (completed or compensated).
    #[must_use]
    pub const fn is_final(self) -> bool {
        matches!(self, SagaState::Completed | SagaState::Compensated)
    }
}

impl std::fmt::Display for SagaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which way a saga goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Running actions.
    Forward,
    /// Running compensations, last step first.
    Backward,
}

impl Direction {
    const fn name(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Backward => "backward",
        }
    }
}

/// A step's state in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Not run yet.
    Pending,
    /// Its action succeeded.
    Done,
    /// Its action failed and did nothing.
    Failed,
    /// Its action failed and may have applied its effect: compensated if
    /// the saga turns back.
    Unknown,
    /// Its compensation ran.
    Compensated,
}

/// One step in the log. The output and the error are sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step's name.
    pub name: String,
    /// Its state.
    pub state: StepState,
    /// Attempts of its action.
    pub attempts: u32,
    /// Attempts of its compensation.
    #[serde(default)]
    pub compensation_attempts: u32,
    /// Its output, sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The kind of its last failure (`failed`, `retry`, `unknown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// When its state last changed (ms since the epoch).
    #[serde(default)]
    pub at: i64,
}

impl StepRecord {
    pub(crate) fn pending(name: &str) -> Self {
        StepRecord {
            name: name.to_owned(),
            state: StepState::Pending,
            attempts: 0,
            compensation_attempts: 0,
            output: None,
            error_kind: None,
            at: 0,
        }
    }
}

/// One saga's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaRow {
    /// Its id.
    pub id: String,
    /// Its definition's name.
    pub name: String,
    /// Its definition's version.
    pub version: u32,
    /// Its state.
    pub state: SagaState,
    /// Which way it goes (a stuck saga resumes that way).
    pub direction: Direction,
    /// Forward: the next step to run. Backward: the steps before it may
    /// still need compensating.
    pub cursor: usize,
    /// Whether its pivot succeeded (it can no longer turn back).
    pub pivoted: bool,
    /// Its input, sealed.
    pub input: String,
    /// Its steps.
    pub steps: Vec<StepRecord>,
    /// Why it turned back or is stuck: the kind.
    pub error_kind: Option<String>,
    /// Why, sealed.
    pub error: Option<String>,
    /// The runner holding its lease.
    pub owner: Option<String>,
    /// When the lease expires (ms since the epoch).
    pub lease_until: i64,
    /// The lease's fencing token.
    pub fence: u64,
    /// How many times a runner took it over.
    pub recoveries: u32,
    /// When it started (ms).
    pub created_at: i64,
    /// When it last changed (ms).
    pub updated_at: i64,
}

impl SagaRow {
    /// The row as JSON without its sealed parts (input, outputs, reason):
    /// what `data-layer saga list | show --json` prints.
    #[must_use]
    pub fn summary(&self) -> serde_json::Value {
        let steps: Vec<serde_json::Value> = self
            .steps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "state": s.state,
                    "attempts": s.attempts,
                    "compensation_attempts": s.compensation_attempts,
                    "error_kind": s.error_kind,
                    "at": s.at,
                })
            })
            .collect();
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "state": self.state,
            "direction": self.direction,
            "cursor": self.cursor,
            "pivoted": self.pivoted,
            "steps": steps,
            "error_kind": self.error_kind,
            "owner": self.owner,
            "lease_until": self.lease_until,
            "fence": self.fence,
            "recoveries": self.recoveries,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

/// What a step's write changes in the row.
#[derive(Debug, Clone)]
pub(crate) struct Save<'a> {
    pub state: SagaState,
    pub direction: Direction,
    pub cursor: usize,
    pub pivoted: bool,
    pub steps: &'a [StepRecord],
    pub error_kind: Option<&'a str>,
    pub error: Option<&'a str>,
    /// The lease's new expiry; `None` releases it (a saga that ended or
    /// is stuck).
    pub lease_until: Option<i64>,
    pub now: i64,
}

/// The log's tables in the relational store.
#[derive(Debug, Clone)]
pub struct SagaLog {
    target: SqlTarget,
}

const COLUMNS: &str = "\"id\", \"name\", \"version\", \"state\", \"direction\", \"cursor\", \"pivoted\", \
    \"input\", \"steps\", \"error_kind\", \"error\", \"owner\", \"lease_until\", \"fence\", \
    \"recoveries\", \"created_at\", \"updated_at\"";

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn corrupt(store: dl_repositories::Store, what: &'static str) -> Error {
    Error::Backend {
        store,
        operation: Operation::Saga,
        message: format!("the saga log holds a row it cannot read ({what})"),
        retryable: false,
        source: None,
    }
}

macro_rules! decode_row {
    ($row:expr, $store:expr) => {{
        use sqlx::Row as _;
        let store = $store;
        let r = $row;
        let get_i = |c: &str| -> Result<i64, Error> {
            r.try_get::<i64, _>(c)
                .map_err(|_| corrupt(store, "a number"))
        };
        let get_s = |c: &str| -> Result<String, Error> {
            r.try_get::<String, _>(c)
                .map_err(|_| corrupt(store, "a text"))
        };
        let get_o = |c: &str| -> Result<Option<String>, Error> {
            r.try_get::<Option<String>, _>(c)
                .map_err(|_| corrupt(store, "a text"))
        };
        let state = match get_s("state")?.as_str() {
            "running" => SagaState::Running,
            "compensating" => SagaState::Compensating,
            "completed" => SagaState::Completed,
            "compensated" => SagaState::Compensated,
            "stuck" => SagaState::Stuck,
            _ => return Err(corrupt(store, "its state")),
        };
        let direction = match get_s("direction")?.as_str() {
            "forward" => Direction::Forward,
            "backward" => Direction::Backward,
            _ => return Err(corrupt(store, "its direction")),
        };
        let steps: Vec<StepRecord> =
            serde_json::from_str(&get_s("steps")?).map_err(|_| corrupt(store, "its steps"))?;
        SagaRow {
            id: get_s("id")?,
            name: get_s("name")?,
            version: u32::try_from(get_i("version")?).map_err(|_| corrupt(store, "its version"))?,
            state,
            direction,
            cursor: usize::try_from(get_i("cursor")?).map_err(|_| corrupt(store, "its cursor"))?,
            pivoted: get_i("pivoted")? != 0,
            input: get_s("input")?,
            steps,
            error_kind: get_o("error_kind")?,
            error: get_o("error")?,
            owner: get_o("owner")?,
            lease_until: get_i("lease_until")?,
            fence: u64::try_from(get_i("fence")?).unwrap_or(0),
            recoveries: u32::try_from(get_i("recoveries")?).unwrap_or(u32::MAX),
            created_at: get_i("created_at")?,
            updated_at: get_i("updated_at")?,
        }
    }};
}

/// `$body` on the target's pool, whichever store it is (the statements
/// are the same text on both; `$N` parameters).
macro_rules! on_target {
    ($target:expr, $pool:ident => $body:expr) => {
        match $target {
            #[cfg(feature = "sqlite")]
            SqlTarget::Sqlite($pool) => $body,
            #[cfg(feature = "postgres")]
            SqlTarget::Postgres($pool, _) => $body,
        }
    };
}

impl SagaLog {
    /// The log in `target`'s tables.
    #[must_use]
    pub fn new(target: SqlTarget) -> Self {
        SagaLog { target }
    }

    /// The store it is in.
    #[must_use]
    pub fn target(&self) -> &SqlTarget {
        &self.target
    }

    fn table(&self) -> String {
        self.target.table("dl_sagas")
    }

    /// Writes a new saga's row, its lease held by `owner` until
    /// `lease_until` with fencing token 1.
    ///
    /// # Errors
    /// The store's.
    pub(crate) async fn create(&self, row: &SagaRow) -> Result<(), Error> {
        let sql = format!(
            "INSERT INTO {} ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
            self.table()
        );
        let store = self.target.store();
        let steps = serde_json::to_string(&row.steps).map_err(|_| corrupt(store, "its steps"))?;
        let err = self.target.err(Operation::Saga);
        on_target!(&self.target, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(&row.id)
                .bind(&row.name)
                .bind(i64::from(row.version))
                .bind(row.state.name())
                .bind(row.direction.name())
                .bind(to_i64(row.cursor as u64))
                .bind(i64::from(row.pivoted))
                .bind(&row.input)
                .bind(&steps)
                .bind(row.error_kind.as_deref())
                .bind(row.error.as_deref())
                .bind(row.owner.as_deref())
                .bind(row.lease_until)
                .bind(to_i64(row.fence))
                .bind(i64::from(row.recoveries))
                .bind(row.created_at)
                .bind(row.updated_at)
                .execute(pool)
                .await
                .map_err(&err)?;
        });
        Ok(())
    }

    /// Writes a step's outcome into saga `id`'s row, if `owner` still
    /// holds its lease under `fence`. Whether it did (`false`: the lease
    /// was lost, another runner drives the saga now).
    ///
    /// # Errors
    /// The store's.
    pub(crate) async fn save(
        &self,
        id: &str,
        owner: &str,
        fence: u64,
        s: &Save<'_>,
    ) -> Result<bool, Error> {
        let sql = format!(
            "UPDATE {} SET \"state\" = $3, \"direction\" = $4, \"cursor\" = $5, \"pivoted\" = $6, \
             \"steps\" = $7, \"error_kind\" = $8, \"error\" = $9, \"owner\" = $10, \
             \"lease_until\" = $11, \"updated_at\" = $12 \
             WHERE \"id\" = $1 AND \"fence\" = $2 AND \"owner\" = $13",
            self.table()
        );
        let store = self.target.store();
        let steps = serde_json::to_string(s.steps).map_err(|_| corrupt(store, "its steps"))?;
        let err = self.target.err(Operation::Saga);
        let (keep_owner, lease) = match s.lease_until {
            Some(t) => (Some(owner), t),
            None => (None, 0),
        };
        let done = on_target!(&self.target, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(id)
                .bind(to_i64(fence))
                .bind(s.state.name())
                .bind(s.direction.name())
                .bind(to_i64(s.cursor as u64))
                .bind(i64::from(s.pivoted))
                .bind(&steps)
                .bind(s.error_kind)
                .bind(s.error)
                .bind(keep_owner)
                .bind(lease)
                .bind(s.now)
                .bind(owner)
                .execute(pool)
                .await
                .map_err(&err)?
                .rows_affected()
        });
        Ok(done == 1)
    }

    /// Takes over up to `limit` open sagas (running or compensating) whose
    /// lease expired before `now` (or that have none): each gets `owner`,
    /// a lease until `lease_until` and its next fencing token. Two runners
    /// never take the same saga (the update re-checks the expiry under the
    /// row's lock).
    ///
    /// # Errors
    /// The store's.
    pub(crate) async fn claim_expired(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
        limit: usize,
    ) -> Result<Vec<SagaRow>, Error> {
        let t = self.table();
        let lock = if self.target.store() == dl_repositories::Store::Postgres {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE {t} SET \"owner\" = $1, \"lease_until\" = $3, \"fence\" = \"fence\" + 1, \
             \"recoveries\" = \"recoveries\" + 1 \
             WHERE \"id\" IN (SELECT \"id\" FROM {t} WHERE \"state\" IN ('running', 'compensating') \
             AND \"lease_until\" < $2 ORDER BY \"lease_until\" LIMIT $4{lock}) \
             AND \"state\" IN ('running', 'compensating') AND \"lease_until\" < $2 \
             RETURNING {COLUMNS}"
        );
        self.fetch(
            &sql,
            vec![
                Bind::S(owner.to_owned()),
                Bind::I(now),
                Bind::I(lease_until),
                Bind::I(to_i64(limit as u64)),
            ],
        )
        .await
    }

    /// Extends every lease `owner` holds to `lease_until`. How many.
    ///
    /// # Errors
    /// The store's.
    pub(crate) async fn renew(&self, owner: &str, lease_until: i64) -> Result<u64, Error> {
        let sql = format!(
            "UPDATE {} SET \"lease_until\" = $2 WHERE \"owner\" = $1 \
             AND \"state\" IN ('running', 'compensating')",
            self.table()
        );
        let err = self.target.err(Operation::Saga);
        Ok(on_target!(&self.target, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(owner)
                .bind(lease_until)
                .execute(pool)
                .await
                .map_err(&err)?
                .rows_affected()
        }))
    }

    /// Saga `id`'s row.
    ///
    /// # Errors
    /// The store's.
    pub async fn get(&self, id: &str) -> Result<Option<SagaRow>, Error> {
        let sql = format!("SELECT {COLUMNS} FROM {} WHERE \"id\" = $1", self.table());
        Ok(self.fetch(&sql, vec![Bind::S(id.to_owned())]).await?.pop())
    }

    /// Up to `limit` sagas, newest first, of one state or all.
    ///
    /// # Errors
    /// The store's.
    pub async fn list(
        &self,
        state: Option<SagaState>,
        limit: usize,
    ) -> Result<Vec<SagaRow>, Error> {
        let sql = format!(
            "SELECT {COLUMNS} FROM {} WHERE (CAST($1 AS TEXT) IS NULL OR \"state\" = $1) \
             ORDER BY \"created_at\" DESC, \"id\" LIMIT $2",
            self.table()
        );
        self.fetch(
            &sql,
            vec![
                Bind::O(state.map(|s| s.name().to_owned())),
                Bind::I(to_i64(limit as u64)),
            ],
        )
        .await
    }

    /// How many sagas are in each state.
    ///
    /// # Errors
    /// The store's.
    pub async fn counts(&self) -> Result<Vec<(String, u64)>, Error> {
        let sql = format!(
            "SELECT \"state\", count(*) FROM {} GROUP BY \"state\" ORDER BY \"state\"",
            self.table()
        );
        let err = self.target.err(Operation::Saga);
        let rows: Vec<(String, i64)> = on_target!(&self.target, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .fetch_all(pool)
                .await
                .map_err(&err)?
        });
        Ok(rows
            .into_iter()
            .map(|(s, n)| (s, u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    /// Sets saga `id` to `state` going `direction`, takes its lease from
    /// whoever holds it (a new fencing token: the runner driving it stops
    /// at its next write) and leaves it for any runner to take, if its
    /// state is one of `from`. The row after, if it changed.
    ///
    /// # Errors
    /// The store's.
    pub(crate) async fn reset(
        &self,
        id: &str,
        from: &[SagaState],
        state: SagaState,
        direction: Direction,
        now: i64,
    ) -> Result<Option<SagaRow>, Error> {
        let states: Vec<String> = from.iter().map(|s| format!("'{}'", s.name())).collect();
        let sql = format!(
            "UPDATE {} SET \"state\" = $2, \"direction\" = $3, \"owner\" = NULL, \"lease_until\" = 0, \
             \"fence\" = \"fence\" + 1, \"updated_at\" = $4 \
             WHERE \"id\" = $1 AND \"state\" IN ({}) RETURNING {COLUMNS}",
            self.table(),
            states.join(", ")
        );
        Ok(self
            .fetch(
                &sql,
                vec![
                    Bind::S(id.to_owned()),
                    Bind::S(state.name().to_owned()),
                    Bind::S(direction.name().to_owned()),
                    Bind::I(now),
                ],
            )
            .await?
            .pop())
    }

    async fn fetch(&self, sql: &str, binds: Vec<Bind>) -> Result<Vec<SagaRow>, Error> {
        let err = self.target.err(Operation::Saga);
        let store = self.target.store();
        Ok(on_target!(&self.target, pool => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for b in binds {
                q = match b {
                    Bind::I(v) => q.bind(v),
                    Bind::S(v) => q.bind(v),
                    Bind::O(v) => q.bind(v),
                };
            }
            q.fetch_all(pool)
                .await
                .map_err(&err)?
                .iter()
                .map(|row| Ok(decode_row!(row, store)))
                .collect::<Result<Vec<_>, Error>>()?
        }))
    }
}

/// A parameter, bound in order on either store.
enum Bind {
    I(i64),
    S(String),
    O(Option<String>),
}
