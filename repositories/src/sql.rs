//! SQL text shared by the SQL backends: quoted identifiers from the schema
//! only, `?`/`$n` placeholders for every value.

use std::collections::HashMap;
use std::fmt::Write as _;

use dl_models::{EntitySchema, Value};

use crate::query::{CmpOp, Cond, Direction};

/// The SQL dialect being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// Quotes an identifier. Identifiers come from a schema and match
/// `[a-z_][a-z0-9_]*` (checked by the derive and by `Repo::open`), so there
/// is nothing to escape; the quotes keep reserved words (`order`, `user`)
/// usable as names.
pub(crate) fn ident(name: &str) -> String {
    debug_assert!(
        name.bytes()
            .all(|c| c == b'_' || c.is_ascii_lowercase() || c.is_ascii_digit())
    );
    format!("\"{name}\"")
}

/// The column list of a schema, in field order.
pub(crate) fn columns(schema: &EntitySchema) -> String {
    schema
        .fields
        .iter()
        .map(|f| ident(f.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds a WHERE / ORDER BY clause, collecting the values to bind in order.
#[derive(Debug)]
pub(crate) struct SqlWriter {
    pub dialect: Dialect,
    pub sql: String,
    /// `(field position, value)` in placeholder order; the position tells the
    /// binder which column type the value is for.
    pub binds: Vec<(Option<usize>, Bound)>,
}

/// A value to bind: one field value, or a whole `in` list.
#[derive(Debug, Clone)]
pub(crate) enum Bound {
    One(Value),
    List(Vec<Value>),
    /// A length in characters (prefix filters in SQLite).
    Len(i64),
}

impl SqlWriter {
    pub(crate) fn new(dialect: Dialect, sql: String) -> Self {
        SqlWriter {
            dialect,
            sql,
            binds: Vec::new(),
        }
    }

    pub(crate) fn placeholder(&mut self, field: Option<usize>, b: Bound) {
        self.binds.push((field, b));
        match self.dialect {
            Dialect::Sqlite => self.sql.push('?'),
            Dialect::Postgres => {
                let _ = write!(self.sql, "${}", self.binds.len());
            }
        }
    }

    /// Writes a condition (two-valued semantics: NULL comparisons are false,
    /// and `not` is rendered as `IS NOT TRUE` so a NULL inside it counts as
    /// false rather than unknown).
    pub(crate) fn cond(&mut self, schema: &EntitySchema, cond: &Cond) {
        match cond {
            Cond::Cmp(i, op, v) => {
                self.sql.push_str(&ident(schema.fields[*i].name));
                self.sql.push_str(match op {
                    CmpOp::Eq => " = ",
                    CmpOp::Ne => " <> ",
                    CmpOp::Lt => " < ",
                    CmpOp::Lte => " <= ",
                    CmpOp::Gt => " > ",
                    CmpOp::Gte => " >= ",
                });
                self.placeholder(Some(*i), Bound::One(v.clone()));
            }
            Cond::In(i, vs) => {
                if vs.is_empty() {
                    self.sql.push_str(self.false_lit());
                    return;
                }
                self.sql.push_str(&ident(schema.fields[*i].name));
                match self.dialect {
                    Dialect::Sqlite => {
                        self.sql.push_str(" IN (SELECT value FROM json_each(");
                        self.placeholder(Some(*i), Bound::List(vs.clone()));
                        self.sql.push_str("))");
                    }
                    Dialect::Postgres => {
                        self.sql.push_str(" = ANY(");
                        self.placeholder(Some(*i), Bound::List(vs.clone()));
                        self.sql.push(')');
                    }
                }
            }
            Cond::IsNull(i) => {
                self.sql.push_str(&ident(schema.fields[*i].name));
                self.sql.push_str(" IS NULL");
            }
            Cond::Prefix(i, p) => {
                let col = ident(schema.fields[*i].name);
                match self.dialect {
                    Dialect::Sqlite => {
                        let _ = write!(self.sql, "substr({col}, 1, ");
                        self.placeholder(
                            None,
                            Bound::Len(i64::try_from(p.chars().count()).unwrap_or(i64::MAX)),
                        );
                        self.sql.push_str(") = ");
                        self.placeholder(Some(*i), Bound::One(Value::Text(p.clone())));
                    }
                    Dialect::Postgres => {
                        let _ = write!(self.sql, "starts_with({col}, ");
                        self.placeholder(Some(*i), Bound::One(Value::Text(p.clone())));
                        self.sql.push(')');
                    }
                }
            }
            Cond::And(cs) | Cond::Or(cs) => {
                let and = matches!(cond, Cond::And(_));
                if cs.is_empty() {
                    self.sql.push_str(if and {
                        self.true_lit()
                    } else {
                        self.false_lit()
                    });
                    return;
                }
                self.sql.push('(');
                for (n, c) in cs.iter().enumerate() {
                    if n > 0 {
                        self.sql.push_str(if and { " AND " } else { " OR " });
                    }
                    self.cond(schema, c);
                }
                self.sql.push(')');
            }
            Cond::Not(c) => {
                self.sql.push_str("((");
                self.cond(schema, c);
                self.sql.push_str(match self.dialect {
                    Dialect::Sqlite => ") IS NOT 1)",
                    Dialect::Postgres => ") IS NOT TRUE)",
                });
            }
        }
    }

    /// Writes ` LIMIT <placeholder>` for `n` rows.
    pub(crate) fn limit(&mut self, n: usize) {
        self.sql.push_str(" LIMIT ");
        self.placeholder(None, Bound::Len(i64::try_from(n).unwrap_or(i64::MAX)));
    }

    /// Writes `ORDER BY ...` with null as the smallest value.
    pub(crate) fn order_by(&mut self, schema: &EntitySchema, sort: &[(usize, Direction)]) {
        if sort.is_empty() {
            return;
        }
        self.sql.push_str(" ORDER BY ");
        for (n, (i, dir)) in sort.iter().enumerate() {
            if n > 0 {
                self.sql.push_str(", ");
            }
            self.sql.push_str(&ident(schema.fields[*i].name));
            self.sql.push_str(match (self.dialect, dir) {
                (Dialect::Sqlite, Direction::Asc) => " ASC",
                (Dialect::Sqlite, Direction::Desc) => " DESC",
                (Dialect::Postgres, Direction::Asc) => " ASC NULLS FIRST",
                (Dialect::Postgres, Direction::Desc) => " DESC NULLS LAST",
            });
        }
    }

    fn true_lit(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "1",
            Dialect::Postgres => "TRUE",
        }
    }

    fn false_lit(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "0",
            Dialect::Postgres => "FALSE",
        }
    }
}

/// The fixed statements of one entity in one dialect, rendered once.
/// Placeholders are bound in this order:
/// - `insert_one`, `upsert`: every field in schema order;
/// - `get`, `delete`, `exists`, `stored_version`: the key;
/// - `get_many`: the list of keys;
/// - `replace`: every non-key field in order, the key, then (with a version
///   field) the expected version.
#[derive(Debug)]
pub(crate) struct Statements {
    pub insert_one: std::sync::Arc<str>,
    pub select: String,
    pub get: std::sync::Arc<str>,
    pub get_many: std::sync::Arc<str>,
    pub delete: std::sync::Arc<str>,
    pub exists: std::sync::Arc<str>,
    pub upsert: std::sync::Arc<str>,
    pub replace: std::sync::Arc<str>,
    pub stored_version: Option<std::sync::Arc<str>>,
    pub count: String,
    /// The table these were rendered for (for `update`).
    table: String,
    dialect: Dialect,
    /// `update` statements rendered so far, by patched fields (in patch
    /// order), without and with the version check; at most
    /// [`UPDATE_CACHE`] of them.
    updates: std::sync::RwLock<[HashMap<Vec<usize>, std::sync::Arc<str>>; 2]>,
}

/// How many distinct `update` statements one entity keeps rendered. A
/// service patches a handful of field sets; past this bound a statement
/// is rendered per call instead of growing the cache.
const UPDATE_CACHE: usize = 64;

impl Statements {
    /// The `update` statement for these patched fields (see
    /// [`update_sql`]), rendered once per set of fields and reused.
    pub(crate) fn update(
        &self,
        schema: &EntitySchema,
        patched: &[usize],
        check_version: bool,
    ) -> std::sync::Arc<str> {
        let slot = usize::from(check_version);
        let cached = self
            .updates
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)[slot]
            .get(patched)
            .cloned();
        if let Some(sql) = cached {
            return sql;
        }
        let sql: std::sync::Arc<str> =
            update_sql(self.dialect, &self.table, schema, patched, check_version).into();
        let mut updates = self
            .updates
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if updates.iter().map(HashMap::len).sum::<usize>() < UPDATE_CACHE {
            updates[slot].insert(patched.to_vec(), std::sync::Arc::clone(&sql));
        }
        sql
    }
}

/// Placeholder number `n` (1-based) in a dialect.
pub(crate) fn mark(d: Dialect, n: usize) -> String {
    match d {
        Dialect::Sqlite => "?".to_owned(),
        Dialect::Postgres => format!("${n}"),
    }
}

fn marks(d: Dialect, from: usize, count: usize) -> String {
    (from..from + count)
        .map(|n| mark(d, n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Renders the fixed statements; `table` is the (qualified, quoted) table.
pub(crate) fn statements(d: Dialect, table: &str, schema: &EntitySchema) -> Statements {
    let cols = columns(schema);
    let key = ident(schema.key_field().name);
    let n = schema.fields.len();
    let all_marks = marks(d, 1, n);
    let non_key: Vec<(usize, &dl_models::FieldDef)> = schema
        .fields
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != schema.key)
        .collect();
    let upsert_sets: Vec<String> = non_key
        .iter()
        .map(|(i, f)| {
            let c = ident(f.name);
            if Some(*i) == schema.version {
                format!("{c} = cur.{c} + 1")
            } else {
                format!("{c} = excluded.{c}")
            }
        })
        .collect();
    let upsert_sets = if upsert_sets.is_empty() {
        format!("{key} = excluded.{key}")
    } else {
        upsert_sets.join(", ")
    };
    let replace_sets: Vec<String> = non_key
        .iter()
        .enumerate()
        .map(|(j, (_, f))| format!("{} = {}", ident(f.name), mark(d, j + 1)))
        .collect();
    let replace_sets = if replace_sets.is_empty() {
        format!("{key} = {key}")
    } else {
        replace_sets.join(", ")
    };
    let key_mark = mark(d, non_key.len() + 1);
    let mut replace = format!("UPDATE {table} SET {replace_sets} WHERE {key} = {key_mark}");
    if let Some(vi) = schema.version {
        replace.push_str(&format!(
            " AND {} = {}",
            ident(schema.fields[vi].name),
            mark(d, non_key.len() + 2)
        ));
    }
    replace.push_str(&format!(" RETURNING {cols}"));
    let m1 = mark(d, 1);
    let get_many = match d {
        Dialect::Sqlite => {
            format!("SELECT {cols} FROM {table} WHERE {key} IN (SELECT value FROM json_each({m1}))")
        }
        Dialect::Postgres => format!("SELECT {cols} FROM {table} WHERE {key} = ANY({m1})"),
    };
    Statements {
        insert_one: format!("INSERT INTO {table} ({cols}) VALUES ({all_marks})").into(),
        select: format!("SELECT {cols} FROM {table}"),
        get: format!("SELECT {cols} FROM {table} WHERE {key} = {m1}").into(),
        get_many: get_many.into(),
        delete: format!("DELETE FROM {table} WHERE {key} = {m1}").into(),
        exists: format!("SELECT 1 FROM {table} WHERE {key} = {m1} LIMIT 1").into(),
        upsert: format!(
            "INSERT INTO {table} AS cur ({cols}) VALUES ({all_marks}) ON CONFLICT ({key}) DO UPDATE SET {upsert_sets} RETURNING {cols}"
        )
        .into(),
        replace: replace.into(),
        stored_version: schema.version.map(|vi| {
            format!("SELECT {} FROM {table} WHERE {key} = {m1}", ident(schema.fields[vi].name)).into()
        }),
        count: format!("SELECT COUNT(*) FROM {table}"),
        table: table.to_owned(),
        dialect: d,
        updates: std::sync::RwLock::default(),
    }
}

/// `UPDATE ... SET <patched fields>, version = version + 1 WHERE key = ?
/// [AND version = ?] RETURNING <all>`. Binds: the patched values in order,
/// the key, then the expected version if `check_version`.
pub(crate) fn update_sql(
    d: Dialect,
    table: &str,
    schema: &EntitySchema,
    patched: &[usize],
    check_version: bool,
) -> String {
    let mut sets: Vec<String> = patched
        .iter()
        .enumerate()
        .map(|(j, i)| format!("{} = {}", ident(schema.fields[*i].name), mark(d, j + 1)))
        .collect();
    if let Some(vi) = schema.version {
        let v = ident(schema.fields[vi].name);
        sets.push(format!("{v} = {v} + 1"));
    }
    let mut sql = format!(
        "UPDATE {table} SET {} WHERE {} = {}",
        sets.join(", "),
        ident(schema.key_field().name),
        mark(d, patched.len() + 1)
    );
    if let (true, Some(vi)) = (check_version, schema.version) {
        sql.push_str(&format!(
            " AND {} = {}",
            ident(schema.fields[vi].name),
            mark(d, patched.len() + 2)
        ));
    }
    sql.push_str(&format!(" RETURNING {}", columns(schema)));
    sql
}

#[cfg(test)]
mod tests {
    use dl_models::Entity as _;
    use dl_models::domain::Appointment;

    use super::*;

    const TABLE: &str = "\"t\".\"appointments\"";

    #[test]
    fn update_statements_are_rendered_once_per_patched_field_set() {
        let schema = Appointment::schema();
        let st = statements(Dialect::Postgres, TABLE, schema);
        let a = st.update(schema, &[3], false);
        assert_eq!(
            &*a,
            update_sql(Dialect::Postgres, TABLE, schema, &[3], false)
        );
        assert!(std::sync::Arc::ptr_eq(&a, &st.update(schema, &[3], false)));
        // The order of the patched fields is the order of the binds.
        let b = st.update(schema, &[4, 3], true);
        assert!(
            b.contains("\"kind\" = $1, \"duration_minutes\" = $2"),
            "{b}"
        );
        assert!(b.contains("AND \"version\" = $4 RETURNING"), "{b}");
        assert!(!std::sync::Arc::ptr_eq(
            &b,
            &st.update(schema, &[3, 4], true)
        ));
        // Past the bound, statements are still right, just not kept.
        for n in 0..UPDATE_CACHE * 2 {
            let patched = [1 + n % 6, 1 + (n / 6) % 6, 1 + (n / 36) % 6];
            let sql = st.update(schema, &patched, false);
            assert_eq!(
                &*sql,
                update_sql(Dialect::Postgres, TABLE, schema, &patched, false)
            );
        }
        let kept = st
            .updates
            .read()
            .map(|u| u.iter().map(HashMap::len).sum::<usize>())
            .unwrap_or_default();
        assert_eq!(kept, UPDATE_CACHE);
    }
}
