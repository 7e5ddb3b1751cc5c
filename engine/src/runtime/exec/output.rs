//! Captured output: capped in the event (64 KiB per stream, with a
//! `truncated` flag and the total byte count), the full bytes written
//! beside the database under their SHA-256; secrets redacted first.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::event::Captured;

/// Bytes of each stream kept in an event (64 KiB).
pub const CAPTURE_LIMIT: usize = 64 * 1024;

/// Secret values (by name) read from the engine's environment; redacted
/// from everything that reaches the log or an output file.
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    values: Arc<Vec<(String, String)>>,
}

impl Secrets {
    /// Secrets from `(name, value)` pairs (empty values are ignored).
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut v: Vec<(String, String)> = pairs
            .into_iter()
            .filter(|(_, val)| !val.is_empty())
            .collect();
        // Longest first, so a secret containing another is redacted whole.
        v.sort_by_key(|(_, val)| std::cmp::Reverse(val.len()));
        Self {
            values: Arc::new(v),
        }
    }

    /// The value map, for template substitution.
    pub fn map(&self) -> std::collections::BTreeMap<String, String> {
        self.values.iter().cloned().collect()
    }

    /// `text` with every secret value replaced by `[redacted:NAME]`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (name, value) in self.values.iter() {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), &format!("[redacted:{name}]"));
            }
        }
        out
    }

    /// Redact every string inside a JSON value.
    pub fn redact_value(&self, v: &Value) -> Value {
        if self.values.is_empty() {
            return v.clone();
        }
        match v {
            Value::String(s) => Value::String(self.redact(s)),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.redact_value(x)).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, x)| (k.clone(), self.redact_value(x)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// Where full outputs go: `DB_PATH.outputs/`.
#[derive(Clone, Debug)]
pub struct OutputSink {
    /// The directory (`None`: an in-memory engine keeps nothing).
    pub dir: Option<PathBuf>,
    /// Secrets to redact.
    pub secrets: Secrets,
}

impl OutputSink {
    /// Capture `bytes` (the first bytes of an output of `total` bytes):
    /// redact, cap at [`CAPTURE_LIMIT`], store the kept text under its
    /// SHA-256 when it was truncated.
    pub fn capture(&self, bytes: &[u8], total: u64) -> Captured {
        let text = self.secrets.redact(&String::from_utf8_lossy(bytes));
        let total = total.max(text.len() as u64);
        if text.len() <= CAPTURE_LIMIT && total <= bytes.len() as u64 {
            return Captured {
                text,
                truncated: false,
                total_bytes: total,
                sha256: None,
            };
        }
        let sha = chronicle_store::hex(&Sha256::digest(text.as_bytes()));
        if let Some(dir) = &self.dir {
            let _ = std::fs::create_dir_all(dir);
            let path = dir.join(&sha);
            if !path.exists()
                && let Err(e) = std::fs::write(&path, text.as_bytes())
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot store full output");
            }
        }
        let mut cut = CAPTURE_LIMIT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        Captured {
            text: text[..cut].to_string(),
            truncated: true,
            total_bytes: total,
            sha256: Some(sha),
        }
    }
}
