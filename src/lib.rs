//! bookengine: the engine workflow for a Supabase book-generation app.
//!
//! flow document -> deployed engine (`ai_engines`) -> assignment to tiers and users
//! (`engine_assignments`) -> generation jobs run by a worker through PostgREST.

pub mod assignments;
pub mod auth;
pub mod cli;
pub mod config;
pub mod devstack;
pub mod doctor;
pub mod engines;
pub mod error;
pub mod flow;
pub mod generations;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod migrate;
pub mod pgtls;
pub mod providers;
pub mod queue;
pub mod rest;
pub mod secret;
pub mod telemetry;
pub mod worker;
