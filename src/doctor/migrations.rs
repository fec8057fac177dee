//! bookengine's migrations: applied, pending, or changed since they were applied.
//! Read from refinery's history without creating anything (`migrate --status` would
//! create the history schema).

use super::context::Context;
use super::finding::{Finding, Severity};
use crate::error::Result;
use crate::migrate;

pub async fn check(cx: &Context) -> Result<Vec<Finding>> {
    let embedded = migrate::embedded();
    let present: bool = cx
        .client
        .query_one(
            "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
            &[&migrate::HISTORY_TABLE],
        )
        .await
        .map_err(cx.err("looking for the migration history"))?
        .get(0);
    let applied: Vec<(i64, String, String)> = if present {
        cx.client
            .query(
                &format!(
                    "SELECT version::bigint, coalesce(name, ''), coalesce(checksum, '') FROM {} ORDER BY version",
                    migrate::HISTORY_TABLE
                ),
                &[],
            )
            .await
            .map_err(cx.err("reading the migration history"))?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    } else {
        Vec::new()
    };
    Ok(compare(&embedded, &applied))
}

/// The findings for `applied` (version, name, checksum) against the built-in migrations.
pub fn compare(
    embedded: &[refinery::Migration],
    applied: &[(i64, String, String)],
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut pending = Vec::new();
    let mut diverged = Vec::new();
    for m in embedded {
        let version = i64::from(m.version());
        match applied.iter().find(|(v, _, _)| *v == version) {
            None => pending.push(format!("V{version}__{}", m.name())),
            Some((_, _, checksum)) if *checksum != m.checksum().to_string() => {
                diverged.push(format!("V{version}__{}", m.name()))
            }
            Some(_) => {}
        }
    }
    pending.sort();
    if !pending.is_empty() {
        let never = applied.is_empty();
        findings.push(
            Finding::new(
                "migrations_pending",
                Severity::Warning,
                if never {
                    format!(
                        "bookengine's migrations were never applied here ({} pending)",
                        pending.len()
                    )
                } else {
                    format!("{} bookengine migration(s) pending", pending.len())
                },
            )
            .objects(pending)
            .why(
                "The service expects the tables, functions and policies of every migration built \
                 into it; with some missing, requests fail or run on older rules.",
            )
            .fix("-- not SQL: run, with the same DATABASE_URL:\n--   bookengine migrate"),
        );
    }
    if !diverged.is_empty() {
        findings.push(
            Finding::new(
                "migrations_diverged",
                Severity::Warning,
                "applied migrations differ from the ones built into this binary",
            )
            .objects(diverged)
            .why(
                "An applied migration was edited afterwards (or another build applied a different \
                 file with the same version). `bookengine migrate` refuses to run on a diverged \
                 history, and the database may not be what this version expects.",
            )
            .fix(
                "-- not SQL: applied migrations are never edited; restore the original sql/ file, \
                 or add a new migration with the change",
            ),
        );
    }
    let newer: Vec<String> = applied
        .iter()
        .filter(|(v, _, _)| !embedded.iter().any(|m| i64::from(m.version()) == *v))
        .map(|(v, name, _)| format!("V{v}__{name}"))
        .collect();
    if !newer.is_empty() {
        findings.push(
            Finding::new(
                "migrations_newer_than_binary",
                Severity::Info,
                "the database has migrations this binary does not know",
            )
            .objects(newer)
            .why("A newer bookengine migrated this database; this binary may be out of date.")
            .fix("-- not SQL: run the newest bookengine"),
        );
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_and_diverged_migrations_are_named() {
        let embedded = migrate::embedded();
        assert!(compare(&embedded, &[])[0].objects.len() == embedded.len());
        let all: Vec<(i64, String, String)> = embedded
            .iter()
            .map(|m| {
                (
                    i64::from(m.version()),
                    m.name().to_owned(),
                    m.checksum().to_string(),
                )
            })
            .collect();
        assert!(compare(&embedded, &all).is_empty());
        let mut changed = all.clone();
        changed[0].2 = "1".into();
        changed.pop();
        changed.push((999, "later".into(), "2".into()));
        let ids: Vec<&str> = compare(&embedded, &changed).iter().map(|f| f.id).collect();
        assert_eq!(
            ids,
            [
                "migrations_pending",
                "migrations_diverged",
                "migrations_newer_than_binary"
            ]
        );
    }
}
