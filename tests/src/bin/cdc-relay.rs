//! A CDC relay for the kill tests: it relays the change feed of the
//! relational store into the sinks of `cdc.sinks`, one batch after
//! another, and says on stdout `ready` once its relay is open, then
//! `ack <position>` after each batch it delivered, recorded and
//! acknowledged. Settings come from the environment (`DATABASE_URL`,
//! `DL_CDC__*`, as a service's). The test kills it (`kill -9`) at random
//! points and restarts it. Runs until killed, or for
//! `CDC_RELAY_MAX_STEPS` steps (default 100,000).

use std::io::Write as _;

use data_layer::{DataLayer, Settings, Sources};

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let settings = Settings::load(&Sources::default()).unwrap_or_else(|e| {
        eprintln!("cdc-relay: {e}");
        std::process::exit(2)
    });
    let max_steps: usize = std::env::var("CDC_RELAY_MAX_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dl = DataLayer::from_settings(settings)
        .await
        .unwrap_or_else(|e| {
            eprintln!("cdc-relay: {e}");
            std::process::exit(2)
        });
    let store = dl.relational().store();
    let relay = dl.cdc_relay(store).await.unwrap_or_else(|e| {
        eprintln!("cdc-relay: {e}");
        std::process::exit(2)
    });
    say("ready");
    for _ in 0..max_steps {
        match relay.step().await {
            Ok(r) if r.read > 0 => say(&format!("ack {}", r.position)),
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            Err(e) => {
                eprintln!("cdc-relay: a batch failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
