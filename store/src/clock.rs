//! The injected clock: the only place in Chronicle that reads wall time.
//!
//! Everything that needs "now" takes an `Arc<dyn Clock>`; production code
//! uses [`SystemClock`], tests use [`ManualClock`] so that histories are
//! byte-for-byte reproducible.

use std::sync::Mutex;

use chrono::{DateTime, TimeDelta, Utc};

/// A source of the current UTC time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time (UTC). A [`ManualClock`] advances by its step
    /// after each reading.
    fn now(&self) -> DateTime<Utc>;

    /// The current time without advancing a manual clock. The runtime
    /// decides and arms timers with `peek` and calls `now` once per durable
    /// commit, so a manual clock moves a fixed amount per decision however
    /// often the runtime wakes up.
    fn peek(&self) -> DateTime<Utc> {
        self.now()
    }
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
/// value and then advances it by `step`; `peek()` and [`ManualClock::advance`]
/// do not step. It never moves with real time: a runtime driven by it sees
/// a retry due only once enough decisions (or `advance` calls) have moved
/// it past the retry time, so tests use short backoffs or advance it.
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
    fn peek(&self) -> DateTime<Utc> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    fn now(&self) -> DateTime<Utc> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = s.0;
        let step = s.1;
        s.0 += step;
        now
    }
}
