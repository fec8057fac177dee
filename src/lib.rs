//! bookengine: the engine workflow for a Supabase book-generation app.
//!
//! flow document -> deployed engine (`ai_engines`) -> assignment to tiers and users
//! (`engine_assignments`) -> generation jobs run by a worker through PostgREST.

pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod local;
pub mod migrate;
pub mod rest;
pub mod secret;
pub mod telemetry;
