//! Which database objects are bookengine's: read from the migrations built into the
//! binary, so the lints follow new migrations without a list to keep up to date.

use std::collections::BTreeSet;

/// bookengine's own tables and functions (in `public`, unqualified names), and the
/// policies the product specification fixes verbatim (`sql/V1`), which may not change.
#[derive(Debug, Default, Clone)]
pub struct Ownership {
    pub tables: BTreeSet<String>,
    pub functions: BTreeSet<String>,
    /// (table, policy name) of the specified policies.
    pub specified_policies: BTreeSet<(String, String)>,
}

/// The migration whose statements are the specification's, byte for byte.
const SPECIFIED_VERSION: i64 = 1;

impl Ownership {
    pub fn from_migrations(migrations: &[refinery::Migration]) -> Self {
        let mut owned = Ownership::default();
        for m in migrations {
            let sql = strip_comments(m.sql().unwrap_or_default());
            owned.read(&sql, i64::from(m.version()) == SPECIFIED_VERSION);
        }
        owned
    }

    pub fn embedded() -> Self {
        Self::from_migrations(&crate::migrate::embedded())
    }

    fn read(&mut self, sql: &str, specified: bool) {
        let words: Vec<&str> = sql.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            if !w.eq_ignore_ascii_case("create") {
                continue;
            }
            let mut j = i + 1;
            if word_is(&words, j, "or") && word_is(&words, j + 1, "replace") {
                j += 2;
            }
            if word_is(&words, j, "table") {
                j += 1;
                if word_is(&words, j, "if") {
                    j += 3; // IF NOT EXISTS
                }
                if let Some(name) = words.get(j).map(|n| object_name(n)) {
                    self.tables.insert(name);
                }
            } else if word_is(&words, j, "function") {
                if let Some(name) = words.get(j + 1).map(|n| object_name(n)) {
                    if !name.contains('.') {
                        self.functions.insert(name);
                    }
                }
            } else if word_is(&words, j, "policy") && specified {
                if let Some((policy, table)) = policy_and_table(&words[j + 1..]) {
                    self.specified_policies.insert((table, policy));
                }
            }
        }
    }

    pub fn owns_table(&self, name: &str) -> bool {
        self.tables.contains(name)
    }

    pub fn is_specified_policy(&self, table: &str, policy: &str) -> bool {
        self.specified_policies
            .contains(&(table.to_owned(), policy.to_owned()))
    }
}

fn word_is(words: &[&str], i: usize, expected: &str) -> bool {
    words
        .get(i)
        .is_some_and(|w| w.eq_ignore_ascii_case(expected))
}

/// `public.ai_engines(` -> `ai_engines`; names in other schemas keep their schema.
fn object_name(word: &str) -> String {
    let name = word.split('(').next().unwrap_or_default();
    let name = name.strip_prefix("public.").unwrap_or(name);
    name.trim_matches('"').to_ascii_lowercase()
}

/// `"Users can view …" ON ai_engines` -> (policy, table).
fn policy_and_table(rest: &[&str]) -> Option<(String, String)> {
    let joined = rest.join(" ");
    let quoted = joined.strip_prefix('"')?;
    let end = quoted.find('"')?;
    let policy = quoted[..end].to_owned();
    let mut after = quoted[end + 1..].split_whitespace();
    if !after.next()?.eq_ignore_ascii_case("on") {
        return None;
    }
    Some((policy, object_name(after.next()?)))
}

fn strip_comments(sql: &str) -> String {
    sql.lines()
        .map(|l| match l.find("--") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_migrations_name_our_tables_functions_and_the_specified_policies() {
        let owned = Ownership::embedded();
        for t in ["ai_engines", "engine_assignments", "generation_jobs"] {
            assert!(owned.owns_table(t), "{t}: {:?}", owned.tables);
        }
        assert!(!owned.owns_table("profiles"));
        assert!(owned.functions.contains("is_engine_admin"));
        assert!(owned.functions.contains("my_engines"));
        assert!(owned.is_specified_policy("ai_engines", "Admins can manage all engines"));
        assert!(owned.is_specified_policy("engine_assignments", "Users can view their assignments"));
        assert_eq!(owned.specified_policies.len(), 4);
        assert!(
            !owned.is_specified_policy("generation_jobs", "Users can view their generation jobs")
        );
    }
}
