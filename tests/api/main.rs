//! One integration-test binary: a module per feature, all against a real
//! PostgREST 12 and Postgres (the harness: tests/kit, shared with the benchmarks).

#[path = "../kit/mod.rs"]
mod kit;

mod adversarial;
mod assignments;
mod auth;
mod browser;
mod cli;
mod deltas;
mod demo;
mod doctor;
mod engine_checks;
mod engines;
mod faults;
mod foundation;
mod generations;
mod js_clients;
mod keys;
mod limits;
mod load;
#[cfg(feature = "local-model")]
mod local_model;
mod resilience;
mod security;
mod seed_js;
mod stream_deltas;
mod streaming_providers;
mod typings;
mod versions;
