//! What `bookengine doctor` reports: one finding per problem, with the objects at
//! fault, why it matters and the SQL (or the setting) that fixes it.

use serde::Serialize;

/// How much a finding matters. Any `Security` finding makes the command exit non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Someone can gain access or privileges they should not have.
    Security,
    /// Something is broken, slow or fragile and should be fixed.
    Warning,
    /// Worth knowing; nothing to do, or nothing that can be done.
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Security => "security",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// One problem found in the host project.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Stable snake_case id scripts can match on (e.g. `profiles_role_writable`).
    pub id: &'static str,
    pub severity: Severity,
    /// One line: what was found.
    pub summary: String,
    /// The objects at fault, qualified (`public.profiles`, `policy "…" on public.x`).
    pub objects: Vec<String>,
    /// Why it matters, for this project.
    pub why: String,
    /// SQL that fixes it (comment lines where the fix is not SQL, or needs a choice).
    pub fix: String,
}

impl Finding {
    pub fn new(id: &'static str, severity: Severity, summary: impl Into<String>) -> Self {
        Self {
            id,
            severity,
            summary: summary.into(),
            objects: Vec::new(),
            why: String::new(),
            fix: String::new(),
        }
    }

    pub fn objects(mut self, objects: impl IntoIterator<Item = String>) -> Self {
        self.objects.extend(objects);
        self
    }

    pub fn why(mut self, why: impl Into<String>) -> Self {
        self.why = why.into();
        self
    }

    pub fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = fix.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_sorts_first() {
        let mut s = vec![Severity::Info, Severity::Security, Severity::Warning];
        s.sort();
        assert_eq!(
            s,
            vec![Severity::Security, Severity::Warning, Severity::Info]
        );
    }
}
