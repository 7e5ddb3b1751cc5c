//! Typed identifiers of the log: [`StreamId`], [`Seq`] and [`Position`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::StoreError;

/// Longest allowed named stream, in bytes.
pub const MAX_STREAM_NAME: usize = 256;

/// The id of a stream: a run (UUID v7) or a named stream such as an
/// agent's (`agent:NAME`).
///
/// The text form is the UUID in hyphenated lower case for a run, and the
/// name itself for a named stream; a name that parses as a UUID is refused.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum StreamId {
    /// The stream of one run.
    Run(Uuid),
    /// A named stream (an agent's circuit-breaker history, for example).
    Named(String),
}

impl StreamId {
    /// A named stream. Errors with [`StoreError::InvalidStream`] when the
    /// name is empty, longer than [`MAX_STREAM_NAME`] bytes, has control
    /// characters, or parses as a UUID.
    pub fn named(name: impl Into<String>) -> Result<Self, StoreError> {
        let name = name.into();
        if name.is_empty() || name.len() > MAX_STREAM_NAME || name.chars().any(char::is_control) {
            return Err(StoreError::InvalidStream(name));
        }
        if Uuid::parse_str(&name).is_ok() {
            return Err(StoreError::InvalidStream(name));
        }
        Ok(Self::Named(name))
    }

    /// The key this stream is stored under.
    pub fn key(&self) -> String {
        self.to_string()
    }

    /// The run id, for a run stream.
    pub fn as_run(&self) -> Option<Uuid> {
        match self {
            Self::Run(u) => Some(*u),
            Self::Named(_) => None,
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Run(u) => write!(f, "{}", u.hyphenated()),
            Self::Named(n) => f.write_str(n),
        }
    }
}

impl FromStr for StreamId {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match Uuid::parse_str(s) {
            Ok(u) => Ok(Self::Run(u)),
            Err(_) => Self::named(s),
        }
    }
}

impl TryFrom<String> for StreamId {
    type Error = StoreError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<StreamId> for String {
    fn from(s: StreamId) -> String {
        s.to_string()
    }
}

impl From<Uuid> for StreamId {
    fn from(u: Uuid) -> Self {
        Self::Run(u)
    }
}

/// A sequence number inside one stream: 1..=n, no gaps. `Seq(0)` means
/// "before the first event" (the expected seq of an empty stream).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// The seq of an empty stream.
    pub const ZERO: Seq = Seq(0);
    /// The next seq.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A global position: orders every event of one database, from 1.
/// Positions are local to a database (an imported history gets new ones)
/// and are therefore not covered by the hash chain.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Position(pub u64);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
