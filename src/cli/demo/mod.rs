//! `bookengine demo`: the whole product on the local stack in one command. It
//! brings the stack up, seeds an admin, a pro and a hobby user, deploys the
//! example book flow as the admin, assigns it to the pro tier, requests a book
//! as the pro user, runs the worker until the job ends, writes the book, and
//! shows that the hobby user is refused.

//!
//! - `setup`: the stack, the users, who writes the text, the engine and its assignment.
//! - `writer`: the providers without keys, and the local model or offline provider
//!   that answers for them (the flow sized for a CPU model).
//! - `run`: the job, the worker, and the text printed as it is written.
//! - `report`: the book file and the run report.

mod report;
mod run;
mod setup;
mod writer;

use crate::config::DatabaseConfig;
use crate::error::Result;
use crate::providers::ProvidersConfig;
use clap::Args;
use std::time::Instant;

const EXAMPLE_FLOW: &str = include_str!("../../../examples/book-flow.json");
const DEMO_ENGINE: &str = "Book engine (demo)";

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// What the book is about.
    #[arg(long, default_value = "the history of tea")]
    pub topic: String,
    /// How many chapters the outline asks for.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=24))]
    pub chapters: u32,
    /// Port for the local PostgREST.
    #[arg(long, env = "BOOKENGINE_POSTGREST_PORT", default_value_t = 54330)]
    pub port: u16,
    /// Give up waiting for the book after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    #[command(flatten)]
    pub home: crate::devstack::HomeArgs,
    #[command(flatten)]
    pub db: DatabaseConfig,
    #[command(flatten)]
    pub providers: ProvidersConfig,
}

pub async fn demo(args: DemoArgs) -> Result<()> {
    let started = Instant::now();
    let demo = setup::prepare(&args).await?;
    let detail = run::book(&demo, &args).await?;
    report::finish(&demo, &detail, started)
}

fn step(msg: &str) {
    eprintln!("==> {msg}");
}
