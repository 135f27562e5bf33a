//! TLS to the stores, through the URL a service configures: a private
//! PostgreSQL cluster that accepts only TLS sessions is reached with
//! `sslmode=verify-full` and the cluster's CA; a client that does not trust
//! that CA, or asks for plaintext, is refused with a clear error; a
//! `rediss://` URL against a plaintext Redis fails rather than falling back.

#![cfg(feature = "integration")]

use std::time::Duration;

use data_layer::{DataLayer, Error, Settings, Sources, Store};
use dl_tests::entities::Note;
use dl_tests::private::{Kind, PrivateServer};

async fn data_layer(database_url: &str) -> DataLayer {
    let settings = Settings::load(
        &Sources::isolated()
            .var("DATABASE_URL", database_url)
            .var("DL_POSTGRES__CONNECT_TIMEOUT", "2s")
            .var("DL_POSTGRES__ACQUIRE_TIMEOUT", "2s")
            .var("DL_POSTGRES__REQUEST_TIMEOUT", "3s")
            .var("DL_POSTGRES__RETRIES", "0"),
    )
    .expect("settings");
    DataLayer::from_settings(settings)
        .await
        .expect("data layer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_verified_tls() {
    let server = PrivateServer::start_tls(Kind::Postgres).await;
    let base = server.url();
    let ca = server.ca_file();
    let verified = format!("{base}?sslmode=verify-full&sslrootcert={}", ca.display());

    // Sessions come up once the cluster accepts them.
    let dl = data_layer(&verified).await;
    let started = std::time::Instant::now();
    while dl.relational().ping().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "never up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = dl_connections::SecretUrl::parse(&verified).expect("url");
    dl_tests::schema::postgres(&url, &dl.settings().postgres_schema)
        .await
        .unwrap_or_else(|e| panic!("migrations over TLS: {e}"));
    let notes = dl.repository::<Note>().await.expect("open over TLS");
    notes
        .insert(&Note {
            id: 1,
            body: "fake".into(),
        })
        .await
        .expect("insert over TLS");
    assert!(notes.get(&1).await.expect("get").is_some());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&verified)
        .await
        .expect("raw TLS session");
    let (ssl,): (bool,) =
        sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .expect("pg_stat_ssl");
    assert!(ssl, "the session is encrypted");

    // Not trusting the cluster's CA: refused, clearly, nothing written.
    let untrusted = data_layer(&format!("{base}?sslmode=verify-full")).await;
    let e = untrusted
        .relational()
        .ping()
        .await
        .expect_err("untrusted CA");
    assert!(
        matches!(
            e,
            Error::Unavailable {
                store: Store::Postgres,
                ..
            }
        ),
        "{e}"
    );
    // Asking for plaintext: the cluster refuses it.
    let plain = data_layer(&format!("{base}?sslmode=disable")).await;
    let e = plain.relational().ping().await.expect_err("plaintext");
    assert!(
        matches!(
            e,
            Error::Unavailable {
                store: Store::Postgres,
                ..
            } | Error::Backend {
                store: Store::Postgres,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        notes
            .count(&data_layer::Filter::all())
            .await
            .expect("count"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_against_a_plaintext_server_fails() {
    let url = dl_tests::live::redis_url();
    let tls_url = url.expose().replacen("redis://", "rediss://", 1);
    let settings = Settings::load(
        &Sources::isolated()
            .var("DATABASE_URL", "sqlite::memory:")
            .var("REDIS_URL", &tls_url)
            .var("DL_REDIS__CONNECT_TIMEOUT", "500ms")
            .var("DL_REDIS__REQUEST_TIMEOUT", "1s"),
    )
    .expect("settings");
    let dl = DataLayer::from_settings(settings)
        .await
        .expect("data layer");
    let report = dl.health().await;
    let redis = report
        .stores
        .iter()
        .find(|s| s.store == "redis")
        .expect("redis");
    assert_eq!(redis.status, "down", "{report:?}");
    assert_eq!(report.status, "down");
}
