//! Input templates: `${{ EXPR }}` inside string values of a step's `with`.
//!
//! Expressions:
//! - `input.KEY[.PATH…]` — the run input (after defaults are merged);
//! - `steps.ID.output[.PATH…]` — the output of an upstream step (one that
//!   the step `needs`, directly or transitively);
//! - `run.id` — the run id;
//! - `secrets.NAME` — a declared secret. It is **not** resolved in the
//!   log: the reference stays as written and the runtime substitutes the
//!   value just before execution, so secrets never reach the history.
//!
//! A string that is exactly one template takes the referenced JSON value
//! (a number stays a number); otherwise each template is replaced by the
//! value's text (strings as is, other values as compact JSON).

use std::collections::BTreeMap;

use serde_json::Value;

/// One parsed `${{ … }}` reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ref {
    /// `input.PATH`.
    Input(Vec<String>),
    /// `steps.ID.output.PATH`.
    Step(String, Vec<String>),
    /// `run.id`.
    RunId,
    /// `secrets.NAME`.
    Secret(String),
}

/// Values templates are resolved against.
#[derive(Debug)]
pub struct Scope<'a> {
    /// The run id (text).
    pub run_id: &'a str,
    /// The run input.
    pub input: &'a Value,
    /// Outputs of succeeded steps by id.
    pub outputs: &'a BTreeMap<String, Value>,
}

/// Find each `${{ … }}` in `s`: `(start, end, expression)` byte offsets.
fn spans(s: &str) -> Result<Vec<(usize, usize, &str)>, String> {
    let mut out = Vec::new();
    let mut rest = 0;
    while let Some(i) = s[rest..].find("${{") {
        let start = rest + i;
        let Some(j) = s[start..].find("}}") else {
            return Err(format!("unclosed template in {s:?}: missing \"}}}}\""));
        };
        let end = start + j + 2;
        out.push((start, end, s[start + 3..end - 2].trim()));
        rest = end;
    }
    Ok(out)
}

/// Parse one expression.
pub fn parse_ref(expr: &str) -> Result<Ref, String> {
    let parts: Vec<&str> = expr.split('.').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("bad template expression {expr:?}"));
    }
    let path = |from: usize| {
        parts[from..]
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
    };
    match parts.as_slice() {
        ["input", ..] if parts.len() >= 2 => Ok(Ref::Input(path(1))),
        ["steps", id, "output", ..] => Ok(Ref::Step(id.to_string(), path(3))),
        ["run", "id"] => Ok(Ref::RunId),
        ["secrets", name] => Ok(Ref::Secret(name.to_string())),
        _ => Err(format!(
            "unknown template expression {expr:?}: use input.KEY, steps.ID.output[.KEY], run.id or secrets.NAME"
        )),
    }
}

/// Every reference in every string of `v` (recursively).
pub fn refs_in(v: &Value) -> Result<Vec<Ref>, String> {
    let mut out = Vec::new();
    collect(v, &mut out)?;
    Ok(out)
}

fn collect(v: &Value, out: &mut Vec<Ref>) -> Result<(), String> {
    match v {
        Value::String(s) => {
            for (_, _, e) in spans(s)? {
                out.push(parse_ref(e)?);
            }
        }
        Value::Array(a) => a.iter().try_for_each(|x| collect(x, out))?,
        Value::Object(m) => m.values().try_for_each(|x| collect(x, out))?,
        _ => {}
    }
    Ok(())
}

fn lookup<'v>(mut v: &'v Value, path: &[String]) -> Option<&'v Value> {
    for p in path {
        v = match v {
            Value::Object(m) => m.get(p)?,
            Value::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

fn value_of(r: &Ref, scope: &Scope<'_>, expr: &str) -> Result<Option<Value>, String> {
    match r {
        Ref::Input(path) => lookup(scope.input, path)
            .cloned()
            .map(Some)
            .ok_or_else(|| format!("${{{{ {expr} }}}}: the run input has no {}", path.join("."))),
        Ref::Step(id, path) => {
            let out = scope
                .outputs
                .get(id)
                .ok_or_else(|| format!("${{{{ {expr} }}}}: step {id} has no output"))?;
            lookup(out, path).cloned().map(Some).ok_or_else(|| {
                format!(
                    "${{{{ {expr} }}}}: the output of step {id} has no {}",
                    path.join(".")
                )
            })
        }
        Ref::RunId => Ok(Some(Value::String(scope.run_id.to_string()))),
        Ref::Secret(_) => Ok(None),
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Resolve every template in `v` against `scope`. Secret references are
/// left verbatim. Errors name the expression and what is missing.
pub fn resolve(v: &Value, scope: &Scope<'_>) -> Result<Value, String> {
    match v {
        Value::String(s) => {
            let found = spans(s)?;
            if found.is_empty() {
                return Ok(v.clone());
            }
            if found.len() == 1 && found[0].0 == 0 && found[0].1 == s.len() {
                let r = parse_ref(found[0].2)?;
                return Ok(value_of(&r, scope, found[0].2)?.unwrap_or_else(|| v.clone()));
            }
            let mut out = String::with_capacity(s.len());
            let mut last = 0;
            for (start, end, expr) in found {
                out.push_str(&s[last..start]);
                match value_of(&parse_ref(expr)?, scope, expr)? {
                    Some(val) => out.push_str(&text_of(&val)),
                    None => out.push_str(&s[start..end]),
                }
                last = end;
            }
            out.push_str(&s[last..]);
            Ok(Value::String(out))
        }
        Value::Array(a) => Ok(Value::Array(
            a.iter()
                .map(|x| resolve(x, scope))
                .collect::<Result<_, _>>()?,
        )),
        Value::Object(m) => Ok(Value::Object(
            m.iter()
                .map(|(k, x)| Ok((k.clone(), resolve(x, scope)?)))
                .collect::<Result<_, String>>()?,
        )),
        other => Ok(other.clone()),
    }
}

/// Replace `${{ secrets.NAME }}` in `v` with values from `secrets`
/// (runtime only). Unknown names are left as written.
pub fn substitute_secrets(v: &Value, secrets: &BTreeMap<String, String>) -> Value {
    match v {
        Value::String(s) => {
            let Ok(found) = spans(s) else {
                return v.clone();
            };
            let mut out = String::with_capacity(s.len());
            let mut last = 0;
            for (start, end, expr) in found {
                out.push_str(&s[last..start]);
                match parse_ref(expr) {
                    Ok(Ref::Secret(name)) if secrets.contains_key(&name) => {
                        out.push_str(&secrets[&name])
                    }
                    _ => out.push_str(&s[start..end]),
                }
                last = end;
            }
            out.push_str(&s[last..]);
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute_secrets(x, secrets)).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), substitute_secrets(x, secrets)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_template_keeps_type_and_partial_interpolates() {
        let input = json!({"file": "a.log", "n": 3});
        let mut outputs = BTreeMap::new();
        outputs.insert("count".to_string(), json!({"lines": 2000}));
        let scope = Scope {
            run_id: "r1",
            input: &input,
            outputs: &outputs,
        };
        let v = json!({
            "n": "${{ input.n }}",
            "lines": "${{ steps.count.output.lines }}",
            "msg": "file ${{input.file}} has ${{ steps.count.output.lines }} lines",
            "secret": "Bearer ${{ secrets.TOKEN }}"
        });
        let r = resolve(&v, &scope).unwrap();
        assert_eq!(r["n"], json!(3));
        assert_eq!(r["lines"], json!(2000));
        assert_eq!(r["msg"], json!("file a.log has 2000 lines"));
        assert_eq!(r["secret"], json!("Bearer ${{ secrets.TOKEN }}"));
        let mut secrets = BTreeMap::new();
        secrets.insert("TOKEN".to_string(), "s3cr3t".to_string());
        assert_eq!(
            substitute_secrets(&r, &secrets)["secret"],
            json!("Bearer s3cr3t")
        );
    }

    #[test]
    fn missing_values_and_bad_expressions_are_errors() {
        let input = json!({});
        let outputs = BTreeMap::new();
        let scope = Scope {
            run_id: "r1",
            input: &input,
            outputs: &outputs,
        };
        assert!(
            resolve(&json!("${{ input.nope }}"), &scope)
                .unwrap_err()
                .contains("no nope")
        );
        assert!(parse_ref("env.HOME").is_err());
        assert!(refs_in(&json!("${{ input.x")).is_err());
    }
}
