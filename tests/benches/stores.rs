//! The framework's cost against the raw drivers, per store and operation.
//!
//! For each store (SQLite, PostgreSQL, MongoDB, Redis, the CQL test
//! server) and each operation (get by id, insert, update by patch, list
//! with a filter and limit 100, insert_many of 1,000, get_many of 100) the
//! same work runs twice in one run: through the raw driver, written the way
//! that driver is best used (prepared statements, pooled connections,
//! pipelines or scripts), and through `Repository<Appointment>` behind the
//! guard (breaker, retry, deadline). Each side has a namespace of its own,
//! made by the clinical schema's migrations.
//!
//! ```sh
//! scripts/stack.sh up && set -a && . ./.env.test && set +a
//! DL_BENCH_MODE=paired cargo bench -p dl-tests --bench stores   # the ratios
//! cargo run -p dl-tests --release --bin bench-report   # the table, into docs/benchmarks.md
//! cargo bench -p dl-tests --bench stores          # criterion groups <store>_<op>
//! ```
//!
//! The table's ratios come from the interleaved run (`DL_BENCH_MODE=paired`,
//! module `paired`): raw and framework blocks alternate, so drift of the
//! server between the two sides cancels out. The criterion groups measure
//! each side on its own, with criterion's statistics and history.
//!
//! A store that does not answer fails the run (never skipped).
//! `DL_BENCH_STORES=sqlite,postgres` limits the stores, and
//! `DL_BENCH_OPS=get,update` the operations of the interleaved run;
//! `DL_BENCH_NO_GUARD=1` runs the framework side without the guard (to
//! tell the guard's share from the rest).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone as _, Utc};
use criterion::{BenchmarkGroup, Criterion, criterion_group, measurement::WallTime};
use data_layer::migrate::{Options, StoreKind, domain_scripts};
use data_layer::models::domain::Appointment;
use dl_migrations::Target;
use dl_repositories::guard::{BreakerSettings, Guarded, RetrySettings};
use dl_repositories::{Backend, Filter, Patch, Query, Repo, Repository};
use uuid::Uuid;

#[path = "stores/paired.rs"]
mod paired;

/// Entities seeded on each side before timing.
const SEED: usize = 1_000;
/// Keys per `get_many`.
const MANY_KEYS: usize = 100;
/// Entities per `insert_many`.
const BATCH: usize = 1_000;
/// Rows per `list` page.
const PAGE: usize = 100;

const COLS: &str = "id, patient_id, starts_at, duration_minutes, kind, status, notes, version";

fn appointment(i: usize) -> Appointment {
    Appointment {
        id: Uuid::new_v4(),
        patient_id: Uuid::new_v4(),
        starts_at: Utc
            .timestamp_millis_opt(1_800_000_000_000 + i64::try_from(i).unwrap_or(0) * 60_000)
            .single()
            .unwrap_or_default(),
        duration_minutes: 30,
        kind: "checkup".into(),
        // Half are scheduled: `list` filters on them.
        status: if i.is_multiple_of(2) {
            "scheduled"
        } else {
            "done"
        }
        .into(),
        notes: Some("fake note for a benchmark".into()),
        version: 1,
    }
}

fn batch() -> Vec<Appointment> {
    (0..BATCH).map(appointment).collect()
}

/// One operation set through a raw driver.
#[async_trait]
trait Raw: Send + Sync {
    async fn get(&self, id: Uuid) -> Option<Appointment>;
    async fn insert(&self, a: &Appointment);
    /// Sets `duration_minutes`, bumps the version, returns the entity.
    async fn update(&self, id: Uuid, minutes: i32) -> Option<Appointment>;
    /// `status = ?`, in key order, `PAGE` rows.
    async fn list(&self, status: &str) -> Vec<Appointment>;
    async fn insert_many(&self, all: &[Appointment]);
    async fn get_many(&self, ids: &[Uuid]) -> Vec<Appointment>;
}

// ------------------------------------------------------------------ SQL

mod sql {
    use super::{Appointment, COLS, DateTime, PAGE, Raw, Utc, Uuid, async_trait};
    use sqlx::Row as _;

    pub(crate) struct Pg {
        pub(crate) pool: sqlx::PgPool,
        pub(crate) ns: String,
    }

    fn pg_row(r: &sqlx::postgres::PgRow) -> Appointment {
        Appointment {
            id: r.get(0),
            patient_id: r.get(1),
            starts_at: r.get(2),
            duration_minutes: i32::try_from(r.get::<i64, _>(3)).unwrap_or(0),
            kind: r.get(4),
            status: r.get(5),
            notes: r.get(6),
            version: r.get(7),
        }
    }

    impl Pg {
        fn t(&self) -> String {
            format!("\"{}\".appointments", self.ns)
        }
    }

    #[async_trait]
    impl Raw for Pg {
        async fn get(&self, id: Uuid) -> Option<Appointment> {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLS} FROM {} WHERE id = $1",
                self.t()
            )))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .expect("get")
            .map(|r| pg_row(&r))
        }
        async fn insert(&self, a: &Appointment) {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {} ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                self.t()
            )))
            .bind(a.id)
            .bind(a.patient_id)
            .bind(a.starts_at)
            .bind(i64::from(a.duration_minutes))
            .bind(&a.kind)
            .bind(&a.status)
            .bind(&a.notes)
            .bind(a.version)
            .execute(&self.pool)
            .await
            .expect("insert");
        }
        async fn update(&self, id: Uuid, minutes: i32) -> Option<Appointment> {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {} SET duration_minutes = $1, version = version + 1 WHERE id = $2 RETURNING {COLS}",
                self.t()
            )))
            .bind(i64::from(minutes))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .expect("update")
            .map(|r| pg_row(&r))
        }
        async fn list(&self, status: &str) -> Vec<Appointment> {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLS} FROM {} WHERE status = $1 ORDER BY id LIMIT {PAGE}",
                self.t()
            )))
            .bind(status)
            .fetch_all(&self.pool)
            .await
            .expect("list")
            .iter()
            .map(pg_row)
            .collect()
        }
        async fn insert_many(&self, all: &[Appointment]) {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {} ({COLS}) SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::bigint[])",
                self.t()
            )))
            .bind(all.iter().map(|a| a.id).collect::<Vec<_>>())
            .bind(all.iter().map(|a| a.patient_id).collect::<Vec<_>>())
            .bind(all.iter().map(|a| a.starts_at).collect::<Vec<_>>())
            .bind(all.iter().map(|a| i64::from(a.duration_minutes)).collect::<Vec<_>>())
            .bind(all.iter().map(|a| a.kind.clone()).collect::<Vec<_>>())
            .bind(all.iter().map(|a| a.status.clone()).collect::<Vec<_>>())
            .bind(all.iter().map(|a| a.notes.clone()).collect::<Vec<_>>())
            .bind(all.iter().map(|a| a.version).collect::<Vec<_>>())
            .execute(&self.pool)
            .await
            .expect("insert_many");
        }
        async fn get_many(&self, ids: &[Uuid]) -> Vec<Appointment> {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLS} FROM {} WHERE id = ANY($1)",
                self.t()
            )))
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .expect("get_many")
            .iter()
            .map(pg_row)
            .collect()
        }
    }

    pub(crate) struct Lite {
        pub(crate) pool: sqlx::SqlitePool,
    }

    fn lite_row(r: &sqlx::sqlite::SqliteRow) -> Appointment {
        let uuid = |i: usize| Uuid::parse_str(r.get::<&str, _>(i)).expect("uuid");
        Appointment {
            id: uuid(0),
            patient_id: uuid(1),
            starts_at: DateTime::<Utc>::from_timestamp_millis(r.get(2)).expect("time"),
            duration_minutes: i32::try_from(r.get::<i64, _>(3)).unwrap_or(0),
            kind: r.get(4),
            status: r.get(5),
            notes: r.get(6),
            version: r.get(7),
        }
    }

    const INSERT: &str = "INSERT INTO appointments (id, patient_id, starts_at, duration_minutes, kind, status, notes, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?)";

    fn bind_insert<'q>(
        a: &'q Appointment,
    ) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
        sqlx::query(INSERT)
            .bind(a.id.hyphenated().to_string())
            .bind(a.patient_id.hyphenated().to_string())
            .bind(a.starts_at.timestamp_millis())
            .bind(i64::from(a.duration_minutes))
            .bind(&a.kind)
            .bind(&a.status)
            .bind(&a.notes)
            .bind(a.version)
    }

    #[async_trait]
    impl Raw for Lite {
        async fn get(&self, id: Uuid) -> Option<Appointment> {
            sqlx::query("SELECT id, patient_id, starts_at, duration_minutes, kind, status, notes, version FROM appointments WHERE id = ?")
                .bind(id.hyphenated().to_string())
                .fetch_optional(&self.pool)
                .await
                .expect("get")
                .map(|r| lite_row(&r))
        }
        async fn insert(&self, a: &Appointment) {
            bind_insert(a).execute(&self.pool).await.expect("insert");
        }
        async fn update(&self, id: Uuid, minutes: i32) -> Option<Appointment> {
            sqlx::query("UPDATE appointments SET duration_minutes = ?, version = version + 1 WHERE id = ? RETURNING id, patient_id, starts_at, duration_minutes, kind, status, notes, version")
                .bind(i64::from(minutes))
                .bind(id.hyphenated().to_string())
                .fetch_optional(&self.pool)
                .await
                .expect("update")
                .map(|r| lite_row(&r))
        }
        async fn list(&self, status: &str) -> Vec<Appointment> {
            sqlx::query("SELECT id, patient_id, starts_at, duration_minutes, kind, status, notes, version FROM appointments WHERE status = ? ORDER BY id LIMIT 100")
                .bind(status)
                .fetch_all(&self.pool)
                .await
                .expect("list")
                .iter()
                .map(lite_row)
                .collect()
        }
        async fn insert_many(&self, all: &[Appointment]) {
            // SQLite's best practice: one prepared insert, many times, in
            // one transaction.
            let mut tx = self.pool.begin().await.expect("begin");
            for a in all {
                bind_insert(a).execute(&mut *tx).await.expect("insert");
            }
            tx.commit().await.expect("commit");
        }
        async fn get_many(&self, ids: &[Uuid]) -> Vec<Appointment> {
            let marks = vec!["?"; ids.len()].join(", ");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT id, patient_id, starts_at, duration_minutes, kind, status, notes, version FROM appointments WHERE id IN ({marks})"
            )));
            for id in ids {
                q = q.bind(id.hyphenated().to_string());
            }
            q.fetch_all(&self.pool)
                .await
                .expect("get_many")
                .iter()
                .map(lite_row)
                .collect()
        }
    }
}

// ---------------------------------------------------------------- MongoDB

mod mongo {
    use super::{Appointment, PAGE, Raw, Uuid, async_trait};
    use futures::TryStreamExt as _;
    use mongodb::bson::{self, doc};
    use mongodb::options::ReturnDocument;

    /// The raw driver's typed document (serde, `_id` as a UUID binary).
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    pub(crate) struct Doc {
        #[serde(rename = "_id")]
        id: bson::Uuid,
        patient_id: bson::Uuid,
        starts_at: bson::DateTime,
        duration_minutes: i32,
        kind: String,
        status: String,
        notes: Option<String>,
        version: i64,
    }

    impl From<&Appointment> for Doc {
        fn from(a: &Appointment) -> Self {
            Doc {
                id: bson::Uuid::from_bytes(a.id.into_bytes()),
                patient_id: bson::Uuid::from_bytes(a.patient_id.into_bytes()),
                starts_at: bson::DateTime::from_millis(a.starts_at.timestamp_millis()),
                duration_minutes: a.duration_minutes,
                kind: a.kind.clone(),
                status: a.status.clone(),
                notes: a.notes.clone(),
                version: a.version,
            }
        }
    }

    impl From<Doc> for Appointment {
        fn from(d: Doc) -> Self {
            Appointment {
                id: Uuid::from_bytes(d.id.bytes()),
                patient_id: Uuid::from_bytes(d.patient_id.bytes()),
                starts_at: chrono::DateTime::from_timestamp_millis(d.starts_at.timestamp_millis())
                    .expect("time"),
                duration_minutes: d.duration_minutes,
                kind: d.kind,
                status: d.status,
                notes: d.notes,
                version: d.version,
            }
        }
    }

    fn id(u: Uuid) -> bson::Uuid {
        bson::Uuid::from_bytes(u.into_bytes())
    }

    pub(crate) struct Mongo {
        pub(crate) coll: mongodb::Collection<Doc>,
    }

    #[async_trait]
    impl Raw for Mongo {
        async fn get(&self, key: Uuid) -> Option<Appointment> {
            self.coll
                .find_one(doc! { "_id": id(key) })
                .await
                .expect("get")
                .map(Appointment::from)
        }
        async fn insert(&self, a: &Appointment) {
            self.coll.insert_one(Doc::from(a)).await.expect("insert");
        }
        async fn update(&self, key: Uuid, minutes: i32) -> Option<Appointment> {
            self.coll
                .find_one_and_update(
                    doc! { "_id": id(key) },
                    doc! { "$set": { "duration_minutes": minutes }, "$inc": { "version": 1_i64 } },
                )
                .return_document(ReturnDocument::After)
                .await
                .expect("update")
                .map(Appointment::from)
        }
        async fn list(&self, status: &str) -> Vec<Appointment> {
            self.coll
                .find(doc! { "status": status })
                .sort(doc! { "_id": 1 })
                .limit(i64::try_from(PAGE).unwrap_or(100))
                .await
                .expect("list")
                .map_ok(Appointment::from)
                .try_collect()
                .await
                .expect("list")
        }
        async fn insert_many(&self, all: &[Appointment]) {
            self.coll
                .insert_many(all.iter().map(Doc::from))
                .ordered(false)
                .await
                .expect("insert_many");
        }
        async fn get_many(&self, keys: &[Uuid]) -> Vec<Appointment> {
            let keys: Vec<bson::Uuid> = keys.iter().map(|k| id(*k)).collect();
            self.coll
                .find(doc! { "_id": { "$in": keys } })
                .await
                .expect("get_many")
                .map_ok(Appointment::from)
                .try_collect()
                .await
                .expect("get_many")
        }
    }
}

// ------------------------------------------------------------------ Redis

mod redis_raw {
    use super::{Appointment, PAGE, Raw, Uuid, async_trait};

    /// Insert-if-absent with the same index entries the framework keeps
    /// (a lexically sorted key set, and one lexically sorted set per
    /// indexed field, so that each can be paged in key order), in one
    /// atomic script.
    const INSERT: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('ZADD', KEYS[2], 0, ARGV[2])
  redis.call('ZADD', KEYS[3], 0, ARGV[2])
  redis.call('ZADD', KEYS[4], 0, ARGV[2])
  redis.call('ZADD', KEYS[5], 0, ARGV[2])
  return 1
end
return 0";

    /// Read, patch, bump the version, write: one atomic script.
    const UPDATE: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return false end
local d = cjson.decode(cur)
d.duration_minutes = tonumber(ARGV[1])
d.version = d.version + 1
local out = cjson.encode(d)
redis.call('SET', KEYS[1], out)
return out";

    pub(crate) struct Redis {
        pub(crate) conn: redis::aio::ConnectionManager,
        pub(crate) prefix: String,
        pub(crate) insert: redis::Script,
        pub(crate) update: redis::Script,
    }

    impl Redis {
        pub(crate) fn new(conn: redis::aio::ConnectionManager, prefix: String) -> Self {
            Redis {
                conn,
                prefix,
                insert: redis::Script::new(INSERT),
                update: redis::Script::new(UPDATE),
            }
        }
        /// Loads the scripts (a pipeline sends them by SHA only).
        pub(crate) async fn load(&self) {
            for body in [INSERT, UPDATE] {
                let _: String = redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(body)
                    .query_async(&mut self.conn.clone())
                    .await
                    .expect("script load");
            }
        }
        fn key(&self, id: Uuid) -> String {
            format!("{}:a:{}", self.prefix, id.hyphenated())
        }
        fn insert_call(&self, a: &Appointment) -> redis::ScriptInvocation<'_> {
            let mut inv = self.insert.prepare_invoke();
            inv.key(self.key(a.id))
                .key(format!("{}:k", self.prefix))
                .key(format!("{}:status:{}", self.prefix, a.status))
                .key(format!("{}:patient:{}", self.prefix, a.patient_id))
                .key(format!(
                    "{}:starts:{}",
                    self.prefix,
                    a.starts_at.timestamp_millis()
                ))
                .arg(serde_json::to_string(a).expect("json"))
                .arg(a.id.hyphenated().to_string());
            inv
        }
        fn decode(raw: Option<String>) -> Option<Appointment> {
            raw.map(|s| serde_json::from_str(&s).expect("json"))
        }
    }

    #[async_trait]
    impl Raw for Redis {
        async fn get(&self, id: Uuid) -> Option<Appointment> {
            let raw: Option<String> = redis::cmd("GET")
                .arg(self.key(id))
                .query_async(&mut self.conn.clone())
                .await
                .expect("get");
            Self::decode(raw)
        }
        async fn insert(&self, a: &Appointment) {
            let done: i64 = self
                .insert_call(a)
                .invoke_async(&mut self.conn.clone())
                .await
                .expect("insert");
            assert_eq!(done, 1, "a fresh key");
        }
        async fn update(&self, id: Uuid, minutes: i32) -> Option<Appointment> {
            let raw: Option<String> = self
                .update
                .key(self.key(id))
                .arg(minutes)
                .invoke_async(&mut self.conn.clone())
                .await
                .expect("update");
            Self::decode(raw)
        }
        async fn list(&self, status: &str) -> Vec<Appointment> {
            // The status index (a lexically sorted set): the first page of
            // keys in key order, then MGET.
            let keys: Vec<String> = redis::cmd("ZRANGEBYLEX")
                .arg(format!("{}:status:{status}", self.prefix))
                .arg("-")
                .arg("+")
                .arg("LIMIT")
                .arg(0)
                .arg(PAGE)
                .query_async(&mut self.conn.clone())
                .await
                .expect("zrangebylex");
            if keys.is_empty() {
                return Vec::new();
            }
            let full: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:a:{k}", self.prefix))
                .collect();
            let raw: Vec<Option<String>> = redis::cmd("MGET")
                .arg(full)
                .query_async(&mut self.conn.clone())
                .await
                .expect("mget");
            raw.into_iter().filter_map(Self::decode).collect()
        }
        async fn insert_many(&self, all: &[Appointment]) {
            // One pipeline of scripts: one round trip.
            let mut pipe = redis::pipe();
            for a in all {
                let inv = self.insert_call(a);
                pipe.invoke_script(&inv);
            }
            let _: Vec<i64> = pipe
                .query_async(&mut self.conn.clone())
                .await
                .expect("insert_many");
        }
        async fn get_many(&self, ids: &[Uuid]) -> Vec<Appointment> {
            let keys: Vec<String> = ids.iter().map(|i| self.key(*i)).collect();
            let raw: Vec<Option<String>> = redis::cmd("MGET")
                .arg(keys)
                .query_async(&mut self.conn.clone())
                .await
                .expect("mget");
            raw.into_iter().filter_map(Self::decode).collect()
        }
    }
}

// ------------------------------------------------------------- ScyllaDB

mod cql {
    use std::sync::Arc;

    use super::{Appointment, Raw, Uuid, async_trait};
    use futures::{StreamExt as _, TryStreamExt as _};
    use scylla::client::session::Session;
    use scylla::statement::prepared::PreparedStatement;
    use scylla::value::CqlTimestamp;

    type Row = (
        Uuid,
        Option<Uuid>,
        Option<CqlTimestamp>,
        Option<i64>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<i64>,
    );

    pub(crate) struct Cql {
        pub(crate) session: Arc<Session>,
        pub(crate) get: PreparedStatement,
        pub(crate) insert: PreparedStatement,
        pub(crate) update: PreparedStatement,
    }

    fn decode(r: Row) -> Appointment {
        Appointment {
            id: r.0,
            patient_id: r.1.unwrap_or_default(),
            starts_at: chrono::DateTime::from_timestamp_millis(r.2.map_or(0, |t| t.0))
                .unwrap_or_default(),
            duration_minutes: i32::try_from(r.3.unwrap_or(0)).unwrap_or(0),
            kind: r.4.unwrap_or_default(),
            status: r.5.unwrap_or_default(),
            notes: r.6,
            version: r.7.unwrap_or(0),
        }
    }

    impl Cql {
        pub(crate) async fn new(session: Arc<Session>, ks: &str) -> Self {
            let cols = super::COLS;
            let p = |cql: String| {
                let session = Arc::clone(&session);
                async move { session.prepare(cql).await.expect("prepare") }
            };
            Cql {
                get: p(format!("SELECT {cols} FROM {ks}.appointments WHERE id = ?")).await,
                insert: p(format!(
                    "INSERT INTO {ks}.appointments ({cols}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                ))
                .await,
                update: p(format!(
                    "UPDATE {ks}.appointments SET duration_minutes = ?, version = ? WHERE id = ?"
                ))
                .await,
                session,
            }
        }

        fn values(a: &Appointment) -> Row {
            (
                a.id,
                Some(a.patient_id),
                Some(CqlTimestamp(a.starts_at.timestamp_millis())),
                Some(i64::from(a.duration_minutes)),
                Some(a.kind.clone()),
                Some(a.status.clone()),
                a.notes.clone(),
                Some(a.version),
            )
        }
    }

    #[async_trait]
    impl Raw for Cql {
        async fn get(&self, id: Uuid) -> Option<Appointment> {
            self.session
                .execute_unpaged(&self.get, (id,))
                .await
                .expect("get")
                .into_rows_result()
                .expect("rows")
                .maybe_first_row::<Row>()
                .expect("row")
                .map(decode)
        }
        async fn insert(&self, a: &Appointment) {
            self.session
                .execute_unpaged(&self.insert, Self::values(a))
                .await
                .expect("insert");
        }
        async fn update(&self, id: Uuid, minutes: i32) -> Option<Appointment> {
            // No LWT on the test server: read, then write the new version.
            let mut a = self.get(id).await?;
            a.duration_minutes = minutes;
            a.version += 1;
            self.session
                .execute_unpaged(&self.update, (i64::from(minutes), a.version, id))
                .await
                .expect("update");
            Some(a)
        }
        async fn list(&self, _: &str) -> Vec<Appointment> {
            unreachable!("not run: a filter on a non-key column needs an index")
        }
        async fn insert_many(&self, all: &[Appointment]) {
            // ScyllaDB's advice: concurrent single-partition writes, not
            // multi-partition batches.
            futures::stream::iter(all.to_vec())
                .map(|a| async move { self.insert(&a).await })
                .buffer_unordered(64)
                .collect::<Vec<()>>()
                .await;
        }
        async fn get_many(&self, ids: &[Uuid]) -> Vec<Appointment> {
            futures::stream::iter(ids.to_vec())
                .map(|id| async move { Ok::<_, ()>(self.get(id).await) })
                .buffered(64)
                .try_collect::<Vec<_>>()
                .await
                .expect("get_many")
                .into_iter()
                .flatten()
                .collect()
        }
    }
}

// ------------------------------------------------------------- the runs

/// Both sides of one store.
struct Pair {
    store: &'static str,
    raw: Box<dyn Raw>,
    framework: Arc<dyn Repository<Appointment>>,
    /// Whether `list` with a filter on `status` can be served.
    filters: bool,
    /// What the run leaves on the server, removed when it ends.
    leftovers: Leftovers,
}

/// What one store's run writes besides its results (tens of thousands of
/// appointments per run), removed when the run ends: a benchmark must not
/// fill the servers it is pointed at.
enum Leftovers {
    /// The SQLite files' folder (removed when dropped).
    Files(tempfile::TempDir),
    /// PostgreSQL schemas `<prefix>_raw` and `<prefix>_fw`.
    Postgres(String),
    /// MongoDB databases `<prefix>_raw` and `<prefix>_fw`.
    Mongo(String),
    /// Redis keys under `<prefix>_raw:` and `<prefix>_fw:`.
    Redis(String),
    /// Scylla keyspaces, dropped through this session.
    Scylla(Arc<scylla::client::session::Session>, Vec<String>),
}

impl Leftovers {
    async fn remove(self) {
        match self {
            Leftovers::Files(dir) => drop(dir),
            Leftovers::Postgres(prefix) => dl_tests::live::drop_postgres_namespaces(&prefix).await,
            Leftovers::Mongo(prefix) => dl_tests::live::drop_mongo_namespaces(&prefix).await,
            Leftovers::Redis(prefix) => dl_tests::live::drop_redis_namespaces(&prefix).await,
            Leftovers::Scylla(session, keyspaces) => {
                for ks in keyspaces {
                    // (Names are ours: `dlt_bench_<hex>_raw` / `_fw`.)
                    let drop = format!("DROP KEYSPACE IF EXISTS {ks}");
                    if let Err(e) = session.query_unpaged(drop, ()).await {
                        eprintln!("scylla: keyspace {ks} left on the server ({e})");
                    }
                }
            }
        }
    }
}

/// Runs `run` on each wanted store's pair, then removes what it wrote.
fn each_store(rt: &tokio::runtime::Runtime, mut run: impl FnMut(&Pair)) {
    for make in makers() {
        let pair = rt.block_on(make());
        run(&pair);
        let Pair { leftovers, .. } = pair;
        rt.block_on(leftovers.remove());
    }
}

fn guarded(backend: Arc<dyn Backend>) -> Arc<dyn Backend> {
    if std::env::var_os("DL_BENCH_NO_GUARD").is_some() {
        return backend;
    }
    Arc::new(Guarded::new(
        backend,
        Duration::from_secs(10),
        BreakerSettings::default(),
        RetrySettings::default(),
    ))
}

async fn migrate(target: &dyn Target, store: StoreKind) {
    let scripts = domain_scripts();
    dl_migrations::engine::up(target, &scripts[&store], &Options::default(), &mut |_| {})
        .await
        .unwrap_or_else(|e| panic!("{store}: migrations: {e}"));
}

fn pool(max: u32) -> dl_connections::PoolSettings {
    let mut p = dl_tests::live::test_pool(max);
    p.request_timeout = Duration::from_secs(10);
    p
}

async fn framework(backend: Arc<dyn Backend>) -> Arc<dyn Repository<Appointment>> {
    Arc::new(
        Repo::<Appointment>::open(guarded(backend))
            .await
            .unwrap_or_else(|e| panic!("open: {e}")),
    )
}

async fn sqlite() -> Pair {
    use dl_migrations::sql::SqliteTarget;
    let dir = tempfile::tempdir().expect("dir");
    let settings = dl_connections::Settings::load(&dl_connections::Sources::isolated())
        .expect("settings")
        .sqlite;
    let open = |name: &'static str| {
        let path = dir.path().join(name);
        let settings = settings.clone();
        async move {
            let pool = dl_connections::sqlite::connect(path.to_str().expect("utf-8"), &settings)
                .await
                .expect("sqlite");
            migrate(&SqliteTarget::new(pool.clone()), StoreKind::Sqlite).await;
            pool
        }
    };
    // One database and one pool for both sides (each writes its own
    // keys): SQLite runs in this process, each connection on a thread of
    // its own, and with a pool a side the placement of those threads on
    // the two cores decided the ratio (get measured 0.97 to 1.33 from run
    // to run, and 0.48 with one connection a side). Sharing them, both
    // sides meet the same threads, file and page cache.
    let pool = open("bench.db").await;
    Pair {
        store: "sqlite",
        raw: Box::new(sql::Lite { pool: pool.clone() }),
        framework: framework(Arc::new(
            dl_repositories::backends::sqlite::SqliteBackend::new(pool),
        ))
        .await,
        filters: true,
        leftovers: Leftovers::Files(dir),
    }
}

async fn postgres() -> Pair {
    use dl_migrations::sql::PostgresTarget;
    let url = dl_tests::live::postgres_url();
    let ns = dl_tests::live::unique_prefix("bench");
    let open = |ns: String| {
        let url = url.clone();
        async move {
            let pool = dl_connections::postgres::connect_lazy(&url, &pool(4)).expect("pool");
            migrate(&PostgresTarget::new(pool.clone(), &ns), StoreKind::Postgres).await;
            pool
        }
    };
    let raw_ns = format!("{ns}_raw");
    let fw_ns = format!("{ns}_fw");
    let raw = open(raw_ns.clone()).await;
    let fw = open(fw_ns.clone()).await;
    Pair {
        store: "postgres",
        raw: Box::new(sql::Pg {
            pool: raw,
            ns: raw_ns,
        }),
        framework: framework(Arc::new(
            dl_repositories::backends::postgres::PostgresBackend::new(fw, &fw_ns).expect("ns"),
        ))
        .await,
        filters: true,
        leftovers: Leftovers::Postgres(ns),
    }
}

async fn mongo() -> Pair {
    use dl_migrations::nosql::MongoTarget;
    let url = dl_tests::live::mongo_url();
    let ns = dl_tests::live::unique_prefix("bench");
    let client = dl_connections::mongo::connect(&url, &pool(4))
        .await
        .expect("mongo");
    let raw_db = client.database(&format!("{ns}_raw"));
    migrate(&MongoTarget::new(raw_db.clone()), StoreKind::Mongo).await;
    let fw_client = dl_connections::mongo::connect(&url, &pool(4))
        .await
        .expect("mongo");
    let fw_name = format!("{ns}_fw");
    migrate(
        &MongoTarget::new(fw_client.database(&fw_name)),
        StoreKind::Mongo,
    )
    .await;
    Pair {
        store: "mongo",
        raw: Box::new(mongo::Mongo {
            coll: raw_db.collection("appointments"),
        }),
        framework: framework(Arc::new(
            dl_repositories::backends::mongo::MongoBackend::new(
                &fw_client,
                &fw_name,
                Duration::from_secs(10),
            )
            .expect("db"),
        ))
        .await,
        filters: true,
        leftovers: Leftovers::Mongo(ns),
    }
}

async fn redis() -> Pair {
    let url = dl_tests::live::redis_url();
    let ns = dl_tests::live::unique_prefix("bench");
    let raw = dl_connections::redis::connect_lazy(&url, &pool(1)).expect("redis");
    let fw = dl_connections::redis::connect_lazy(&url, &pool(1)).expect("redis");
    let raw = redis_raw::Redis::new(raw, format!("{ns}_raw"));
    raw.load().await;
    Pair {
        store: "redis",
        raw: Box::new(raw),
        framework: framework(Arc::new(
            dl_repositories::backends::redis::RedisBackend::new(
                fw,
                &format!("{ns}_fw"),
                Duration::from_secs(10),
            )
            .expect("prefix")
            .with_privacy(dl_tests::live::test_privacy()),
        ))
        .await,
        filters: true,
        leftovers: Leftovers::Redis(ns),
    }
}

async fn scylla() -> Pair {
    use dl_migrations::nosql::ScyllaTarget;
    let settings = dl_tests::live::scylla_settings();
    let ns = dl_tests::live::unique_prefix("bench");
    let session = |ks: String| {
        let settings = settings.clone();
        async move {
            // A session for the runner (it USEs the keyspace), then one
            // for the work.
            let runner = dl_connections::scylla::connect(&settings, &pool(1))
                .await
                .expect("scylla");
            migrate(
                &ScyllaTarget::new(runner, &ks, settings.lightweight_transactions)
                    .expect("keyspace")
                    .create_keyspace_for_development(true),
                StoreKind::Scylla,
            )
            .await;
            dl_connections::scylla::connect(&settings, &pool(1))
                .await
                .expect("scylla")
        }
    };
    let raw_ks = format!("{ns}_raw");
    let fw_ks = format!("{ns}_fw");
    let raw = session(raw_ks.clone()).await;
    let fw = session(fw_ks.clone()).await;
    let leftovers = Leftovers::Scylla(Arc::clone(&fw), vec![raw_ks.clone(), fw_ks.clone()]);
    Pair {
        store: "scylla",
        raw: Box::new(cql::Cql::new(raw, &raw_ks).await),
        framework: framework(Arc::new(
            dl_repositories::backends::scylla::ScyllaBackend::new(
                fw,
                &fw_ks,
                settings.lightweight_transactions,
                Duration::from_secs(10),
            )
            .expect("keyspace"),
        ))
        .await,
        filters: false,
        leftovers,
    }
}

fn wanted(store: &str) -> bool {
    std::env::var("DL_BENCH_STORES").map_or(true, |v| v.split(',').any(|s| s.trim() == store))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

type Make = fn() -> futures::future::BoxFuture<'static, Pair>;

/// The stores to run (`DL_BENCH_STORES`), each as the maker of its pair.
fn makers() -> Vec<Make> {
    let all: [(&str, Make); 5] = [
        ("sqlite", || Box::pin(sqlite())),
        ("postgres", || Box::pin(postgres())),
        ("mongo", || Box::pin(mongo())),
        ("redis", || Box::pin(redis())),
        ("scylla", || Box::pin(scylla())),
    ];
    all.into_iter()
        .filter(|(name, _)| wanted(name))
        .map(|(_, make)| make)
        .collect()
}

fn stores(c: &mut Criterion) {
    let rt = runtime();
    each_store(&rt, |pair| bench_store(c, &rt, pair));
}

/// Whether `DL_BENCH_OPS` (comma-separated operation names) asks for
/// `op`; every operation when it is unset.
fn op_wanted(op: &str) -> bool {
    std::env::var("DL_BENCH_OPS").map_or(true, |v| v.split(',').any(|s| s.trim() == op))
}

/// The interleaved run of every operation of one store (see `paired`).
fn paired_store(rt: &tokio::runtime::Runtime, p: &Pair) {
    let (raw_ids, fw_ids) = seed(rt, p);
    let next = AtomicUsize::new(0);
    let pick = |ids: &[Uuid]| ids[next.fetch_add(7, Ordering::Relaxed) % ids.len()];
    let start = AtomicUsize::new(0);
    let window = |ids: &[Uuid]| -> Vec<Uuid> {
        let s = start.fetch_add(MANY_KEYS, Ordering::Relaxed) % (ids.len() - MANY_KEYS);
        ids[s..s + MANY_KEYS].to_vec()
    };
    let store = p.store;
    let (raw, fw) = (&p.raw, &p.framework);
    rt.block_on(async {
        if op_wanted("get") {
            let m = paired::measure(
                || pick(&raw_ids),
                async |id: Uuid| assert!(raw.get(id).await.is_some()),
                || pick(&fw_ids),
                async |id: Uuid| assert!(fw.get(&id).await.expect("get").is_some()),
            )
            .await;
            paired::save(store, "get", &m);
        }

        if op_wanted("insert") {
            let m = paired::measure(
                || appointment(1),
                async |a: Appointment| raw.insert(&a).await,
                || appointment(1),
                async |a: Appointment| fw.insert(&a).await.expect("insert"),
            )
            .await;
            paired::save(store, "insert", &m);
        }

        let patch = Patch::new().set("duration_minutes", 45);
        if op_wanted("update") {
            let m = paired::measure(
                || pick(&raw_ids),
                async |id: Uuid| assert!(raw.update(id, 45).await.is_some()),
                || pick(&fw_ids),
                async |id: Uuid| assert!(fw.update(&id, &patch).await.expect("update").is_some()),
            )
            .await;
            paired::save(store, "update", &m);
        }

        if p.filters {
            let query = Query::new()
                .filter(Filter::eq("status", "scheduled"))
                .limit(100);
            if op_wanted("list") {
                let m = paired::measure(
                    || (),
                    async |()| assert_eq!(raw.list("scheduled").await.len(), PAGE),
                    || (),
                    async |()| assert_eq!(fw.list(&query).await.expect("list").items.len(), PAGE),
                )
                .await;
                paired::save(store, "list", &m);
            }
        }

        if op_wanted("insert_many") {
            let m = paired::measure(
                batch,
                async |all: Vec<Appointment>| raw.insert_many(&all).await,
                batch,
                async |all: Vec<Appointment>| fw.insert_many(&all).await.expect("insert_many"),
            )
            .await;
            paired::save(store, "insert_many", &m);
        }

        if op_wanted("get_many") {
            let m = paired::measure(
                || window(&raw_ids),
                async |keys: Vec<Uuid>| assert_eq!(raw.get_many(&keys).await.len(), MANY_KEYS),
                || window(&fw_ids),
                async |keys: Vec<Uuid>| {
                    assert_eq!(fw.get_many(&keys).await.expect("get_many").len(), MANY_KEYS)
                },
            )
            .await;
            paired::save(store, "get_many", &m);
        }
    });
}

/// Seeds both sides alike; their keys (raw, framework).
fn seed(rt: &tokio::runtime::Runtime, p: &Pair) -> (Vec<Uuid>, Vec<Uuid>) {
    rt.block_on(async {
        let raw: Vec<Appointment> = (0..SEED).map(appointment).collect();
        p.raw.insert_many(&raw).await;
        let fw: Vec<Appointment> = (0..SEED).map(appointment).collect();
        p.framework.insert_many(&fw).await.expect("seed");
        (
            raw.iter().map(|a| a.id).collect(),
            fw.iter().map(|a| a.id).collect(),
        )
    })
}

fn bench_store(c: &mut Criterion, rt: &tokio::runtime::Runtime, p: &Pair) {
    let (raw_ids, fw_ids) = seed(rt, p);
    let next = AtomicUsize::new(0);
    let pick = |ids: &[Uuid]| ids[next.fetch_add(7, Ordering::Relaxed) % ids.len()];
    let store = p.store;

    let mut g = group(c, store, "get");
    g.bench_function("raw", |b| {
        b.to_async(rt)
            .iter(|| async { assert!(p.raw.get(pick(&raw_ids)).await.is_some()) });
    });
    g.bench_function("framework", |b| {
        b.to_async(rt).iter(|| async {
            assert!(
                p.framework
                    .get(&pick(&fw_ids))
                    .await
                    .expect("get")
                    .is_some()
            );
        });
    });
    g.finish();

    let mut g = group(c, store, "insert");
    g.bench_function("raw", |b| {
        b.to_async(rt)
            .iter(|| async { p.raw.insert(&appointment(1)).await });
    });
    g.bench_function("framework", |b| {
        b.to_async(rt).iter(|| async {
            p.framework.insert(&appointment(1)).await.expect("insert");
        });
    });
    g.finish();

    let mut g = group(c, store, "update");
    g.bench_function("raw", |b| {
        b.to_async(rt).iter(|| async {
            assert!(p.raw.update(pick(&raw_ids), 45).await.is_some());
        });
    });
    g.bench_function("framework", |b| {
        b.to_async(rt).iter(|| async {
            let patch = Patch::new().set("duration_minutes", 45);
            assert!(
                p.framework
                    .update(&pick(&fw_ids), &patch)
                    .await
                    .expect("update")
                    .is_some()
            );
        });
    });
    g.finish();

    if p.filters {
        let mut g = group(c, store, "list");
        g.bench_function("raw", |b| {
            b.to_async(rt)
                .iter(|| async { assert_eq!(p.raw.list("scheduled").await.len(), PAGE) });
        });
        let query = Query::new()
            .filter(Filter::eq("status", "scheduled"))
            .limit(100);
        g.bench_function("framework", |b| {
            b.to_async(rt).iter(|| async {
                assert_eq!(
                    p.framework.list(&query).await.expect("list").items.len(),
                    PAGE
                );
            });
        });
        g.finish();
    }

    let mut g = group(c, store, "insert_many");
    g.sample_size(10);
    g.bench_function("raw", |b| {
        b.to_async(rt).iter_batched(
            batch,
            |all| async move { p.raw.insert_many(&all).await },
            criterion::BatchSize::PerIteration,
        );
    });
    g.bench_function("framework", |b| {
        b.to_async(rt).iter_batched(
            batch,
            |all| async move { p.framework.insert_many(&all).await.expect("insert_many") },
            criterion::BatchSize::PerIteration,
        );
    });
    g.finish();

    let mut g = group(c, store, "get_many");
    let start = AtomicUsize::new(0);
    let window = |ids: &[Uuid]| -> Vec<Uuid> {
        let s = start.fetch_add(MANY_KEYS, Ordering::Relaxed) % (ids.len() - MANY_KEYS);
        ids[s..s + MANY_KEYS].to_vec()
    };
    g.bench_function("raw", |b| {
        b.to_async(rt).iter_batched(
            || window(&raw_ids),
            |keys| async move { assert_eq!(p.raw.get_many(&keys).await.len(), MANY_KEYS) },
            criterion::BatchSize::SmallInput,
        );
    });
    g.bench_function("framework", |b| {
        b.to_async(rt).iter_batched(
            || window(&fw_ids),
            |keys| async move {
                assert_eq!(
                    p.framework.get_many(&keys).await.expect("get_many").len(),
                    MANY_KEYS
                );
            },
            criterion::BatchSize::SmallInput,
        );
    });
    g.finish();
}

fn group<'c>(c: &'c mut Criterion, store: &str, op: &str) -> BenchmarkGroup<'c, WallTime> {
    let mut g = c.benchmark_group(format!("{store}_{op}"));
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    g
}

criterion_group!(benches, stores);

fn main() {
    if std::env::var("DL_BENCH_MODE").as_deref() == Ok("paired") {
        let rt = runtime();
        each_store(&rt, |pair| paired_store(&rt, pair));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
