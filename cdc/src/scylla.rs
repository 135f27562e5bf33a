//! The ScyllaDB analytics sink: each event a row of `ce_events` (made by
//! the `2_cdc.cql` migration), keyed by its id inside a partition of one
//! day, one event type and one of a few buckets, so no partition grows
//! past a day's share of one type. A row written again (a batch delivered
//! again after a crash) is the same row with the same values: an upsert by
//! the event's id keeps it once. Rows expire at the analytics retention
//! (`USING TTL`, 13 months by default; the table's `default_time_to_live`
//! says the same).
//!
//! The day is the commit day (UTC) of the event's `time`, so a redelivery
//! lands in the same partition. The bucket is a stable hash of the id
//! (FNV-1a), the same in every version.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use dl_repositories::backends::scylla::{execution_error, prepare_error, rows_error};
use dl_repositories::{Error, Operation, Store};
use futures::future::BoxFuture;
use futures::{StreamExt as _, TryStreamExt as _};
use scylla::client::session::Session;
use scylla::response::PagingState;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlDate, CqlTimestamp};
use tokio::sync::OnceCell;

use crate::envelope::Redacted;
use crate::sink::Sink;

/// Thirteen months (396 days): the default analytics retention.
pub const DEFAULT_ANALYTICS_TTL: Duration = Duration::from_secs(396 * 24 * 3600);

/// The longest TTL ScyllaDB accepts (20 years).
pub const MAX_TTL: Duration = Duration::from_secs(630_720_000);

/// Rows written at once by one delivery.
const WRITE_CONCURRENCY: usize = 64;

/// CQL's `date` counts days from 2^31 at 1970-01-01.
const CQL_DATE_ORIGIN: i64 = 1 << 31;

/// Makes the session on first use (and again after a failed attempt).
pub type SessionConnector =
    Box<dyn Fn() -> BoxFuture<'static, Result<Arc<Session>, Error>> + Send + Sync>;

/// How the Scylla sink writes.
#[derive(Debug, Clone)]
pub struct ScyllaOptions {
    /// The keyspace of `ce_events`.
    pub keyspace: String,
    /// How long a row is kept (1 s to 20 years; default 13 months).
    pub ttl: Duration,
    /// Partitions per day and event type (1 to 256; default 8).
    pub buckets: u16,
    /// Each request's deadline (for the errors it reports).
    pub timeout: Duration,
}

impl Default for ScyllaOptions {
    fn default() -> Self {
        ScyllaOptions {
            keyspace: "data_layer".to_owned(),
            ttl: DEFAULT_ANALYTICS_TTL,
            buckets: 8,
            timeout: Duration::from_secs(10),
        }
    }
}

struct Ready {
    session: Arc<Session>,
    insert: PreparedStatement,
}

/// The ScyllaDB analytics sink.
pub struct ScyllaSink {
    connect: SessionConnector,
    options: ScyllaOptions,
    ready: OnceCell<Ready>,
}

impl fmt::Debug for ScyllaSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScyllaSink")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// FNV-1a of `s`: stable across versions and platforms.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The bucket of an event id among `buckets`.
#[must_use]
pub fn bucket_of(id: &str, buckets: u16) -> i32 {
    i32::try_from(fnv1a(id) % u32::from(buckets.max(1))).unwrap_or(0)
}

/// An event's `time` (its commit), in UTC: its day is the partition's.
fn commit_time(time: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(time)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn cql_date(day: NaiveDate) -> CqlDate {
    let days = day.signed_duration_since(NaiveDate::default()).num_days();
    CqlDate(u32::try_from(days + CQL_DATE_ORIGIN).unwrap_or_default())
}

impl ScyllaSink {
    /// A sink writing `options.keyspace`.ce_events over the session
    /// `connect` makes on first use.
    ///
    /// # Errors
    /// `Invalid` naming `scylla.keyspace`, `cdc.scylla_ttl` or
    /// `cdc.scylla_buckets` for a value it cannot use.
    pub fn new(connect: SessionConnector, options: ScyllaOptions) -> Result<Self, Error> {
        if !dl_models::is_valid_identifier(&options.keyspace) {
            return Err(Error::invalid(
                "cdc",
                Some("scylla.keyspace"),
                "a keyspace must match [a-z_][a-z0-9_]* (at most 48 bytes)",
            ));
        }
        if options.ttl < Duration::from_secs(1) || options.ttl > MAX_TTL {
            return Err(Error::invalid(
                "cdc",
                Some("cdc.scylla_ttl"),
                "the analytics retention is 1 s to 20 years (ScyllaDB's largest TTL)",
            ));
        }
        if !(1..=256).contains(&options.buckets) {
            return Err(Error::invalid(
                "cdc",
                Some("cdc.scylla_buckets"),
                "buckets per day and event type are 1 to 256",
            ));
        }
        Ok(ScyllaSink {
            connect,
            options,
            ready: OnceCell::new(),
        })
    }

    fn table(&self) -> String {
        format!("{}.ce_events", self.options.keyspace)
    }

    /// The session and the prepared insert, made when missing.
    async fn ready(&self) -> Result<&Ready, Error> {
        self.ready
            .get_or_try_init(|| async {
                let session = (self.connect)().await?;
                // The TTL is a number from the settings, checked above:
                // written into the statement, as a bind marker for it
                // would be one more value on every row.
                let cql = format!(
                    "INSERT INTO {} (day, type, bucket, id, source, subject, time, seq, policy, event) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL {}",
                    self.table(),
                    self.options.ttl.as_secs()
                );
                let insert = session.prepare(cql).await.map_err(|e| {
                    prepare_error(Operation::Deliver, self.options.timeout, e)
                })?;
                Ok(Ready { session, insert })
            })
            .await
    }

    /// Every event the table holds, as JSON text, in no particular order
    /// (a full scan: for tests and small tables).
    ///
    /// # Errors
    /// The store's error.
    pub async fn events(&self, limit: usize) -> Result<Vec<String>, Error> {
        let op = Operation::List;
        let ready = self.ready().await?;
        let timeout = self.options.timeout;
        let select = ready
            .session
            .prepare(format!("SELECT event FROM {}", self.table()))
            .await
            .map_err(|e| prepare_error(op, timeout, e))?;
        let mut out = Vec::new();
        let mut state = PagingState::start();
        loop {
            let (result, next) = ready
                .session
                .execute_single_page(&select, (), state)
                .await
                .map_err(|e| execution_error(op, timeout, e))?;
            let rows = result
                .into_rows_result()
                .map_err(|_| rows_error(op, timeout))?;
            for row in rows
                .rows::<(String,)>()
                .map_err(|_| rows_error(op, timeout))?
            {
                let (event,) = row.map_err(|_| rows_error(op, timeout))?;
                if out.len() == limit {
                    return Ok(out);
                }
                out.push(event);
            }
            match next.into_paging_control_flow() {
                std::ops::ControlFlow::Break(()) => return Ok(out),
                std::ops::ControlFlow::Continue(s) => state = s,
            }
        }
    }
}

#[async_trait]
impl Sink for ScyllaSink {
    fn name(&self) -> &'static str {
        "scylla"
    }

    fn store(&self) -> Store {
        Store::Scylla
    }

    async fn deliver(&self, events: &[Redacted]) -> Result<(), Error> {
        let ready = self.ready().await?;
        let timeout = self.options.timeout;
        let buckets = self.options.buckets;
        let rows = events
            .iter()
            .map(|r| {
                let e = &r.event;
                let time = commit_time(&e.time).ok_or_else(|| Error::Backend {
                    store: Store::Scylla,
                    operation: Operation::Deliver,
                    message: format!("event {} has no RFC 3339 time", e.id),
                    retryable: false,
                    source: None,
                })?;
                Ok((
                    cql_date(time.date_naive()),
                    e.ty.clone(),
                    bucket_of(&e.id, buckets),
                    e.id.clone(),
                    e.source.clone(),
                    e.subject.clone(),
                    CqlTimestamp(time.timestamp_millis()),
                    i64::try_from(e.dlseq).unwrap_or(i64::MAX),
                    e.dlpolicy.clone(),
                    r.json(),
                ))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        futures::stream::iter(rows)
            .map(|row| async move {
                ready
                    .session
                    .execute_unpaged(&ready.insert, row)
                    .await
                    .map(|_| ())
                    .map_err(|e| execution_error(Operation::Deliver, timeout, e))
            })
            .buffer_unordered(WRITE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }

    /// `None`: counting a ScyllaDB table is a full scan.
    async fn count(&self) -> Result<Option<u64>, Error> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_in_range() {
        // The same id lands in the same bucket in every version.
        assert_eq!(fnv1a(""), 0x811c_9dc5);
        assert_eq!(fnv1a("a"), 0xe40c_292c);
        for n in [1u16, 8, 256] {
            for id in ["patients/k1.abc/1", "x", ""] {
                let b = bucket_of(id, n);
                assert!((0..i32::from(n)).contains(&b));
                assert_eq!(b, bucket_of(id, n));
            }
        }
    }

    #[test]
    fn the_day_is_the_utc_commit_day() {
        assert_eq!(
            commit_time("2026-12-07T23:30:00.000-02:00").map(|t| t.date_naive()),
            NaiveDate::from_ymd_opt(2026, 12, 8)
        );
        assert_eq!(commit_time("yesterday"), None);
        assert_eq!(cql_date(NaiveDate::default()).0, 1 << 31);
    }

    #[test]
    fn bad_options_name_their_setting() {
        let connect: SessionConnector =
            Box::new(|| Box::pin(async { Err(Error::invalid("cdc", Some("scylla"), "not used")) }));
        let err = ScyllaSink::new(
            connect,
            ScyllaOptions {
                ttl: Duration::ZERO,
                ..ScyllaOptions::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("cdc.scylla_ttl"), "{err}");
        let connect: SessionConnector =
            Box::new(|| Box::pin(async { Err(Error::invalid("cdc", Some("scylla"), "not used")) }));
        let err = ScyllaSink::new(
            connect,
            ScyllaOptions {
                keyspace: "x; DROP TABLE ce_events".into(),
                ..ScyllaOptions::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("scylla.keyspace"), "{err}");
    }
}
