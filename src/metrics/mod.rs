//! Prometheus metrics for the worker and the API (`GET /metrics`).

use prometheus::{
    register_histogram_vec_with_registry, register_int_counter_vec_with_registry,
    register_int_gauge_with_registry, Encoder, HistogramVec, IntCounterVec, IntGauge, Registry,
    TextEncoder,
};
use std::sync::{Arc, OnceLock};

pub struct Metrics {
    pub registry: Registry,
    /// Jobs that ended here, by final status.
    pub jobs_finished: IntCounterVec,
    /// Jobs claimed by this process.
    pub jobs_claimed: IntCounterVec,
    /// Model call latency of successful calls, by provider.
    pub step_latency: HistogramVec,
    /// Failed provider calls, by provider and HTTP status ("none" for transport errors).
    pub provider_errors: IntCounterVec,
    /// Retries of the same model, by provider.
    pub retries: IntCounterVec,
    /// Calls answered by a fallback model, by step provider.
    pub fallbacks: IntCounterVec,
    /// Tokens used, by provider and kind (input, output).
    pub tokens: IntCounterVec,
    /// Webhook deliveries, by outcome.
    pub webhooks: IntCounterVec,
    /// Event streams open now.
    pub streams_open: IntGauge,
    /// PostgREST reads made for event streams, by kind (join, light, full).
    pub stream_reads: IntCounterVec,
    /// JWKS fetches, by outcome (ok, error).
    pub jwks_fetches: IntCounterVec,
    /// Readiness checks that reached PostgREST (the rest are answered from the last one).
    pub readiness_checks: IntCounterVec,
}

impl Metrics {
    fn new() -> Result<Self, prometheus::Error> {
        let r = Registry::new_custom(Some("bookengine".into()), None)?;
        Ok(Self {
            jobs_finished: register_int_counter_vec_with_registry!(
                "jobs_finished_total",
                "Jobs finished by this process, by status",
                &["status"],
                r
            )?,
            jobs_claimed: register_int_counter_vec_with_registry!(
                "jobs_claimed_total",
                "Jobs claimed by this process",
                &["worker"],
                r
            )?,
            step_latency: register_histogram_vec_with_registry!(
                "model_call_seconds",
                "Latency of successful model calls",
                &["provider"],
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0],
                r
            )?,
            provider_errors: register_int_counter_vec_with_registry!(
                "provider_errors_total",
                "Failed provider calls",
                &["provider", "status"],
                r
            )?,
            retries: register_int_counter_vec_with_registry!(
                "provider_retries_total",
                "Retries of the same model",
                &["provider"],
                r
            )?,
            fallbacks: register_int_counter_vec_with_registry!(
                "fallbacks_total",
                "Calls answered by a fallback model",
                &["provider"],
                r
            )?,
            tokens: register_int_counter_vec_with_registry!(
                "tokens_total",
                "Tokens used",
                &["provider", "kind"],
                r
            )?,
            webhooks: register_int_counter_vec_with_registry!(
                "webhooks_total",
                "Webhook deliveries",
                &["outcome"],
                r
            )?,
            streams_open: register_int_gauge_with_registry!(
                "event_streams_open",
                "Event streams open now",
                r
            )?,
            stream_reads: register_int_counter_vec_with_registry!(
                "event_stream_reads_total",
                "PostgREST reads made for event streams (shared by all viewers of a job)",
                &["kind"],
                r
            )?,
            jwks_fetches: register_int_counter_vec_with_registry!(
                "jwks_fetches_total",
                "JWKS fetches",
                &["outcome"],
                r
            )?,
            readiness_checks: register_int_counter_vec_with_registry!(
                "readiness_checks_total",
                "Readiness checks that reached PostgREST",
                &["outcome"],
                r
            )?,
            registry: r,
        })
    }

    /// The process-wide metrics.
    pub fn global() -> Arc<Metrics> {
        static M: OnceLock<Arc<Metrics>> = OnceLock::new();
        M.get_or_init(|| match Metrics::new() {
            Ok(m) => Arc::new(m),
            // Registration only fails on a duplicate name, which is a bug caught by tests.
            Err(e) => panic!("metrics registration: {e}"),
        })
        .clone()
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
