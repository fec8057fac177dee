//! One model call (a step, or one item of a fan-out): resume what a crashed run
//! finished, render the prompt, call with the step's policy and fallbacks (streamed
//! or whole), and record the call.

use super::{Run, Stop};
use crate::error::codes;
use crate::flow::{ModelRef, OutputKind, Step};
use crate::jobs::StepRecord;
use crate::jobs::StepStatus;
use crate::providers::{
    call_with_fallbacks, call_with_fallbacks_streaming, AttemptLog, CallPolicy, ChatRequest,
    StreamOptions,
};
use crate::worker::deltas::{self, CallKey};
use crate::worker::output::parse_json_output;
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl Run<'_> {
    /// One model call (a step, or one item of a fan-out), recorded when it finishes
    /// (marked `running` first if it is slow); with `hold`, its record is left for
    /// `job_complete` to save.
    pub(super) async fn call(
        &self,
        step: &Step,
        item: Option<(usize, &Value)>,
        hold: bool,
    ) -> Result<(Value, StepRecord), Stop> {
        let index = item
            .map(|(k, _)| k as i32)
            .unwrap_or(crate::jobs::WHOLE_STEP);
        let label = match item {
            Some((k, _)) => format!("{}[{k}]", step.id),
            None => step.id.clone(),
        };
        if let Some(done) = self
            .existing
            .get(&(step.id.clone(), index))
            .filter(|s| s.status == StepStatus::Succeeded)
        {
            self.calls_done.fetch_add(1, Ordering::SeqCst);
            let write = StepRecord::reused(&step.id, index, done);
            return Ok((done.output.clone().unwrap_or(Value::Null), write));
        }
        let c = &step.config;
        let ctx = self.context(item);
        let prompt = crate::flow::render(&c.prompt, &ctx)
            .map_err(|e| Stop::Fatal(format!("step {label}: prompt template: {e}")))?;
        let system = c
            .system
            .as_deref()
            .map(|s| crate::flow::render(s, &ctx))
            .transpose()
            .map_err(|e| Stop::Fatal(format!("step {label}: system template: {e}")))?;
        // A record could not be saved (PostgREST down, lease lost): start nothing new.
        self.writes.check()?;
        let queue = &self.worker.queue;
        let (job_id, lease) = (self.job.id, self.job.lease_token);
        let first = ModelRef {
            provider: c.provider.clone(),
            model: c.model.clone(),
        };
        let running = StepRecord::running(&step.id, index, &first);
        let mut chain = vec![first.clone()];
        chain.extend(c.fallbacks.iter().cloned());
        let cfg = &self.worker.config;
        let policy = CallPolicy {
            retries: c.retries.unwrap_or(cfg.default_retries),
            timeout: Duration::from_secs(c.timeout_s.unwrap_or(cfg.call_timeout_seconds).max(1)),
            base_backoff: Duration::from_millis(cfg.backoff_ms),
            max_backoff: Duration::from_millis(cfg.backoff_ms.saturating_mul(40).max(1)),
        };
        let request = ChatRequest {
            model: c.model.clone(),
            system,
            prompt,
            temperature: c.temperature,
            max_tokens: c.max_tokens,
            json: c.output == OutputKind::Json,
        };
        let wants_json = c.output == OutputKind::Json;
        let parse = |text: &str| {
            if wants_json {
                parse_json_output(text)
            } else if text.trim().is_empty() {
                Err("the model's answer was empty".into())
            } else {
                Ok(Value::String(text.to_owned()))
            }
        };
        let started = std::time::Instant::now();
        let providers = &self.worker.providers;
        let attempt = async {
            if !self.streaming {
                return call_with_fallbacks(providers, &chain, &request, &policy, parse).await;
            }
            let key = CallKey {
                job: job_id,
                step_id: step.id.as_str().into(),
                item_index: index,
            };
            let deltas = &self.worker.deltas;
            if self.restarts.contains(&(step.id.clone(), index)) {
                deltas.restart(&key);
            }
            let (chain, request, policy) = (&chain, &request, &policy);
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            // The options (and so the sender) live as long as the call: the forwarder
            // ends with it, after passing on its last event.
            let call = async move {
                let options = StreamOptions::new(tx);
                call_with_fallbacks_streaming(providers, chain, request, policy, &options, parse)
                    .await
            };
            let forward = async {
                while let Some(event) = rx.recv().await {
                    deltas.event(&key, event);
                }
            };
            tokio::join!(call, forward).0
        };
        tokio::pin!(attempt);
        // Quick calls are written once, when done; a slow one shows as running meanwhile.
        let outcome = tokio::select! {
            o = &mut attempt => o,
            _ = tokio::time::sleep(Duration::from_millis(cfg.running_mark_ms)) => {
                let progress = self.progress(Some(&label));
                let (o, marked) = tokio::join!(
                    &mut attempt,
                    queue.save_step(job_id, lease, &running, Some(&progress))
                );
                match marked {
                    Err(e) if e.code == codes::LEASE_LOST => return Err(Stop::LeaseLost),
                    // Advisory: the finished record is what counts, and it is written below.
                    Err(e) => tracing::warn!(code = %e.code, step = %label, "could not mark the step running"),
                    Ok(_) => {}
                }
                o
            }
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        let m = &self.worker.metrics;
        match outcome {
            Ok(o) => {
                count_provider_errors(m, o.log.iter().filter(|a| a.error.is_some()));
                m.retries
                    .with_label_values(&[o.provider.as_str()])
                    .inc_by(u64::from(o.attempts.saturating_sub(1)));
                if o.fallback_used {
                    m.fallbacks.with_label_values(&[c.provider.as_str()]).inc();
                }
                m.step_latency
                    .with_label_values(&[o.provider.as_str()])
                    .observe(
                        o.log.last().map(|a| a.latency_ms).unwrap_or(latency_ms) as f64 / 1000.0,
                    );
                m.tokens
                    .with_label_values(&[o.provider.as_str(), "input"])
                    .inc_by(o.usage.input_tokens);
                m.tokens
                    .with_label_values(&[o.provider.as_str(), "output"])
                    .inc_by(o.usage.output_tokens);
                let provider = if o.answered_by == o.provider {
                    o.provider.clone()
                } else {
                    format!("{} (as {})", o.answered_by, o.provider)
                };
                let write = StepRecord::answered(&step.id, index, provider, &o, latency_ms);
                self.calls_done.fetch_add(1, Ordering::SeqCst);
                if hold {
                    self.hold(write.clone());
                } else {
                    let barrier = self
                        .streaming
                        .then(|| self.worker.deltas.barrier(self.job.id));
                    self.writes
                        .send(write.clone(), self.progress(Some(&label)), barrier);
                }
                tracing::info!(step = %label, provider = %o.provider, model = %o.model, attempts = o.attempts, fallback = o.fallback_used, latency_ms, "step done");
                Ok((o.value, write))
            }
            Err(f) => {
                count_provider_errors(m, &f.log);
                let reason = format!("step {label}: {}", f.message);
                let write = StepRecord::failed(&step.id, index, &first, &f, latency_ms);
                if self.streaming {
                    deltas::wait(self.worker.deltas.barrier(job_id)).await?;
                }
                queue.save_step(job_id, lease, &write, None).await?;
                Err(Stop::Fatal(reason))
            }
        }
    }
}

/// One `provider_errors` count per failed attempt, by provider and HTTP status.
fn count_provider_errors<'a>(
    m: &crate::metrics::Metrics,
    attempts: impl IntoIterator<Item = &'a AttemptLog>,
) {
    for a in attempts {
        let status = a.status.map(|s| s.to_string());
        m.provider_errors
            .with_label_values(&[a.provider.as_str(), status.as_deref().unwrap_or("none")])
            .inc();
    }
}
