//! The change feed's SQL: the one place where an event joins a write in
//! the SQL stores (see [`crate::feed`]).
//!
//! A captured write is the write statement itself, wrapped:
//! - PostgreSQL: one statement. Its CTEs make the write (`w`), bump the
//!   key's sequence (`k`), take the next position from the one-row clock
//!   (`c`: its row lock, held to commit, orders positions by commit) and
//!   insert the event (`f`); the statement answers the write's rows. In a
//!   transaction the event is inserted without a position and stamped just
//!   before `COMMIT` ([`pg_stamp`]), so the clock is locked only then.
//! - SQLite: one batch of statements, sent in one call: `BEGIN IMMEDIATE`,
//!   the write, the key's sequence, the event, `COMMIT` (in a transaction,
//!   without `BEGIN` and `COMMIT`, inside a savepoint). `changes()` carries
//!   "the write touched a row" from one statement to the next, so a write
//!   that matched nothing (a missing key, a stale version) has no event.
//!
//! Values are bound (`$n` / `?NNN` after the write's own parameters: the
//! key's id, then on SQLite the key); names come from the schema and the
//! settings' checked namespace, the entity name and its shape version are
//! literals of `[a-z0-9_]` only.

use dl_models::{EntitySchema, FieldType};

use crate::sql::{Dialect, columns, ident};

/// A single-record write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Write {
    Insert,
    Update,
    Replace,
    Upsert,
    Delete,
}

/// The feed's tables, qualified (`"ns"."dl_feed"` on PostgreSQL).
#[derive(Debug, Clone)]
pub(crate) struct FeedTables {
    pub feed: String,
    pub keys: String,
    pub clock: String,
    pub consumers: String,
}

impl FeedTables {
    /// The tables in `namespace` (PostgreSQL), or unqualified (SQLite).
    pub(crate) fn new(namespace: Option<&str>) -> Self {
        let q = |t: &str| match namespace {
            Some(ns) => format!("{}.{}", ident(ns), ident(t)),
            None => ident(t),
        };
        FeedTables {
            feed: q("dl_feed"),
            keys: q("dl_feed_keys"),
            clock: q("dl_feed_clock"),
            consumers: q("dl_feed_consumers"),
        }
    }
}

/// The entity name and shape version as SQL literals (checked to hold
/// nothing that needs quoting).
fn literals(schema: &EntitySchema) -> (String, String) {
    let version = schema.shape_version();
    debug_assert!(dl_models::is_valid_identifier(schema.name));
    debug_assert!(version.bytes().all(|c| c.is_ascii_hexdigit()));
    (format!("'{}'", schema.name), format!("'{version}'"))
}

/// The write's statement with `RETURNING` of every column (the key only
/// for a delete), as the wrapper reads it.
fn returning(d: Dialect, schema: &EntitySchema, write: Write, sql: &str) -> String {
    let mut out = sql.to_owned();
    match write {
        Write::Insert => {
            out.push_str(" RETURNING ");
            out.push_str(&columns(schema));
        }
        Write::Delete => {
            out.push_str(" RETURNING ");
            out.push_str(&ident(schema.key_field().name));
        }
        Write::Update | Write::Replace => {}
        Write::Upsert => {
            if d == Dialect::Postgres {
                // Whether the row was inserted (not updated): the new
                // row's xmax is 0 only then.
                out.push_str(", (cur.xmax = 0) AS \"dl_inserted\"");
            }
        }
    }
    out
}

/// The captured form of a single-record write. `sql` is the write as the
/// backend renders it (with `RETURNING` of every column for update,
/// replace and upsert), taking `params` parameters; the wrapper adds the
/// key's id as parameter `params + 1` on PostgreSQL; on SQLite the
/// parameters of [`sqlite_binds`]. It answers the write's rows (every column; the
/// key for a delete). `in_tx`: inside an open transaction.
#[allow(clippy::too_many_arguments)]
pub(crate) fn capture_one(
    d: Dialect,
    t: &FeedTables,
    table: &str,
    schema: &EntitySchema,
    write: Write,
    sql: &str,
    params: usize,
    in_tx: bool,
) -> String {
    let (entity, version) = literals(schema);
    let w = returning(d, schema, write, sql);
    let key = ident(schema.key_field().name);
    let op = |existed: &str| match write {
        Write::Insert => "'created'".to_owned(),
        Write::Update | Write::Replace => "'updated'".to_owned(),
        Write::Delete => "'deleted'".to_owned(),
        Write::Upsert => format!("CASE WHEN {existed} THEN 'updated' ELSE 'created' END"),
    };
    let id = params + 1;
    match d {
        Dialect::Postgres => {
            let after = match write {
                Write::Delete => "NULL::jsonb".to_owned(),
                Write::Upsert => "to_jsonb(w) - 'dl_inserted'".to_owned(),
                _ => "to_jsonb(w)".to_owned(),
            };
            let answer = match write {
                Write::Delete => key.clone(),
                _ => columns(schema),
            };
            let (clock_cte, position, from_c) = if in_tx {
                (String::new(), "NULL::bigint", "")
            } else {
                (
                    format!(
                        ", c AS (UPDATE {} SET \"position\" = \"position\" + 1 \
                         WHERE \"id\" = 1 AND EXISTS (SELECT 1 FROM w) RETURNING \"position\")",
                        t.clock
                    ),
                    "c.\"position\"",
                    ", c",
                )
            };
            format!(
                "WITH w AS ({w}), \
                 k AS (INSERT INTO {keys} AS fk (\"entity\", \"key_id\", \"seq\") \
                   SELECT {entity}, ${id}::text, 1 FROM w \
                   ON CONFLICT (\"entity\", \"key_id\") DO UPDATE SET \"seq\" = fk.\"seq\" + 1 \
                   RETURNING \"seq\"){clock_cte}, \
                 f AS (INSERT INTO {feed} (\"position\", \"entity\", \"op\", \"key_id\", \"seq\", \
                   \"committed_at\", \"schema_version\", \"after_image\") \
                   SELECT {position}, {entity}, {op}, ${id}::text, k.\"seq\", now(), {version}, {after} \
                   FROM w, k{from_c}) \
                 SELECT {answer} FROM w",
                keys = t.keys,
                feed = t.feed,
                op = op("NOT w.\"dl_inserted\""),
            )
        }
        Dialect::Sqlite => {
            // Anonymous `?` only: sqlx numbers them across the batch's
            // statements in order (see `sqlite_binds`).
            let now = sqlite_now();
            let mut out = String::new();
            if !in_tx {
                out.push_str("BEGIN IMMEDIATE;\n");
            }
            if write == Write::Upsert {
                // Whether the key existed before this write, for the op.
                out.push_str(&format!(
                    "INSERT INTO {keys} (\"entity\", \"key_id\", \"seq\", \"existed\") \
                     VALUES ({entity}, ?, 0, EXISTS (SELECT 1 FROM {table} WHERE {key} = ?)) \
                     ON CONFLICT (\"entity\", \"key_id\") DO UPDATE SET \"existed\" = excluded.\"existed\";\n",
                    keys = t.keys
                ));
            }
            out.push_str(&w);
            out.push_str(";\n");
            out.push_str(&format!(
                "INSERT INTO {keys} (\"entity\", \"key_id\", \"seq\") \
                 SELECT {entity}, ?, 1 WHERE changes() > 0 \
                 ON CONFLICT (\"entity\", \"key_id\") DO UPDATE SET \"seq\" = \"seq\" + 1;\n",
                keys = t.keys
            ));
            let after = match write {
                Write::Delete => "NULL".to_owned(),
                _ => format!(
                    "(SELECT {} FROM {table} WHERE {key} = ?)",
                    sqlite_json_object(schema)
                ),
            };
            out.push_str(&format!(
                "INSERT INTO {feed} (\"entity\", \"op\", \"key_id\", \"seq\", \"committed_at\", \
                 \"schema_version\", \"after_image\") \
                 SELECT {entity}, {op}, k.\"key_id\", k.\"seq\", {now}, {version}, {after} \
                 FROM {keys} AS k WHERE changes() > 0 AND k.\"entity\" = {entity} AND k.\"key_id\" = ?",
                keys = t.keys,
                feed = t.feed,
                op = op("k.\"existed\""),
            ));
            if !in_tx {
                out.push_str(";\nCOMMIT");
            }
            out
        }
    }
}

/// SQLite: what a captured write binds around the write's own
/// parameters, in order: before them (an upsert's existence check) the
/// key's id and the key; after them the key's id, the key (for the record
/// after the write; not for a delete) and the key's id again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SqliteBind {
    KeyId,
    Key,
}

pub(crate) fn sqlite_binds(write: Write) -> (&'static [SqliteBind], &'static [SqliteBind]) {
    use SqliteBind::{Key, KeyId};
    let before: &[SqliteBind] = if write == Write::Upsert {
        &[KeyId, Key]
    } else {
        &[]
    };
    let after: &[SqliteBind] = if write == Write::Delete {
        &[KeyId, KeyId]
    } else {
        &[KeyId, Key, KeyId]
    };
    (before, after)
}

/// PostgreSQL: `insert_many` (`sql`, one `INSERT … SELECT FROM UNNEST`
/// statement taking one array per column) with its events. Adds the keys'
/// ids as parameter `params + 1` (`text[]`, in the order of the records).
pub(crate) fn pg_capture_many(
    t: &FeedTables,
    schema: &EntitySchema,
    sql: &str,
    params: usize,
    key_array_type: &str,
    in_tx: bool,
) -> String {
    let (entity, version) = literals(schema);
    let key = ident(schema.key_field().name);
    let cols = columns(schema);
    let key_param = schema.key + 1;
    let id = params + 1;
    let (clock_cte, position, from_c) = if in_tx {
        (String::new(), "NULL::bigint".to_owned(), "")
    } else {
        (
            format!(
                ", c AS (UPDATE {} SET \"position\" = \"position\" + (SELECT count(*) FROM t) \
                 WHERE \"id\" = 1 AND EXISTS (SELECT 1 FROM w) RETURNING \"position\")",
                t.clock
            ),
            "c.\"position\" - (SELECT count(*) FROM t) + t.ord".to_owned(),
            " CROSS JOIN c",
        )
    };
    format!(
        "WITH w AS ({sql} RETURNING {cols}), \
         t AS (SELECT * FROM UNNEST(${key_param}::{key_array_type}, ${id}::text[]) \
           WITH ORDINALITY AS t(k, key_id, ord)), \
         k AS (INSERT INTO {keys} AS fk (\"entity\", \"key_id\", \"seq\") \
           SELECT {entity}, t.key_id, 1 FROM t WHERE EXISTS (SELECT 1 FROM w) \
           ON CONFLICT (\"entity\", \"key_id\") DO UPDATE SET \"seq\" = fk.\"seq\" + 1 \
           RETURNING \"key_id\", \"seq\"){clock_cte}, \
         f AS (INSERT INTO {feed} (\"position\", \"entity\", \"op\", \"key_id\", \"seq\", \
           \"committed_at\", \"schema_version\", \"after_image\") \
           SELECT {position}, {entity}, 'created', t.key_id, k.\"seq\", now(), {version}, to_jsonb(w) \
           FROM t JOIN w ON w.{key} = t.k JOIN k ON k.\"key_id\" = t.key_id{from_c} ORDER BY t.ord) \
         SELECT count(*) FROM w",
        keys = t.keys,
        feed = t.feed,
    )
}

/// SQLite: the events of an `insert_many` whose rows are written (run in
/// its transaction, after them): parameter 1 is the keys' ids (a JSON
/// array), parameter 2 the keys (a JSON array in storage form), in the
/// order of the records. Two statements, run one after the other.
pub(crate) fn sqlite_capture_many(
    t: &FeedTables,
    table: &str,
    schema: &EntitySchema,
) -> [String; 2] {
    let (entity, version) = literals(schema);
    let key = ident(schema.key_field().name);
    let now = sqlite_now();
    [
        format!(
            "INSERT INTO {keys} (\"entity\", \"key_id\", \"seq\") \
             SELECT {entity}, j.value, 1 FROM json_each(?1) AS j WHERE true \
             ON CONFLICT (\"entity\", \"key_id\") DO UPDATE SET \"seq\" = \"seq\" + 1",
            keys = t.keys
        ),
        format!(
            "INSERT INTO {feed} (\"entity\", \"op\", \"key_id\", \"seq\", \"committed_at\", \
             \"schema_version\", \"after_image\") \
             SELECT {entity}, 'created', k.\"key_id\", k.\"seq\", {now}, {version}, \
             (SELECT {json} FROM {table} WHERE {key} = kv.value) \
             FROM json_each(?1) AS j JOIN json_each(?2) AS kv ON kv.key = j.key \
             JOIN {keys} AS k ON k.\"entity\" = {entity} AND k.\"key_id\" = j.value \
             ORDER BY j.key",
            keys = t.keys,
            feed = t.feed,
            json = sqlite_json_object(schema),
        ),
    ]
}

/// PostgreSQL: gives the events a transaction wrote (inserted without a
/// position) their positions, in the order written, just before `COMMIT`.
pub(crate) fn pg_stamp(t: &FeedTables) -> String {
    format!(
        "WITH n AS (SELECT \"id\", row_number() OVER (ORDER BY \"id\") AS rn, count(*) OVER () AS total \
           FROM {feed} WHERE \"position\" IS NULL), \
         c AS (UPDATE {clock} SET \"position\" = \"position\" + (SELECT count(*) FROM n) \
           WHERE \"id\" = 1 AND EXISTS (SELECT 1 FROM n) RETURNING \"position\") \
         UPDATE {feed} AS e SET \"position\" = c.\"position\" - n.total + n.rn, \"committed_at\" = clock_timestamp() \
         FROM n, c WHERE e.\"id\" = n.\"id\"",
        feed = t.feed,
        clock = t.clock,
    )
}

/// SQLite's clock in milliseconds since the epoch (the outbox's
/// `committed_at`).
fn sqlite_now() -> &'static str {
    "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
}

/// SQLite: the record as the JSON object of the entity's serde form, read
/// from the table's columns (booleans from 0/1, timestamps from
/// milliseconds, json from text). `json_object` takes at most 127
/// arguments, so wide entities are merged from parts.
fn sqlite_json_object(schema: &EntitySchema) -> String {
    let pairs: Vec<String> = schema
        .fields
        .iter()
        .map(|f| {
            let c = ident(f.name);
            let v = match f.ty {
                FieldType::Text | FieldType::Int | FieldType::Float | FieldType::Date | FieldType::Uuid => c,
                FieldType::Bool => format!(
                    "json(CASE WHEN {c} IS NULL THEN 'null' WHEN {c} <> 0 THEN 'true' ELSE 'false' END)"
                ),
                FieldType::Json => format!("json({c})"),
                FieldType::Timestamp => format!(
                    "CASE WHEN {c} IS NULL THEN NULL ELSE \
                     strftime('%Y-%m-%dT%H:%M:%S', ({c} - ((({c} % 1000) + 1000) % 1000)) / 1000, 'unixepoch') \
                     || printf('.%03dZ', (({c} % 1000) + 1000) % 1000) END"
                ),
            };
            format!("'{}', {v}", f.name)
        })
        .collect();
    let mut parts = pairs
        .chunks(60)
        .map(|c| format!("json_object({})", c.join(", ")));
    let first = parts.next().unwrap_or_else(|| "json_object()".to_owned());
    parts.fold(first, |acc, p| format!("json_patch({acc}, {p})"))
}
