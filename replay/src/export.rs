//! Export and import of a run's history as JSON Lines: one envelope per
//! line (`stream`, `seq`, `position`, `recorded_at`, `schema_version`,
//! `payload` — the event itself, the first one holding the pinned
//! definition — and `hash`). Import verifies the chain first and refuses a
//! broken history, naming the first bad seq.

use chronicle_engine::ids::RunStream;
use std::io::{BufRead, Write};

use chronicle_engine::ids::RunId;
use chronicle_engine::runtime::RunSummary;
use chronicle_store::{
    GENESIS_HASH, NewEvent, RawEnvelope, Seq, Store, StoreError, WriteRequest, hex,
};

use crate::ReplayError;
use crate::rebuild::{Target, fold_envelopes};

/// Write `run`'s history to `out`, one JSON envelope per line.
pub fn export(store: &Store, run: RunId, out: &mut dyn Write) -> Result<u64, ReplayError> {
    let mut n = 0u64;
    let mut io_err = None;
    store.for_each_in_stream(&run.stream(), Seq(1), None, |env| {
        if io_err.is_none() {
            // The payload is embedded as raw JSON: one that does not parse
            // is a damaged event, reported with its stream and seq.
            let line = serde_json::to_string(&env).map_err(|e| StoreError::Decode {
                stream: env.stream.to_string(),
                seq: env.seq.0,
                message: e.to_string(),
            })?;
            if let Err(e) = writeln!(out, "{line}") {
                io_err = Some(e);
            }
            n += 1;
        }
        Ok(())
    })?;
    if let Some(e) = io_err {
        return Err(ReplayError::BadFile {
            file: "<output>".into(),
            message: e.to_string(),
        });
    }
    if n == 0 {
        return Err(ReplayError::UnknownRun(run.to_string()));
    }
    Ok(n)
}

/// Read an exported history and check it: one run stream, seqs 1..n, and
/// the hash chain from `h_0`. Errors name the line or the first bad seq.
pub fn read_history(file: &str, input: impl BufRead) -> Result<Vec<RawEnvelope>, ReplayError> {
    let bad = |message: String| ReplayError::BadFile {
        file: file.to_string(),
        message,
    };
    let mut envs: Vec<RawEnvelope> = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line.map_err(|e| bad(format!("line {}: {e}", i + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let env: RawEnvelope = serde_json::from_str(&line)
            .map_err(|e| bad(format!("line {}: not an envelope: {e}", i + 1)))?;
        envs.push(env);
    }
    let first = envs.first().ok_or_else(|| bad("no events".into()))?;
    if first.stream.as_run().is_none() {
        return Err(bad(format!("stream {} is not a run", first.stream)));
    }
    let mut prev = GENESIS_HASH;
    for (i, env) in envs.iter().enumerate() {
        if env.stream != first.stream {
            return Err(bad(format!(
                "seq {}: stream {} differs from {}",
                env.seq, env.stream, first.stream
            )));
        }
        if env.seq.0 != i as u64 + 1 {
            return Err(bad(format!(
                "expected seq {}, found {}: the history has a gap",
                i + 1,
                env.seq
            )));
        }
        let want = env.compute_hash(&prev);
        if want != env.hash {
            return Err(bad(format!(
                "the hash chain breaks at seq {}: stored {} but the chain gives {}; refusing the history",
                env.seq,
                &env.hash_hex()[..16],
                &hex(&want)[..16]
            )));
        }
        prev = env.hash;
    }
    Ok(envs)
}

/// Import a verified history into `store` under its original run id.
///
/// Errors: the run already exists; the history does not fold; storage.
pub async fn import(store: &Store, envs: &[RawEnvelope]) -> Result<RunId, ReplayError> {
    let run = RunId(envs[0].stream.as_run().expect("read_history checked it"));
    if store.head(&run.stream())?.is_some() {
        return Err(ReplayError::BadFile {
            file: "<import>".into(),
            message: format!("run {run} already exists in this database; nothing imported"),
        });
    }
    let state = fold_envelopes(Default::default(), envs, Target::Head)?;
    let events: Vec<NewEvent> = envs
        .iter()
        .map(|e| NewEvent {
            schema_version: e.schema_version,
            payload: e.payload.clone(),
            recorded_at: Some(e.recorded_at),
        })
        .collect();
    let mut req = WriteRequest::append(run.stream(), Seq(0), events);
    req.index.push(
        RunSummary::of(&state)
            .expect("a folded run has a summary")
            .put(),
    );
    let written = store.write(req).await?;
    // The same bytes and times give the same chain.
    debug_assert_eq!(written.last().map(|e| e.hash), envs.last().map(|e| e.hash));
    if written.last().map(|e| e.hash) != envs.last().map(|e| e.hash) {
        return Err(ReplayError::BadFile {
            file: "<import>".into(),
            message: "re-hashing on import gave a different chain".into(),
        });
    }
    Ok(run)
}
