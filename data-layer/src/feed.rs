//! The change feed of each store (see [`dl_repositories::feed`]): which
//! entities are captured (`cdc.entities`), and the consumers that read it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use data_layer::{DataLayer, Repository, Settings, Sources, Store};
//! use data_layer::models::domain::Alert;
//!
//! # let dir = tempfile::tempdir()?;
//! # let url = format!("sqlite://{}/feed.db", dir.path().display());
//! let settings = Settings::load(
//!     &Sources::isolated().var("DATABASE_URL", &url).var("DL_CDC__ENTITIES", "alerts"),
//! )?;
//! data_layer::migrate::apply(&settings, &data_layer::migrate::domain_scripts()).await?;
//! let dl = DataLayer::from_settings(settings).await?;
//! // A consumer from the start of the feed; its checkpoint lives in the store.
//! let consumer = dl.consumer(Store::Sqlite, "alert-mailer", true).await?;
//!
//! let alerts = dl.repository::<Alert>().await?;
//! let alert = Alert {
//!     id: uuid::Uuid::new_v4(),
//!     patient_id: None,
//!     severity: "warning".into(),
//!     message: "fake message".into(),
//!     raised_at: chrono::Utc::now(),
//!     acknowledged: false,
//! };
//! alerts.insert(&alert).await?;
//! alerts.delete(&alert.id).await?;
//!
//! let batch = consumer.next_batch(100).await?;
//! assert_eq!(batch.len(), 2); // created, deleted: one event per write
//! assert_eq!(batch[0].after::<Alert>()?.map(|a| a.id), Some(alert.id));
//! consumer.ack(&batch[1]).await?; // handled: not delivered again
//! assert!(consumer.next_batch(100).await?.is_empty());
//! # Ok(()) }
//! ```

use std::sync::Arc;

pub use dl_repositories::feed::{
    Capture, ChangeEvent, ChangeFeed, ChangeOp, Consumer, ConsumerStatus, EventKey, FeedStatus,
};

use crate::{DataLayer, Error, Settings, SetupError, Store};

/// The capture set of the settings: `None` when `cdc.entities` is empty.
/// Every name must be an entity compiled into the program; an entity with
/// a PHI key needs `privacy.key` (its events name the key by a keyed
/// token, which a random per-process key would change at every start).
pub(crate) fn capture_of(
    settings: &Settings,
    privacy: Option<&Arc<dl_privacy::Privacy>>,
) -> Result<Option<Arc<Capture>>, SetupError> {
    let names = &settings.cdc.entities;
    if names.is_empty() {
        return Ok(None);
    }
    let known = dl_models::registered_schemas();
    for name in names {
        let Some(schema) = known.iter().find(|s| s.name == name) else {
            let mut all: Vec<&str> = known.iter().map(|s| s.name).collect();
            all.sort_unstable();
            all.dedup();
            return Err(SetupError::Capture {
                reason: format!(
                    "`{name}` is not an entity of this program (known: {})",
                    all.join(", ")
                ),
            });
        };
        if schema.key_field().sensitivity.is_phi() && privacy.is_none() {
            return Err(SetupError::Capture {
                reason: format!(
                    "`{name}` has a PHI key, which its events name by a keyed token: set privacy.key \
                     (a random key would change the tokens at every start)"
                ),
            });
        }
    }
    let privacy = privacy.map_or_else(|| Arc::new(dl_privacy::Privacy::ephemeral()), Arc::clone);
    Capture::new(names.iter().cloned(), privacy)
        .map(|c| Some(Arc::new(c)))
        .map_err(|e| SetupError::Capture {
            reason: e.to_string(),
        })
}

impl DataLayer {
    /// The change feed of `store`: its events and its consumers.
    ///
    /// # Errors
    /// `Unsupported` when the store is not configured, keeps no feed, or
    /// captures no entity (`cdc.entities` is empty).
    pub async fn feed(&self, store: Store) -> Result<Arc<dyn ChangeFeed>, Error> {
        let backend = self
            .backend_of(store)
            .ok_or_else(|| crate::not_configured(store))?;
        backend.change_feed().await
    }

    /// A named consumer of `store`'s feed, registered (from the start of
    /// what the feed keeps when `from_start`, else from now) if it is new,
    /// resuming from its checkpoint if not.
    ///
    /// # Errors
    /// As [`DataLayer::feed`]; `Invalid` for a bad name.
    pub async fn consumer(
        &self,
        store: Store,
        name: &str,
        from_start: bool,
    ) -> Result<Consumer, Error> {
        Consumer::open(self.feed(store).await?, name, from_start).await
    }

    /// Every store's feed, for health and pruning.
    pub(crate) async fn feeds(&self) -> Vec<Arc<dyn ChangeFeed>> {
        let mut out = Vec::new();
        for b in std::iter::once(&self.relational).chain(&self.others) {
            if let Ok(f) = b.change_feed().await {
                out.push(f);
            }
        }
        out
    }

    /// Deletes, on every store, the events every registered consumer has
    /// acknowledged that are older than `cdc.retention`. The background
    /// health checker runs it each round. Returns how many were deleted.
    ///
    /// # Errors
    /// The first store's fault.
    pub async fn prune_feeds(&self) -> Result<u64, Error> {
        let mut total = 0;
        for f in self.feeds().await {
            total += f.prune(self.settings.cdc.retention).await?;
        }
        Ok(total)
    }
}
