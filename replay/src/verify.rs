//! Verification: the hash chain of every stream, and fold determinism —
//! the fold from seq 1 equals every stored snapshot and the run index.

use chronicle_engine::ids::RunId;
use chronicle_engine::ids::RunStream;
use chronicle_engine::runtime::RunSummary;
use chronicle_engine::runtime::index::RUNS;
use chronicle_engine::state::RunState;
use chronicle_store::{ChainCheck, Seq, Store, StoreError, StreamId};
use serde::Serialize;

use crate::ReplayError;
use crate::rebuild::{Target, fold_envelopes};

/// The verdict on one stream.
#[derive(Clone, Debug, Serialize)]
pub struct StreamVerification {
    /// The stream (a run id or `agent:NAME`).
    pub stream: String,
    /// Events checked.
    pub events: u64,
    /// The hash chain verified.
    pub chain_ok: bool,
    /// First seq whose hash does not verify, with the reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<u64>,
    /// Why the chain or fold failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Snapshots compared with the fold.
    pub snapshots_checked: usize,
    /// The fold from seq 1 succeeded and matched snapshots and index
    /// (runs only; `true` for other streams).
    pub fold_ok: bool,
    /// The seq of the last event (the stream's head).
    pub head_seq: u64,
    /// The hash of the last event, hex: record it elsewhere, and later
    /// `chronicle verify RUN --expect-head HEX` proves the history up to
    /// it unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_hash: Option<String>,
}

impl StreamVerification {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.chain_ok && self.fold_ok && self.problems.is_empty()
    }
}

/// Verify one stream in one read: its chain from `h_0` against every
/// stored hash and the stored head, and for runs the fold, snapshots and
/// index.
pub fn verify_stream(store: &Store, stream: &StreamId) -> Result<StreamVerification, ReplayError> {
    let mut v = StreamVerification {
        stream: stream.to_string(),
        events: 0,
        chain_ok: true,
        first_bad_seq: None,
        problems: Vec::new(),
        snapshots_checked: 0,
        fold_ok: true,
        head_seq: 0,
        head_hash: None,
    };
    let envs = match store.read_stream(stream, Seq(1)) {
        Ok(e) => e,
        Err(StoreError::Corruption { message, .. }) => {
            // A gap or an unreadable record: the chain is broken there.
            v.chain_ok = false;
            v.fold_ok = false;
            v.problems.push(message);
            return Ok(v);
        }
        Err(e) => return Err(e.into()),
    };
    let mut check = ChainCheck::default();
    envs.iter().for_each(|e| check.push(e));
    if let Some(last) = envs.last() {
        v.head_seq = last.seq.0;
        v.head_hash = Some(last.hash_hex());
    }
    let (events, first_bad) = check.finish(store.head(stream)?.map(|h| (h.last_seq, h.hash)));
    v.events = events;
    if let Some((seq, why)) = first_bad {
        v.chain_ok = false;
        v.first_bad_seq = Some(seq.0);
        v.problems.push(format!("seq {seq}: {why}"));
    }
    let Some(run) = stream.as_run().map(RunId) else {
        return Ok(v);
    };
    if !v.chain_ok {
        return Ok(v);
    }
    // Fold step by step, comparing with each snapshot at its seq.
    let snaps = store.snapshot_seqs(stream)?;
    let mut state = RunState::default();
    let mut next_snap = snaps.iter().peekable();
    for env in &envs {
        match fold_envelopes(
            std::mem::take(&mut state),
            std::slice::from_ref(env),
            Target::Head,
        ) {
            Ok(s) => state = s,
            Err(e) => {
                v.fold_ok = false;
                v.problems
                    .push(format!("seq {}: the history does not fold: {e}", env.seq));
                return Ok(v);
            }
        }
        while let Some(s) = next_snap.peek() {
            if s.0 > env.seq.0 {
                break;
            }
            let s = *next_snap.next().expect("peeked");
            if s.0 == env.seq.0 {
                v.snapshots_checked += 1;
                let stored = store
                    .load_snapshot(stream, Some(s))?
                    .map(|(_, b)| b)
                    .unwrap_or_default();
                match serde_json::from_slice::<RunState>(&stored) {
                    Ok(snap) if snap == state => {}
                    Ok(_) => {
                        v.fold_ok = false;
                        v.problems
                            .push(format!("snapshot at seq {s} differs from the fold"));
                    }
                    Err(e) => {
                        v.fold_ok = false;
                        v.problems
                            .push(format!("snapshot at seq {s} is unreadable: {e}"));
                    }
                }
            }
        }
    }
    match store.index_get(RUNS, &run.to_string())? {
        Some(bytes) => match serde_json::from_slice::<RunSummary>(&bytes) {
            Ok(idx) => {
                let want = RunSummary::of(&state);
                if want.as_ref() != Some(&idx) {
                    v.fold_ok = false;
                    v.problems.push(format!(
                        "run index says {} at seq {}, the fold gives {} at seq {}",
                        idx.status.as_str(),
                        idx.seq,
                        state.status.as_str(),
                        state.seq
                    ));
                }
            }
            Err(e) => {
                v.fold_ok = false;
                v.problems
                    .push(format!("run index entry is unreadable: {e}"));
            }
        },
        None => {
            v.fold_ok = false;
            v.problems
                .push("the run is missing from the run index".into());
        }
    }
    Ok(v)
}

/// Verify every stream of the database (or one run); streams are checked
/// in parallel on the machine's cores.
pub fn verify(store: &Store, run: Option<RunId>) -> Result<Vec<StreamVerification>, ReplayError> {
    let streams: Vec<StreamId> = match run {
        Some(r) => {
            if store.head(&r.stream())?.is_none() {
                return Err(ReplayError::UnknownRun(r.to_string()));
            }
            vec![r.stream()]
        }
        None => store.streams()?.into_iter().map(|h| h.stream).collect(),
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(streams.len().max(1));
    let chunk = streams.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> = streams
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|st| verify_stream(store, st))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(streams.len());
        for p in parts {
            out.extend(p.join().expect("verify threads do not panic")?);
        }
        Ok(out)
    })
}

/// The seq of the event of `run` whose hash is `hex` (a head recorded
/// earlier), if any. A hash covers the whole chain before it, so finding
/// it in a chain that verifies proves every event up to it unchanged;
/// events appended since do not matter.
///
/// Errors: [`ReplayError::UnknownRun`]; storage errors.
pub fn find_head(store: &Store, run: RunId, hex: &str) -> Result<Option<u64>, ReplayError> {
    let want = hex.trim().to_ascii_lowercase();
    let mut found = None;
    let mut any = false;
    store.for_each_in_stream(&run.stream(), Seq(1), None, |env| {
        any = true;
        if found.is_none() && env.hash_hex() == want {
            found = Some(env.seq.0);
        }
        Ok(())
    })?;
    if !any {
        return Err(ReplayError::UnknownRun(run.to_string()));
    }
    Ok(found)
}
