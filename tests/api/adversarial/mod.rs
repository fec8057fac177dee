//! Hostile users and slow dependencies (issue #13): each submodule reproduces one way
//! an ordinary signed-in user, or a dependency, could cost other users something,
//! straight through PostgREST and through the API, and checks that it no longer does.

mod admission;
mod jwks;
mod ops;
pub mod profiles;
mod queue;
mod streams;
