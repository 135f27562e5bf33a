//! Layered settings: defaults < `data-layer.toml` < `.env` < environment <
//! flags.
//!
//! Every key is declared once in [`KEYS`] with its environment name, its
//! default, what it accepts and one line of documentation. Unknown keys
//! (`DL_POSTGRES__MAX_CONECTIONS`, a typo in the file) are errors, so a
//! setting is never silently ignored. Errors name the key, where the value
//! came from, the value's form and what was expected; they never print a
//! secret.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};

use crate::secret::SecretUrl;

/// What a key accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole number in a range.
    Count {
        /// Smallest accepted.
        min: u32,
        /// Largest accepted.
        max: u32,
    },
    /// A duration: a whole number with a unit, `ms`, `s`, `m`, `h` or `d` (`30s`).
    Duration,
    /// `true` or `false`.
    Bool,
    /// A URL with one of these schemes; may hold a password (never printed).
    Url(&'static [&'static str]),
    /// Comma-separated `host:port` nodes.
    Nodes,
    /// A name: `[a-z_][a-z0-9_]*`, at most 48 bytes.
    Name,
    /// A secret key: base64 (or base64url) of at most 32 bytes or more;
    /// never printed.
    Secret,
    /// Earlier secret keys, kept to open what they sealed:
    /// comma-separated `id:base64`; never printed.
    Secrets,
    /// Comma-separated names (or a TOML array of them), each a [`Kind::Name`],
    /// none twice; empty for none.
    Names,
}

impl Kind {
    fn expected(self) -> String {
        match self {
            Kind::Count { min, max } => format!("a whole number from {min} to {max}"),
            Kind::Duration => "a duration such as 500ms, 30s, 5m, 1h or 7d (greater than zero)".into(),
            Kind::Bool => "true or false".into(),
            Kind::Url(schemes) => format!(
                "a URL starting with {}",
                schemes
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
            Kind::Nodes => "comma-separated host:port pairs, e.g. 127.0.0.1:9042".into(),
            Kind::Name => "a name of lower-case letters, digits and _ (at most 48)".into(),
            Kind::Secret => {
                "base64 of a random key of at least 32 bytes (e.g. `openssl rand -base64 32`)"
                    .into()
            }
            Kind::Secrets => {
                "comma-separated id:key pairs (id: 1-16 of A-Z a-z 0-9 _ -; key: base64 of at least 32 bytes)"
                    .into()
            }
            Kind::Names => {
                "comma-separated names (or a TOML array of them), each of lower-case letters, digits and _ (at most 48), none twice"
                    .into()
            }
        }
    }
}

/// One declared setting.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    /// Dotted key (`postgres.max_connections`), as in the file and `--set`.
    pub key: &'static str,
    /// Its environment variable.
    pub env: &'static str,
    /// What it accepts.
    pub kind: Kind,
    /// The default, in the same text form; `None` means unset.
    pub default: Option<&'static str>,
    /// One line: what it does, and the trade-off.
    pub doc: &'static str,
}

macro_rules! pool_keys {
    ($store:literal, $env:literal, $max:literal) => {
        [
            KeySpec { key: concat!($store, ".max_connections"), env: concat!("DL_", $env, "__MAX_CONNECTIONS"), kind: Kind::Count { min: 1, max: 1000 }, default: Some($max), doc: "Pool size. Larger serves more concurrent calls, costs server memory." },
            KeySpec { key: concat!($store, ".min_connections"), env: concat!("DL_", $env, "__MIN_CONNECTIONS"), kind: Kind::Count { min: 0, max: 1000 }, default: Some("0"), doc: "Connections kept open while idle. Faster first calls, more idle sessions." },
            KeySpec { key: concat!($store, ".connect_timeout"), env: concat!("DL_", $env, "__CONNECT_TIMEOUT"), kind: Kind::Duration, default: Some("5s"), doc: "Time to open one connection. Shorter fails fast on a dead host." },
            KeySpec { key: concat!($store, ".acquire_timeout"), env: concat!("DL_", $env, "__ACQUIRE_TIMEOUT"), kind: Kind::Duration, default: Some("5s"), doc: "Wait for a free pooled connection. Shorter sheds load sooner." },
            KeySpec { key: concat!($store, ".request_timeout"), env: concat!("DL_", $env, "__REQUEST_TIMEOUT"), kind: Kind::Duration, default: Some("10s"), doc: "Deadline of one repository call. Never unbounded: a hung store fails the call." },
            KeySpec { key: concat!($store, ".idle_timeout"), env: concat!("DL_", $env, "__IDLE_TIMEOUT"), kind: Kind::Duration, default: Some("10m"), doc: "Close connections idle this long." },
            KeySpec { key: concat!($store, ".max_lifetime"), env: concat!("DL_", $env, "__MAX_LIFETIME"), kind: Kind::Duration, default: Some("30m"), doc: "Recycle connections after this long (picks up failovers and DNS changes)." },
            KeySpec { key: concat!($store, ".optional"), env: concat!("DL_", $env, "__OPTIONAL"), kind: Kind::Bool, default: Some("false"), doc: "If true, this store being down degrades the service instead of failing it." },
            KeySpec { key: concat!($store, ".breaker_window"), env: concat!("DL_", $env, "__BREAKER_WINDOW"), kind: Kind::Count { min: 1, max: 10_000 }, default: Some("20"), doc: "Calls in the breaker's sliding window. Larger reacts slower and steadier." },
            KeySpec { key: concat!($store, ".breaker_min_calls"), env: concat!("DL_", $env, "__BREAKER_MIN_CALLS"), kind: Kind::Count { min: 1, max: 10_000 }, default: Some("10"), doc: "Calls needed before the breaker judges. Fewer opens on a handful of errors." },
            KeySpec { key: concat!($store, ".breaker_failure_percent"), env: concat!("DL_", $env, "__BREAKER_FAILURE_PERCENT"), kind: Kind::Count { min: 1, max: 100 }, default: Some("50"), doc: "Share of transient failures (in %) that opens the breaker." },
            KeySpec { key: concat!($store, ".breaker_wait"), env: concat!("DL_", $env, "__BREAKER_WAIT"), kind: Kind::Duration, default: Some("5s"), doc: "Time open before probing. Shorter recovers sooner, longer spares a struggling store." },
            KeySpec { key: concat!($store, ".breaker_probes"), env: concat!("DL_", $env, "__BREAKER_PROBES"), kind: Kind::Count { min: 1, max: 100 }, default: Some("3"), doc: "Half-open probes; all must succeed to close the breaker." },
            KeySpec { key: concat!($store, ".retries"), env: concat!("DL_", $env, "__RETRIES"), kind: Kind::Count { min: 0, max: 10 }, default: Some("3"), doc: "Retries of a read (or a write never sent) on a transient fault. More hides blips, adds load." },
        ]
    };
}

const BASE_KEYS: [KeySpec; 33] = [
    KeySpec {
        key: "database_url",
        env: "DATABASE_URL",
        kind: Kind::Url(&["sqlite", "postgres", "postgresql"]),
        default: Some("sqlite://data/data-layer.db"),
        doc: "The relational store: a SQLite file (the embedded default) or PostgreSQL.",
    },
    KeySpec {
        key: "mongodb_uri",
        env: "MONGODB_URI",
        kind: Kind::Url(&["mongodb", "mongodb+srv"]),
        default: None,
        doc: "MongoDB; unset means not configured.",
    },
    KeySpec {
        key: "redis_url",
        env: "REDIS_URL",
        kind: Kind::Url(&["redis", "rediss"]),
        default: None,
        doc: "Redis; unset means not configured.",
    },
    KeySpec {
        key: "scylla_uri",
        env: "SCYLLA_URI",
        kind: Kind::Nodes,
        default: None,
        doc: "ScyllaDB contact points; unset means not configured.",
    },
    KeySpec {
        key: "scylla.keyspace",
        env: "DL_SCYLLA__KEYSPACE",
        kind: Kind::Name,
        default: Some("data_layer"),
        doc: "Keyspace the Scylla tables live in.",
    },
    KeySpec {
        key: "scylla.auto_await_schema_agreement",
        env: "DL_SCYLLA__AUTO_AWAIT_SCHEMA_AGREEMENT",
        kind: Kind::Bool,
        default: Some("true"),
        doc: "Wait for schema agreement after DDL (false only for single-node test servers).",
    },
    KeySpec {
        key: "scylla.fetch_schema_metadata",
        env: "DL_SCYLLA__FETCH_SCHEMA_METADATA",
        kind: Kind::Bool,
        default: Some("true"),
        doc: "Fetch cluster schema metadata (false only for test servers that lack it).",
    },
    KeySpec {
        key: "scylla.lightweight_transactions",
        env: "DL_SCYLLA__LIGHTWEIGHT_TRANSACTIONS",
        kind: Kind::Bool,
        default: Some("true"),
        doc: "Check duplicates and versions with LWT (IF ...); false only for test servers without LWT (then read-then-write, not atomic).",
    },
    KeySpec {
        key: "scylla.create_keyspace",
        env: "DL_SCYLLA__CREATE_KEYSPACE",
        kind: Kind::Bool,
        default: Some("false"),
        doc: "Let `migrate` create a missing keyspace with replication factor 1 (development only; production keyspaces are made with the cluster's replication).",
    },
    KeySpec {
        key: "postgres.schema",
        env: "DL_POSTGRES__SCHEMA",
        kind: Kind::Name,
        default: Some("public"),
        doc: "PostgreSQL schema the tables live in.",
    },
    KeySpec {
        key: "redis.key_prefix",
        env: "DL_REDIS__KEY_PREFIX",
        kind: Kind::Name,
        default: Some("dl"),
        doc: "Prefix of every Redis key this service writes.",
    },
    KeySpec {
        key: "privacy.key",
        env: "DL_PRIVACY__KEY",
        kind: Kind::Secret,
        default: None,
        doc: "Secret key (base64, 32+ bytes) for cursors and PHI tokens; unset means a random key per process (cursors then open only in the process that made them).",
    },
    KeySpec {
        key: "privacy.key_id",
        env: "DL_PRIVACY__KEY_ID",
        kind: Kind::Name,
        default: Some("k1"),
        doc: "Id of privacy.key (at most 16 characters), written beside every token and sealed value so keys can rotate.",
    },
    KeySpec {
        key: "privacy.previous_keys",
        env: "DL_PRIVACY__PREVIOUS_KEYS",
        kind: Kind::Secrets,
        default: None,
        doc: "Keys rotated out (id:base64, comma-separated): what they sealed still opens; nothing new is made with them.",
    },
    KeySpec {
        key: "health.interval",
        env: "DL_HEALTH__INTERVAL",
        kind: Kind::Duration,
        default: Some("15s"),
        doc: "Time between the background health checker's pings of every store.",
    },
    KeySpec {
        key: "cdc.entities",
        env: "DL_CDC__ENTITIES",
        kind: Kind::Names,
        default: Some(""),
        doc: "Entities (store names) whose every committed write becomes a change-feed event, in the same transaction; empty: none (an entity not named pays nothing).",
    },
    KeySpec {
        key: "cdc.retention",
        env: "DL_CDC__RETENTION",
        kind: Kind::Duration,
        default: Some("168h"),
        doc: "How long change-feed events are kept after every registered consumer acknowledged them.",
    },
    KeySpec {
        key: "cdc.profile",
        env: "DL_CDC__PROFILE",
        kind: Kind::Name,
        default: Some("pseudonymous"),
        doc: "What the CDC relay lets into analytics: safe_harbor (HIPAA Safe Harbor: no identifier in any form derived from it) or pseudonymous (keyed tokens, a Limited Data Set).",
    },
    KeySpec {
        key: "cdc.policy_version",
        env: "DL_CDC__POLICY_VERSION",
        kind: Kind::Name,
        default: Some("v1"),
        doc: "The redaction policy's version, written beside every emitted event and redaction record.",
    },
    KeySpec {
        key: "cdc.sinks",
        env: "DL_CDC__SINKS",
        kind: Kind::Names,
        default: Some(""),
        doc: "Where the CDC relay delivers redacted events: any of sqlite, postgres (the relational store's ce_events table), nats (JetStream, cdc.nats_url), scylla (ce_events in the scylla keyspace); empty: no relay.",
    },
    KeySpec {
        key: "cdc.nats_url",
        env: "DL_CDC__NATS_URL",
        kind: Kind::Url(&["nats", "tls"]),
        default: None,
        doc: "The NATS server of the nats sink (nats://host:4222).",
    },
    KeySpec {
        key: "cdc.nats_stream",
        env: "DL_CDC__NATS_STREAM",
        kind: Kind::Name,
        default: Some("dl_ce"),
        doc: "The JetStream stream of the nats sink (made on first use when missing).",
    },
    KeySpec {
        key: "cdc.nats_subject_root",
        env: "DL_CDC__NATS_SUBJECT_ROOT",
        kind: Kind::Name,
        default: Some("ce"),
        doc: "The first token of the nats sink's subjects: <root>.<entity>.<op>.",
    },
    KeySpec {
        key: "cdc.nats_duplicate_window",
        env: "DL_CDC__NATS_DUPLICATE_WINDOW",
        kind: Kind::Duration,
        default: Some("10m"),
        doc: "How long the nats sink's stream remembers event ids to drop a duplicate (longer than any relay restart).",
    },
    KeySpec {
        key: "cdc.scylla_ttl",
        env: "DL_CDC__SCYLLA_TTL",
        kind: Kind::Duration,
        default: Some("396d"),
        doc: "How long the scylla sink keeps an event (the analytics retention; rows expire by TTL): 13 months by default, at most 20 years.",
    },
    KeySpec {
        key: "cdc.scylla_buckets",
        env: "DL_CDC__SCYLLA_BUCKETS",
        kind: Kind::Count { min: 1, max: 256 },
        default: Some("8"),
        doc: "Partitions per day and event type of the scylla sink's ce_events (more for a high event rate).",
    },
    KeySpec {
        key: "cdc.relay",
        env: "DL_CDC__RELAY",
        kind: Kind::Name,
        default: Some("analytics"),
        doc: "The CDC relay's name: its change-feed consumer (one per source store, <name>_<store>) and its ledger entries.",
    },
    KeySpec {
        key: "cdc.batch",
        env: "DL_CDC__BATCH",
        kind: Kind::Count { min: 1, max: 5000 },
        default: Some("500"),
        doc: "Events the CDC relay reads, redacts and delivers at once (memory stays one batch).",
    },
    KeySpec {
        key: "saga.lease",
        env: "DL_SAGA__LEASE",
        kind: Kind::Duration,
        default: Some("30s"),
        doc: "How long a saga runner's hold on a saga lasts without renewal (renewed every third of it; 300ms to 1h): a runner that dies loses its sagas to another after this long.",
    },
    KeySpec {
        key: "saga.step_timeout",
        env: "DL_SAGA__STEP_TIMEOUT",
        kind: Kind::Duration,
        default: Some("30s"),
        doc: "How long one attempt of a saga step may take unless the step sets its own; past it the attempt's outcome is unknown.",
    },
    KeySpec {
        key: "saga.attempts",
        env: "DL_SAGA__ATTEMPTS",
        kind: Kind::Count { min: 1, max: 100 },
        default: Some("3"),
        doc: "Tries of a compensatable step's or the pivot's action before the saga turns back.",
    },
    KeySpec {
        key: "saga.stuck_after",
        env: "DL_SAGA__STUCK_AFTER",
        kind: Kind::Count { min: 1, max: 10000 },
        default: Some("10"),
        doc: "Failed tries in a row after which a compensation or a retriable step leaves its saga stuck (visible, alerting, waiting for data-layer saga retry).",
    },
    KeySpec {
        key: "saga.recover_every",
        env: "DL_SAGA__RECOVER_EVERY",
        kind: Kind::Duration,
        default: Some("10s"),
        doc: "Time between the background rounds that resume the sagas of runners that died.",
    },
];

const POOL_SQLITE: [KeySpec; 14] = pool_keys!("sqlite", "SQLITE", "4");
const POOL_POSTGRES: [KeySpec; 14] = pool_keys!("postgres", "POSTGRES", "10");
const POOL_MONGO: [KeySpec; 14] = pool_keys!("mongo", "MONGO", "10");
const POOL_REDIS: [KeySpec; 14] = pool_keys!("redis", "REDIS", "8");
const POOL_SCYLLA: [KeySpec; 14] = pool_keys!("scylla", "SCYLLA", "4");

/// Every declared key, in documentation order.
pub static KEYS: [&[KeySpec]; 6] = [
    &BASE_KEYS,
    &POOL_SQLITE,
    &POOL_POSTGRES,
    &POOL_MONGO,
    &POOL_REDIS,
    &POOL_SCYLLA,
];

fn all_keys() -> impl Iterator<Item = &'static KeySpec> {
    KEYS.iter().flat_map(|k| k.iter())
}

fn spec(key: &str) -> Option<&'static KeySpec> {
    all_keys().find(|s| s.key == key)
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// The settings file.
    File(PathBuf),
    /// The `.env` file.
    EnvFile(PathBuf),
    /// The process environment.
    Environment,
    /// A command-line flag.
    Flag,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(p) => write!(f, "file {}", p.display()),
            Origin::EnvFile(p) => write!(f, "env file {}", p.display()),
            Origin::Environment => f.write_str("environment"),
            Origin::Flag => f.write_str("flag"),
        }
    }
}

/// A settings error. Never contains a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// A value does not fit its key.
    #[error("setting `{key}` ({origin}): got {form}, expected {expected}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// Where the value came from (with the variable name).
        origin: String,
        /// The value's form (the value itself only when short and not secret).
        form: String,
        /// What the key accepts.
        expected: String,
    },
    /// A key nobody declared.
    #[error("unknown setting `{name}` ({origin}){}", suggestion.as_ref().map(|s| format!(": did you mean `{s}`?")).unwrap_or_default())]
    UnknownKey {
        /// The key as written.
        name: String,
        /// Where.
        origin: String,
        /// The closest declared key.
        suggestion: Option<&'static str>,
    },
    /// A file could not be read or parsed.
    #[error("{what} {}: {reason}", path.display())]
    File {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why (with line and column where the parser gives them).
        reason: String,
    },
    /// Settings that are fine one by one but not together.
    #[error("settings `{first}` and `{second}`: {reason}")]
    Inconsistent {
        /// One key.
        first: &'static str,
        /// The other.
        second: &'static str,
        /// Why.
        reason: String,
    },
}

/// Where the layers come from. [`Default`] reads `./data-layer.toml` and
/// `./.env` if present, and the process environment.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Sources {
    /// An explicit settings file (must exist); default `./data-layer.toml` if present.
    pub file: Option<PathBuf>,
    /// An explicit env file (must exist); default `./.env` if present.
    pub env_file: Option<PathBuf>,
    /// Skip the default files in the current directory.
    pub no_default_files: bool,
    /// The environment to read; `None` reads the process environment.
    pub env: Option<BTreeMap<String, String>>,
    /// `key=value` pairs from flags (highest precedence).
    pub flags: Vec<(String, String)>,
}

impl Sources {
    /// Defaults only, no files, an empty environment (for tests).
    pub fn isolated() -> Self {
        Sources {
            no_default_files: true,
            env: Some(BTreeMap::new()),
            ..Self::default()
        }
    }
    /// Uses this settings file.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }
    /// Uses this env file.
    pub fn env_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.env_file = Some(path.into());
        self
    }
    /// Sets an environment variable of an isolated environment.
    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.env
            .get_or_insert_with(BTreeMap::new)
            .insert(name.into(), value.into());
        self
    }
    /// Adds a flag value.
    pub fn flag(mut self, key: &str, value: &str) -> Self {
        self.flags.push((key.into(), value.into()));
        self
    }
}

/// Pool and timeout settings of one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// Most connections.
    pub max_connections: u32,
    /// Connections kept while idle.
    pub min_connections: u32,
    /// Time to open a connection.
    pub connect_timeout: Duration,
    /// Wait for a pooled connection.
    pub acquire_timeout: Duration,
    /// Deadline of one call.
    pub request_timeout: Duration,
    /// Idle connections are closed after this.
    pub idle_timeout: Duration,
    /// Connections are recycled after this.
    pub max_lifetime: Duration,
    /// Whether the store being down only degrades the service.
    pub optional: bool,
    /// Calls in the breaker's window.
    pub breaker_window: u32,
    /// Calls before the breaker judges.
    pub breaker_min_calls: u32,
    /// Failure share (%) that opens the breaker.
    pub breaker_failure_percent: u32,
    /// Time open before probing.
    pub breaker_wait: Duration,
    /// Half-open probes.
    pub breaker_probes: u32,
    /// Retries of a read (or a write that was never sent).
    pub retries: u32,
}

/// The relational store `DATABASE_URL` names.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// A SQLite database file (or `:memory:`).
    Sqlite(String),
    /// A PostgreSQL server.
    Postgres(SecretUrl),
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Sqlite(path) => write!(f, "sqlite://{path}"),
            DatabaseUrl::Postgres(url) => fmt::Display::fmt(url, f),
        }
    }
}

/// ScyllaDB settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScyllaSettings {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// Keyspace.
    pub keyspace: String,
    /// Wait for schema agreement after DDL.
    pub auto_await_schema_agreement: bool,
    /// Fetch schema metadata.
    pub fetch_schema_metadata: bool,
    /// Use lightweight transactions for duplicate and version checks.
    pub lightweight_transactions: bool,
    /// Let the migration runner create a missing keyspace (replication
    /// factor 1; development only).
    pub create_keyspace: bool,
}

/// The change feed's settings (`cdc.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdcSettings {
    /// Entities whose writes are captured (store names, checked for form
    /// here and against the entities compiled into the program by the data
    /// layer).
    pub entities: Vec<String>,
    /// How long acknowledged events are kept.
    pub retention: Duration,
    /// The relay's redaction profile: `safe_harbor` or `pseudonymous`.
    pub profile: String,
    /// The redaction policy's version.
    pub policy_version: String,
    /// The relay's sinks (`sqlite`, `postgres`, `nats`, `scylla`); empty:
    /// no relay.
    pub sinks: Vec<String>,
    /// The relay's name.
    pub relay: String,
    /// Events per relay batch (1 to 5,000).
    pub batch: u32,
    /// The nats sink's server.
    pub nats_url: Option<SecretUrl>,
    /// The nats sink's stream.
    pub nats_stream: String,
    /// The first token of the nats sink's subjects.
    pub nats_subject_root: String,
    /// The nats sink's duplicate window.
    pub nats_duplicate_window: Duration,
    /// How long the scylla sink keeps an event (its rows' TTL).
    pub scylla_ttl: Duration,
    /// Partitions per day and event type of the scylla sink.
    pub scylla_buckets: u32,
}

/// The saga runner's settings (`saga.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaSettings {
    /// How long a runner's lease on a saga lasts without renewal.
    pub lease: Duration,
    /// The default timeout of one step attempt.
    pub step_timeout: Duration,
    /// Tries of a compensatable step's or the pivot's action.
    pub attempts: u32,
    /// Failed tries after which a compensation or a retriable step is stuck.
    pub stuck_after: u32,
    /// Time between recovery rounds.
    pub recover_every: Duration,
}

/// The privacy keys from settings (`privacy.key`, `privacy.key_id`,
/// `privacy.previous_keys`). `Debug` shows the ids only.
#[derive(Clone, Default)]
pub struct PrivacyKeys {
    current: Option<(String, SecretString)>,
    previous: Vec<(String, SecretString)>,
}

impl fmt::Debug for PrivacyKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivacyKeys")
            .field("key_id", &self.current.as_ref().map(|(id, _)| id))
            .field(
                "previous_key_ids",
                &self.previous.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl PartialEq for PrivacyKeys {
    fn eq(&self, other: &Self) -> bool {
        let same = |a: &(String, SecretString), b: &(String, SecretString)| {
            a.0 == b.0 && a.1.expose_secret() == b.1.expose_secret()
        };
        match (&self.current, &other.current) {
            (None, None) => {}
            (Some(a), Some(b)) if same(a, b) => {}
            _ => return false,
        }
        self.previous.len() == other.previous.len()
            && self
                .previous
                .iter()
                .zip(&other.previous)
                .all(|(a, b)| same(a, b))
    }
}

impl Eq for PrivacyKeys {}

impl PrivacyKeys {
    /// Keys with `key` (base64, as `privacy.key` takes it) as the current
    /// one, under `id`; `None` when the id or the key is not valid.
    #[must_use]
    pub fn with_current(id: &str, key: &str) -> Option<Self> {
        dl_privacy::SecretKey::from_base64(id, key).ok()?;
        Some(PrivacyKeys {
            current: Some((id.to_owned(), SecretString::from(key.to_owned()))),
            previous: Vec::new(),
        })
    }

    /// Whether a key was configured (else a random key per process is used).
    #[must_use]
    pub fn is_configured(&self) -> bool {
        self.current.is_some()
    }

    /// The tokens and sealing these keys give; `None` when no key was
    /// configured.
    #[must_use]
    pub fn privacy(&self) -> Option<dl_privacy::Privacy> {
        let (id, key) = self.current.as_ref()?;
        let key = dl_privacy::SecretKey::from_base64(id, key.expose_secret()).ok()?;
        let mut p = dl_privacy::Privacy::new(key);
        for (id, key) in &self.previous {
            if let Ok(k) = dl_privacy::SecretKey::from_base64(id, key.expose_secret()) {
                p = p.with_previous(k);
            }
        }
        Some(p)
    }
}

/// The effective settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The relational store.
    pub database_url: DatabaseUrl,
    /// MongoDB, if configured.
    pub mongodb_uri: Option<SecretUrl>,
    /// Redis, if configured.
    pub redis_url: Option<SecretUrl>,
    /// PostgreSQL schema (namespace) of the tables.
    pub postgres_schema: String,
    /// Redis key prefix.
    pub redis_key_prefix: String,
    /// ScyllaDB, if configured.
    pub scylla: Option<ScyllaSettings>,
    /// Time between the background health checker's rounds.
    pub health_interval: Duration,
    /// The change feed.
    pub cdc: CdcSettings,
    /// The saga runner.
    pub saga: SagaSettings,
    /// SQLite pool.
    pub sqlite: PoolSettings,
    /// PostgreSQL pool.
    pub postgres: PoolSettings,
    /// MongoDB pool.
    pub mongo: PoolSettings,
    /// Redis pool.
    pub redis: PoolSettings,
    /// Scylla pool.
    pub scylla_pool: PoolSettings,
    /// The privacy keys (cursor sealing, PHI tokens).
    pub privacy: PrivacyKeys,
    /// Each key's effective value's origin, and a printable form of it
    /// (secrets redacted): what `data-layer config` shows.
    pub effective: Vec<(&'static str, String, Origin)>,
}

impl Settings {
    /// Loads the layers.
    ///
    /// # Errors
    /// A [`SettingsError`] for an unreadable file, an unknown key or a bad value.
    pub fn load(sources: &Sources) -> Result<Settings, SettingsError> {
        let mut raw: BTreeMap<&'static str, (String, Origin)> = BTreeMap::new();
        for s in all_keys() {
            if let Some(d) = s.default {
                raw.insert(s.key, (d.to_owned(), Origin::Default));
            }
        }

        // 1. The settings file.
        let file = match &sources.file {
            Some(p) => Some(p.clone()),
            None if !sources.no_default_files && Path::new("data-layer.toml").is_file() => {
                Some(PathBuf::from("data-layer.toml"))
            }
            None => None,
        };
        if let Some(path) = file {
            for (k, v) in read_toml(&path)? {
                let origin = Origin::File(path.clone());
                let Some(s) = spec(&k) else {
                    return Err(unknown(&k, &origin.to_string(), false));
                };
                raw.insert(s.key, (v, origin));
            }
        }

        // 2. The env file, then 3. the environment.
        let env_file = match &sources.env_file {
            Some(p) => Some(p.clone()),
            None if !sources.no_default_files && Path::new(".env").is_file() => {
                Some(PathBuf::from(".env"))
            }
            None => None,
        };
        if let Some(path) = env_file {
            let iter = dotenvy::from_path_iter(&path).map_err(|e| SettingsError::File {
                what: "env file",
                path: path.clone(),
                reason: dotenv_reason(&e),
            })?;
            let mut pairs = Vec::new();
            for item in iter {
                pairs.push(item.map_err(|e| SettingsError::File {
                    what: "env file",
                    path: path.clone(),
                    reason: dotenv_reason(&e),
                })?);
            }
            apply_env(&mut raw, pairs, &Origin::EnvFile(path))?;
        }
        let env: Vec<(String, String)> = match &sources.env {
            Some(map) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            None => std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        };
        apply_env(&mut raw, env, &Origin::Environment)?;

        // 4. Flags.
        for (k, v) in &sources.flags {
            let Some(s) = spec(k) else {
                return Err(unknown(k, "flag --set", false));
            };
            raw.insert(s.key, (v.clone(), Origin::Flag));
        }

        build(&raw)
    }
}

fn dotenv_reason(e: &dotenvy::Error) -> String {
    match e {
        dotenvy::Error::LineParse(_, idx) => format!("cannot parse the line at byte {idx}"),
        dotenvy::Error::Io(io) => io.kind().to_string(),
        _ => "cannot read it".into(),
    }
}

fn apply_env(
    raw: &mut BTreeMap<&'static str, (String, Origin)>,
    pairs: Vec<(String, String)>,
    origin: &Origin,
) -> Result<(), SettingsError> {
    for (name, value) in pairs {
        if let Some(s) = all_keys().find(|s| s.env == name) {
            raw.insert(s.key, (value, origin.clone()));
        } else if name.starts_with("DL_") {
            return Err(unknown(&name, &origin.to_string(), true));
        }
    }
    Ok(())
}

fn unknown(name: &str, origin: &str, env: bool) -> SettingsError {
    let best = all_keys()
        .map(|s| {
            let candidate = if env { s.env } else { s.key };
            (
                distance(&name.to_ascii_lowercase(), &candidate.to_ascii_lowercase()),
                candidate,
            )
        })
        .min_by_key(|(d, _)| *d)
        .filter(|(d, _)| *d <= 3)
        .map(|(_, c)| c);
    SettingsError::UnknownKey {
        name: dl_name(name),
        origin: origin.into(),
        suggestion: best,
    }
}

fn dl_name(name: &str) -> String {
    let mut s: String = name.chars().take(64).flat_map(char::escape_debug).collect();
    if name.chars().count() > 64 {
        s.push('…');
    }
    s
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn read_toml(path: &Path) -> Result<Vec<(String, String)>, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|e| SettingsError::File {
        what: "settings file",
        path: path.to_owned(),
        reason: e.kind().to_string(),
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| SettingsError::File {
            what: "settings file",
            path: path.to_owned(),
            reason: toml_reason(&text, &e),
        })?;
    let mut out = Vec::new();
    flatten("", &toml::Value::Table(table), &mut out, path)?;
    Ok(out)
}

fn toml_reason(text: &str, e: &toml::de::Error) -> String {
    // The parser's message may quote the line; the line may hold a password.
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("invalid TOML at line {line}")
        }
        None => "invalid TOML".into(),
    }
}

fn flatten(
    prefix: &str,
    v: &toml::Value,
    out: &mut Vec<(String, String)>,
    path: &Path,
) -> Result<(), SettingsError> {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out, path)?;
            }
            Ok(())
        }
        toml::Value::String(s) => {
            out.push((prefix.to_owned(), s.clone()));
            Ok(())
        }
        toml::Value::Integer(i) => {
            out.push((prefix.to_owned(), i.to_string()));
            Ok(())
        }
        toml::Value::Boolean(b) => {
            out.push((prefix.to_owned(), b.to_string()));
            Ok(())
        }
        toml::Value::Array(items)
            if spec(prefix).is_some_and(|s| matches!(s.kind, Kind::Names))
                && items.iter().all(toml::Value::is_str) =>
        {
            let names: Vec<&str> = items.iter().filter_map(toml::Value::as_str).collect();
            out.push((prefix.to_owned(), names.join(",")));
            Ok(())
        }
        toml::Value::Float(_) | toml::Value::Datetime(_) | toml::Value::Array(_) => {
            match spec(prefix) {
                Some(s) => Err(SettingsError::BadValue {
                    key: s.key,
                    origin: format!("file {}", path.display()),
                    form: "a TOML float, date or array".into(),
                    expected: s.kind.expected(),
                }),
                None => Err(unknown(prefix, &format!("file {}", path.display()), false)),
            }
        }
    }
}

fn origin_text(s: &KeySpec, origin: &Origin) -> String {
    match origin {
        Origin::Environment | Origin::EnvFile(_) => format!("{origin} {}", s.env),
        Origin::Flag => format!("flag --set {}", s.key),
        other => other.to_string(),
    }
}

fn form_of(s: &KeySpec, v: &str) -> String {
    let secret = matches!(s.kind, Kind::Url(_));
    if matches!(s.kind, Kind::Secret | Kind::Secrets) {
        return if v.trim().is_empty() {
            "an empty value".into()
        } else {
            format!("a secret of {} characters", v.chars().count())
        };
    }
    if v.trim().is_empty() {
        "an empty value".into()
    } else if !secret && v.len() <= 32 && v.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        format!("`{v}`")
    } else if secret {
        match v.split_once("://") {
            Some((scheme, _))
                if scheme.len() <= 16
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '+') =>
            {
                format!("a URL with scheme `{scheme}`")
            }
            _ => format!("text of {} characters that is not a URL", v.chars().count()),
        }
    } else {
        format!("text of {} characters", v.chars().count())
    }
}

struct Parsed<'a> {
    raw: &'a BTreeMap<&'static str, (String, Origin)>,
}

impl Parsed<'_> {
    fn bad(&self, s: &'static KeySpec) -> SettingsError {
        let (v, origin) = &self.raw[s.key];
        SettingsError::BadValue {
            key: s.key,
            origin: origin_text(s, origin),
            form: form_of(s, v),
            expected: s.kind.expected(),
        }
    }

    /// A value that is not one of `allowed`.
    fn bad_one_of(&self, s: &'static KeySpec, allowed: &[&str]) -> SettingsError {
        let (v, origin) = &self.raw[s.key];
        SettingsError::BadValue {
            key: s.key,
            origin: origin_text(s, origin),
            form: form_of(s, v),
            expected: format!("one of {}", allowed.join(", ")),
        }
    }

    fn get(&self, key: &str) -> Option<(&'static KeySpec, &str)> {
        let s = spec(key)?;
        self.raw.get(s.key).map(|(v, _)| (s, v.as_str()))
    }

    fn count(&self, key: &str) -> Result<u32, SettingsError> {
        let (s, v) = self.get(key).expect("declared with a default");
        let Kind::Count { min, max } = s.kind else {
            unreachable!("declared as a count")
        };
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| self.bad(s))
    }

    fn duration(&self, key: &str) -> Result<Duration, SettingsError> {
        let (s, v) = self.get(key).expect("declared with a default");
        parse_duration(v).ok_or_else(|| self.bad(s))
    }

    fn boolean(&self, key: &str) -> Result<bool, SettingsError> {
        let (s, v) = self.get(key).expect("declared with a default");
        match v.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(self.bad(s)),
        }
    }

    fn url(&self, key: &str) -> Result<Option<SecretUrl>, SettingsError> {
        let Some((s, v)) = self.get(key) else {
            return Ok(None);
        };
        if v.trim().is_empty() {
            return Ok(None);
        }
        let Kind::Url(schemes) = s.kind else {
            unreachable!("declared as a url")
        };
        let url = SecretUrl::parse(v.trim()).map_err(|()| self.bad(s))?;
        if !schemes.contains(&url.scheme()) {
            return Err(self.bad(s));
        }
        Ok(Some(url))
    }

    fn names(&self, key: &str) -> Result<Vec<String>, SettingsError> {
        let (s, v) = self.get(key).expect("declared with a default");
        let mut out: Vec<String> = Vec::new();
        for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let ok = name.len() <= 48
                && name.bytes().enumerate().all(|(i, c)| {
                    c == b'_' || c.is_ascii_lowercase() || (i > 0 && c.is_ascii_digit())
                });
            if !ok || out.iter().any(|n| n == name) {
                return Err(self.bad(s));
            }
            out.push(name.to_owned());
        }
        Ok(out)
    }

    /// A name that must be one of `allowed`.
    fn one_of(&self, key: &str, allowed: &[&str]) -> Result<String, SettingsError> {
        let v = self.name(key)?;
        if allowed.contains(&v.as_str()) {
            Ok(v)
        } else {
            let (s, _) = self.get(key).expect("declared with a default");
            Err(self.bad_one_of(s, allowed))
        }
    }

    /// Names, each one of `allowed`.
    fn names_of(&self, key: &str, allowed: &[&str]) -> Result<Vec<String>, SettingsError> {
        let v = self.names(key)?;
        if v.iter().all(|n| allowed.contains(&n.as_str())) {
            Ok(v)
        } else {
            let (s, _) = self.get(key).expect("declared with a default");
            Err(self.bad_one_of(s, allowed))
        }
    }

    fn name(&self, key: &str) -> Result<String, SettingsError> {
        let (s, v) = self.get(key).expect("declared with a default");
        let ok = !v.is_empty()
            && v.len() <= 48
            && v.bytes()
                .enumerate()
                .all(|(i, c)| c == b'_' || c.is_ascii_lowercase() || (i > 0 && c.is_ascii_digit()));
        if ok {
            Ok(v.to_owned())
        } else {
            Err(self.bad(s))
        }
    }

    fn privacy(&self) -> Result<PrivacyKeys, SettingsError> {
        let (id_spec, id) = self.get("privacy.key_id").expect("declared with a default");
        let id = id.trim();
        let id_ok = !id.is_empty()
            && id.len() <= 16
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let mut keys = PrivacyKeys::default();
        if let Some((s, v)) = self
            .get("privacy.key")
            .filter(|(_, v)| !v.trim().is_empty())
        {
            if !id_ok {
                return Err(SettingsError::BadValue {
                    key: id_spec.key,
                    origin: origin_text(id_spec, &self.raw[id_spec.key].1),
                    form: form_of(id_spec, id),
                    expected: "1 to 16 of A-Z a-z 0-9 _ -".into(),
                });
            }
            dl_privacy::SecretKey::from_base64(id, v).map_err(|_| self.bad(s))?;
            keys.current = Some((id.to_owned(), SecretString::from(v.trim().to_owned())));
        }
        if let Some((s, v)) = self
            .get("privacy.previous_keys")
            .filter(|(_, v)| !v.trim().is_empty())
        {
            for pair in v.split(',') {
                let (pid, key) = pair.trim().split_once(':').ok_or_else(|| self.bad(s))?;
                dl_privacy::SecretKey::from_base64(pid.trim(), key).map_err(|_| self.bad(s))?;
                keys.previous.push((
                    pid.trim().to_owned(),
                    SecretString::from(key.trim().to_owned()),
                ));
            }
        }
        Ok(keys)
    }

    fn pool(&self, store: &str) -> Result<PoolSettings, SettingsError> {
        let k = |name: &str| format!("{store}.{name}");
        let p = PoolSettings {
            max_connections: self.count(&k("max_connections"))?,
            min_connections: self.count(&k("min_connections"))?,
            connect_timeout: self.duration(&k("connect_timeout"))?,
            acquire_timeout: self.duration(&k("acquire_timeout"))?,
            request_timeout: self.duration(&k("request_timeout"))?,
            idle_timeout: self.duration(&k("idle_timeout"))?,
            max_lifetime: self.duration(&k("max_lifetime"))?,
            optional: self.boolean(&k("optional"))?,
            breaker_window: self.count(&k("breaker_window"))?,
            breaker_min_calls: self.count(&k("breaker_min_calls"))?,
            breaker_failure_percent: self.count(&k("breaker_failure_percent"))?,
            breaker_wait: self.duration(&k("breaker_wait"))?,
            breaker_probes: self.count(&k("breaker_probes"))?,
            retries: self.count(&k("retries"))?,
        };
        if p.min_connections > p.max_connections {
            let first = spec(&k("min_connections")).map_or("min_connections", |s| s.key);
            let second = spec(&k("max_connections")).map_or("max_connections", |s| s.key);
            return Err(SettingsError::Inconsistent {
                first,
                second,
                reason: format!(
                    "min ({}) is above max ({})",
                    p.min_connections, p.max_connections
                ),
            });
        }
        Ok(p)
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h` (a whole number and a unit; zero is
/// rejected, so no timeout can be "none").
#[must_use]
pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        "d" => n.checked_mul(86_400).map(Duration::from_secs),
        _ => None,
    }
}

fn build(raw: &BTreeMap<&'static str, (String, Origin)>) -> Result<Settings, SettingsError> {
    let p = Parsed { raw };
    let db_spec = spec("database_url").expect("declared");
    let db_raw = raw
        .get("database_url")
        .map(|(v, _)| v.trim())
        .unwrap_or_default();
    let database_url = if let Some(rest) = db_raw.strip_prefix("sqlite:") {
        let path = rest.trim_start_matches("//");
        if path.is_empty() || path.contains('\0') {
            return Err(p.bad(db_spec));
        }
        DatabaseUrl::Sqlite(path.to_owned())
    } else {
        match p.url("database_url")? {
            Some(u) if u.scheme().starts_with("postgres") => DatabaseUrl::Postgres(u),
            _ => return Err(p.bad(db_spec)),
        }
    };
    let scylla = match raw.get("scylla_uri") {
        Some((v, _)) if !v.trim().is_empty() => {
            let s = spec("scylla_uri").expect("declared");
            let nodes: Vec<String> = v.split(',').map(|n| n.trim().to_owned()).collect();
            let valid = nodes.iter().all(|n| {
                n.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty()
                        && host
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || ".-[]:".contains(c))
                        && port.parse::<u16>().is_ok_and(|p| p > 0)
                })
            });
            if !valid {
                return Err(p.bad(s));
            }
            Some(ScyllaSettings {
                nodes,
                keyspace: p.name("scylla.keyspace")?,
                auto_await_schema_agreement: p.boolean("scylla.auto_await_schema_agreement")?,
                fetch_schema_metadata: p.boolean("scylla.fetch_schema_metadata")?,
                lightweight_transactions: p.boolean("scylla.lightweight_transactions")?,
                create_keyspace: p.boolean("scylla.create_keyspace")?,
            })
        }
        _ => None,
    };
    let privacy = p.privacy()?;
    let database_shown = database_url.to_string();
    let settings = Settings {
        database_url,
        mongodb_uri: p.url("mongodb_uri")?,
        redis_url: p.url("redis_url")?,
        postgres_schema: p.name("postgres.schema")?,
        redis_key_prefix: p.name("redis.key_prefix")?,
        scylla,
        health_interval: p.duration("health.interval")?,
        cdc: CdcSettings {
            entities: p.names("cdc.entities")?,
            retention: p.duration("cdc.retention")?,
            profile: p.one_of("cdc.profile", &["safe_harbor", "pseudonymous"])?,
            policy_version: p.name("cdc.policy_version")?,
            sinks: p.names_of("cdc.sinks", &["sqlite", "postgres", "nats", "scylla"])?,
            relay: p.name("cdc.relay")?,
            batch: p.count("cdc.batch")?,
            nats_url: p.url("cdc.nats_url")?,
            nats_stream: p.name("cdc.nats_stream")?,
            nats_subject_root: p.name("cdc.nats_subject_root")?,
            nats_duplicate_window: p.duration("cdc.nats_duplicate_window")?,
            scylla_ttl: p.duration("cdc.scylla_ttl")?,
            scylla_buckets: p.count("cdc.scylla_buckets")?,
        },
        saga: SagaSettings {
            lease: p.duration("saga.lease")?,
            step_timeout: p.duration("saga.step_timeout")?,
            attempts: p.count("saga.attempts")?,
            stuck_after: p.count("saga.stuck_after")?,
            recover_every: p.duration("saga.recover_every")?,
        },
        sqlite: p.pool("sqlite")?,
        postgres: p.pool("postgres")?,
        mongo: p.pool("mongo")?,
        redis: p.pool("redis")?,
        scylla_pool: p.pool("scylla")?,
        privacy,
        effective: all_keys()
            .map(|s| {
                let Some((v, origin)) = raw.get(s.key) else {
                    return (s.key, "<unset>".to_owned(), Origin::Default);
                };
                let shown = match s.kind {
                    Kind::Url(_) if s.key == "database_url" => database_shown.clone(),
                    Kind::Url(_) => SecretUrl::parse(v.trim())
                        .map_or_else(|()| "<unparsable>".to_owned(), |u| u.to_string()),
                    Kind::Secret | Kind::Secrets if v.trim().is_empty() => "<unset>".to_owned(),
                    Kind::Secret | Kind::Secrets => "<secret>".to_owned(),
                    _ => v.clone(),
                };
                (s.key, shown, origin.clone())
            })
            .collect(),
    };
    Ok(settings)
}
