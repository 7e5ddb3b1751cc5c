//! The injected clock: the only place in Chronicle that reads wall time.
//!
//! Everything that needs "now" takes an `Arc<dyn Clock>`; production code
//! uses [`SystemClock`], tests use [`ManualClock`] so that histories are
//! byte-for-byte reproducible.

use std::sync::Mutex;

use chrono::{DateTime, TimeDelta, Utc};

/// A source of the current UTC time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time (UTC).
    fn now(&self) -> DateTime<Utc>;
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one sanctioned wall-clock read
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to: each `now()` returns the current
/// value and then advances it by `step` (zero by default).
#[derive(Debug)]
pub struct ManualClock {
    state: Mutex<(DateTime<Utc>, TimeDelta)>,
}

impl ManualClock {
    /// A clock fixed at `start`, advancing by `step` after every reading.
    pub fn new(start: DateTime<Utc>, step: TimeDelta) -> Self {
        Self {
            state: Mutex::new((start, step)),
        }
    }

    /// A clock at 2026-01-01T00:00:00Z advancing 1 ms per reading.
    pub fn epoch() -> Self {
        let start = DateTime::from_timestamp(1_767_225_600, 0).expect("fixed timestamp is valid");
        Self::new(start, TimeDelta::milliseconds(1))
    }

    /// Move the clock forward by `delta`.
    pub fn advance(&self, delta: TimeDelta) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 += delta;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = s.0;
        let step = s.1;
        s.0 += step;
        now
    }
}
