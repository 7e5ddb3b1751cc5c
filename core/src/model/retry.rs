//! Retries: a step's retry policy (attempts, exponential backoff, jitter),
//! which failures it retries, and the kinds of failure an attempt has.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::HumanDuration;

/// Retry with exponential backoff.
///
/// The delay before attempt `n+1` is
/// `min(max_backoff, initial_backoff × multiplier^(n-1))`; with
/// `jitter: full` it is drawn uniformly from `[0, delay]` (AWS
/// Architecture Blog, "Exponential Backoff And Jitter", 2015) using the
/// run's seed, and recorded in `StepFailed.next_retry_at`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (default 3; 1 = no retry).
    #[serde(default = "three")]
    pub max_attempts: u32,
    /// Delay before the second attempt (default 1s).
    #[serde(default = "one_s")]
    pub initial_backoff: HumanDuration,
    /// Growth factor per attempt (default 2.0).
    #[serde(default = "two")]
    pub multiplier: f64,
    /// Upper bound of the delay (default 5m).
    #[serde(default = "five_m")]
    pub max_backoff: HumanDuration,
    /// `none` or `full` (default `none`).
    #[serde(default)]
    pub jitter: Jitter,
    /// Which failures are retried.
    #[serde(default)]
    pub retry_on: RetryOn,
}

fn three() -> u32 {
    3
}
fn one_s() -> HumanDuration {
    HumanDuration::from_secs(1)
}
fn two() -> f64 {
    2.0
}
fn five_m() -> HumanDuration {
    HumanDuration::from_secs(300)
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: one_s(),
            multiplier: 2.0,
            max_backoff: five_m(),
            jitter: Jitter::None,
            retry_on: RetryOn::default(),
        }
    }
}

/// Jitter of retry delays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// The exact exponential delay.
    #[default]
    None,
    /// Uniform in `[0, delay]`.
    Full,
}

/// Which failures are retryable.
///
/// Default: transient failures, timeouts and crashes. A command's exit
/// code is transient unless listed in `permanent_exit_codes` (or, when
/// `exit_codes` is set, unless listed there). HTTP: connection errors, 429
/// and 5xx are transient, other 4xx permanent, unless `http_statuses` lists
/// the statuses to retry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryOn {
    /// Error kinds retried (default: transient, timeout, interrupted).
    #[serde(default = "default_kinds")]
    pub kinds: Vec<ErrorKind>,
    /// If set, only these exit codes are transient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_codes: Option<Vec<i32>>,
    /// Exit codes that are permanent (never retried).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permanent_exit_codes: Vec<i32>,
    /// If set, only these HTTP statuses are transient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_statuses: Option<Vec<u16>>,
}

fn default_kinds() -> Vec<ErrorKind> {
    vec![
        ErrorKind::Transient,
        ErrorKind::Timeout,
        ErrorKind::Interrupted,
    ]
}

impl Default for RetryOn {
    fn default() -> Self {
        Self {
            kinds: default_kinds(),
            exit_codes: None,
            permanent_exit_codes: Vec::new(),
            http_statuses: None,
        }
    }
}

/// The kind of a failed attempt.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// May succeed if tried again (non-zero exit, 5xx, connection error).
    Transient,
    /// Will not succeed if tried again (4xx, listed exit code, bad input).
    Permanent,
    /// The attempt ran past its deadline and was killed.
    Timeout,
    /// The engine crashed during the attempt (an `at_most_once` step).
    Interrupted,
    /// The run was canceled while the attempt ran.
    Canceled,
    /// No agent can take the step.
    Unassigned,
}

impl ErrorKind {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Permanent => "permanent",
            Self::Timeout => "timeout",
            Self::Interrupted => "interrupted",
            Self::Canceled => "canceled",
            Self::Unassigned => "unassigned",
        }
    }
}
