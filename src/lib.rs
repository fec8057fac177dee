//! bookengine: the engine workflow for a Supabase book-generation app.
//!
//! flow document -> deployed engine (`ai_engines`) -> assignment to tiers and users
//! (`engine_assignments`) -> generation jobs run by a worker through PostgREST.

// Declared by layer, top-down: each layer uses the ones below it, never one above
// (held by the test in layers.rs).

// Delivery: how people and systems reach the service.
pub mod cli;
pub mod http;

// Application: the engine workflow, each module one noun of the product.
pub mod assignments;
pub mod doctor;
pub mod engines;
pub mod generations;
pub mod worker;

// Infrastructure: PostgREST and Postgres, model providers, tokens, the dev stack.
pub mod auth;
pub mod devstack;
pub mod migrate;
pub mod net;
pub mod pgtls;
pub mod providers;
pub mod queue;
pub mod rest;

// Domain model: what the workflow is about, with no I/O.
pub mod flow;
pub mod jobs;

// Cross-cutting: configuration, errors, secrets, logs and metrics.
pub mod config;
pub mod error;
pub mod layers;
pub mod metrics;
pub mod secret;
pub mod telemetry;
