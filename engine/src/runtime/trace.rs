//! Distributed tracing: one trace per run, a span per attempt.
//!
//! A run's trace id is recorded in its `RunCreated`: the trace of the
//! request that created it (`traceparent` on `POST /v1/runs`), or else its
//! run id (both are 128 bits). Every process that executes the run — the
//! first one, a recovery, a server after a restart — continues that trace.
//! The actor's `run` span joins it (as the child of a remote parent whose
//! span id is the run id's low 64 bits), and each attempt's `attempt` span
//! (`run_id`, `step_id`, `attempt`, `agent`, `outcome`) is its child. The
//! spans are `tracing` spans; a process exports them when it installs a
//! `tracing-opentelemetry` layer (`chronicle` does when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set).
//!
//! Each attempt gets the W3C `traceparent` of its span: HTTP steps as the
//! `traceparent` header, command and shell steps as `TRACEPARENT` in their
//! environment, so their own spans join the run's trace.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::ids::RunId;

/// The trace id of `run`: its 128 bits.
pub fn trace_id(run: RunId) -> TraceId {
    TraceId::from_bytes(*run.0.as_bytes())
}

/// A trace id from 32 hex digits (not all zero).
pub fn parse_trace_id(hex: &str) -> Option<TraceId> {
    let t = TraceId::from_hex(hex.trim()).ok()?;
    (t != TraceId::INVALID && hex.trim().len() == 32).then_some(t)
}

/// The trace id in a W3C `traceparent` header (`00-TRACE-SPAN-FLAGS`).
pub fn trace_id_of_traceparent(header: &str) -> Option<String> {
    let mut parts = header.trim().split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    parse_trace_id(trace).map(|t| t.to_string())
}

/// Make `span` (a run's) part of its trace: `recorded` (the run's
/// `RunCreated.trace_id`) or, for runs created before it was recorded,
/// the run id.
pub(crate) fn join_run_trace(span: &tracing::Span, run: RunId, recorded: Option<&str>) {
    let bytes = run.0.as_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..]);
    if low == [0; 8] {
        low[7] = 1; // an all-zero span id is invalid
    }
    let parent = SpanContext::new(
        recorded
            .and_then(parse_trace_id)
            .unwrap_or_else(|| trace_id(run)),
        SpanId::from_bytes(low),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
}

/// The W3C `traceparent` of `span` (an attempt's): its trace and span ids
/// when an OpenTelemetry layer records it; otherwise the run's trace with
/// a span id derived from the run, step and attempt.
pub(crate) fn traceparent(
    span: &tracing::Span,
    run: RunId,
    recorded: Option<&str>,
    step: &str,
    attempt: u32,
) -> String {
    let ctx = span.context();
    let sc = ctx.span().span_context().clone();
    let (trace, id) = if sc.is_valid() {
        (sc.trace_id(), sc.span_id())
    } else {
        (
            recorded
                .and_then(parse_trace_id)
                .unwrap_or_else(|| trace_id(run)),
            derived_span_id(run, step, attempt),
        )
    };
    format!("00-{trace}-{id}-01")
}

/// A stable non-zero span id for `(run, step, attempt)` (FNV-1a, 64 bits).
fn derived_span_id(run: RunId, step: &str, attempt: u32) -> SpanId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in run
        .0
        .as_bytes()
        .iter()
        .chain(step.as_bytes())
        .chain(&attempt.to_le_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    SpanId::from_bytes(h.max(1).to_be_bytes())
}
