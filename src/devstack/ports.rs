//! Which local stack holds which port, machine-wide. Two checkouts on one machine each
//! have their own `BOOKENGINE_HOME` (JWT secret, keys, pid files) but the same default
//! ports: without this record, the second `local up` would find the first one's
//! PostgREST answering and hand out tokens it refuses. `up` records each port it
//! starts a process on; another home finding the port taken names the owner.

use crate::error::{codes, Error, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One file per port, holding the absolute path of the home that started it.
fn registry() -> PathBuf {
    std::env::temp_dir().join("bookengine-local-ports")
}

fn absolute(home: &Path) -> PathBuf {
    std::path::absolute(home).unwrap_or_else(|_| home.to_path_buf())
}

fn owner(port: u16) -> Option<PathBuf> {
    let text = std::fs::read_to_string(registry().join(port.to_string())).ok()?;
    Some(PathBuf::from(text.trim()))
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .is_ok()
}

/// Fail with one line when something that is not this home's stack listens on `port`.
pub fn ensure_free(port: u16, home: &Path) -> Result<()> {
    if !listening(port) {
        return Ok(());
    }
    let ours = absolute(home);
    let message = match owner(port).filter(|o| *o != ours) {
        Some(other) => format!(
            "port {port} is taken by the local stack of another checkout ({0}); stop it with \
             `BOOKENGINE_HOME={0} bookengine local down`, or run this one beside it with its own \
             port and database: BOOKENGINE_POSTGREST_PORT=<port> \
             DATABASE_URL=postgres://postgres@127.0.0.1:5432/<name>",
            other.display()
        ),
        None => format!(
            "port {port} is taken by another program; free it, or choose other ports with \
             BOOKENGINE_POSTGREST_PORT (the gateway uses the next port, or BOOKENGINE_GATEWAY_PORT)"
        ),
    };
    Err(Error::conflict(codes::PORT_IN_USE, message))
}

/// Record that `home`'s stack now listens on `port` (best effort: the record only
/// improves a later message).
pub fn claim(port: u16, home: &Path) {
    let dir = registry();
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(
            dir.join(port.to_string()),
            absolute(home).display().to_string(),
        );
    }
}

/// Forget every port `home` recorded (`local down`).
pub fn release_all(home: &Path) {
    let ours = absolute(home);
    for (port, owner) in entries() {
        if owner == ours {
            let _ = std::fs::remove_file(registry().join(port.to_string()));
        }
    }
}

/// Stacks of other homes that still listen, for `local status`.
pub fn others(home: &Path) -> Vec<(u16, PathBuf)> {
    let ours = absolute(home);
    entries()
        .into_iter()
        .filter(|(port, owner)| *owner != ours && listening(*port))
        .collect()
}

fn entries() -> Vec<(u16, PathBuf)> {
    let Ok(read) = std::fs::read_dir(registry()) else {
        return Vec::new();
    };
    let mut out: Vec<(u16, PathBuf)> = read
        .flatten()
        .filter_map(|e| {
            let port = e.file_name().to_str()?.parse().ok()?;
            Some((port, owner(port)?))
        })
        .collect();
    out.sort();
    out
}
