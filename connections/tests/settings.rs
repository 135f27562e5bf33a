//! Settings: layer precedence, conventional names, and every kind of bad
//! input (a clear error naming the key, never a secret, never a panic).

use std::time::Duration;

use dl_connections::{DatabaseUrl, Origin, Settings, SettingsError, Sources};

fn load(s: Sources) -> Result<Settings, SettingsError> {
    Settings::load(&s)
}

fn err(s: Sources) -> String {
    match load(s) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn defaults_use_the_embedded_store() {
    let s = load(Sources::isolated()).unwrap();
    assert_eq!(
        s.database_url,
        DatabaseUrl::Sqlite("data/data-layer.db".into())
    );
    assert!(s.mongodb_uri.is_none() && s.redis_url.is_none() && s.scylla.is_none());
    assert_eq!(s.postgres.max_connections, 10);
    assert_eq!(s.postgres.request_timeout, Duration::from_secs(10));
    // No timeout defaults to "none".
    for p in [&s.sqlite, &s.postgres, &s.mongo, &s.redis, &s.scylla_pool] {
        assert!(
            p.connect_timeout > Duration::ZERO
                && p.acquire_timeout > Duration::ZERO
                && p.request_timeout > Duration::ZERO
        );
    }
}

#[test]
fn layers_override_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "dl.toml",
        "[postgres]\nmax_connections = 11\nmin_connections = 1\nacquire_timeout = \"2s\"\n[redis]\nmax_connections = 3\n",
    );
    let env_file = write(
        &dir,
        "test.env",
        "DL_POSTGRES__MAX_CONNECTIONS=12\nDL_POSTGRES__MIN_CONNECTIONS=2\nUNRELATED=kept-out\n",
    );
    let s = load(
        Sources::isolated()
            .file(&file)
            .env_file(&env_file)
            .var("DL_POSTGRES__MAX_CONNECTIONS", "13")
            .flag("postgres.max_connections", "14"),
    )
    .unwrap();
    assert_eq!(s.postgres.max_connections, 14, "flag wins");
    assert_eq!(s.postgres.min_connections, 2, "env file beats the file");
    assert_eq!(
        s.postgres.acquire_timeout,
        Duration::from_secs(2),
        "file beats the default"
    );
    assert_eq!(s.redis.max_connections, 3);
    let origin = |k: &str| {
        s.effective
            .iter()
            .find(|(key, ..)| *key == k)
            .map(|(_, _, o)| o.clone())
            .unwrap()
    };
    assert_eq!(origin("postgres.max_connections"), Origin::Flag);
    assert_eq!(
        origin("postgres.min_connections"),
        Origin::EnvFile(env_file)
    );
    assert_eq!(origin("postgres.acquire_timeout"), Origin::File(file));
    assert_eq!(origin("postgres.idle_timeout"), Origin::Default);
}

#[test]
fn environment_beats_env_file() {
    let dir = tempfile::tempdir().unwrap();
    let env_file = write(&dir, ".env", "DL_REDIS__MAX_CONNECTIONS=5\n");
    let s = load(
        Sources::isolated()
            .env_file(&env_file)
            .var("DL_REDIS__MAX_CONNECTIONS", "6"),
    )
    .unwrap();
    assert_eq!(s.redis.max_connections, 6);
}

#[test]
fn conventional_names() {
    let s = load(
        Sources::isolated()
            .var(
                "DATABASE_URL",
                "postgres://app:pw-not-real@db.internal:5432/clinic",
            )
            .var("MONGODB_URI", "mongodb://127.0.0.1:27017/?replicaSet=rs0")
            .var("REDIS_URL", "redis://127.0.0.1:6379/0")
            .var("SCYLLA_URI", "127.0.0.1:9042, 127.0.0.2:9042"),
    )
    .unwrap();
    assert!(matches!(s.database_url, DatabaseUrl::Postgres(_)));
    assert_eq!(s.mongodb_uri.unwrap().scheme(), "mongodb");
    assert_eq!(s.redis_url.unwrap().scheme(), "redis");
    assert_eq!(
        s.scylla.unwrap().nodes,
        vec!["127.0.0.1:9042", "127.0.0.2:9042"]
    );
}

#[test]
fn sqlite_url_forms() {
    for (url, path) in [
        ("sqlite://x/y.db", "x/y.db"),
        ("sqlite:y.db", "y.db"),
        ("sqlite::memory:", ":memory:"),
        ("sqlite:///abs/z.db", "/abs/z.db"),
    ] {
        let s = load(Sources::isolated().var("DATABASE_URL", url)).unwrap();
        assert_eq!(s.database_url, DatabaseUrl::Sqlite(path.into()), "{url}");
    }
}

#[test]
fn passwords_never_appear() {
    let secret = "Sup3r-S3cret-Pw";
    let s = load(
        Sources::isolated()
            .var(
                "DATABASE_URL",
                &format!("postgres://app:{secret}@db/clinic"),
            )
            .var("REDIS_URL", &format!("redis://:{secret}@cache:6379"))
            .var(
                "MONGODB_URI",
                &format!("mongodb://u:{secret}@m/?authSource=admin"),
            ),
    )
    .unwrap();
    let shown = format!("{s:?} {:?}", s.effective);
    assert!(!shown.contains(secret), "{shown}");
    // Nor in errors about a URL.
    let e =
        err(Sources::isolated().var("DATABASE_URL", &format!("mysql://app:{secret}@db/clinic")));
    assert!(!e.contains(secret), "{e}");
    assert!(e.contains("database_url") && e.contains("mysql"), "{e}");
}

#[test]
fn bad_values_name_key_origin_and_expectation() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "DL_POSTGRES__MAX_CONNECTIONS",
            "many",
            "a whole number from 1 to 1000",
        ),
        (
            "DL_POSTGRES__MAX_CONNECTIONS",
            "0",
            "a whole number from 1 to 1000",
        ),
        (
            "DL_POSTGRES__MAX_CONNECTIONS",
            "-3",
            "a whole number from 1 to 1000",
        ),
        (
            "DL_POSTGRES__MAX_CONNECTIONS",
            "99999999999999999999",
            "a whole number",
        ),
        ("DL_REDIS__REQUEST_TIMEOUT", "0s", "a duration"),
        ("DL_REDIS__REQUEST_TIMEOUT", "10", "a duration"),
        ("DL_REDIS__REQUEST_TIMEOUT", "10 parsecs", "a duration"),
        ("DL_MONGO__OPTIONAL", "yes", "true or false"),
        (
            "DL_POSTGRES__BREAKER_FAILURE_PERCENT",
            "150",
            "a whole number from 1 to 100",
        ),
        (
            "DL_POSTGRES__BREAKER_FAILURE_PERCENT",
            "0",
            "a whole number from 1 to 100",
        ),
        ("DL_REDIS__RETRIES", "11", "a whole number from 0 to 10"),
        ("DL_REDIS__BREAKER_WAIT", "soon", "a duration"),
        ("DATABASE_URL", "", "a URL"),
        ("DATABASE_URL", "not a url", "a URL"),
        ("DATABASE_URL", "sqlite:", "a URL"),
        ("REDIS_URL", "http://cache:6379", "redis://"),
        ("SCYLLA_URI", "node-without-port", "host:port"),
        ("SCYLLA_URI", "a:9042,b:99999", "host:port"),
        ("DL_REDIS__KEY_PREFIX", "Bad Prefix!", "lower-case"),
        (
            "DL_SCYLLA__KEYSPACE",
            "ks\"; DROP KEYSPACE x; --",
            "lower-case",
        ),
    ];
    for (var, value, expected) in cases {
        let mut src = Sources::isolated().var(var, value);
        if var.starts_with("DL_SCYLLA") {
            src = src.var("SCYLLA_URI", "127.0.0.1:9042");
        }
        let e = err(src);
        assert!(e.contains(var), "{var}={value}: {e}");
        assert!(e.contains(expected), "{var}={value}: {e}");
        assert!(e.contains("environment"), "{var}={value}: {e}");
    }
}

#[test]
fn inconsistent_pool_bounds() {
    let e = err(Sources::isolated()
        .var("DL_SQLITE__MIN_CONNECTIONS", "9")
        .var("DL_SQLITE__MAX_CONNECTIONS", "2"));
    assert!(
        e.contains("sqlite.min_connections") && e.contains("above max"),
        "{e}"
    );
}

#[test]
fn unknown_keys_are_errors_with_suggestions() {
    let e = err(Sources::isolated().var("DL_POSTGRES__MAX_CONECTIONS", "5"));
    assert!(
        e.contains("unknown setting `DL_POSTGRES__MAX_CONECTIONS`"),
        "{e}"
    );
    assert!(
        e.contains("did you mean `DL_POSTGRES__MAX_CONNECTIONS`"),
        "{e}"
    );
    let e = err(Sources::isolated().flag("postgres.max_conns", "5"));
    assert!(e.contains("unknown setting `postgres.max_conns`"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "dl.toml", "[postgress]\nmax_connections = 5\n");
    let e = err(Sources::isolated().file(&file));
    assert!(
        e.contains("postgress.max_connections")
            && e.contains("did you mean `postgres.max_connections`"),
        "{e}"
    );
    // Variables outside our namespace are none of our business.
    load(Sources::isolated().var("PATH", "/bin").var("HOME", "/root")).unwrap();
}

#[test]
fn broken_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let toml = write(&dir, "bad.toml", "[postgres]\nmax_connections = \n");
    let e = err(Sources::isolated().file(&toml));
    assert!(e.contains("settings file") && e.contains("line 2"), "{e}");

    let secret_line = write(
        &dir,
        "secret.toml",
        "database_url = \"postgres://u:Leaky-Pw@h/db\nx = [",
    );
    let e = err(Sources::isolated().file(&secret_line));
    assert!(!e.contains("Leaky-Pw"), "{e}");

    let wrong_type = write(&dir, "types.toml", "[postgres]\nmax_connections = 2.5\n");
    let e = err(Sources::isolated().file(&wrong_type));
    assert!(
        e.contains("postgres.max_connections") && e.contains("float"),
        "{e}"
    );

    let bool_for_count = write(&dir, "bool.toml", "[postgres]\nmax_connections = true\n");
    let e = err(Sources::isolated().file(&bool_for_count));
    assert!(
        e.contains("postgres.max_connections") && e.contains("`true`"),
        "{e}"
    );

    let e = err(Sources::isolated().file(dir.path().join("missing.toml")));
    assert!(e.contains("missing.toml") && e.contains("not found"), "{e}");

    let e = err(Sources::isolated().env_file(dir.path().join("missing.env")));
    assert!(e.contains("env file") && e.contains("missing.env"), "{e}");

    let env = write(&dir, "bad.env", "DL_REDIS__MAX_CONNECTIONS='unterminated\n");
    let e = err(Sources::isolated().env_file(&env));
    assert!(e.contains("env file") && e.contains("bad.env"), "{e}");
}

#[test]
fn durations() {
    use dl_connections::parse_duration;
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
    assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
    assert_eq!(
        parse_duration("396d"),
        Some(Duration::from_secs(396 * 86_400))
    );
    for bad in [
        "",
        "0s",
        "s",
        "5",
        "5w",
        "99999999999999999d",
        "-1s",
        "1.5s",
        "99999999999999999999h",
    ] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
}

#[test]
fn guard_settings_have_defaults_and_can_be_tuned() {
    let s = load(Sources::isolated()).unwrap();
    assert_eq!(
        (
            s.postgres.breaker_window,
            s.postgres.breaker_min_calls,
            s.postgres.breaker_failure_percent
        ),
        (20, 10, 50)
    );
    assert_eq!(
        (
            s.postgres.breaker_wait,
            s.postgres.breaker_probes,
            s.postgres.retries
        ),
        (Duration::from_secs(5), 3, 3)
    );
    let s = load(
        Sources::isolated()
            .var("DL_REDIS__RETRIES", "0")
            .var("DL_REDIS__BREAKER_WAIT", "250ms"),
    )
    .unwrap();
    assert_eq!(
        (s.redis.retries, s.redis.breaker_wait),
        (0, Duration::from_millis(250))
    );
}
