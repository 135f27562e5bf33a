//! The model-based property test: random operation sequences run against a
//! backend and the memory reference model, compared after every step
//! (each operation's result, then the whole contents).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dl_models::Entity;
use dl_repositories::backends::memory::MemoryBackend;
use dl_repositories::{BatchFailure, Error, Filter, FilterSupport, Patch, Query, Repo, Repository};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::entities::{Specimen, UniqueSpecimen};
use crate::harness::Factory;

/// One random operation.
#[derive(Debug, Clone)]
pub enum Op {
    /// insert
    Insert(Specimen),
    /// insert_many
    InsertMany(Vec<Specimen>),
    /// get
    Get(String),
    /// get_many
    GetMany(Vec<String>),
    /// update (rank, owner, code), expected version
    Update(
        String,
        Option<i64>,
        Option<Option<String>>,
        Option<Option<String>>,
        Option<i64>,
    ),
    /// replace (with the version given)
    Replace(Specimen),
    /// upsert
    Upsert(Specimen),
    /// delete
    Delete(String),
    /// exists
    Exists(String),
    /// list with a filter, an optional sort on rank or owner, a limit
    List(FilterSpec, Option<(&'static str, bool)>, u32),
    /// count
    Count(FilterSpec),
}

/// A small filter grammar over the specimen's fields.
#[derive(Debug, Clone)]
pub enum FilterSpec {
    /// everything
    All,
    /// rank = n
    RankEq(i64),
    /// rank in list
    RankIn(Vec<i64>),
    /// rank > n
    RankGt(i64),
    /// owner is null
    OwnerNull,
    /// owner = x
    OwnerEq(String),
    /// label prefix
    LabelPrefix(String),
    /// key = k (the key may not exist)
    KeyEq(String),
    /// key in keys (some may not exist)
    KeyIn(Vec<String>),
    /// not
    Not(Box<FilterSpec>),
    /// and
    And(Box<FilterSpec>, Box<FilterSpec>),
    /// or
    Or(Box<FilterSpec>, Box<FilterSpec>),
}

impl FilterSpec {
    fn to_filter(&self) -> Filter {
        match self {
            FilterSpec::All => Filter::all(),
            FilterSpec::RankEq(n) => Filter::eq("rank", *n),
            FilterSpec::RankIn(v) => Filter::is_in("rank", v.clone()),
            FilterSpec::RankGt(n) => Filter::gt("rank", *n),
            FilterSpec::OwnerNull => Filter::is_null("owner"),
            FilterSpec::OwnerEq(o) => Filter::eq("owner", o.as_str()),
            FilterSpec::LabelPrefix(p) => Filter::prefix("label", p.as_str()),
            FilterSpec::KeyEq(k) => Filter::eq("id", k.as_str()),
            FilterSpec::KeyIn(ks) => Filter::is_in("id", ks.clone()),
            FilterSpec::Not(f) => Filter::not(f.to_filter()),
            FilterSpec::And(a, b) => Filter::And(vec![a.to_filter(), b.to_filter()]),
            FilterSpec::Or(a, b) => Filter::Or(vec![a.to_filter(), b.to_filter()]),
        }
    }
}

fn key() -> impl Strategy<Value = String> {
    (0..6u8).prop_map(|k| format!("k{k}"))
}

fn owner(nulls: bool) -> BoxedStrategy<Option<String>> {
    if nulls {
        prop_oneof![
            Just(None),
            Just(Some("ann".to_owned())),
            Just(Some("bob".to_owned()))
        ]
        .boxed()
    } else {
        prop_oneof![Just(Some("ann".to_owned())), Just(Some("bob".to_owned()))].boxed()
    }
}

/// Values of `code` (unique in [`UniqueSpecimen`]): few, so they collide.
fn code(nulls: bool) -> BoxedStrategy<Option<String>> {
    if nulls {
        prop_oneof![3 => Just(None), 1 => Just(Some("c1".to_owned())), 1 => Just(Some("c2".to_owned()))].boxed()
    } else {
        prop_oneof![Just(Some("c1".to_owned())), Just(Some("c2".to_owned()))].boxed()
    }
}

fn specimen(nulls: bool) -> impl Strategy<Value = Specimen> {
    (
        key(),
        -3..4i64,
        owner(nulls),
        code(nulls),
        prop_oneof![Just("lab"), Just("label"), Just("other")],
        1..4i64,
    )
        .prop_map(|(id, rank, owner, code, label, version)| {
            let mut s = Specimen::new(&id, rank);
            s.owner = owner;
            s.code = code;
            s.label = format!("{label}-{rank}");
            s.version = version;
            s
        })
}

fn filter_spec() -> impl Strategy<Value = FilterSpec> {
    let leaf = prop_oneof![
        Just(FilterSpec::All),
        (-3..4i64).prop_map(FilterSpec::RankEq),
        proptest::collection::vec(-3..4i64, 0..4).prop_map(FilterSpec::RankIn),
        (-3..4i64).prop_map(FilterSpec::RankGt),
        Just(FilterSpec::OwnerNull),
        key().prop_map(FilterSpec::KeyEq),
        proptest::collection::vec(key(), 0..4).prop_map(FilterSpec::KeyIn),
        prop_oneof![Just("ann"), Just("bob")].prop_map(|o| FilterSpec::OwnerEq(o.to_owned())),
        prop_oneof![Just("lab"), Just("label-"), Just("o"), Just("")]
            .prop_map(|p| FilterSpec::LabelPrefix(p.to_owned())),
    ];
    leaf.prop_recursive(2, 8, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|f| FilterSpec::Not(Box::new(f))),
            (inner.clone(), inner.clone())
                .prop_map(|(a, b)| FilterSpec::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner).prop_map(|(a, b)| FilterSpec::Or(Box::new(a), Box::new(b))),
        ]
    })
}

fn op(nulls: bool) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => specimen(nulls).prop_map(Op::Insert),
        1 => proptest::collection::vec(specimen(nulls), 0..4).prop_map(Op::InsertMany),
        2 => key().prop_map(Op::Get),
        1 => proptest::collection::vec(key(), 0..5).prop_map(Op::GetMany),
        3 => (key(), proptest::option::of(-3..4i64), proptest::option::of(owner(nulls)), proptest::option::of(code(nulls)), proptest::option::of(1..5i64))
            .prop_map(|(k, r, o, c, v)| Op::Update(k, r, o, c, v)),
        2 => specimen(nulls).prop_map(Op::Replace),
        2 => specimen(nulls).prop_map(Op::Upsert),
        2 => key().prop_map(Op::Delete),
        1 => key().prop_map(Op::Exists),
        3 => (filter_spec(), proptest::option::of((prop_oneof![Just("rank"), Just("owner")], any::<bool>())), 1..5u32)
            .prop_map(|(f, s, l)| Op::List(f, s, l)),
        2 => filter_spec().prop_map(Op::Count),
    ]
}

/// An observation, comparable across backends: a value as JSON, or an
/// error's class.
fn observe<T: serde::Serialize>(r: &Result<T, Error>) -> String {
    match r {
        Ok(v) => serde_json::to_string(v).unwrap_or_else(|e| format!("unserializable: {e}")),
        Err(Error::Conflict { kind, .. }) => format!("conflict: {kind}"),
        Err(Error::Batch { failures, .. }) => format!("batch: {failures:?}"),
        Err(Error::NotFound { .. }) => "not found".into(),
        Err(Error::Invalid { .. }) => "invalid".into(),
        Err(Error::Unsupported { .. }) => "unsupported".into(),
        Err(other) => format!("error: {other}"),
    }
}

/// A batch that repeats a key is refused before any I/O in every store.
fn has_repeated_key(v: &[Specimen]) -> bool {
    let mut seen = std::collections::HashSet::new();
    v.iter().any(|s| !seen.insert(s.id.as_str()))
}

/// The entities a model test runs on: [`Specimen`] or [`UniqueSpecimen`].
trait Subject: Entity<Key = String> + From<Specimen> + serde::Serialize {}
impl<T: Entity<Key = String> + From<Specimen> + serde::Serialize> Subject for T {}

/// Everything, in key order (sorted here for a store whose listing is in its
/// own order).
async fn list_all<T: Subject>(repo: &dyn Repository<T>) -> Result<Vec<T>, Error> {
    let mut out = Vec::new();
    let mut q = Query::new().limit(1000);
    loop {
        let page = repo.list(&q).await?;
        out.extend(page.items);
        match page.next {
            Some(c) => q = q.after(c),
            None => {
                out.sort_by_key(Entity::key);
                return Ok(out);
            }
        }
    }
}

/// Applies an operation. `atomic_batch: false` makes `insert_many` one
/// insert per entity, continuing past failures and reporting the first
/// error: what a store that declares non-atomic batches does.
async fn apply<T: Subject>(
    repo: &dyn Repository<T>,
    op: &Op,
    atomic_batch: bool,
    ordered: bool,
) -> String {
    let one = |s: &Specimen| T::from(s.clone());
    let many = |v: &[Specimen]| v.iter().cloned().map(T::from).collect::<Vec<T>>();
    match op {
        Op::Insert(s) => observe(&repo.insert(&one(s)).await),
        Op::InsertMany(v) if !atomic_batch && !has_repeated_key(v) => {
            // A non-atomic batch: each entity on its own; the conflicts are
            // reported by position, anything else ends the batch.
            let mut failures = Vec::new();
            for (index, s) in v.iter().enumerate() {
                match repo.insert(&one(s)).await {
                    Ok(()) => {}
                    Err(Error::Conflict { kind, .. }) => {
                        failures.push(BatchFailure { index, kind })
                    }
                    Err(e) => return observe::<()>(&Err(e)),
                }
            }
            if failures.is_empty() {
                observe::<()>(&Ok(()))
            } else {
                observe::<()>(&Err(Error::Batch {
                    entity: T::schema().name,
                    failures,
                }))
            }
        }
        Op::InsertMany(v) => observe(&repo.insert_many(&many(v)).await),
        Op::Get(k) => observe(&repo.get(k).await),
        Op::GetMany(ks) => observe(&repo.get_many(ks).await),
        Op::Update(k, rank, owner, code, expected) => {
            let mut p = Patch::new();
            if let Some(r) = rank {
                p = p.set("rank", *r);
            }
            if let Some(o) = owner {
                p = p.set("owner", o.clone());
            }
            if let Some(c) = code {
                p = p.set("code", c.clone());
            }
            if let Some(v) = expected {
                p = p.expect_version(*v);
            }
            observe(&repo.update(k, &p).await)
        }
        Op::Replace(s) => observe(&repo.replace(&one(s)).await),
        Op::Upsert(s) => observe(&repo.upsert(&one(s)).await),
        Op::Delete(k) => observe(&repo.delete(k).await),
        Op::Exists(k) => observe(&repo.exists(k).await),
        Op::List(f, sort, limit) => {
            let mut q = Query::new().filter(f.to_filter()).limit(*limit);
            if let Some((field, asc)) = sort {
                q = if *asc {
                    q.sort_asc(*field)
                } else {
                    q.sort_desc(*field)
                };
            }
            // Walk every page, so cursors are compared too.
            let mut items = Vec::new();
            loop {
                match repo.list(&q).await {
                    Ok(page) => {
                        items.extend(page.items);
                        match page.next {
                            Some(c) => q = q.after(c),
                            None => {
                                // A store without key order lists in its own
                                // order: compare the set, in key order.
                                if !ordered && sort.is_none() {
                                    items.sort_by_key(Entity::key);
                                }
                                break observe::<Vec<T>>(&Ok(items));
                            }
                        }
                    }
                    Err(e) => break observe::<()>(&Err(e)),
                }
            }
        }
        Op::Count(f) => observe(&repo.count(&f.to_filter()).await),
    }
}

/// What a model test run did.
#[derive(Debug, Clone, Default)]
pub struct ModelReport {
    /// Random sequences run.
    pub sequences: u32,
    /// Operations compared.
    pub steps: usize,
    /// Steps the backend answered `Unsupported` for (allowed only where its
    /// capabilities say so).
    pub unsupported_steps: usize,
}

/// Runs `cases` random sequences (up to 40 operations each) against fresh
/// namespaces of the backend and the memory model.
///
/// # Errors
/// The first diverging sequence (shrunk), with the step and both results.
pub fn run_model_test(factory: Factory, cases: u32) -> Result<ModelReport, String> {
    run_model_test_with(factory, cases, true)
}

/// [`run_model_test`] on [`UniqueSpecimen`] (`unique`: a store-enforced
/// unique `code`, colliding often) or on [`Specimen`] (no unique field: for
/// stores that cannot enforce one, or test servers that enforce it wrongly).
///
/// # Errors
/// As [`run_model_test`].
pub fn run_model_test_with(
    factory: Factory,
    cases: u32,
    unique: bool,
) -> Result<ModelReport, String> {
    run_model_test_opts(
        factory,
        cases,
        ModelOptions {
            unique,
            nulls: true,
        },
    )
}

/// What a model test generates.
#[derive(Debug, Clone, Copy)]
pub struct ModelOptions {
    /// Run on [`UniqueSpecimen`] (a store-enforced unique `code`) rather
    /// than [`Specimen`].
    pub unique: bool,
    /// Generate null `owner` and `code` values, so that writes clear fields
    /// to null; off only for a test server known to ignore bound nulls.
    pub nulls: bool,
}

/// [`run_model_test`] with explicit options.
///
/// # Errors
/// As [`run_model_test`].
pub fn run_model_test_opts(
    factory: Factory,
    cases: u32,
    opts: ModelOptions,
) -> Result<ModelReport, String> {
    if opts.unique {
        run_model::<UniqueSpecimen>(factory, cases, opts)
    } else {
        run_model::<Specimen>(factory, cases, opts)
    }
}

fn run_model<T: Subject>(
    factory: Factory,
    cases: u32,
    opts: ModelOptions,
) -> Result<ModelReport, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let steps = Arc::new(AtomicUsize::new(0));
    let unsupported = Arc::new(AtomicUsize::new(0));
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&proptest::collection::vec(op(opts.nulls), 1..40), |ops| {
        rt.block_on(async {
            let backend = factory().await;
            let caps = backend.capabilities();
            let subject = Repo::<T>::open(backend)
                .await
                .map_err(|e| TestCaseError::fail(format!("open: {e}")))?;
            let model = Repo::<T>::open(Arc::new(MemoryBackend::new()))
                .await
                .map_err(|e| TestCaseError::fail(format!("open model: {e}")))?;
            for (n, op) in ops.iter().enumerate() {
                let got = apply(&subject, op, true, caps.ordered).await;
                let want = apply(&model, op, caps.atomic_batch, caps.ordered).await;
                steps.fetch_add(1, Ordering::Relaxed);
                if got == "unsupported" && want != "unsupported" {
                    let declared = caps.filter != FilterSupport::Any || !caps.sort || !caps.prefix;
                    if !declared {
                        return Err(TestCaseError::fail(format!(
                            "step {n} {op:?}: Unsupported, but the backend declares full support"
                        )));
                    }
                    unsupported.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if got != want {
                    return Err(TestCaseError::fail(format!(
                        "step {n} {op:?}:\n  backend: {got}\n  model:   {want}"
                    )));
                }
                let a = observe(&list_all(&subject).await);
                let b = observe(&list_all(&model).await);
                if a != b {
                    return Err(TestCaseError::fail(format!(
                        "contents differ after step {n} {op:?}:\n  backend: {a}\n  model:   {b}"
                    )));
                }
            }
            Ok(())
        })
    });
    match result {
        Ok(()) => Ok(ModelReport {
            sequences: cases,
            steps: steps.load(Ordering::Relaxed),
            unsupported_steps: unsupported.load(Ordering::Relaxed),
        }),
        Err(e) => Err(e.to_string()),
    }
}
