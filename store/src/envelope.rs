//! Envelopes: an event's payload with its stream, seq, position, time,
//! schema version and hash, and the canonical bytes the hash chain covers.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::StoreError;
use crate::ids::{Position, Seq, StreamId};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// `h_0`, the hash before the first event of every stream: 32 zero bytes.
pub const GENESIS_HASH: Hash = [0u8; 32];

/// An event on its way into the log: its payload bytes (canonical JSON as
/// produced by the engine) and the version of the payload's schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// Version of the payload schema (the engine's event format).
    pub schema_version: u32,
    /// The payload, usually compact JSON.
    pub payload: Vec<u8>,
    /// The time to record; `None` (the normal case) stamps the store
    /// clock's time at commit. Import sets it to keep an exported history's
    /// times, and so its hashes.
    pub recorded_at: Option<DateTime<Utc>>,
}

impl NewEvent {
    /// An event from raw payload bytes.
    pub fn new(schema_version: u32, payload: Vec<u8>) -> Self {
        Self {
            schema_version,
            payload,
            recorded_at: None,
        }
    }

    /// An event from a serde value, serialized as compact JSON.
    ///
    /// Errors with [`StoreError::Encode`] if serialization fails.
    pub fn json<E: Serialize>(schema_version: u32, event: &E) -> Result<Self, StoreError> {
        let payload = serde_json::to_vec(event).map_err(|e| StoreError::Encode(e.to_string()))?;
        Ok(Self {
            schema_version,
            payload,
            recorded_at: None,
        })
    }
}

/// An event as stored: the payload in its envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawEnvelope {
    /// The stream the event belongs to.
    pub stream: StreamId,
    /// Its number in the stream, from 1.
    pub seq: Seq,
    /// Its global position in this database (not covered by the hash).
    pub position: Position,
    /// When the event was appended (UTC, from the store's injected clock).
    pub recorded_at: DateTime<Utc>,
    /// Version of the payload schema.
    pub schema_version: u32,
    /// The payload bytes.
    #[serde(with = "payload_json")]
    pub payload: Vec<u8>,
    /// `h_seq = SHA-256(h_{seq-1} ‖ canonical_bytes(envelope))`.
    #[serde(with = "hex_hash")]
    pub hash: Hash,
}

impl RawEnvelope {
    /// Decode the payload as JSON into `E`.
    ///
    /// Errors with [`StoreError::Decode`] naming the stream and seq.
    pub fn decode<E: DeserializeOwned>(&self) -> Result<E, StoreError> {
        serde_json::from_slice(&self.payload).map_err(|e| StoreError::Decode {
            stream: self.stream.to_string(),
            seq: self.seq.0,
            message: e.to_string(),
        })
    }

    /// The canonical bytes of this envelope (see [`canonical_bytes`]).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        canonical_bytes(
            &self.stream,
            self.seq,
            self.recorded_at,
            self.schema_version,
            &self.payload,
        )
    }

    /// Recompute this envelope's hash from the previous hash.
    pub fn compute_hash(&self, prev: &Hash) -> Hash {
        chain_hash(prev, &self.canonical_bytes())
    }

    /// The hash as lower-case hex.
    pub fn hash_hex(&self) -> String {
        hex(&self.hash)
    }
}

/// The canonical bytes of an envelope, the input of the hash chain:
///
/// ```text
/// "CHR1" ‖ u32be(len(stream)) ‖ stream utf-8 ‖ u64be(seq)
///        ‖ i64be(recorded_at, Unix nanoseconds) ‖ u32be(schema_version)
///        ‖ u64be(len(payload)) ‖ payload
/// ```
///
/// The global position is left out on purpose: it is local to a database,
/// and an exported history must verify after import elsewhere.
pub fn canonical_bytes(
    stream: &StreamId,
    seq: Seq,
    recorded_at: DateTime<Utc>,
    schema_version: u32,
    payload: &[u8],
) -> Vec<u8> {
    let s = stream.to_string();
    let mut out = Vec::with_capacity(4 + 4 + s.len() + 8 + 8 + 4 + 8 + payload.len());
    out.extend_from_slice(b"CHR1");
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(&seq.0.to_be_bytes());
    out.extend_from_slice(&time_to_nanos(recorded_at).to_be_bytes());
    out.extend_from_slice(&schema_version.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `SHA-256(prev ‖ canonical)`.
pub fn chain_hash(prev: &Hash, canonical: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical);
    h.finalize().into()
}

/// `chain_hash(prev, canonical_bytes(..))` computed without building the
/// canonical bytes (the writer's hot path); `key` is the stream's
/// [`StreamId::key`]. Same bytes, same hash: a test holds the two equal.
pub(crate) fn chain_hash_of(
    prev: &Hash,
    key: &str,
    seq: Seq,
    recorded_at: DateTime<Utc>,
    schema_version: u32,
    payload: &[u8],
) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(b"CHR1");
    h.update((key.len() as u32).to_be_bytes());
    h.update(key.as_bytes());
    h.update(seq.0.to_be_bytes());
    h.update(time_to_nanos(recorded_at).to_be_bytes());
    h.update(schema_version.to_be_bytes());
    h.update((payload.len() as u64).to_be_bytes());
    h.update(payload);
    h.finalize().into()
}

/// The next link of stream `key`'s chain after `(last_seq, last_hash)`:
/// `ev`'s seq (`last_seq + 1`), the time it is recorded at (its own, when
/// an import gives one, else `clock`'s now) and its hash. Both backends'
/// writers append with it, so that a history hashes the same on either.
pub(crate) fn next_link(
    key: &str,
    (last_seq, last_hash): (u64, Hash),
    ev: &NewEvent,
    clock: &dyn crate::clock::Clock,
) -> (Seq, DateTime<Utc>, Hash) {
    let seq = Seq(last_seq + 1);
    let recorded_at = ev.recorded_at.unwrap_or_else(|| clock.now());
    let hash = chain_hash_of(
        &last_hash,
        key,
        seq,
        recorded_at,
        ev.schema_version,
        &ev.payload,
    );
    (seq, recorded_at, hash)
}

/// A time as Unix nanoseconds (saturating outside ±292 years of 1970).
pub(crate) fn time_to_nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parse 64 hex digits into a hash.
pub fn parse_hex_hash(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(h: &super::Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex(h))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<super::Hash, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_hex_hash(&s).ok_or_else(|| D::Error::custom("expected 64 hex digits"))
    }
}

/// Payloads are JSON: exported envelopes embed them as JSON values, and
/// re-serialize them to the exact stored bytes on import (compact JSON
/// round-trips byte for byte through `serde_json::value::RawValue`).
mod payload_json {
    use serde::{Deserialize, Deserializer, Serializer, ser::Error};
    use serde_json::value::RawValue;

    pub fn serialize<S: Serializer>(p: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let text = std::str::from_utf8(p).map_err(S::Error::custom)?;
        let raw: &RawValue = serde_json::from_str(text).map_err(S::Error::custom)?;
        serde::Serialize::serialize(raw, s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let raw: Box<RawValue> = Deserialize::deserialize(d)?;
        Ok(raw.get().as_bytes().to_vec())
    }
}

/// Recomputes a stream's hash chain envelope by envelope, from `h_0`, and
/// remembers the first seq that does not verify. The one implementation
/// used by [`crate::Store::verify_stream`], verification and recovery.
#[derive(Clone, Debug)]
pub struct ChainCheck {
    prev: Hash,
    events: u64,
    first_bad: Option<(Seq, String)>,
}

impl Default for ChainCheck {
    fn default() -> Self {
        Self {
            prev: GENESIS_HASH,
            events: 0,
            first_bad: None,
        }
    }
}

impl ChainCheck {
    /// Check the next envelope of the stream.
    pub fn push(&mut self, env: &RawEnvelope) {
        self.events += 1;
        if self.first_bad.is_some() {
            return;
        }
        let want = env.compute_hash(&self.prev);
        if want != env.hash {
            self.first_bad = Some((
                env.seq,
                format!(
                    "stored hash {} but the chain gives {}: the event or its predecessor was altered",
                    &env.hash_hex()[..16],
                    &hex(&want)[..16]
                ),
            ));
        }
        self.prev = env.hash;
    }

    /// The verdict, given the stream's stored head (`None`: no head):
    /// `(events checked, first bad seq with the reason)`.
    pub fn finish(mut self, head: Option<(Seq, Hash)>) -> (u64, Option<(Seq, String)>) {
        if self.first_bad.is_none() {
            let (hs, hh) = head.map(|(s, h)| (s.0, h)).unwrap_or((0, GENESIS_HASH));
            if hs != self.events || hh != self.prev {
                self.first_bad = Some((
                    Seq(hs.min(self.events) + 1),
                    format!(
                        "stream head says seq {hs}, the log has {} events with a different head hash",
                        self.events
                    ),
                ));
            }
        }
        (self.events, self.first_bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_chain_hash_equals_the_documented_one() {
        let t = DateTime::from_timestamp_nanos(1_700_000_000_123_456_789);
        for stream in [
            StreamId::named("agent:x").unwrap(),
            StreamId::Run(uuid::Uuid::from_u128(
                0x0190_a1b2_c3d4_7e5f_8a9b_0c1d_2e3f_4a5b,
            )),
        ] {
            let prev = [9u8; 32];
            let payload = br#"{"type":"StepStarted"}"#;
            assert_eq!(
                chain_hash_of(&prev, &stream.key(), Seq(7), t, 3, payload),
                chain_hash(&prev, &canonical_bytes(&stream, Seq(7), t, 3, payload))
            );
        }
    }
}
