//! Human durations (`30s`, `2m`, `1h 30m`, `250ms`) as milliseconds.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written for people (`30s`, `2m`, `1h30m`, `250ms`, parsed by
/// the `humantime` crate), held as whole milliseconds. A bare integer is
/// read as milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration {
    /// Milliseconds.
    pub ms: u64,
}

impl HumanDuration {
    /// From milliseconds.
    pub const fn from_ms(ms: u64) -> Self {
        Self { ms }
    }
    /// From seconds.
    pub const fn from_secs(s: u64) -> Self {
        Self { ms: s * 1000 }
    }
    /// Parse `30s`, `2m`, ...; errors name the bad text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if let Ok(ms) = t.parse::<u64>() {
            return Ok(Self { ms });
        }
        humantime::parse_duration(t)
            .map(|d| Self {
                ms: d.as_millis().min(u64::MAX as u128) as u64,
            })
            .map_err(|e| format!("bad duration {text:?}: {e} (write e.g. 500ms, 30s, 2m, 1h)"))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = std::time::Duration::from_millis(self.ms);
        write!(f, "{}", humantime::format_duration(d))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 500ms, 30s, 2m, 1h, or milliseconds as an integer")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(HumanDuration { ms: v })
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(|ms| HumanDuration { ms })
                    .map_err(|_| {
                        E::custom(format!("bad duration {v}: durations cannot be negative"))
                    })
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "bad duration {v}: write whole milliseconds or e.g. 1.5s as \"1500ms\""
                )))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                HumanDuration::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HumanDuration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration such as 500ms, 30s, 2m, 1h30m; an integer is milliseconds.",
            "oneOf": [{"type": "string"}, {"type": "integer", "minimum": 0}]
        })
    }
}
