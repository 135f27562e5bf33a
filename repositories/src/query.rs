//! What callers pass in: [`Filter`], [`Patch`], [`Query`]; and their checked
//! forms ([`Cond`], [`ValidPatch`]) that backends receive.
//!
//! Everything is checked against the entity's schema before any I/O. A
//! backend never sees a caller's string as a name: a [`Cond`] refers to
//! fields by position in the schema, and values are always bound parameters.

use dl_models::{EntitySchema, FieldDef, FieldType, Value};

use crate::error::{Error, Result};

/// Most values one `in` filter (or `get_many`) may carry.
pub const MAX_IN_LIST: usize = 10_000;
/// Deepest nesting of `and` / `or` / `not`.
pub const MAX_FILTER_DEPTH: usize = 32;
/// Most nodes in one filter.
pub const MAX_FILTER_NODES: usize = 1_000;
/// Largest key of text type, in bytes (it becomes part of Redis keys and
/// Scylla partition keys).
pub const MAX_KEY_BYTES: usize = 512;
/// Default page size of [`Query`].
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size.
pub const MAX_LIMIT: u32 = 10_000;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Lte,
    /// `>`
    Gt,
    /// `>=`
    Gte,
}

impl CmpOp {
    /// The operator's name in filters (`"eq"`, `"lt"`, ...).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            CmpOp::Eq => "eq",
            CmpOp::Ne => "ne",
            CmpOp::Lt => "lt",
            CmpOp::Lte => "lte",
            CmpOp::Gt => "gt",
            CmpOp::Gte => "gte",
        }
    }

    /// Whether the operator needs an ordered type.
    #[must_use]
    pub const fn is_ordering(self) -> bool {
        !matches!(self, CmpOp::Eq | CmpOp::Ne)
    }

    /// Applies the operator to an ordering of `stored` against `given`.
    #[must_use]
    pub fn holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match self {
            CmpOp::Eq => ord == Equal,
            CmpOp::Ne => ord != Equal,
            CmpOp::Lt => ord == Less,
            CmpOp::Lte => ord != Greater,
            CmpOp::Gt => ord == Greater,
            CmpOp::Gte => ord != Less,
        }
    }
}

/// A filter over an entity's fields, as a caller writes it.
///
/// Semantics are two-valued and the same in every store: a comparison,
/// `in` or `prefix` on a null field is false (so `ne` does not match
/// nulls), `is_null` is the only test that matches them, and `not` is
/// plain negation. `and` of nothing is true, `or` of nothing is false.
///
/// ```
/// use dl_repositories::Filter;
/// let f = Filter::eq("status", "active")
///     .and(Filter::prefix("family_name", "Test"))
///     .and(Filter::not(Filter::is_null("email")));
/// # let _ = f;
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Filter {
    /// `field <op> value`.
    Cmp(String, CmpOp, Value),
    /// `field` equals one of the values (an empty list matches nothing).
    In(String, Vec<Value>),
    /// `field` is null.
    IsNull(String),
    /// A text `field` starts with the given text (case-sensitive).
    Prefix(String, String),
    /// All of the filters hold.
    And(Vec<Filter>),
    /// Any of the filters holds.
    Or(Vec<Filter>),
    /// The filter does not hold.
    Not(Box<Filter>),
}

impl Filter {
    /// Matches every entity.
    #[must_use]
    pub fn all() -> Self {
        Filter::And(Vec::new())
    }
    /// `field = value`.
    pub fn eq(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Filter::Cmp(field.into(), CmpOp::Eq, value.into())
    }
    /// `field <> value` (false where the field is null).
    pub fn ne(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Filter::Cmp(field.into(), CmpOp::Ne, value.into())
    }
    /// `field < value`.
    pub fn lt(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Filter::Cmp(field.into(), CmpOp::Lt, value.into())
    }
    /// `field <= value`.
    pub fn lte(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Filter::Cmp(field.into(), CmpOp::Lte, value.into())
    }
    /// `field > value`.
    pub fn gt(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Filter::Cmp(field.into(), CmpOp::Gt, value.into())
    }
    /// `field >= value`.
    pub fn gte(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Filter::Cmp(field.into(), CmpOp::Gte, value.into())
    }
    /// `field IN (values)`.
    pub fn is_in<V: Into<Value>>(
        field: impl Into<String>,
        values: impl IntoIterator<Item = V>,
    ) -> Self {
        Filter::In(field.into(), values.into_iter().map(Into::into).collect())
    }
    /// `field IS NULL`.
    pub fn is_null(field: impl Into<String>) -> Self {
        Filter::IsNull(field.into())
    }
    /// Text `field` starts with `prefix`.
    pub fn prefix(field: impl Into<String>, prefix: impl Into<String>) -> Self {
        Filter::Prefix(field.into(), prefix.into())
    }
    /// Negation.
    #[must_use]
    #[allow(clippy::should_implement_trait)]
    pub fn not(filter: Filter) -> Self {
        Filter::Not(Box::new(filter))
    }
    /// `self AND other` (flattened).
    #[must_use]
    pub fn and(self, other: Filter) -> Self {
        match self {
            Filter::And(mut v) => {
                v.push(other);
                Filter::And(v)
            }
            f => Filter::And(vec![f, other]),
        }
    }
    /// `self OR other` (flattened).
    #[must_use]
    pub fn or(self, other: Filter) -> Self {
        match self {
            Filter::Or(mut v) => {
                v.push(other);
                Filter::Or(v)
            }
            f => Filter::Or(vec![f, other]),
        }
    }

    /// Checks the filter against a schema and resolves its fields.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an unknown field, a value of the wrong type, a
    /// null where `is_null` is meant, an ordering or prefix on a type that has
    /// none, an oversize value or list, or a filter nested too deep.
    pub fn check(&self, schema: &'static EntitySchema) -> Result<Cond> {
        let mut nodes = 0;
        self.check_at(schema, 0, &mut nodes)
    }

    fn check_at(
        &self,
        schema: &'static EntitySchema,
        depth: usize,
        nodes: &mut usize,
    ) -> Result<Cond> {
        *nodes += 1;
        if depth > MAX_FILTER_DEPTH {
            return Err(Error::invalid(
                schema.name,
                None,
                format!("filter nested deeper than {MAX_FILTER_DEPTH} levels"),
            ));
        }
        if *nodes > MAX_FILTER_NODES {
            return Err(Error::invalid(
                schema.name,
                None,
                format!("filter has more than {MAX_FILTER_NODES} nodes"),
            ));
        }
        Ok(match self {
            Filter::Cmp(name, op, value) => {
                let (i, f) = resolve(schema, name)?;
                if f.ty == FieldType::Json {
                    return Err(Error::invalid(
                        schema.name,
                        Some(name),
                        "json fields can only be filtered with is_null",
                    ));
                }
                if op.is_ordering() && !f.ty.is_ordered() {
                    return Err(Error::invalid(
                        schema.name,
                        Some(name),
                        format!(
                            "{} has no order: `{}` cannot be used on it",
                            f.ty,
                            op.name()
                        ),
                    ));
                }
                if value.is_null() {
                    return Err(Error::invalid(
                        schema.name,
                        Some(name),
                        format!(
                            "`{}` with null: use is_null (or not(is_null)) to test for null",
                            op.name()
                        ),
                    ));
                }
                Cond::Cmp(i, *op, check_value(schema, f, value.clone())?)
            }
            Filter::In(name, values) => {
                let (i, f) = resolve(schema, name)?;
                if f.ty == FieldType::Json {
                    return Err(Error::invalid(
                        schema.name,
                        Some(name),
                        "json fields can only be filtered with is_null",
                    ));
                }
                if values.len() > MAX_IN_LIST {
                    return Err(Error::invalid(
                        schema.name,
                        Some(name),
                        format!(
                            "`in` list has {} values, the limit is {MAX_IN_LIST}",
                            values.len()
                        ),
                    ));
                }
                let mut out = Vec::with_capacity(values.len());
                for v in values {
                    if v.is_null() {
                        return Err(Error::invalid(
                            schema.name,
                            Some(name),
                            "`in` list contains null: combine with or(is_null(...)) instead",
                        ));
                    }
                    out.push(check_value(schema, f, v.clone())?);
                }
                Cond::In(i, out)
            }
            Filter::IsNull(name) => Cond::IsNull(resolve(schema, name)?.0),
            Filter::Prefix(name, prefix) => {
                let (i, f) = resolve(schema, name)?;
                if f.ty != FieldType::Text {
                    return Err(Error::invalid(
                        schema.name,
                        Some(name),
                        format!("prefix needs a text field, this one is {}", f.ty),
                    ));
                }
                let Value::Text(p) = check_value(schema, f, Value::Text(prefix.clone()))? else {
                    unreachable!("a text value stays text")
                };
                Cond::Prefix(i, p)
            }
            Filter::And(fs) => Cond::And(
                fs.iter()
                    .map(|f| f.check_at(schema, depth + 1, nodes))
                    .collect::<Result<_>>()?,
            ),
            Filter::Or(fs) => Cond::Or(
                fs.iter()
                    .map(|f| f.check_at(schema, depth + 1, nodes))
                    .collect::<Result<_>>()?,
            ),
            Filter::Not(f) => Cond::Not(Box::new(f.check_at(schema, depth + 1, nodes)?)),
        })
    }
}

/// A checked filter: fields are positions in the schema, values are of the
/// field's type. What backends translate.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Cond {
    /// `fields[i] <op> value`; false when the field is null.
    Cmp(usize, CmpOp, Value),
    /// `fields[i]` equals one of the values; false when null or empty.
    In(usize, Vec<Value>),
    /// `fields[i]` is null.
    IsNull(usize),
    /// Text `fields[i]` starts with the prefix; false when null.
    Prefix(usize, String),
    /// All hold (true when empty).
    And(Vec<Cond>),
    /// Any holds (false when empty).
    Or(Vec<Cond>),
    /// Negation.
    Not(Box<Cond>),
}

impl Cond {
    /// The condition that is always true.
    #[must_use]
    pub fn always() -> Self {
        Cond::And(Vec::new())
    }

    /// Whether this is the empty `And` (matches everything).
    #[must_use]
    pub fn is_always(&self) -> bool {
        matches!(self, Cond::And(v) if v.is_empty())
    }

    /// Evaluates the condition on a record: the reference semantics every
    /// backend must agree with.
    #[must_use]
    pub fn matches(&self, record: &dl_models::Record) -> bool {
        match self {
            Cond::Cmp(i, op, v) => {
                let stored = record.get(*i);
                !stored.is_null() && op.holds(stored.total_cmp(v))
            }
            Cond::In(i, vs) => {
                let stored = record.get(*i);
                !stored.is_null() && vs.iter().any(|v| stored.total_cmp(v).is_eq())
            }
            Cond::IsNull(i) => record.get(*i).is_null(),
            Cond::Prefix(i, p) => {
                matches!(record.get(*i), Value::Text(s) if s.starts_with(p.as_str()))
            }
            Cond::And(cs) => cs.iter().all(|c| c.matches(record)),
            Cond::Or(cs) => cs.iter().any(|c| c.matches(record)),
            Cond::Not(c) => !c.matches(record),
        }
    }

    /// Calls `f` with every field position the condition reads.
    pub fn for_each_field(&self, f: &mut impl FnMut(usize, &Cond)) {
        match self {
            Cond::Cmp(i, ..) | Cond::In(i, _) | Cond::IsNull(i) | Cond::Prefix(i, _) => f(*i, self),
            Cond::And(cs) | Cond::Or(cs) => cs.iter().for_each(|c| c.for_each_field(f)),
            Cond::Not(c) => c.for_each_field(f),
        }
    }
}

fn resolve(schema: &'static EntitySchema, name: &str) -> Result<(usize, &'static FieldDef)> {
    match schema.position(name) {
        Some(i) => Ok((i, &schema.fields[i])),
        None => Err(Error::invalid(
            schema.name,
            Some(name),
            format!("{} has no such field", schema.rust_name),
        )),
    }
}

/// Checks one value for a field: its type (with lossless coercion), size,
/// and characters every store accepts. Never echoes the value.
///
/// # Errors
/// [`Error::Invalid`] naming the field, the kind given and the kind expected.
pub fn check_value(schema: &'static EntitySchema, field: &FieldDef, value: Value) -> Result<Value> {
    let kind = value.kind();
    let Some(value) = value.coerce(field.ty) else {
        return Err(Error::invalid(
            schema.name,
            Some(field.name),
            format!(
                "expected {}, got {kind}{}",
                field.ty,
                if kind == "float" {
                    " (NaN and infinities are not storable)"
                } else {
                    ""
                }
            ),
        ));
    };
    match &value {
        Value::Null if !field.nullable => Err(Error::invalid(
            schema.name,
            Some(field.name),
            format!("null in a non-nullable {} field", field.ty),
        )),
        Value::Text(s) => {
            let limit = if std::ptr::eq(field, schema.key_field()) {
                field.max_bytes().min(MAX_KEY_BYTES)
            } else {
                field.max_bytes()
            };
            if s.len() > limit {
                return Err(Error::invalid(
                    schema.name,
                    Some(field.name),
                    format!("text of {} bytes, the limit is {limit}", s.len()),
                ));
            }
            if s.contains('\0') {
                return Err(Error::invalid(
                    schema.name,
                    Some(field.name),
                    "text contains a NUL character, which not every store can hold",
                ));
            }
            Ok(value)
        }
        Value::Json(j) => {
            let text = j.to_string();
            if text.len() > field.max_bytes() {
                return Err(Error::invalid(
                    schema.name,
                    Some(field.name),
                    format!(
                        "json of {} bytes, the limit is {}",
                        text.len(),
                        field.max_bytes()
                    ),
                ));
            }
            if text.contains("\\u0000") {
                return Err(Error::invalid(
                    schema.name,
                    Some(field.name),
                    "json contains a NUL character, which not every store can hold",
                ));
            }
            Ok(value)
        }
        _ => Ok(value),
    }
}

/// A partial update, as a caller writes it.
///
/// ```
/// use dl_repositories::Patch;
/// let p = Patch::new().set("status", "inactive").unset("phone").expect_version(3);
/// # let _ = p;
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
#[must_use]
pub struct Patch {
    sets: Vec<(String, Value)>,
    expected_version: Option<i64>,
}

impl Patch {
    /// An empty patch.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets a field.
    pub fn set(mut self, field: impl Into<String>, value: impl Into<Value>) -> Self {
        self.sets.push((field.into(), value.into()));
        self
    }
    /// Sets a nullable field to null.
    pub fn unset(mut self, field: impl Into<String>) -> Self {
        self.sets.push((field.into(), Value::Null));
        self
    }
    /// Applies only if the stored version is `version` (optimistic
    /// concurrency); otherwise the update fails with a version conflict.
    pub fn expect_version(mut self, version: i64) -> Self {
        self.expected_version = Some(version);
        self
    }

    /// Checks the patch against a schema.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty patch, an unknown or repeated field,
    /// the key or the version field, a value of the wrong type or size, a
    /// null in a non-nullable field, or `expect_version` on an entity
    /// without a version field.
    pub fn check(&self, schema: &'static EntitySchema) -> Result<ValidPatch> {
        if self.sets.is_empty() {
            return Err(Error::invalid(
                schema.name,
                None,
                "empty patch: set at least one field",
            ));
        }
        if self.expected_version.is_some() && schema.version.is_none() {
            return Err(Error::invalid(
                schema.name,
                None,
                format!(
                    "expect_version on {}, which has no #[version] field",
                    schema.rust_name
                ),
            ));
        }
        let mut sets: Vec<(usize, Value)> = Vec::with_capacity(self.sets.len());
        for (name, value) in &self.sets {
            let (i, f) = resolve(schema, name)?;
            if i == schema.key {
                return Err(Error::invalid(
                    schema.name,
                    Some(name),
                    "the key cannot be patched: delete and insert instead",
                ));
            }
            if Some(i) == schema.version {
                return Err(Error::invalid(
                    schema.name,
                    Some(name),
                    "the version is kept by the repository: use expect_version",
                ));
            }
            if sets.iter().any(|(j, _)| *j == i) {
                return Err(Error::invalid(
                    schema.name,
                    Some(name),
                    "field set twice in one patch",
                ));
            }
            sets.push((i, check_value(schema, f, value.clone())?));
        }
        Ok(ValidPatch {
            sets,
            expected_version: self.expected_version,
        })
    }
}

/// A checked patch: what backends apply.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidPatch {
    /// `(field position, new value)`, no key, no version, no repeats.
    pub sets: Vec<(usize, Value)>,
    /// The version the stored entity must have, if the caller said.
    pub expected_version: Option<i64>,
}

/// Sort direction. Nulls sort first ascending and last descending (null is
/// the smallest value) in every store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Smallest first.
    Asc,
    /// Largest first.
    Desc,
}

/// An opaque position in a listing, returned in [`Page::next`].
///
/// A cursor holds the key of the last entity of the page and, for sort
/// fields that are not PHI, their values; sort fields that are PHI are
/// looked up again from the store, so no PHI value travels in a cursor
/// (unless the key itself is PHI).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor(pub String);

impl Cursor {
    /// The token as text, for a URL or a response body.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A list query: filter, sort, page size and position.
///
/// ```
/// use dl_repositories::{Filter, Query};
/// let q = Query::new()
///     .filter(Filter::eq("status", "active"))
///     .sort_asc("family_name")
///     .limit(50);
/// # let _ = q;
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct Query {
    /// The filter (default: everything).
    pub filter: Filter,
    /// Sort fields, most significant first; the key is always appended as
    /// the last tie-breaker, so the order is total and stable.
    pub sort: Vec<(String, Direction)>,
    /// Page size (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]).
    pub limit: u32,
    /// Where to continue, from a previous [`Page::next`].
    pub after: Option<Cursor>,
}

impl Default for Query {
    fn default() -> Self {
        Query {
            filter: Filter::all(),
            sort: Vec::new(),
            limit: DEFAULT_LIMIT,
            after: None,
        }
    }
}

impl Query {
    /// Everything, by key, [`DEFAULT_LIMIT`] per page.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the filter.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }
    /// Adds an ascending sort field.
    pub fn sort_asc(mut self, field: impl Into<String>) -> Self {
        self.sort.push((field.into(), Direction::Asc));
        self
    }
    /// Adds a descending sort field.
    pub fn sort_desc(mut self, field: impl Into<String>) -> Self {
        self.sort.push((field.into(), Direction::Desc));
        self
    }
    /// Sets the page size.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }
    /// Continues after a cursor.
    pub fn after(mut self, cursor: Cursor) -> Self {
        self.after = Some(cursor);
        self
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The entities, in query order.
    pub items: Vec<T>,
    /// The cursor for the next page, or `None` when this was the last.
    pub next: Option<Cursor>,
}

/// A checked list request: what backends execute.
#[derive(Debug, Clone, PartialEq)]
pub struct ListRequest {
    /// The filter, including the cursor's position.
    pub cond: Cond,
    /// `(field position, direction)`; always ends with the key.
    pub sort: Vec<(usize, Direction)>,
    /// How many records to return at most.
    pub limit: usize,
}
