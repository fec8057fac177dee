//! One integration-test binary: a module per feature, all against a real
//! PostgREST 12 and Postgres (see helpers.rs).

mod helpers;

mod assignments;
mod cli;
mod engines;
mod foundation;
mod generations;
mod mock_providers;
mod resilience;
