//! The NATS JetStream sink: each event published on `ce.<entity>.<op>`
//! (`ce` the configured subject root) with its id as `Nats-Msg-Id`, so the
//! stream keeps an event delivered again within its duplicate window once;
//! the sink returns when the stream has acknowledged every event.
//!
//! The stream (subjects `<root>.>`) is made on first use when missing,
//! with the configured duplicate window and maximum age. Consumers that
//! read it past the window should deduplicate by the CloudEvents `id` (or
//! the `Nats-Msg-Id` header) as well: JetStream forgets ids older than the
//! window.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage, stream};
use async_trait::async_trait;
use dl_repositories::{Error, Operation, Store};
use tokio::sync::OnceCell;

use crate::envelope::Redacted;
use crate::sink::Sink;

/// How the NATS sink publishes.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// The stream's name (made on first use when missing).
    pub stream: String,
    /// The first token of every subject (`<root>.<entity>.<op>`; default
    /// `ce`, so subjects are the events' types).
    pub subject_root: String,
    /// How long the stream remembers ids to drop a duplicate.
    pub duplicate_window: Duration,
    /// How long the stream keeps an event.
    pub max_age: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            stream: "DL_CE".to_owned(),
            subject_root: "ce".to_owned(),
            duplicate_window: Duration::from_secs(600),
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The NATS JetStream sink.
pub struct NatsSink {
    context: jetstream::Context,
    options: NatsOptions,
    stream: OnceCell<stream::Stream>,
}

impl fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSink")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn unavailable(reason: impl Into<String>, sent: bool) -> Error {
    Error::Unavailable {
        store: Store::Nats,
        operation: Operation::Deliver,
        reason: reason.into(),
        sent,
        source: None,
    }
}

/// Whether `name` can be a JetStream stream name (no spaces, `.`, `*`, `>`,
/// path separators; at most 64 bytes).
fn valid_stream(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `root` is one subject token (no `.`, `*`, `>`, spaces).
fn valid_root(root: &str) -> bool {
    (1..=64).contains(&root.len())
        && root
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl NatsSink {
    /// A sink on the server at `url` (`nats://host:port`). The connection
    /// is made in the background (a server that is down at startup delays
    /// delivery, it does not fail it): `timeout` bounds each request.
    ///
    /// # Errors
    /// `Invalid` naming `cdc.nats_stream` or `cdc.nats_subject_root` for a
    /// bad name; `Unavailable` when the URL cannot be used.
    pub async fn connect(
        url: &str,
        options: NatsOptions,
        timeout: Duration,
    ) -> Result<Self, Error> {
        if !valid_stream(&options.stream) {
            return Err(Error::invalid(
                "cdc",
                Some("cdc.nats_stream"),
                "a stream name is 1 to 64 of A-Z a-z 0-9 _ -",
            ));
        }
        if !valid_root(&options.subject_root) {
            return Err(Error::invalid(
                "cdc",
                Some("cdc.nats_subject_root"),
                "a subject root is one token of A-Z a-z 0-9 _ -",
            ));
        }
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            .connect(url)
            .await
            .map_err(|e| unavailable(format!("cannot connect to NATS: {}", e.kind()), false))?;
        let mut context = jetstream::new(client);
        context.set_timeout(timeout);
        Ok(NatsSink {
            context,
            options,
            stream: OnceCell::new(),
        })
    }

    /// The stream, made when missing.
    async fn stream(&self) -> Result<&stream::Stream, Error> {
        self.stream
            .get_or_try_init(|| async {
                self.context
                    .get_or_create_stream(stream::Config {
                        name: self.options.stream.clone(),
                        subjects: vec![format!("{}.>", self.options.subject_root)],
                        duplicate_window: self.options.duplicate_window,
                        max_age: self.options.max_age,
                        ..stream::Config::default()
                    })
                    .await
                    .map_err(|e| {
                        unavailable(
                            format!("cannot open the JetStream stream: {}", e.kind()),
                            true,
                        )
                    })
            })
            .await
    }

    /// The subject of an event: `<root>.<entity>.<op>` (its type, when
    /// the root is `ce`).
    #[must_use]
    pub fn subject(&self, event: &Redacted) -> String {
        let rest = event
            .event
            .ty
            .strip_prefix("ce.")
            .unwrap_or(&event.event.ty);
        format!("{}.{rest}", self.options.subject_root)
    }

    /// The stream's messages as (stream sequence, `Nats-Msg-Id`, payload),
    /// from `first` (for tests and audits), at most `limit`.
    ///
    /// # Errors
    /// `Unavailable` when the stream cannot be read.
    pub async fn messages(
        &self,
        first: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String, String)>, Error> {
        let mut stream = self.stream().await?.clone();
        let last = stream
            .info()
            .await
            .map_err(|e| unavailable(format!("stream info: {}", e.kind()), true))?
            .state
            .last_sequence;
        let mut out = Vec::new();
        let mut seq = first.max(1);
        while seq <= last && out.len() < limit {
            match stream.get_raw_message(seq).await {
                Ok(m) => {
                    let id = m
                        .headers
                        .get(async_nats::header::NATS_MESSAGE_ID)
                        .map(|v| v.as_str().to_owned())
                        .unwrap_or_default();
                    out.push((seq, id, String::from_utf8_lossy(&m.payload).into_owned()));
                }
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(unavailable(format!("read message: {}", e.kind()), true)),
            }
            seq += 1;
        }
        Ok(out)
    }
}

#[async_trait]
impl Sink for NatsSink {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn store(&self) -> Store {
        Store::Nats
    }

    async fn deliver(&self, events: &[Redacted]) -> Result<(), Error> {
        self.stream().await?;
        // Published in order, then every acknowledgement awaited: the
        // stream stores them in publish order on one connection.
        let mut acks: Vec<PublishAckFuture> = Vec::with_capacity(events.len());
        for e in events {
            let message = PublishMessage::build()
                .message_id(&e.event.id)
                .payload(bytes::Bytes::from(e.json()));
            let ack = self
                .context
                .send_publish(self.subject(e), message)
                .await
                .map_err(|err| unavailable(format!("publish: {}", err.kind()), true))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|err| {
                unavailable(format!("publish acknowledgement: {}", err.kind()), true)
            })?;
        }
        Ok(())
    }

    async fn count(&self) -> Result<Option<u64>, Error> {
        let mut stream = self.stream().await?.clone();
        let info = stream
            .info()
            .await
            .map_err(|e| unavailable(format!("stream info: {}", e.kind()), true))?;
        Ok(Some(info.state.messages))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_prefixes_are_checked() {
        assert!(valid_stream("DL_CE") && valid_stream("a-b_1"));
        for bad in ["", "a.b", "a b", "a*", "a>", "x/y", &"s".repeat(65)] {
            assert!(!valid_stream(bad), "{bad}");
        }
        assert!(valid_root("ce") && valid_root("ce_t1-x"));
        for bad in ["", ".", "a.b", "a*", ">", "a b", "ce.>"] {
            assert!(!valid_root(bad), "{bad}");
        }
    }
}
