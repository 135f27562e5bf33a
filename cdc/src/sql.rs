//! The relay's ledger and the analytics sink on the relational stores
//! (SQLite, PostgreSQL): tables made by `migrations/<store>/3_cdc.sql`.

use async_trait::async_trait;
pub use dl_repositories::sql_target::SqlTarget;
use dl_repositories::{Error, Operation, Store};

use crate::envelope::Redacted;
use crate::ledger::{DeadLetter, Ledger, LedgerBatch};
use crate::sink::Sink;

fn millis_now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// `body` on the target's pool, whichever store it is (the statements
/// are the same text on both; `$N` parameters).
macro_rules! on_pool {
    ($t:expr, $pool:ident => $body:expr) => {
        match $t {
            #[cfg(feature = "sqlite")]
            SqlTarget::Sqlite($pool) => $body,
            #[cfg(feature = "postgres")]
            SqlTarget::Postgres($pool, _) => $body,
        }
    };
}

/// The ledger in a relational store.
#[derive(Debug, Clone)]
pub struct SqlLedger {
    target: SqlTarget,
    relaxed: bool,
}

impl SqlLedger {
    /// The ledger in `target`'s tables.
    #[must_use]
    pub fn new(target: SqlTarget) -> Self {
        SqlLedger {
            target,
            relaxed: false,
        }
    }

    /// Commits without waiting for the disk (PostgreSQL's
    /// `synchronous_commit = off`) when the relay's feed is in the same
    /// PostgreSQL server: the feed acknowledgement that follows the
    /// batch's records commits synchronously, which flushes every earlier
    /// commit of the server's log with it, so no record of an acknowledged
    /// event can be lost; what a crash takes before that acknowledgement is
    /// relayed again. The checkpoint, written beside the acknowledgement,
    /// may be lost with a server crash: it then lags the feed's own
    /// checkpoint, which is harmless (the feed no longer returns what it
    /// acknowledged). Never for a feed in another store (its
    /// acknowledgement would not flush this server).
    #[must_use]
    pub fn relaxed_commit(mut self, on: bool) -> Self {
        self.relaxed = on && self.target.store() == Store::Postgres;
        self
    }
}

#[async_trait]
impl Ledger for SqlLedger {
    fn store(&self) -> Store {
        self.target.store()
    }

    async fn checkpoint(&self, relay: &str) -> Result<u64, Error> {
        let t = &self.target;
        let sql = format!(
            "SELECT \"position\" FROM {} WHERE \"name\" = $1",
            t.table("dl_cdc_relays")
        );
        let sql = sqlx::AssertSqlSafe(sql);
        let p: Option<i64> = on_pool!(t, pool => sqlx::query_scalar(sql)
                    .bind(relay)
                    .fetch_optional(pool)
                    .await)
        .map_err(t.err(Operation::Feed))?;
        Ok(p.map_or(0, to_u64))
    }

    async fn commit(&self, relay: &str, batch: &LedgerBatch) -> Result<(), Error> {
        let t = &self.target;
        let err = t.err(Operation::Feed);
        // Every record of the batch in one statement (a JSON array of
        // them), so a batch of a thousand events is a few round trips.
        let redactions = if t.store() == Store::Postgres {
            format!(
                "INSERT INTO {} (\"relay\", \"event_id\", \"entity\", \"position\", \"profile\", \"policy_version\", \"key_id\", \"fields\") \
                 SELECT $1, u.i, u.e, u.p, u.pr, u.v, u.k, u.f::jsonb \
                 FROM UNNEST($2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[]) \
                 AS u(i, e, p, pr, v, k, f) \
                 ON CONFLICT (\"relay\", \"event_id\") DO NOTHING",
                t.table("dl_cdc_redactions"),
            )
        } else {
            format!(
                "INSERT INTO {} (\"relay\", \"event_id\", \"entity\", \"position\", \"profile\", \"policy_version\", \"key_id\", \"fields\") \
                 SELECT $1, json_extract(r.value, '$.event_id'), json_extract(r.value, '$.entity'), \
                 json_extract(r.value, '$.position'), json_extract(r.value, '$.profile'), \
                 json_extract(r.value, '$.policy_version'), json_extract(r.value, '$.key_id'), \
                 json_extract(r.value, '$.fields') FROM json_each($2) AS r WHERE true \
                 ON CONFLICT (\"relay\", \"event_id\") DO NOTHING",
                t.table("dl_cdc_redactions"),
            )
        };
        let records: Vec<String> = if t.store() == Store::Postgres {
            Vec::new()
        } else {
            batch
                .redactions
                .chunks(1000)
                .map(|chunk| {
                    let rows: Vec<serde_json::Value> = chunk
                        .iter()
                        .map(|r| {
                            serde_json::json!({
                                "event_id": r.event_id,
                                "entity": r.entity,
                                "position": r.position,
                                "profile": r.profile,
                                "policy_version": r.policy_version,
                                "key_id": r.key_id,
                                "fields": r.fields,
                            })
                        })
                        .collect();
                    serde_json::Value::Array(rows).to_string()
                })
                .collect()
        };
        let dead = format!(
            "INSERT INTO {} (\"relay\", \"event_id\", \"entity\", \"position\", \"reason\", \"at\") \
             VALUES ($1, $2, $3, $4, $5, {}) ON CONFLICT (\"relay\", \"event_id\") DO NOTHING",
            t.table("dl_cdc_dead_letters"),
            if t.store() == Store::Postgres {
                "now()"
            } else {
                "$6"
            },
        );
        let checkpoint = format!(
            "INSERT INTO {t} (\"name\", \"position\", \"updated_at\") VALUES ($1, $2, {now}) \
             ON CONFLICT (\"name\") DO UPDATE SET \"position\" = \
             CASE WHEN excluded.\"position\" > {t}.\"position\" THEN excluded.\"position\" ELSE {t}.\"position\" END, \
             \"updated_at\" = excluded.\"updated_at\"",
            t = t.table("dl_cdc_relays"),
            now = if t.store() == Store::Postgres {
                "now()"
            } else {
                "$3"
            },
        );
        macro_rules! run {
            ($pool:expr, $tx:ident, $extra:block) => {{
                let mut $tx = $pool.begin().await.map_err(&err)?;
                $extra
                for chunk in &records {
                    sqlx::query(sqlx::AssertSqlSafe(redactions.as_str()))
                        .bind(relay)
                        .bind(chunk)
                        .execute(&mut *$tx)
                        .await
                        .map_err(&err)?;
                }
                for d in &batch.dead_letters {
                    let q = sqlx::query(sqlx::AssertSqlSafe(dead.as_str()))
                        .bind(relay)
                        .bind(&d.event_id)
                        .bind(&d.entity)
                        .bind(to_i64(d.position))
                        .bind(&d.reason);
                    let q = if t.store() == Store::Postgres {
                        q
                    } else {
                        q.bind(millis_now())
                    };
                    q.execute(&mut *$tx).await.map_err(&err)?;
                }
                let q = sqlx::query(sqlx::AssertSqlSafe(checkpoint.as_str()))
                    .bind(relay)
                    .bind(to_i64(batch.position));
                let q = if t.store() == Store::Postgres {
                    q
                } else {
                    q.bind(millis_now())
                };
                q.execute(&mut *$tx).await.map_err(&err)?;
                $tx.commit().await.map_err(&err)?;
            }};
        }
        match t {
            #[cfg(feature = "sqlite")]
            SqlTarget::Sqlite(pool) => run!(pool, stx, {}),
            #[cfg(feature = "postgres")]
            SqlTarget::Postgres(pool, _) => run!(pool, ptx, {
                if self.relaxed {
                    sqlx::query("SET LOCAL synchronous_commit = off")
                        .execute(&mut *ptx)
                        .await
                        .map_err(&err)?;
                }
                let fields_json = |r: &crate::ledger::RedactionRecord| {
                    serde_json::to_string(&r.fields).unwrap_or_else(|_| "[]".to_owned())
                };
                for chunk in batch.redactions.chunks(1000) {
                    let col =
                        |f: &dyn Fn(&crate::ledger::RedactionRecord) -> String| -> Vec<String> {
                            chunk.iter().map(f).collect()
                        };
                    let keys: Vec<Option<String>> =
                        chunk.iter().map(|r| r.key_id.clone()).collect();
                    let positions: Vec<i64> = chunk.iter().map(|r| to_i64(r.position)).collect();
                    sqlx::query(sqlx::AssertSqlSafe(redactions.as_str()))
                        .bind(relay)
                        .bind(col(&|r| r.event_id.clone()))
                        .bind(col(&|r| r.entity.clone()))
                        .bind(positions)
                        .bind(col(&|r| r.profile.clone()))
                        .bind(col(&|r| r.policy_version.clone()))
                        .bind(keys)
                        .bind(col(&fields_json))
                        .execute(&mut *ptx)
                        .await
                        .map_err(&err)?;
                }
            }),
        }
        Ok(())
    }

    async fn dead_letters(&self, relay: &str, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        let t = &self.target;
        let sql = format!(
            "SELECT \"event_id\", \"entity\", \"position\", \"reason\" FROM {} WHERE \"relay\" = $1 \
             ORDER BY \"position\" LIMIT $2",
            t.table("dl_cdc_dead_letters")
        );
        let sql = sqlx::AssertSqlSafe(sql);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(String, String, i64, String)> = on_pool!(t, pool => sqlx::query_as(sql)
                    .bind(relay)
                    .bind(limit)
                    .fetch_all(pool)
                    .await)
        .map_err(t.err(Operation::Feed))?;
        Ok(rows
            .into_iter()
            .map(|(event_id, entity, position, reason)| DeadLetter {
                event_id,
                entity,
                position: to_u64(position),
                reason,
            })
            .collect())
    }

    async fn position_of(&self, relay: &str, event_id: &str) -> Result<Option<u64>, Error> {
        let t = &self.target;
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT \"position\" FROM {} WHERE \"relay\" = $1 AND \"event_id\" = $2 \
             UNION ALL SELECT \"position\" FROM {} WHERE \"relay\" = $1 AND \"event_id\" = $2",
            t.table("dl_cdc_redactions"),
            t.table("dl_cdc_dead_letters"),
        ));
        let p: Option<i64> = on_pool!(t, pool => sqlx::query_scalar(sql)
                    .bind(relay)
                    .bind(event_id)
                    .fetch_optional(pool)
                    .await)
        .map_err(t.err(Operation::Feed))?;
        Ok(p.map(to_u64))
    }

    async fn dead_letter_count(&self, relay: &str) -> Result<u64, Error> {
        let t = &self.target;
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {} WHERE \"relay\" = $1",
            t.table("dl_cdc_dead_letters"),
        ));
        let n: i64 = on_pool!(t, pool => sqlx::query_scalar(sql).bind(relay).fetch_one(pool).await)
            .map_err(t.err(Operation::Count))?;
        Ok(to_u64(n))
    }

    async fn redaction(
        &self,
        relay: &str,
        event_id: &str,
    ) -> Result<Option<serde_json::Value>, Error> {
        let t = &self.target;
        let sql = format!(
            "SELECT \"entity\", \"profile\", \"policy_version\", \"key_id\", {} FROM {} \
             WHERE \"relay\" = $1 AND \"event_id\" = $2",
            if t.store() == Store::Postgres {
                "\"fields\"::text"
            } else {
                "\"fields\""
            },
            t.table("dl_cdc_redactions")
        );
        let sql = sqlx::AssertSqlSafe(sql);
        let row: Option<(String, String, String, Option<String>, String)> =
            on_pool!(t, pool => sqlx::query_as(sql)
                    .bind(relay)
                    .bind(event_id)
                    .fetch_optional(pool)
                    .await)
            .map_err(t.err(Operation::Feed))?;
        Ok(row.map(|(entity, profile, policy_version, key_id, fields)| {
            serde_json::json!({
                "event_id": event_id,
                "entity": entity,
                "profile": profile,
                "policy_version": policy_version,
                "key_id": key_id,
                "fields": serde_json::from_str::<serde_json::Value>(&fields).unwrap_or_default(),
            })
        }))
    }
}

/// The analytics sink in a relational store: table `ce_events`, one row
/// per event, kept once by its id (`ON CONFLICT (id) DO NOTHING`), a batch
/// in one statement.
#[derive(Debug, Clone)]
pub struct SqlSink {
    target: SqlTarget,
    relaxed: bool,
}

impl SqlSink {
    /// The sink writing `target`'s `ce_events`.
    #[must_use]
    pub fn new(target: SqlTarget) -> Self {
        SqlSink {
            target,
            relaxed: false,
        }
    }

    /// Commits without waiting for the disk (PostgreSQL's
    /// `synchronous_commit = off`) when the relay's feed is in the same
    /// PostgreSQL server: the feed acknowledgement, which the relay sends
    /// only after this sink has the batch, commits synchronously and so
    /// flushes every earlier commit of the server's log with it: no
    /// acknowledged event can be lost from the sink; what a crash takes
    /// before that acknowledgement is relayed again. Never for a feed in
    /// another store (its acknowledgement would not flush this server).
    #[must_use]
    pub fn relaxed_commit(mut self, on: bool) -> Self {
        self.relaxed = on && self.target.store() == Store::Postgres;
        self
    }

    /// The event with this id, as JSON text, if the sink holds it.
    ///
    /// # Errors
    /// The store's error.
    pub async fn event(&self, id: &str) -> Result<Option<String>, Error> {
        let t = &self.target;
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM {} WHERE \"id\" = $1",
            if t.store() == Store::Postgres {
                "\"event\"::text"
            } else {
                "\"event\""
            },
            t.table("ce_events"),
        ));
        on_pool!(t, pool => sqlx::query_scalar(sql).bind(id).fetch_optional(pool).await)
            .map_err(t.err(Operation::Get))
    }

    /// The events held, as JSON text, in the order they arrived (for tests
    /// and the demo: what analytics sees).
    ///
    /// # Errors
    /// The store's error.
    pub async fn events(&self, limit: usize) -> Result<Vec<String>, Error> {
        let t = &self.target;
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {} LIMIT $1",
            if t.store() == Store::Postgres {
                "\"event\"::text"
            } else {
                "\"event\""
            },
            t.table("ce_events"),
            if t.store() == Store::Postgres {
                "\"received\""
            } else {
                "rowid"
            },
        );
        let sql = sqlx::AssertSqlSafe(sql);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        on_pool!(t, pool => sqlx::query_scalar(sql).bind(limit).fetch_all(pool).await)
            .map_err(t.err(Operation::List))
    }
}

#[async_trait]
impl Sink for SqlSink {
    fn name(&self) -> &'static str {
        self.target.store().name()
    }

    fn store(&self) -> Store {
        self.target.store()
    }

    async fn deliver(&self, events: &[Redacted]) -> Result<(), Error> {
        let t = &self.target;
        let err = t.err(Operation::Deliver);
        match t {
            #[cfg(feature = "sqlite")]
            SqlTarget::Sqlite(pool) => {
                // One statement per chunk: JSON arrays of the columns.
                let sql = format!(
                    "INSERT INTO {} (\"id\", \"type\", \"subject\", \"time\", \"seq\", \"event\", \"delivered_at\") \
                     SELECT json_extract(e.value, '$.id'), json_extract(e.value, '$.type'), \
                     json_extract(e.value, '$.subject'), json_extract(e.value, '$.time'), \
                     json_extract(e.value, '$.dlseq'), e.value, ?2 \
                     FROM json_each(?1) AS e WHERE true ON CONFLICT (\"id\") DO NOTHING",
                    t.table("ce_events")
                );
                for chunk in events.chunks(1000) {
                    let mut array = String::from("[");
                    for (i, e) in chunk.iter().enumerate() {
                        if i > 0 {
                            array.push(',');
                        }
                        array.push_str(&e.json());
                    }
                    array.push(']');
                    sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                        .bind(array)
                        .bind(millis_now())
                        .execute(pool)
                        .await
                        .map_err(&err)?;
                }
            }
            #[cfg(feature = "postgres")]
            SqlTarget::Postgres(pool, _) => {
                let sql = format!(
                    "INSERT INTO {} (\"id\", \"type\", \"subject\", \"time\", \"seq\", \"event\") \
                     SELECT u.i, u.t, u.s, u.w, u.q, u.e::jsonb \
                     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::bigint[], $6::text[]) \
                     AS u(i, t, s, w, q, e) \
                     ON CONFLICT (\"id\") DO NOTHING",
                    t.table("ce_events")
                );
                let mut tx = pool.begin().await.map_err(&err)?;
                if self.relaxed {
                    sqlx::query("SET LOCAL synchronous_commit = off")
                        .execute(&mut *tx)
                        .await
                        .map_err(&err)?;
                }
                for chunk in events.chunks(1000) {
                    let ids: Vec<&str> = chunk.iter().map(|e| e.event.id.as_str()).collect();
                    let types: Vec<&str> = chunk.iter().map(|e| e.event.ty.as_str()).collect();
                    let subjects: Vec<&str> =
                        chunk.iter().map(|e| e.event.subject.as_str()).collect();
                    let times: Vec<chrono::DateTime<chrono::Utc>> = chunk
                        .iter()
                        .map(|e| {
                            chrono::DateTime::parse_from_rfc3339(&e.event.time).map_or_else(
                                |_| chrono::Utc::now(),
                                |t| t.with_timezone(&chrono::Utc),
                            )
                        })
                        .collect();
                    let seqs: Vec<i64> = chunk.iter().map(|e| to_i64(e.event.dlseq)).collect();
                    let bodies: Vec<String> = chunk.iter().map(Redacted::json).collect();
                    sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                        .bind(ids)
                        .bind(types)
                        .bind(subjects)
                        .bind(times)
                        .bind(seqs)
                        .bind(bodies)
                        .execute(&mut *tx)
                        .await
                        .map_err(&err)?;
                }
                tx.commit().await.map_err(&err)?;
            }
        }
        Ok(())
    }

    async fn count(&self) -> Result<Option<u64>, Error> {
        let t = &self.target;
        let sql = sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {}", t.table("ce_events")));
        let n: i64 = on_pool!(t, pool => sqlx::query_scalar(sql).fetch_one(pool).await)
            .map_err(t.err(Operation::Count))?;
        Ok(Some(to_u64(n)))
    }
}
