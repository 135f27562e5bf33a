//! What a step is given ([`StepContext`]) and how it fails
//! ([`StepError`]).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use dl_repositories::Error;
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

/// Whether a step runs its action or its compensation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The step's action.
    Action,
    /// The step's compensation.
    Compensation,
}

impl Phase {
    /// `action` or `compensation`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Phase::Action => "action",
            Phase::Compensation => "compensation",
        }
    }
}

/// What a step's action or compensation is given: the saga's id, input
/// and the outputs of the steps before it, its name and attempt, the
/// fencing token of the lease it runs under, and its idempotency key.
#[derive(Clone)]
pub struct StepContext {
    pub(crate) saga: Uuid,
    pub(crate) step: Arc<str>,
    pub(crate) index: usize,
    pub(crate) phase: Phase,
    pub(crate) attempt: u32,
    pub(crate) fence: u64,
    pub(crate) input: Arc<Value>,
    pub(crate) outputs: Arc<Vec<(String, Value)>>,
}

impl fmt::Debug for StepContext {
    // Ids and names only: the input and outputs may hold PHI.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepContext")
            .field("saga", &self.saga)
            .field("step", &self.step)
            .field("phase", &self.phase)
            .field("attempt", &self.attempt)
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

impl StepContext {
    /// The saga's id.
    #[must_use]
    pub fn saga_id(&self) -> Uuid {
        self.saga
    }

    /// The step's name.
    #[must_use]
    pub fn step(&self) -> &str {
        &self.step
    }

    /// The step's index in its saga (from 0).
    #[must_use]
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether this is the action or the compensation.
    #[must_use]
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Which attempt this is (from 1; counted across processes).
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The fencing token of the lease this attempt runs under: it grows
    /// each time another runner takes the saga over.
    #[must_use]
    pub fn fence(&self) -> u64 {
        self.fence
    }

    /// The key that makes this step's effect happen once:
    /// `<saga id>.<step>.<action|compensation>`, the same for every
    /// attempt of it (by any runner). The helpers of [`crate::once`] keep
    /// it beside the effect, in the same store and the same atomic write.
    #[must_use]
    pub fn idempotency_key(&self) -> String {
        format!("{}.{}.{}", self.saga, self.step, self.phase.name())
    }

    /// An id for something this step makes, named `name`: the same for
    /// every attempt of the step, by any runner (a UUID v5 of the saga's
    /// id, the step and `name`), so that an attempt run again writes the
    /// same row, and a compensation finds what its action made.
    #[must_use]
    pub fn id_for(&self, name: &str) -> Uuid {
        Uuid::new_v5(&self.saga, format!("{}/{name}", self.step).as_bytes())
    }

    /// The saga's input, as JSON.
    #[must_use]
    pub fn input_json(&self) -> &Value {
        &self.input
    }

    /// The saga's input as `T`.
    ///
    /// # Errors
    /// A [`StepError`] (not retried) when it is not a `T`.
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, StepError> {
        T::deserialize(&*self.input)
            .map_err(|_| StepError::failed("the saga's input is not of the type the step expects"))
    }

    /// The output of the earlier step `step`, as JSON (`None` if it has
    /// not run, or is not earlier).
    #[must_use]
    pub fn output_json(&self, step: &str) -> Option<&Value> {
        self.outputs
            .iter()
            .find(|(name, _)| name == step)
            .map(|(_, v)| v)
    }

    /// The output of the earlier step `step` as `T`.
    ///
    /// # Errors
    /// A [`StepError`] (not retried) when that step has no output or it
    /// is not a `T`.
    pub fn output<T: DeserializeOwned>(&self, step: &str) -> Result<T, StepError> {
        let v = self
            .output_json(step)
            .ok_or_else(|| StepError::failed("an earlier step's output is missing"))?;
        T::deserialize(v)
            .map_err(|_| StepError::failed("an earlier step's output is not of the type expected"))
    }
}

/// How a step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// It did nothing and trying again will not help.
    Failed,
    /// It did nothing, and trying again may succeed (a transient fault).
    Retry,
    /// It may or may not have applied its effect (a timeout, a lost
    /// answer): tried again under the same idempotency key; if the saga
    /// turns back, the step's own compensation runs too.
    Unknown,
}

impl FailureKind {
    /// `failed`, `retry` or `unknown`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            FailureKind::Failed => "failed",
            FailureKind::Retry => "retry",
            FailureKind::Unknown => "unknown",
        }
    }
}

/// A step's failure: its kind and a reason. The reason is kept in the
/// saga log sealed, and shown by `data-layer saga show`; like every error
/// of the layer it should name fields, never hold their values.
#[derive(Debug)]
pub struct StepError {
    kind: FailureKind,
    reason: Cow<'static, str>,
    source: Option<Error>,
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {} ({})", self.kind.name(), self.reason)
    }
}

impl std::error::Error for StepError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl StepError {
    /// A failure that trying again will not mend.
    pub fn failed(reason: impl Into<Cow<'static, str>>) -> Self {
        StepError {
            kind: FailureKind::Failed,
            reason: reason.into(),
            source: None,
        }
    }

    /// A transient failure: the step did nothing, try again.
    pub fn retry(reason: impl Into<Cow<'static, str>>) -> Self {
        StepError {
            kind: FailureKind::Retry,
            reason: reason.into(),
            source: None,
        }
    }

    /// The step may have applied its effect.
    pub fn unknown(reason: impl Into<Cow<'static, str>>) -> Self {
        StepError {
            kind: FailureKind::Unknown,
            reason: reason.into(),
            source: None,
        }
    }

    /// Its kind.
    #[must_use]
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// Its reason.
    #[must_use]
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl From<Error> for StepError {
    /// A store's error: `unknown` when its outcome is unknown, `retry`
    /// when it is retryable, else `failed`. Its text names no value.
    fn from(e: Error) -> Self {
        let kind = if e.outcome_unknown() {
            FailureKind::Unknown
        } else if e.is_retryable() {
            FailureKind::Retry
        } else {
            FailureKind::Failed
        };
        StepError {
            kind,
            reason: Cow::Owned(e.to_string()),
            source: Some(e),
        }
    }
}
