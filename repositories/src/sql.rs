//! SQL text shared by the SQL backends: quoted identifiers from the schema
//! only, `?`/`$n` placeholders for every value.

use std::fmt::Write as _;

use dl_models::{EntitySchema, Value};

use crate::query::{CmpOp, Cond, Direction};

/// The SQL dialect being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    #[expect(
        dead_code,
        reason = "the PostgreSQL backend arrives with the stores issue"
    )]
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
