//! No PHI in errors: every error class each store can be made to raise,
//! with unique canary values in every text field, is formatted every way
//! (`Display`, `Debug`, `{:#?}`) down its whole `source()` chain, and no
//! canary may appear. Constraints the schema does not know (a migration
//! added them) are added by hand, as a service's own migration would.
//!
//! The classes: duplicate unique value, not-null violation, check
//! violation, foreign-key violation, a type error (a cast a trigger makes,
//! a stored value of the wrong type), a version conflict; and for each,
//! nothing was written.

#![cfg(feature = "integration")]

use std::sync::Arc;

use dl_repositories::backends::postgres::PostgresBackend;
use dl_repositories::backends::sqlite::SqliteBackend;
use dl_repositories::{Backend, Error, Patch, Repo, Repository};
use dl_tests::canary::{assert_error_clean, canary};
use dl_tests::entities::{Specimen, UniqueSpecimen};
use dl_tests::live::{
    MongoNamespaces, PgNamespaces, RedisNamespaces, ScyllaNamespaces, postgres_url, test_pool,
    unique_prefix,
};

/// A specimen whose every text field holds a canary (the key too: keys can
/// be PHI). Returns it and its canaries.
fn canary_specimen(tag: &str) -> (Specimen, Vec<String>) {
    let id = canary(&format!("{tag}-id"));
    let mut s = Specimen::new(&id, 7);
    s.label = canary(&format!("{tag}-label"));
    s.owner = Some(canary(&format!("{tag}-owner")));
    s.body = Some(canary(&format!("{tag}-body")));
    s.code = Some(canary(&format!("{tag}-code")));
    s.tags = vec![canary(&format!("{tag}-tag"))];
    let canaries = vec![
        s.id.clone(),
        s.label.clone(),
        s.owner.clone().unwrap_or_default(),
        s.body.clone().unwrap_or_default(),
        s.code.clone().unwrap_or_default(),
        s.tags[0].clone(),
    ];
    (s, canaries)
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Checks an error is clean; returns its renderings.
fn clean(what: &str, e: &Error, canaries: &[String]) -> String {
    assert_error_clean(what, e, &refs(canaries))
}

/// The version-conflict and duplicate-key classes, on any store.
async fn conflicts(store: &str, backend: Arc<dyn Backend>) -> usize {
    let repo = Repo::<Specimen>::open(backend).await.expect("open");
    let (s, canaries) = canary_specimen(&format!("{store}-conflict"));
    repo.insert(&s).await.expect("first insert");
    let dup = repo.insert(&s).await.expect_err("duplicate key");
    assert!(matches!(dup, Error::Conflict { .. }), "{dup:?}");
    clean(&format!("{store} duplicate key"), &dup, &canaries);
    let mut stale = s.clone();
    stale.version = 42;
    let e = repo.replace(&stale).await.expect_err("version conflict");
    assert!(matches!(e, Error::Conflict { .. }), "{e:?}");
    clean(
        &format!("{store} version conflict (replace)"),
        &e,
        &canaries,
    );
    let e = repo
        .update(
            &s.id,
            &Patch::new()
                .set("label", s.label.as_str())
                .expect_version(9),
        )
        .await
        .expect_err("version conflict");
    assert!(matches!(e, Error::Conflict { .. }), "{e:?}");
    clean(&format!("{store} version conflict (update)"), &e, &canaries);
    let stored = repo.get(&s.id).await.expect("get").expect("present");
    assert_eq!(
        stored.version, 1,
        "{store}: nothing written by the conflicts"
    );
    3
}

/// A unique value taken, through insert and insert_many.
async fn unique_taken(store: &str, backend: Arc<dyn Backend>) -> usize {
    let repo = Repo::<UniqueSpecimen>::open(backend).await.expect("open");
    let code = canary(&format!("{store}-ucode"));
    let first = UniqueSpecimen::new(&canary(&format!("{store}-u1")), 1, Some(&code));
    let second = UniqueSpecimen::new(&canary(&format!("{store}-u2")), 2, Some(&code));
    let canaries = vec![code.clone(), first.id.clone(), second.id.clone()];
    repo.insert(&first).await.expect("first");
    let e = repo.insert(&second).await.expect_err("unique taken");
    assert!(matches!(e, Error::Conflict { .. }), "{e:?}");
    clean(&format!("{store} unique (insert)"), &e, &canaries);
    let e = repo
        .insert_many(std::slice::from_ref(&second))
        .await
        .expect_err("unique taken in a batch");
    assert!(
        matches!(e, Error::Conflict { .. } | Error::Batch { .. }),
        "{e:?}"
    );
    clean(&format!("{store} unique (insert_many)"), &e, &canaries);
    assert!(!repo.exists(&second.id).await.expect("exists"));
    2
}

/// Inserts a canary specimen that the store refuses; checks the error is a
/// backend error with a (clean) source and that nothing was written.
async fn refused(what: &str, repo: &Repo<Specimen>, s: &Specimen, canaries: &[String]) -> String {
    let e = repo.insert(s).await.expect_err(what);
    assert!(
        matches!(e, Error::Backend { .. }),
        "{what}: expected a backend error, got {e:?}"
    );
    assert!(
        std::error::Error::source(&e).is_some(),
        "{what}: the driver's code is kept as source"
    );
    let text = clean(what, &e, canaries);
    assert!(
        !repo.exists(&s.id).await.expect("exists"),
        "{what}: nothing written"
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_errors_carry_no_values() {
    PgNamespaces::new("phi").await; // the server answers
    let prefix = unique_prefix("phi");
    let ns = format!("{prefix}_0");
    dl_tests::schema::postgres(&postgres_url(), &ns)
        .await
        .expect("migrations");
    let pool =
        dl_connections::postgres::connect_lazy(&postgres_url(), &test_pool(2)).expect("options");
    let backend: Arc<dyn Backend> =
        Arc::new(PostgresBackend::new(pool.clone(), &ns).expect("namespace"));
    let exec = |sql: String| {
        let pool = pool.clone();
        async move {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .expect("test DDL");
        }
    };
    // The constraints first, while the table is empty.
    let repo = Repo::<Specimen>::open(Arc::clone(&backend))
        .await
        .expect("open");
    let mut classes = 0;

    // Not-null: PostgreSQL's detail is "Failing row contains (…)".
    exec(format!(
        r#"ALTER TABLE "{ns}".specimens ALTER COLUMN score SET NOT NULL"#
    ))
    .await;
    let (s, c) = canary_specimen("pg-notnull");
    let text = refused("postgres not-null", &repo, &s, &c).await;
    assert!(text.contains("23502"), "the SQLSTATE is kept: {text}");
    exec(format!(
        r#"ALTER TABLE "{ns}".specimens ALTER COLUMN score DROP NOT NULL"#
    ))
    .await;

    // Check: the same detail.
    exec(format!(
        r#"ALTER TABLE "{ns}".specimens ADD CONSTRAINT specimens_label_plain CHECK (label NOT LIKE 'CANARY%')"#
    ))
    .await;
    let (s, c) = canary_specimen("pg-check");
    let text = refused("postgres check", &repo, &s, &c).await;
    assert!(
        text.contains("23514") && text.contains("specimens_label_plain"),
        "the SQLSTATE and the constraint are kept: {text}"
    );
    exec(format!(
        r#"ALTER TABLE "{ns}".specimens DROP CONSTRAINT specimens_label_plain"#
    ))
    .await;

    // Foreign key: "Key (owner)=(…) is not present in table".
    exec(format!(
        r#"CREATE TABLE "{ns}".owners (name text PRIMARY KEY);
           ALTER TABLE "{ns}".specimens ADD CONSTRAINT specimens_owner_fk
             FOREIGN KEY (owner) REFERENCES "{ns}".owners (name)"#
    ))
    .await;
    let (s, c) = canary_specimen("pg-fk");
    let text = refused("postgres foreign key", &repo, &s, &c).await;
    assert!(text.contains("23503"), "{text}");
    exec(format!(
        r#"ALTER TABLE "{ns}".specimens DROP CONSTRAINT specimens_owner_fk"#
    ))
    .await;

    // A cast a trigger makes: the message itself quotes the value, and a
    // message a trigger raises can say anything.
    exec(format!(
        r#"CREATE FUNCTION "{ns}".cast_label() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN PERFORM NEW.label::int; RETURN NEW; END $$;
           CREATE TRIGGER cast_label BEFORE INSERT ON "{ns}".specimens
             FOR EACH ROW EXECUTE FUNCTION "{ns}".cast_label()"#
    ))
    .await;
    let (s, c) = canary_specimen("pg-cast");
    let text = refused("postgres cast", &repo, &s, &c).await;
    assert!(text.contains("22P02"), "{text}");
    exec(format!(
        r#"CREATE OR REPLACE FUNCTION "{ns}".cast_label() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'refused: % %', NEW.owner, NEW.body USING DETAIL = NEW.label, HINT = NEW.id; END $$"#
    ))
    .await;
    let (s, c) = canary_specimen("pg-raise");
    refused("postgres raise", &repo, &s, &c).await;
    classes += 5;
    exec(format!(r#"DROP TRIGGER cast_label ON "{ns}".specimens"#)).await;
    classes += conflicts("postgres", Arc::clone(&backend)).await;
    classes += unique_taken("postgres", Arc::clone(&backend)).await;

    pool.close().await;
    dl_tests::live::drop_postgres_namespaces(&prefix).await;
    eprintln!("phi-errors[postgres]: {classes} error classes, no canary in any rendering");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_errors_carry_no_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("phi.db");
    let pool = dl_connections::sqlite::connect(&path.display().to_string(), &test_pool(2))
        .await
        .expect("open sqlite");
    dl_tests::schema::sqlite(&pool).await.expect("migrations");
    let backend: Arc<dyn Backend> = Arc::new(SqliteBackend::new(pool.clone()));
    let exec = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .expect("test DDL");
        }
    };
    let mut classes = conflicts("sqlite", Arc::clone(&backend)).await;
    classes += unique_taken("sqlite", Arc::clone(&backend)).await;
    let repo = Repo::<Specimen>::open(Arc::clone(&backend))
        .await
        .expect("open");

    // Check (SQLite cannot add a CHECK to a table: a trigger, as a
    // migration would).
    exec(
        "CREATE TRIGGER specimens_label_plain BEFORE INSERT ON specimens
         WHEN NEW.label LIKE 'CANARY%' BEGIN SELECT RAISE(ABORT, 'label refused'); END",
    )
    .await;
    let (s, c) = canary_specimen("sqlite-check");
    refused("sqlite check", &repo, &s, &c).await;
    exec("DROP TRIGGER specimens_label_plain").await;

    // Type error: a STRICT table refuses text in an integer column.
    exec(
        "CREATE TABLE label_numbers (n INTEGER) STRICT;
         CREATE TRIGGER specimens_label_number BEFORE INSERT ON specimens
         BEGIN INSERT INTO label_numbers VALUES (NEW.label); END",
    )
    .await;
    let (s, c) = canary_specimen("sqlite-type");
    refused("sqlite type", &repo, &s, &c).await;
    exec("DROP TRIGGER specimens_label_number").await;

    // Not-null: a table with the constraint, filled by a trigger.
    exec(
        "CREATE TABLE scores (id TEXT, score REAL NOT NULL) STRICT;
         CREATE TRIGGER specimens_score BEFORE INSERT ON specimens
         BEGIN INSERT INTO scores VALUES (NEW.id, NEW.score); END",
    )
    .await;
    let (s, c) = canary_specimen("sqlite-notnull");
    refused("sqlite not-null", &repo, &s, &c).await;
    classes += 3;

    pool.close().await;
    eprintln!("phi-errors[sqlite]: {classes} error classes, no canary in any rendering");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_errors_carry_no_values() {
    let spaces = RedisNamespaces::new("phi").await;
    let ns = spaces.namespace();
    let pool = test_pool(1);
    let conn = dl_connections::redis::connect_lazy(&dl_tests::live::redis_url(), &pool)
        .expect("redis options");
    let backend: Arc<dyn Backend> = Arc::new(
        dl_repositories::backends::redis::RedisBackend::new(
            conn.clone(),
            &ns,
            pool.request_timeout,
        )
        .expect("prefix")
        .with_privacy(dl_tests::live::test_privacy()),
    );
    let mut classes = conflicts("redis", Arc::clone(&backend)).await;
    classes += unique_taken("redis", Arc::clone(&backend)).await;
    let repo = Repo::<Specimen>::open(Arc::clone(&backend))
        .await
        .expect("open");

    // Type error: a stored record whose `rank` is text (a foreign writer).
    let (s, c) = canary_specimen("redis-type");
    repo.insert(&s).await.expect("insert");
    let key = format!("{ns}:specimens:r:{}", s.id);
    let stored: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn.clone())
        .await
        .expect("get");
    let bad = stored.replace("\"rank\":7", &format!("\"rank\":\"{}\"", s.label));
    assert_ne!(bad, stored, "the stored text has the rank to replace");
    let () = redis::cmd("SET")
        .arg(&key)
        .arg(&bad)
        .query_async(&mut conn.clone())
        .await
        .expect("set");
    let e = repo.get(&s.id).await.expect_err("a wrong type");
    let text = clean("redis stored type", &e, &c);
    assert!(text.contains("rank"), "the field is named: {text}");

    // A key of another type (WRONGTYPE from the server).
    let (s, c) = canary_specimen("redis-wrongtype");
    let key = format!("{ns}:specimens:r:{}", s.id);
    let () = redis::cmd("HSET")
        .arg(&key)
        .arg("f")
        .arg(&s.label)
        .query_async(&mut conn.clone())
        .await
        .expect("hset");
    let e = repo.insert(&s).await.expect_err("wrong type");
    clean("redis wrongtype", &e, &c);
    classes += 2;

    spaces.drop_all().await;
    eprintln!("phi-errors[redis]: {classes} error classes, no canary in any rendering");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_errors_carry_no_values() {
    MongoNamespaces::new("phi").await; // the server answers
    let prefix = unique_prefix("phi");
    let ns = format!("{prefix}_0");
    dl_tests::schema::mongo(&dl_tests::live::mongo_url(), &ns)
        .await
        .expect("migrations");
    let client = dl_connections::mongo::connect(&dl_tests::live::mongo_url(), &test_pool(2))
        .await
        .expect("mongo options");
    let backend: Arc<dyn Backend> = Arc::new(
        dl_repositories::backends::mongo::MongoBackend::new(
            &client,
            &ns,
            std::time::Duration::from_secs(10),
        )
        .expect("database name"),
    );
    let mut classes = conflicts("mongo", Arc::clone(&backend)).await;
    classes += unique_taken("mongo", Arc::clone(&backend)).await;
    let repo = Repo::<Specimen>::open(Arc::clone(&backend))
        .await
        .expect("open");

    // Type error: a stored document whose `rank` is text (a foreign
    // writer).
    let (s, c) = canary_specimen("mongo-type");
    repo.insert(&s).await.expect("insert");
    client
        .database(&ns)
        .collection::<mongodb::bson::Document>("specimens")
        .update_one(
            mongodb::bson::doc! { "_id": &s.id },
            mongodb::bson::doc! { "$set": { "rank": &s.label } },
        )
        .await
        .expect("set by hand");
    let e = repo.get(&s.id).await.expect_err("a wrong type");
    let text = clean("mongo stored type", &e, &c);
    assert!(text.contains("rank"), "the field is named: {text}");
    classes += 1;

    dl_tests::live::drop_mongo_namespaces(&prefix).await;
    eprintln!("phi-errors[mongo]: {classes} error classes, no canary in any rendering");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_errors_carry_no_values() {
    let spaces = ScyllaNamespaces::new("phi").await;
    let backend = spaces.factory(false)().await;
    let classes = conflicts("scylla", Arc::clone(&backend)).await;
    let e = Repo::<UniqueSpecimen>::open(backend)
        .await
        .expect_err("no unique values on ScyllaDB");
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
    eprintln!(
        "phi-errors[scylla]: {classes} error classes, no canary in any rendering; unique values Unsupported"
    );
}

/// The summary kept of a driver error shows its kind, code and constraint
/// and nothing else, whatever way it is formatted.
#[test]
fn driver_error_summary_is_names_and_codes() {
    let d = dl_repositories::DriverError::new("sqlx", "check violation")
        .code("23514")
        .constraint(Some("specimens_label_plain"));
    assert_eq!(
        d.to_string(),
        "sqlx error: check violation, code 23514, constraint specimens_label_plain"
    );
    // A code or constraint that is not a code or a name is dropped.
    let d = dl_repositories::DriverError::new("sqlx", "x")
        .code("Jane Doe")
        .constraint(Some("(Jane Doe)"));
    assert_eq!(d.to_string(), "sqlx error: x");
    let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    let d = dl_repositories::DriverError::new("redis", "io").io_from(&io);
    assert_eq!(d.to_string(), "redis error: io: connection refused");
}
