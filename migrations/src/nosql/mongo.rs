//! The MongoDB runner.

#![allow(unused_imports)] // the shared imports, not all used by every runner

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::DateTime;
use futures::TryStreamExt as _;

use super::{i64_of, ttl_ms, u64_of};
use crate::engine::{AfterRun, Applied, Target};
use crate::error::MigrationError;
use crate::script::{ScriptFile, StoreKind};
use mongodb::bson::{self, Bson, Document, doc};

use crate::split::mongo_documents;

// ------------------------------------------------------------------ MongoDB

/// The MongoDB runner.
#[derive(Debug, Clone)]
pub struct MongoTarget {
    db: mongodb::Database,
}

impl MongoTarget {
    /// A runner on database `db`.
    #[must_use]
    pub fn new(db: mongodb::Database) -> Self {
        MongoTarget { db }
    }

    fn err(what: &str, e: mongodb::error::Error) -> MigrationError {
        MigrationError::store(StoreKind::Mongo, what, e)
    }

    fn history_coll(&self) -> mongodb::Collection<Document> {
        self.db.collection("dl_migrations")
    }

    fn lock_coll(&self) -> mongodb::Collection<Document> {
        self.db.collection("dl_migrations_lock")
    }

    /// [`MigrationError::LeaseLost`] unless the lease document names
    /// `owner`.
    async fn fence(&self, owner: &str) -> Result<(), MigrationError> {
        let held = self
            .lock_coll()
            .count_documents(doc! { "_id": "lock", "owner": owner })
            .await
            .map_err(|e| Self::err("cannot check the migration lease", e))?;
        if held == 1 {
            Ok(())
        } else {
            Err(MigrationError::LeaseLost {
                store: StoreKind::Mongo,
            })
        }
    }

    async fn after(&self, after: &AfterRun) -> Result<(), MigrationError> {
        match after {
            AfterRun::Record(row) => self.record(row).await,
            AfterRun::Forget(v) => self.forget(*v).await,
        }
    }
}

fn mongo_message(e: &mongodb::error::Error) -> String {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => {
            format!("{} ({}): {}", c.code_name, c.code, c.message)
        }
        _ => e.to_string(),
    }
}

#[async_trait]
impl Target for MongoTarget {
    fn store(&self) -> StoreKind {
        StoreKind::Mongo
    }

    async fn ensure_history(&self) -> Result<(), MigrationError> {
        // Collections appear on first write.
        Ok(())
    }

    async fn try_lock(&self, owner: &str, ttl: Duration) -> Result<bool, MigrationError> {
        let now = bson::DateTime::now();
        let until = bson::DateTime::from_millis(now.timestamp_millis().saturating_add(ttl_ms(ttl)));
        let r = self
            .lock_coll()
            .update_one(
                doc! { "_id": "lock", "$or": [ { "owner": owner }, { "expires_at": { "$lt": now } } ] },
                doc! { "$set": { "owner": owner, "expires_at": until } },
            )
            .upsert(true)
            .await;
        match r {
            Ok(_) => Ok(true),
            // The upsert collided with a live lease held by another owner.
            Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) if w.code == 11000) => {
                Ok(false)
            }
            Err(e) if e.to_string().contains("E11000") => Ok(false),
            Err(e) => Err(Self::err("cannot take the migration lease", e)),
        }
    }

    async fn unlock(&self, owner: &str) -> Result<(), MigrationError> {
        self.lock_coll()
            .delete_one(doc! { "_id": "lock", "owner": owner })
            .await
            .map(|_| ())
            .map_err(|e| Self::err("cannot release the migration lease", e))
    }

    async fn history(&self) -> Result<Vec<Applied>, MigrationError> {
        let docs: Vec<Document> = self
            .history_coll()
            .find(doc! {})
            .await
            .map_err(|e| Self::err("cannot read the history", e))?
            .try_collect()
            .await
            .map_err(|e| Self::err("cannot read the history", e))?;
        Ok(docs
            .iter()
            .map(|d| Applied {
                version: u64_of(d.get_i64("_id").unwrap_or_default()),
                name: d.get_str("name").unwrap_or_default().to_owned(),
                checksum: d.get_str("checksum").unwrap_or_default().to_owned(),
                applied_at: d
                    .get_datetime("applied_at")
                    .map(|t| {
                        DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or_default()
                    })
                    .unwrap_or_default(),
                duration_ms: u64_of(d.get_i64("duration_ms").unwrap_or_default()),
                outcome: d.get_str("outcome").unwrap_or_default().to_owned(),
                error: d.get_str("error").ok().map(str::to_owned),
            })
            .collect())
    }

    async fn run(
        &self,
        script: &ScriptFile,
        _transactional: bool,
        after: &AfterRun,
        owner: &str,
    ) -> Result<(), MigrationError> {
        let commands =
            mongo_documents(&script.body).map_err(|reason| MigrationError::BadScript {
                path: script.path.clone(),
                reason,
            })?;
        // MongoDB runs a script's commands without a transaction: the
        // lease is checked before the first command and before the history
        // row (a takeover between the two is not fenced for the commands
        // themselves; a re-run must tolerate them, as after a failure).
        self.fence(owner).await?;
        for (i, command) in commands.into_iter().enumerate() {
            let result = self.db.run_command(command).await;
            let failure = match result {
                Err(e) => Some(mongo_message(&e)),
                // Write commands report per-document errors in the reply.
                Ok(reply) => reply
                    .get_array("writeErrors")
                    .ok()
                    .and_then(|errors| errors.first())
                    .and_then(Bson::as_document)
                    .map(|w| format!("write error: {}", w.get_str("errmsg").unwrap_or("unknown"))),
            };
            if let Some(message) = failure {
                return Err(MigrationError::ScriptFailed {
                    store: StoreKind::Mongo,
                    path: script.path.clone(),
                    statement: i + 1,
                    line: None,
                    message,
                });
            }
        }
        // The history row is written only while the lease still names
        // this runner.
        self.fence(owner).await?;
        self.after(after).await
    }

    async fn record(&self, row: &Applied) -> Result<(), MigrationError> {
        let mut d = doc! {
            "_id": i64_of(row.version),
            "name": &row.name,
            "checksum": &row.checksum,
            "applied_at": bson::DateTime::from_millis(row.applied_at.timestamp_millis()),
            "duration_ms": i64_of(row.duration_ms),
            "outcome": &row.outcome,
        };
        if let Some(e) = &row.error {
            d.insert("error", e);
        }
        self.history_coll()
            .replace_one(doc! { "_id": i64_of(row.version) }, d)
            .upsert(true)
            .await
            .map(|_| ())
            .map_err(|e| Self::err("cannot record the history", e))
    }

    async fn forget(&self, version: u64) -> Result<(), MigrationError> {
        self.history_coll()
            .delete_one(doc! { "_id": i64_of(version) })
            .await
            .map(|_| ())
            .map_err(|e| Self::err("cannot update the history", e))
    }
}

#[cfg(test)]
mod tests {
    use super::mongo_documents;

    #[test]
    fn extended_json_commands() {
        let docs = mongo_documents(r#"[{"createIndexes": "x", "indexes": [{"key": {"at": 1}, "name": "ttl", "expireAfterSeconds": 60}]}]"#)
            .expect("parses");
        assert_eq!(docs.len(), 1);
        assert!(
            mongo_documents(r#"[{"insert": "x", "documents": [{"n": {"$numberLong": "x"}}]}]"#)
                .is_err()
        );
    }
}
