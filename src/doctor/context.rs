//! What every check gets: the connection, the API roles the host has, which objects
//! are bookengine's, and the service's settings.

use super::ownership::Ownership;
use crate::config::SupabaseConfig;
use crate::error::Error;

pub struct Context {
    /// A session in which every transaction is READ ONLY.
    pub client: tokio_postgres::Client,
    /// The roles PostgREST uses for people (`anon`, `authenticated`) that exist here.
    pub api_roles: Vec<String>,
    pub owned: Ownership,
    pub supabase: SupabaseConfig,
}

impl Context {
    /// Map a failed catalog query to an error naming what was being read.
    pub fn err(&self, what: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
        move |e| Error::internal(format!("doctor: {what}: {e}"))
    }
}
