//! The runner: every case against a fresh namespace of one backend, the
//! outcomes counted per backend.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use dl_repositories::{Backend, Capabilities, Error, FilterSupport, Repo, Store};

use crate::entities::{Note, Specimen, UniqueSpecimen};

/// Makes a backend over a fresh, empty namespace (a new database, schema,
/// key prefix or keyspace), so cases run in parallel without seeing each
/// other's data.
pub type Factory =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Arc<dyn Backend>> + Send>> + Send + Sync>;

/// What a case needs beyond the basic contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Filters on any field (not only indexed equality).
    AnyFilter,
    /// `eq`/`in` filters on `#[indexed]` fields (not only the key).
    IndexedFilter,
    /// Prefix filters.
    Prefix,
    /// Sorting on fields other than the key.
    Sort,
    /// All-or-nothing `insert_many`.
    AtomicBatch,
    /// Store-enforced unique values.
    Unique,
    /// Transactions (`Backend::begin`).
    Transactions,
}

/// The outcome of a case that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The behaviour was asserted.
    Passed,
    /// The backend declared it cannot serve the case, and returned the
    /// precise `Unsupported` error, which the case asserted.
    Unsupported,
}

/// A case's result: an outcome, or why it failed.
pub type CaseResult = Result<Outcome, String>;

/// What a case gets.
#[derive(Clone)]
pub struct Ctx {
    /// The backend, over a fresh namespace.
    pub backend: Arc<dyn Backend>,
    /// Its store.
    pub store: Store,
    /// Its declared capabilities.
    pub caps: Capabilities,
    /// The specimen repository.
    pub specimens: Arc<Repo<Specimen>>,
    /// The note repository.
    pub notes: Arc<Repo<Note>>,
    /// The unique-specimen repository, or why it could not be opened.
    pub uniques: Arc<Result<Repo<UniqueSpecimen>, Error>>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Ctx {
    /// Opens the test repositories over a backend.
    ///
    /// # Errors
    /// When the backend cannot prepare them.
    pub async fn new(backend: Arc<dyn Backend>) -> Result<Self, String> {
        let specimens = Repo::<Specimen>::open(Arc::clone(&backend))
            .await
            .map_err(|e| format!("open specimens: {e}"))?;
        let uniques = Repo::<UniqueSpecimen>::open(Arc::clone(&backend)).await;
        let notes = Repo::<Note>::open(Arc::clone(&backend))
            .await
            .map_err(|e| format!("open notes: {e}"))?;
        Ok(Ctx {
            store: backend.store(),
            caps: backend.capabilities(),
            backend,
            specimens: Arc::new(specimens),
            notes: Arc::new(notes),
            uniques: Arc::new(uniques),
        })
    }

    /// Whether the backend lacks what `need` asks for.
    #[must_use]
    pub fn lacks(&self, need: Need) -> bool {
        match need {
            Need::AnyFilter => self.caps.filter != FilterSupport::Any,
            Need::IndexedFilter => self.caps.filter == FilterSupport::KeyOnly,
            Need::Prefix => !self.caps.prefix || self.caps.filter != FilterSupport::Any,
            Need::Sort => !self.caps.sort,
            Need::AtomicBatch => !self.caps.atomic_batch,
            Need::Unique => !self.caps.unique,
            Need::Transactions => !self.caps.transactions,
        }
    }

    /// The unique-specimen repository; on a store that cannot enforce unique
    /// values, asserts that opening it failed with the precise `Unsupported`
    /// and ends the case with `Outcome::Unsupported`.
    ///
    /// # Errors
    /// The case's outcome, when it ends here.
    pub fn uniques(&self) -> Result<&Repo<UniqueSpecimen>, CaseResult> {
        match (&*self.uniques, self.lacks(Need::Unique)) {
            (Ok(repo), false) => Ok(repo),
            (
                Err(Error::Unsupported {
                    store,
                    operation: dl_repositories::Operation::Prepare,
                    reason,
                }),
                true,
            ) if *store == self.store && reason.contains("unique") => Err(Ok(Outcome::Unsupported)),
            (Ok(_), true) => Err(Err(
                "the store declares no unique support but opened a unique entity".into(),
            )),
            (Err(e), _) => Err(Err(format!("open unique_specimens: {e}"))),
        }
    }

    /// Whether listing without a sort returns key order (else the store's
    /// own stable order, e.g. Scylla's token order).
    #[must_use]
    pub fn ordered(&self) -> bool {
        self.caps.ordered
    }

    /// Asserts the precise `Unsupported` error of this store.
    ///
    /// # Errors
    /// When the result is anything else.
    pub fn expect_unsupported<T: std::fmt::Debug>(
        &self,
        r: Result<T, Error>,
        op: dl_repositories::Operation,
    ) -> CaseResult {
        match r {
            Err(Error::Unsupported {
                store,
                operation,
                ref reason,
            }) if store == self.store && operation == op && !reason.is_empty() => {
                Ok(Outcome::Unsupported)
            }
            other => Err(format!(
                "expected Unsupported {{ {}, {op} }}, got {other:?}",
                self.store
            )),
        }
    }
}

/// Runs a gated operation: when the backend lacks `need`, asserts the
/// precise `Unsupported` error and ends the case with `Outcome::Unsupported`;
/// otherwise yields the successful value or fails the case.
#[macro_export]
macro_rules! gated {
    ($ctx:expr, $need:expr, $op:expr, $call:expr) => {{
        let r = $call;
        if $ctx.lacks($need) {
            return $ctx.expect_unsupported(r, $op);
        }
        match r {
            Ok(v) => v,
            Err(e) => return Err(format!("{}: {e}", stringify!($call))),
        }
    }};
}

/// Fails the case unless the condition holds.
#[macro_export]
macro_rules! check {
    ($cond:expr) => {
        if !$cond {
            return Err(format!("check failed: {} (line {})", stringify!($cond), line!()));
        }
    };
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!("check failed: {} (line {}): {}", stringify!($cond), line!(), format!($($msg)+)));
        }
    };
}

/// Unwraps a result or fails the case with the call and error.
#[macro_export]
macro_rules! ok {
    ($call:expr) => {
        match $call {
            Ok(v) => v,
            Err(e) => return Err(format!("{} (line {}): {e}", stringify!($call), line!())),
        }
    };
}

/// One case.
pub struct Case {
    /// Its name.
    pub name: &'static str,
    /// Its body.
    pub run: fn(Ctx) -> Pin<Box<dyn Future<Output = CaseResult> + Send>>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// A defect of a test server (not of our backend) that makes one case fail
/// there. The suite runs the case anyway and asserts that it still fails:
/// counted apart, never passed silently, and flagged once the server is fixed.
#[derive(Debug, Clone, Copy)]
pub struct KnownDefect {
    /// The case it breaks.
    pub case: &'static str,
    /// The server (`secantusdb 0.5.3-beta.196`, say).
    pub server: &'static str,
    /// What the server does wrong, and what a correct store does.
    pub what: &'static str,
    /// Text the case's failure must contain (the defect, not another failure).
    pub failure_contains: &'static str,
}

/// Per-backend counts.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The backend's name.
    pub backend: String,
    /// Cases whose behaviour was asserted.
    pub passed: usize,
    /// Cases answered with the asserted `Unsupported` error, by name.
    pub unsupported: Vec<&'static str>,
    /// Failed cases: name and why.
    pub failed: Vec<(&'static str, String)>,
    /// Cases that fail because of a known test-server defect (asserted).
    pub server_defects: Vec<KnownDefect>,
}

/// The cases a store that serves only `eq`/`in` on indexed fields and the
/// key, with no sorting (Redis; the memory model restricted the same way)
/// answers with the asserted `Unsupported`.
pub const INDEXED_EQUALITY_UNSUPPORTED: &[&str] = &[
    "count_with_filter",
    "cursor_never_carries_phi",
    "cursor_of_another_query_is_rejected",
    "filter_and_or_nested",
    "filter_dates_and_timestamps",
    "filter_float_accepts_int",
    "filter_is_null",
    "filter_ne_excludes_nulls",
    "filter_not_eq_includes_nulls",
    "filter_not_is_null",
    "filter_ordering_operators",
    "filter_prefix",
    "filter_prefix_is_literal",
    "filter_uuid",
    "pages_descending_with_nulls",
    "pages_have_no_duplicates_or_gaps",
    "pages_survive_inserts_between_pages",
    "sort_puts_nulls_first_ascending",
    "sort_puts_nulls_last_descending",
    "sort_ties_break_by_key",
];

/// The transaction cases: a store without transactions answers each with
/// the asserted `Unsupported` (operation `transaction`).
pub const TRANSACTION_CASES: &[&str] = &[
    "transaction_commit_makes_writes_visible",
    "transaction_rollback_discards_writes",
    "transaction_drop_rolls_back",
    "transaction_panic_rolls_back",
    "transaction_uncommitted_writes_are_invisible",
    "transaction_version_conflict_rolls_back_everything",
    "transaction_nested_is_refused",
    "transaction_calls_after_the_end_are_refused",
];

/// Two lists of case names as one.
#[must_use]
pub fn joined(a: &[&'static str], b: &[&'static str]) -> Vec<&'static str> {
    a.iter().chain(b).copied().collect()
}

/// The cases ScyllaDB (key-only filters, token order, no unique values)
/// answers with the asserted `Unsupported`.
pub const SCYLLA_UNSUPPORTED: &[&str] = &[
    "count_with_filter",
    "cursor_never_carries_phi",
    "cursor_of_another_query_is_rejected",
    "filter_and_or_nested",
    "filter_dates_and_timestamps",
    "filter_eq",
    "filter_float_accepts_int",
    "filter_in",
    "filter_in_empty_matches_nothing",
    "filter_in_large_list",
    "filter_is_null",
    "filter_ne_excludes_nulls",
    "filter_not_eq_includes_nulls",
    "filter_not_is_null",
    "filter_ordering_operators",
    "filter_prefix",
    "filter_prefix_is_literal",
    "filter_uuid",
    "injection_value_is_data",
    "list_with_filter_and_limit",
    "pages_descending_with_nulls",
    "pages_have_no_duplicates_or_gaps",
    "pages_survive_inserts_between_pages",
    "sort_puts_nulls_first_ascending",
    "sort_puts_nulls_last_descending",
    "sort_ties_break_by_key",
    "unique_allows_many_nulls",
    "unique_field_conflicts_on_insert",
    "unique_field_conflicts_on_update",
    "unique_value_freed_by_update",
];

impl Report {
    /// Panics unless no case failed and the cases answered `Unsupported`
    /// are exactly `expected` (by name): a capability that silently turns
    /// off, or one that starts working, changes the set and fails the run.
    pub fn assert_exactly(&self, expected_unsupported: &[&str]) {
        assert!(self.failed.is_empty(), "{}", self.summary());
        let mut got: Vec<&str> = self.unsupported.clone();
        got.sort_unstable();
        let mut want: Vec<&str> = expected_unsupported.to_vec();
        want.sort_unstable();
        let extra: Vec<&&str> = got.iter().filter(|g| !want.contains(g)).collect();
        let missing: Vec<&&str> = want.iter().filter(|w| !got.contains(w)).collect();
        assert!(
            extra.is_empty() && missing.is_empty(),
            "{}: Unsupported now also for {extra:?}, no longer for {missing:?}\n{}",
            self.backend,
            self.summary()
        );
    }

    /// A summary line, plus the failures.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut s = format!(
            "conformance[{}]: {} cases: {} passed, {} answered Unsupported (asserted), {} known test-server defects (asserted), {} failed",
            self.backend,
            self.passed + self.unsupported.len() + self.server_defects.len() + self.failed.len(),
            self.passed,
            self.unsupported.len(),
            self.server_defects.len(),
            self.failed.len()
        );
        for d in &self.server_defects {
            let _ = write!(
                s,
                "\n  test-server defect in {} ({}): {}",
                d.case, d.server, d.what
            );
        }
        if !self.unsupported.is_empty() {
            let _ = write!(s, "\n  unsupported: {}", self.unsupported.join(", "));
        }
        for (name, why) in &self.failed {
            let _ = write!(s, "\n  FAILED {name}: {why}");
        }
        s
    }
}

/// Runs every case of [`crate::cases::ALL`] against fresh namespaces of a
/// backend, at most `parallel` at a time.
pub async fn run_conformance(backend: &str, factory: Factory, parallel: usize) -> Report {
    run_conformance_known(backend, factory, parallel, &[]).await
}

/// [`run_conformance`] on a test server with known defects: each listed
/// case must still fail (else the run fails, saying the entry can go).
pub async fn run_conformance_known(
    backend: &str,
    factory: Factory,
    parallel: usize,
    known: &[KnownDefect],
) -> Report {
    use futures::StreamExt as _;
    let results: Vec<(&'static str, CaseResult)> = futures::stream::iter(crate::cases::ALL.iter())
        .map(|case| {
            let factory = Arc::clone(&factory);
            async move {
                let ctx = match Ctx::new(factory().await).await {
                    Ok(ctx) => ctx,
                    Err(e) => return (case.name, Err(e)),
                };
                let handle = tokio::spawn((case.run)(ctx));
                let r = match handle.await {
                    Ok(r) => r,
                    Err(e) => Err(format!("case panicked: {e}")),
                };
                (case.name, r)
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let mut report = Report {
        backend: backend.to_owned(),
        ..Report::default()
    };
    for (name, r) in results {
        if let Some(defect) = known.iter().find(|d| d.case == name) {
            match r {
                Err(why) if why.contains(defect.failure_contains) => {
                    report.server_defects.push(*defect)
                }
                Err(why) => report.failed.push((
                    name,
                    format!(
                        "failed, but not with the known defect of {}: {why}",
                        defect.server
                    ),
                )),
                Ok(_) => report.failed.push((
                    name,
                    format!(
                        "the known defect of {} no longer reproduces: remove it from the list",
                        defect.server
                    ),
                )),
            }
            continue;
        }
        match r {
            Ok(Outcome::Passed) => report.passed += 1,
            Ok(Outcome::Unsupported) => report.unsupported.push(name),
            Err(why) => report.failed.push((name, why)),
        }
    }
    report.unsupported.sort_unstable();
    report.failed.sort_by_key(|(n, _)| *n);
    report
}

/// A backend that declares fewer capabilities than the one it wraps: what
/// Redis will declare (eq/in on indexed fields only, no sorting, no prefix).
/// It mocks no store; it proves that the shared layer refuses, before any
/// I/O, exactly what a backend declares it cannot serve, and that the suite
/// asserts and counts those refusals.
#[derive(Debug)]
pub struct Restricted {
    inner: Arc<dyn Backend>,
    caps: Capabilities,
}

impl Restricted {
    /// Wraps `inner`, declaring indexed-equality filters only and no sorting.
    #[must_use]
    pub fn indexed_equality_only(inner: Arc<dyn Backend>) -> Self {
        let mut caps = inner.capabilities();
        caps.filter = FilterSupport::IndexedEquality;
        caps.sort = false;
        caps.prefix = false;
        Restricted { inner, caps }
    }

    /// Wraps `inner`, declaring that unique values are not enforced.
    #[must_use]
    pub fn without_unique(inner: Arc<dyn Backend>) -> Self {
        let mut caps = inner.capabilities();
        caps.unique = false;
        Restricted { inner, caps }
    }
}

#[async_trait::async_trait]
impl Backend for Restricted {
    fn store(&self) -> Store {
        self.inner.store()
    }
    fn capabilities(&self) -> Capabilities {
        self.caps
    }
    async fn call(
        &self,
        s: &'static dl_models::EntitySchema,
        request: dl_repositories::Request<'_>,
    ) -> dl_repositories::Result<dl_repositories::Response> {
        self.inner.call(s, request).await
    }
    async fn begin(&self) -> dl_repositories::Result<Box<dyn dl_repositories::Transaction>> {
        self.inner.begin().await
    }
    async fn change_feed(
        &self,
    ) -> dl_repositories::Result<std::sync::Arc<dyn dl_repositories::ChangeFeed>> {
        self.inner.change_feed().await
    }
}

#[async_trait::async_trait]
impl dl_repositories::Probe for Restricted {
    async fn ping(&self) -> dl_repositories::Result<()> {
        self.inner.ping().await
    }
    fn pool_stats(&self) -> Option<dl_repositories::PoolStats> {
        self.inner.pool_stats()
    }
    fn breaker_state(&self) -> Option<dl_repositories::BreakerState> {
        self.inner.breaker_state()
    }
}
