//! The sagas of the saga tests: an admission across the stores of the
//! test stack — the patient in PostgreSQL, the chart in MongoDB, the
//! profile in Redis and, where a ScyllaDB session is given, the visit in
//! ScyllaDB — each effect applied once by the store's own helper, and an
//! audit event (the tests' count of applications) written in the same
//! atomic write as each effect.
//!
//! The input says where to fail (`fail_at`, before or after the effect)
//! and where a runner in crash mode stops dead (`block_at`, a kill
//! point): the `saga-runner` test binary prints `blocked <saga>
//! <point>` there and waits to be killed.

// Steps answer the layer's `StepError`, as large as its `Error`.
#![allow(clippy::result_large_err)]

use std::io::Write as _;
use std::sync::Arc;

use chrono::Utc;
use data_layer::models::domain::{AuditEvent, Patient, PatientStatus};
use data_layer::saga::{SagaDefinition, Step, StepContext, StepError};
use data_layer::{DataLayer, Filter, Store};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::entities::Chart;

/// An admission's input: who (canary PHI in every field but the id) and
/// how the test wants it to go.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Admit {
    /// The patient's id.
    pub patient_id: Uuid,
    /// The MRN (PHI, unique).
    pub mrn: String,
    /// Given name (PHI).
    pub given_name: String,
    /// Family name (PHI).
    pub family_name: String,
    /// Phone (PHI).
    pub phone: String,
    /// The chart's first entry (PHI).
    pub summary: String,
    /// The step that fails, if one.
    pub fail_at: Option<String>,
    /// Whether it fails after its effect is applied (an unknown outcome)
    /// rather than before (a plain failure).
    pub fail_after: bool,
    /// The kill point where a runner in crash mode stops dead.
    pub block_at: Option<String>,
}

impl Admit {
    /// An admission of a new patient with canary values tagged `tag`
    /// (but the MRN, which is short).
    #[must_use]
    pub fn canaries(tag: &str) -> Self {
        Admit {
            patient_id: Uuid::new_v4(),
            // At most 32 bytes: the tag is not kept in it.
            mrn: crate::canary::canary("m"),
            given_name: crate::canary::canary(&format!("{tag}given")),
            family_name: crate::canary::canary(&format!("{tag}family")),
            phone: crate::canary::canary(&format!("{tag}phone")),
            summary: crate::canary::canary(&format!("{tag}summary")),
            fail_at: None,
            fail_after: false,
            block_at: None,
        }
    }

    /// Every PHI value of it.
    #[must_use]
    pub fn phi(&self) -> Vec<String> {
        vec![
            self.mrn.clone(),
            self.given_name.clone(),
            self.family_name.clone(),
            self.phone.clone(),
            self.summary.clone(),
        ]
    }
}

/// Where the admission writes, and how its runner behaves.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // the ScyllaDB session
pub struct Stores {
    /// The data layer (PostgreSQL, MongoDB, Redis configured).
    pub dl: DataLayer,
    /// A ScyllaDB session and keyspace for the visit step (with whether
    /// the server has lightweight transactions); without it the last step
    /// is `confirm`, in PostgreSQL.
    pub scylla: Option<(Arc<scylla::client::session::Session>, String, bool)>,
    /// Whether `block_at` points stop dead (the crash runner).
    pub blocking: bool,
    /// This runner's name, written as the actor of each audit event.
    pub runner: String,
    /// Where each effect applied now is noted (`<step>.<phase>`), in
    /// order, when given.
    pub trace: Option<Arc<std::sync::Mutex<Vec<String>>>>,
}

/// The steps, in order, of the admission on `stores`.
#[must_use]
pub fn step_names(stores: &Stores) -> Vec<&'static str> {
    let last = if stores.scylla.is_some() {
        "visit"
    } else {
        "confirm"
    };
    vec!["patient", "chart", "profile", last]
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

impl Stores {
    /// A kill point: where a blocking runner stops dead when the input
    /// names it.
    async fn point(&self, ctx: &StepContext, input: &Admit, point: &str) {
        if self.blocking && input.block_at.as_deref() == Some(point) {
            say(&format!("blocked {} {point}", ctx.saga_id()));
            std::future::pending::<()>().await;
        }
    }

    fn note<R>(&self, ctx: &StepContext, done: &data_layer::saga::Once<R>) {
        if let (Some(t), true) = (&self.trace, done.is_applied()) {
            t.lock()
                .expect("trace")
                .push(format!("{}.{}", ctx.step(), ctx.phase().name()));
        }
    }

    /// The audit event of this attempt's effect: the count of its
    /// applications.
    fn ledger(&self, ctx: &StepContext) -> AuditEvent {
        AuditEvent {
            id: Uuid::new_v4(),
            at: Utc::now(),
            actor: self.runner.clone(),
            action: ctx.phase().name().to_owned(),
            entity: ctx.step().to_owned(),
            entity_key: ctx.saga_id().to_string(),
            purpose: Some("saga-test".into()),
            detail: None,
        }
    }

    /// The injected failure before the effect (of the action).
    fn fail_before(input: &Admit, ctx: &StepContext) -> Result<(), StepError> {
        if input.fail_at.as_deref() == Some(ctx.step())
            && !input.fail_after
            && ctx.phase() == data_layer::saga::Phase::Action
        {
            return Err(StepError::failed("injected failure"));
        }
        Ok(())
    }

    /// The injected failure after the effect (of the action).
    fn fail_after(input: &Admit, ctx: &StepContext) -> Result<(), StepError> {
        if input.fail_at.as_deref() == Some(ctx.step())
            && input.fail_after
            && ctx.phase() == data_layer::saga::Phase::Action
        {
            // The first attempt loses its answer; the next finds the
            // effect applied and then fails for good (the step is then
            // compensated: an attempt of it may have applied its effect).
            return Err(if ctx.attempt() == 1 {
                StepError::unknown("injected failure after the effect")
            } else {
                StepError::failed("injected failure after the effect, again")
            });
        }
        Ok(())
    }

    /// The Redis key of the patient's profile.
    #[must_use]
    pub fn profile_key(&self, patient: Uuid) -> String {
        format!("{}:profile:{patient}", self.dl.settings().redis_key_prefix)
    }

    /// The Redis hash of the saga's application counts.
    #[must_use]
    pub fn ledger_key(&self, saga: Uuid) -> String {
        format!("{}:saga_ledger:{saga}", self.dl.settings().redis_key_prefix)
    }

    async fn patient(&self, ctx: StepContext) -> Result<Value, StepError> {
        let input: Admit = ctx.input()?;
        let name = |p: &str| format!("patient.{}.{p}", ctx.phase().name());
        self.point(&ctx, &input, &name("before")).await;
        Self::fail_before(&input, &ctx)?;
        let comp = ctx.phase() == data_layer::saga::Phase::Compensation;
        let (ledger, this) = (self.ledger(&ctx), self.clone());
        let (c, i) = (ctx.clone(), input.clone());
        let done = self
            .dl
            .once_in(Store::Postgres, &ctx, |tx| async move {
                let patients = tx.repository::<Patient>().await?;
                if comp {
                    patients.delete(&i.patient_id).await?;
                } else {
                    patients.insert(&patient_of(&i)).await?;
                }
                tx.repository::<AuditEvent>().await?.insert(&ledger).await?;
                this.point(&c, &i, &format!("patient.{}.inside", c.phase().name()))
                    .await;
                Ok(())
            })
            .await?;
        self.note(&ctx, &done);
        self.point(&ctx, &input, &name("after")).await;
        Self::fail_after(&input, &ctx)?;
        Ok(json!({ "patient": input.patient_id }))
    }

    async fn chart(&self, ctx: StepContext) -> Result<Value, StepError> {
        let input: Admit = ctx.input()?;
        let name = |p: &str| format!("chart.{}.{p}", ctx.phase().name());
        self.point(&ctx, &input, &name("before")).await;
        Self::fail_before(&input, &ctx)?;
        let comp = ctx.phase() == data_layer::saga::Phase::Compensation;
        let chart = Chart {
            id: ctx.id_for("chart"),
            patient_id: input.patient_id,
            summary: input.summary.clone(),
            opened_at: Utc::now(),
        };
        let (ledger, this) = (self.ledger(&ctx), self.clone());
        let (c, i) = (ctx.clone(), input.clone());
        let done = self
            .dl
            .once_in(Store::Mongo, &ctx, |tx| async move {
                let charts = tx.repository::<Chart>().await?;
                if comp {
                    charts.delete(&chart.id).await?;
                } else {
                    charts.insert(&chart).await?;
                }
                tx.repository::<AuditEvent>().await?.insert(&ledger).await?;
                this.point(&c, &i, &format!("chart.{}.inside", c.phase().name()))
                    .await;
                Ok(())
            })
            .await?;
        self.note(&ctx, &done);
        self.point(&ctx, &input, &name("after")).await;
        Self::fail_after(&input, &ctx)?;
        Ok(json!({ "chart": ctx.id_for("chart") }))
    }

    async fn profile(&self, ctx: StepContext) -> Result<Value, StepError> {
        let input: Admit = ctx.input()?;
        let name = |p: &str| format!("profile.{}.{p}", ctx.phase().name());
        self.point(&ctx, &input, &name("before")).await;
        Self::fail_before(&input, &ctx)?;
        let key = self.profile_key(input.patient_id);
        let effect = if ctx.phase() == data_layer::saga::Phase::Compensation {
            redis::cmd("DEL").arg(&key).clone()
        } else {
            redis::cmd("HSET")
                .arg(&key)
                .arg("given_name")
                .arg(&input.given_name)
                .arg("phone")
                .arg(&input.phone)
                .clone()
        };
        let count = redis::cmd("HINCRBY")
            .arg(self.ledger_key(ctx.saga_id()))
            .arg(format!("{}.{}", ctx.step(), ctx.phase().name()))
            .arg(1)
            .clone();
        let done = self.dl.once_redis(&ctx, &[effect, count]).await?;
        self.note(&ctx, &done);
        self.point(&ctx, &input, &name("after")).await;
        Self::fail_after(&input, &ctx)?;
        Ok(json!({ "profile": true }))
    }

    async fn confirm(&self, ctx: StepContext) -> Result<Value, StepError> {
        let input: Admit = ctx.input()?;
        self.point(&ctx, &input, "confirm.action.before").await;
        Self::fail_before(&input, &ctx)?;
        let (ledger, this) = (self.ledger(&ctx), self.clone());
        let (c, i) = (ctx.clone(), input.clone());
        let done = self
            .dl
            .once_in(Store::Postgres, &ctx, |tx| async move {
                tx.repository::<AuditEvent>().await?.insert(&ledger).await?;
                this.point(&c, &i, "confirm.action.inside").await;
                Ok(())
            })
            .await?;
        self.note(&ctx, &done);
        self.point(&ctx, &input, "confirm.action.after").await;
        Ok(json!({ "confirmed": true }))
    }

    async fn visit(&self, ctx: StepContext) -> Result<Value, StepError> {
        let input: Admit = ctx.input()?;
        Self::fail_before(&input, &ctx)?;
        let (session, keyspace, lwt) = self.scylla.clone().expect("a visit needs ScyllaDB");
        let id = ctx.id_for("visit");
        let done = data_layer::saga::once::scylla(
            &session,
            &format!(
                "INSERT INTO {keyspace}.appointments (id, patient_id, starts_at, duration_minutes, kind, status, version) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)"
            ),
            (
                id,
                input.patient_id,
                scylla::value::CqlTimestamp(Utc::now().timestamp_millis()),
                30_i64,
                "admission",
                "scheduled",
                1_i64,
            ),
            lwt,
        )
        .await?;
        self.note(&ctx, &done);
        Ok(json!({ "visit": id, "applied_now": done.is_applied() }))
    }
}

/// The patient an admission registers.
#[must_use]
pub fn patient_of(a: &Admit) -> Patient {
    Patient {
        id: a.patient_id,
        mrn: a.mrn.clone(),
        given_name: a.given_name.clone(),
        family_name: a.family_name.clone(),
        date_of_birth: chrono::NaiveDate::from_ymd_opt(1980, 5, 17).expect("a date"),
        phone: Some(a.phone.clone()),
        email: None,
        status: PatientStatus::Active,
        created_at: Utc::now(),
        version: 1,
    }
}

/// The admission saga (`admission`, version 1) on `stores`.
///
/// # Panics
/// Never: the definition is valid.
#[must_use]
pub fn admission(stores: &Stores) -> SagaDefinition {
    let s = Arc::new(stores.clone());
    macro_rules! step {
        ($f:ident) => {{
            let s = Arc::clone(&s);
            move |ctx: StepContext| {
                let s = Arc::clone(&s);
                async move { s.$f(ctx).await }
            }
        }};
    }
    let mut steps = vec![
        Step::compensatable("patient", step!(patient), step!(patient)),
        Step::compensatable("chart", step!(chart), step!(chart)),
        Step::compensatable("profile", step!(profile), step!(profile)),
    ];
    steps.push(if stores.scylla.is_some() {
        Step::pivot("visit", step!(visit))
    } else {
        Step::pivot("confirm", step!(confirm))
    });
    SagaDefinition::new("admission", 1, steps).expect("a valid definition")
}

/// How many times each step's action and compensation applied its effect
/// for saga `saga` (from the audit events in PostgreSQL and MongoDB and
/// the Redis counts): `(step, phase) → count`.
///
/// # Panics
/// When a store does not answer.
pub async fn applications(
    stores: &Stores,
    saga: Uuid,
) -> std::collections::BTreeMap<(String, String), u64> {
    let mut out = std::collections::BTreeMap::new();
    for (store, steps) in [
        (Store::Postgres, &["patient", "confirm"][..]),
        (Store::Mongo, &["chart"][..]),
    ] {
        let audit = stores
            .dl
            .repository_in::<AuditEvent>(store)
            .await
            .expect("audit events");
        for step in steps {
            for phase in ["action", "compensation"] {
                let n = audit
                    .count(
                        &Filter::eq("entity_key", saga.to_string())
                            .and(Filter::eq("entity", *step))
                            .and(Filter::eq("action", phase)),
                    )
                    .await
                    .expect("count audit events");
                out.insert(((*step).to_owned(), phase.to_owned()), n);
            }
        }
    }
    let mut conn = redis::Client::open(crate::live::redis_url().expose())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let counts: std::collections::HashMap<String, u64> = redis::cmd("HGETALL")
        .arg(stores.ledger_key(saga))
        .query_async(&mut conn)
        .await
        .expect("redis ledger");
    for phase in ["action", "compensation"] {
        out.insert(
            ("profile".to_owned(), phase.to_owned()),
            counts
                .get(&format!("profile.{phase}"))
                .copied()
                .unwrap_or(0),
        );
    }
    out
}

/// Whether the admission's effects are in the stores: the patient
/// (PostgreSQL), the chart (MongoDB), the profile (Redis).
///
/// # Panics
/// When a store does not answer.
pub async fn effects_present(stores: &Stores, saga: Uuid, a: &Admit) -> (bool, bool, bool) {
    let patient = stores
        .dl
        .repository_in::<Patient>(Store::Postgres)
        .await
        .expect("patients")
        .get(&a.patient_id)
        .await
        .expect("get patient")
        .is_some();
    let chart_id = Uuid::new_v5(&saga, b"chart/chart");
    let chart = stores
        .dl
        .repository_in::<Chart>(Store::Mongo)
        .await
        .expect("charts")
        .get(&chart_id)
        .await
        .expect("get chart")
        .is_some();
    let mut conn = redis::Client::open(crate::live::redis_url().expose())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let profile: bool = redis::cmd("EXISTS")
        .arg(stores.profile_key(a.patient_id))
        .query_async(&mut conn)
        .await
        .expect("redis exists");
    (patient, chart, profile)
}

/// Makes what the admission needs beyond the domain migrations: the
/// `charts` collection in MongoDB database `ns`.
///
/// # Panics
/// When MongoDB does not answer.
pub async fn prepare(ns: &str) {
    let client = mongodb::Client::with_uri_str(crate::live::mongo_url().expose())
        .await
        .expect("mongo");
    client
        .database(ns)
        .create_collection("charts")
        .await
        .expect("create charts");
}
