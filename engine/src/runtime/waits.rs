//! Waiting steps from outside, in the engine: signals, approvals and
//! callbacks become commands to the run's actor (the rules are in
//! `decide`).

use super::engine::{Engine, EngineError};
use crate::decide::{Command, Rejected};
use crate::ids::RunId;

impl Engine {
    /// Receive a callback: the token (from the URL) names the step that
    /// waits for it; `body` (JSON) becomes the step's output. When the
    /// step names a `callback_secret`, `signature` must be `sha256=HEX`,
    /// the HMAC-SHA256 of `body` keyed by that secret. Returns the run and
    /// the step it completed.
    ///
    /// Errors: [`EngineError::UnknownCallback`] (never issued),
    /// [`EngineError::BadSignature`], [`Rejected::CallbackDone`] (used
    /// already, timed out, or the run moved on), storage.
    pub async fn callback(
        &self,
        token: &str,
        body: serde_json::Value,
        raw: &[u8],
        signature: Option<&str>,
    ) -> Result<(RunId, String), EngineError> {
        let sha = token_sha256(token);
        let Some(v) = self.inner.store.index_get(super::index::CALLBACKS, &sha)? else {
            return Err(EngineError::UnknownCallback);
        };
        let run = super::engine::parse_run_value(&v)?;
        let state = self.state(run)?;
        let step = state.steps.iter().find_map(|(id, st)| {
            matches!(&st.wait, Some(crate::state::Wait::Callback { token_sha256, .. }) if *token_sha256 == sha)
                .then(|| id.to_string())
        });
        let Some(step) = step else {
            return Err(Rejected::CallbackDone {
                run: run.to_string(),
            }
            .into());
        };
        if let Some(secret) = state
            .wf()
            .step(&step)
            .and_then(|s| s.callback_secret.clone())
        {
            let key = self
                .inner
                .secrets_for(std::slice::from_ref(&secret))
                .map()
                .get(&secret)
                .cloned()
                .unwrap_or_default();
            if !super::exec::http::signature_ok(key.as_bytes(), raw, signature) {
                return Err(EngineError::BadSignature(secret));
            }
        }
        self.control(
            run,
            Command::Callback {
                token_sha256: sha,
                output: body,
            },
        )
        .await?;
        Ok((run, step))
    }

    /// Where callbacks reach this engine (`http://HOST:PORT`, set by
    /// `chronicle serve` once it listens); without it a `completion:
    /// callback` step fails at once.
    pub fn set_callback_base(&self, url: &str) {
        let _ = self
            .inner
            .callback_base
            .set(url.trim_end_matches('/').to_string());
    }

    /// Send the signal `name` (with `data`, identified by `id`) to a run:
    /// recorded as `SignalReceived` and consumed by a `signal` step of
    /// that name, now or when one waits. Returns false when a signal with
    /// this `id` was already recorded (nothing changes).
    ///
    /// Errors: unknown run; [`Rejected`] for an ended run; storage.
    pub async fn signal(
        &self,
        run: RunId,
        name: &str,
        id: &str,
        data: serde_json::Value,
    ) -> Result<bool, EngineError> {
        let seen = self.state(run)?.signal_ids.contains(id);
        self.control(
            run,
            Command::Signal {
                name: name.to_string(),
                id: id.to_string(),
                data,
            },
        )
        .await?;
        Ok(!seen)
    }

    /// Record `by`'s decision on the approval step `step`
    /// (`ApprovalDecided`); enough approvals succeed the step, a
    /// rejection fails it.
    ///
    /// Errors: unknown run; [`Rejected::NotWaiting`] when the step does
    /// not wait for an approval, [`Rejected::NotApprover`] when `by` is not
    /// listed (nothing is recorded either way); storage.
    pub async fn approval(
        &self,
        run: RunId,
        step: &str,
        by: &str,
        decision: crate::event::ApprovalDecision,
        comment: Option<String>,
    ) -> Result<(), EngineError> {
        self.control(
            run,
            Command::Approval {
                step: step.into(),
                by: by.to_string(),
                decision,
                comment,
            },
        )
        .await
    }
}

/// SHA-256 (hex) of a callback token: what `CallbackIssued` records and
/// the `callbacks` index is keyed by.
pub(crate) fn token_sha256(token: &str) -> String {
    use sha2::Digest;
    chronicle_store::hex(&sha2::Sha256::digest(token.as_bytes()))
}
