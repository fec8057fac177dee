//! The test kit, one for the integration tests (tests/api) and the benchmarks
//! (benches/): a stack of one's own (database + real PostgREST 12), seeding, the
//! service in process and mock model providers speaking each provider's wire format.
//!
//! Not a test target: included with `#[path = "../kit/mod.rs"] mod kit;`
//! (tests/api/main.rs) or `#[path = "../../tests/kit/mod.rs"] mod kit;` (benches/common).
// Each includer uses a part of the kit.
#![allow(dead_code)]

pub mod answers;
pub mod app;
pub mod cli;
pub mod flows;
pub mod http;
pub mod jobs;
pub mod mock_llm;
pub mod node;
pub mod proxy;
pub mod seed;
pub mod service;
pub mod stack;
