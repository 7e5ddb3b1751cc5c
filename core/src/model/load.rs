//! Reading a definition from YAML or JSON text, with located errors.

use std::fmt;

use super::Workflow;
use super::validate::validate;

/// A definition that cannot be used: names the file, the step (when the
/// problem belongs to one) and the line and column where known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct DefinitionError {
    /// The file (as given).
    pub file: String,
    /// The step id the problem belongs to.
    pub step: Option<String>,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// 1-based column, where known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl DefinitionError {
    /// An error about the whole file (no step, no location).
    pub fn file(file: &str, message: String) -> Self {
        Self {
            file: file.to_string(),
            step: None,
            line: None,
            column: None,
            message,
        }
    }
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        write!(f, ": ")?;
        if let Some(s) = &self.step {
            write!(f, "step {s}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

/// Parse and validate definition `text`; `file` names it in errors and
/// picks the syntax by extension (`.json` is JSON, anything else YAML).
pub fn parse_definition(file: &str, text: &str) -> Result<Workflow, DefinitionError> {
    let wf: Workflow = if file.ends_with(".json") {
        serde_json::from_str(text).map_err(|e| DefinitionError {
            file: file.to_string(),
            step: None,
            line: Some(e.line()),
            column: Some(e.column()),
            message: strip_location(&e.to_string()),
        })?
    } else {
        serde_saphyr::from_str(text).map_err(|e| {
            let msg = e.to_string();
            let (line, column) = find_line_col(&msg);
            DefinitionError {
                file: file.to_string(),
                step: None,
                line,
                column,
                message: in_our_words(&strip_yaml_prefix(&first_line(&msg))),
            }
        })?
    };
    validate(&wf).map_err(|v| {
        let line = v.step.as_deref().and_then(|s| line_of_step(text, s));
        DefinitionError {
            file: file.to_string(),
            step: v.step,
            line,
            column: None,
            message: v.message,
        }
    })?;
    Ok(wf)
}

/// serde-saphyr prints "error: line L column C: MESSAGE"; we print the
/// location in front already.
fn strip_yaml_prefix(s: &str) -> String {
    let t = s.strip_prefix("error: ").unwrap_or(s);
    if t.starts_with("line ")
        && let Some(i) = t.find(": ")
    {
        return t[i + 2..].to_string();
    }
    t.to_string()
}

/// The YAML parser's messages that name its own internals, said in terms
/// of the workflow file.
fn in_our_words(msg: &str) -> String {
    if let Some(rest) = msg.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(',').next().unwrap_or(rest).trim();
        return format!("the key {key} appears twice in the same mapping; keep one");
    }
    if msg.starts_with("budget breached") {
        return "the document expands to too many nodes (YAML aliases repeat content; at most 250,000 nodes are read)".into();
    }
    for (ty, range) in [
        ("u8", "0 to 255"),
        ("u16", "0 to 65535"),
        ("u32", "0 to 4294967295"),
        ("u64", "0 to 18446744073709551615"),
        ("i64", "-9223372036854775808 to 9223372036854775807"),
    ] {
        if msg == format!("invalid {ty}") {
            return format!("expected a whole number from {range}");
        }
    }
    msg.to_string()
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

/// serde_json appends " at line L column C"; we print the location first.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Pull "line L column C" (or "line L, column C") out of a parser message.
fn find_line_col(msg: &str) -> (Option<usize>, Option<usize>) {
    let num_after = |key: &str| -> Option<usize> {
        let i = msg.find(key)? + key.len();
        let digits: String = msg[i..]
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    (num_after("line "), num_after("column "))
}

/// The 1-based line declaring step `id` (`id: ID` or `"id": "ID"`).
fn line_of_step(text: &str, id: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let t = l.trim_start().trim_start_matches("- ").trim();
            let t = t.trim_end_matches(',');
            let unq = |s: &str| s.trim().trim_matches('"').trim_matches('\'').to_string();
            if let Some(rest) = t.strip_prefix("id:").or_else(|| t.strip_prefix("\"id\":")) {
                unq(rest) == id
            } else {
                false
            }
        })
        .map(|i| i + 1)
}
