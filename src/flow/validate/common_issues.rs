//! The issues many checks raise alike: a value out of range, an unknown value, an
//! unknown field (with the nearest known one as a suggestion).

use crate::flow::issue::{quote, Issue};

pub(super) fn out_of_range(path: &str, message: &str, step_id: &str) -> Issue {
    Issue::new(path, "out_of_range", message).with("step_id", step_id)
}

pub(super) fn invalid_value(path: &str, what: &str, got: &str, valid: &[&str]) -> Issue {
    Issue::new(
        path,
        "invalid_value",
        format!(
            "unknown {what} {}; expected one of: {}",
            quote(got),
            valid.join(", ")
        ),
    )
}

pub(super) fn unknown_field<'k>(
    path: &str,
    key: &str,
    known: impl Iterator<Item = &'k str>,
) -> Issue {
    let known: Vec<&str> = known.collect();
    let hint = closest(key, &known)
        .map(|k| format!("; did you mean {}?", quote(k)))
        .unwrap_or_else(|| {
            format!(
                "; known keys: {} (keys starting with x_ or ui are kept as they are)",
                known.join(", ")
            )
        });
    Issue::new(
        path,
        "unknown_field",
        format!("unknown key {}{hint}", quote(key)),
    )
}

/// The known key within edit distance 2 of `key`, for "did you mean".
pub(super) fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    if key.chars().count() > 40 {
        return None;
    }
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}
