//! Saga definitions: a name, a version and ordered, typed steps, checked
//! before anything runs.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use dl_repositories::Error;
use futures::future::BoxFuture;
use serde_json::Value;

use crate::context::{StepContext, StepError};

/// The most steps a saga has.
pub const MAX_STEPS: usize = 64;

/// The longest name of a saga or a step.
pub const MAX_NAME: usize = 63;

/// What a step is, as the saga literature names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepKind {
    /// Before the pivot: undone by its compensation when a later step
    /// fails.
    Compensatable,
    /// The point of no return: once it succeeds, the saga completes.
    Pivot,
    /// After the pivot: retried until it succeeds, never compensated.
    Retriable,
}

impl StepKind {
    /// The kind's name (`compensatable`, `pivot`, `retriable`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            StepKind::Compensatable => "compensatable",
            StepKind::Pivot => "pivot",
            StepKind::Retriable => "retriable",
        }
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A step's action or compensation: given the saga's context, its output
/// (JSON; `null` when it has none).
pub type StepFn =
    Arc<dyn Fn(StepContext) -> BoxFuture<'static, Result<Value, StepError>> + Send + Sync>;

fn step_fn<F, Fut>(f: F) -> StepFn
where
    F: Fn(StepContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, StepError>> + Send + 'static,
{
    Arc::new(move |ctx| Box::pin(f(ctx)))
}

/// One step of a saga.
#[derive(Clone)]
pub struct Step {
    pub(crate) name: String,
    pub(crate) kind: StepKind,
    pub(crate) action: StepFn,
    pub(crate) compensation: Option<StepFn>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) attempts: Option<u32>,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("compensated", &self.compensation.is_some())
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl Step {
    /// A step of `kind` named `name` running `action`.
    pub fn new<F, Fut>(kind: StepKind, name: &str, action: F) -> Self
    where
        F: Fn(StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, StepError>> + Send + 'static,
    {
        Step {
            name: name.to_owned(),
            kind,
            action: step_fn(action),
            compensation: None,
            timeout: None,
            attempts: None,
        }
    }

    /// A compensatable step: `action`, undone by `compensation`.
    pub fn compensatable<F, Fut, G, Gut>(name: &str, action: F, compensation: G) -> Self
    where
        F: Fn(StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, StepError>> + Send + 'static,
        G: Fn(StepContext) -> Gut + Send + Sync + 'static,
        Gut: Future<Output = Result<Value, StepError>> + Send + 'static,
    {
        Step::new(StepKind::Compensatable, name, action).compensate(compensation)
    }

    /// The pivot: the point of no return.
    pub fn pivot<F, Fut>(name: &str, action: F) -> Self
    where
        F: Fn(StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, StepError>> + Send + 'static,
    {
        Step::new(StepKind::Pivot, name, action)
    }

    /// A retriable step (after the pivot).
    pub fn retriable<F, Fut>(name: &str, action: F) -> Self
    where
        F: Fn(StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, StepError>> + Send + 'static,
    {
        Step::new(StepKind::Retriable, name, action)
    }

    /// Sets the step's compensation (only a compensatable step has one:
    /// [`SagaDefinition::new`] refuses it on the others).
    #[must_use]
    pub fn compensate<G, Gut>(mut self, compensation: G) -> Self
    where
        G: Fn(StepContext) -> Gut + Send + Sync + 'static,
        Gut: Future<Output = Result<Value, StepError>> + Send + 'static,
    {
        self.compensation = Some(step_fn(compensation));
        self
    }

    /// How long one attempt of the action (or of the compensation) may
    /// take; past it the attempt fails with an unknown outcome. Default:
    /// the runner's `step_timeout`.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How many times the action of a compensatable step or the pivot is
    /// tried before the saga turns back (default: the runner's
    /// `attempts`). A retriable step and every compensation are tried
    /// until they succeed, or the saga is stuck.
    #[must_use]
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = Some(attempts);
        self
    }

    /// The step's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The step's kind.
    #[must_use]
    pub fn kind(&self) -> StepKind {
        self.kind
    }
}

/// A saga's definition: its name, version and steps, checked.
#[derive(Debug, Clone)]
pub struct SagaDefinition {
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) steps: Vec<Step>,
}

fn invalid(field: &str, reason: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::invalid("saga", Some(field), reason)
}

/// Checks a saga or step name: 1 to 63 characters of `[a-z0-9_]`,
/// starting with a letter (shown in logs, metrics and the CLI).
///
/// # Errors
/// `Invalid` naming `what`.
pub fn check_name(what: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            what,
            "expected 1 to 63 characters of a-z, 0-9 and _, starting with a letter",
        ))
    }
}

impl SagaDefinition {
    /// A definition named `name` at `version` (1 or more) of `steps`, in
    /// order: compensatable steps, then at most one pivot, then retriable
    /// steps (only after a pivot).
    ///
    /// # Errors
    /// `Invalid`, naming what is wrong, before anything runs: a bad name
    /// or version, no steps or more than 64, two steps of one name, two
    /// pivots, a step out of order, a compensatable step without a
    /// compensation, a compensation on the pivot or a retriable step.
    pub fn new(name: &str, version: u32, steps: Vec<Step>) -> Result<Self, Error> {
        check_name("saga.name", name)?;
        if version == 0 {
            return Err(invalid("saga.version", "expected a version of 1 or more"));
        }
        if steps.is_empty() {
            return Err(invalid("saga.steps", "a saga needs at least one step"));
        }
        if steps.len() > MAX_STEPS {
            return Err(invalid("saga.steps", "a saga has at most 64 steps"));
        }
        let mut seen = std::collections::HashSet::new();
        let mut pivot: Option<&str> = None;
        for step in &steps {
            check_name("step.name", &step.name)?;
            if !seen.insert(step.name.as_str()) {
                return Err(invalid(
                    &step.name,
                    "two steps have this name: step names are unique in a saga",
                ));
            }
            match step.kind {
                StepKind::Compensatable => {
                    if pivot.is_some() {
                        return Err(invalid(
                            &step.name,
                            "a compensatable step comes before the pivot",
                        ));
                    }
                    if step.compensation.is_none() {
                        return Err(invalid(
                            &step.name,
                            "a compensatable step needs a compensation",
                        ));
                    }
                }
                StepKind::Pivot => {
                    if pivot.is_some() {
                        return Err(invalid(&step.name, "a saga has at most one pivot"));
                    }
                    if step.compensation.is_some() {
                        return Err(invalid(
                            &step.name,
                            "the pivot is the point of no return: it has no compensation",
                        ));
                    }
                    pivot = Some(&step.name);
                }
                StepKind::Retriable => {
                    if pivot.is_none() {
                        return Err(invalid(
                            &step.name,
                            "a retriable step comes after the pivot",
                        ));
                    }
                    if step.compensation.is_some() {
                        return Err(invalid(
                            &step.name,
                            "a retriable step is never compensated: it has no compensation",
                        ));
                    }
                }
            }
            if step.attempts == Some(0) {
                return Err(invalid(&step.name, "expected at least 1 attempt"));
            }
            if step.timeout.is_some_and(|t| t.is_zero()) {
                return Err(invalid(&step.name, "expected a timeout above 0"));
            }
        }
        Ok(SagaDefinition {
            name: name.to_owned(),
            version,
            steps,
        })
    }

    /// The saga's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its version.
    #[must_use]
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Its steps, in order.
    #[must_use]
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }
}
