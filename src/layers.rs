//! The layers `lib.rs` declares, held by a test: a module may use its own layer and
//! the ones below it, never one above (infrastructure does not reach into the HTTP
//! API, the domain model does not send requests).

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    /// Top-down, as in lib.rs.
    const LAYERS: &[(&str, &[&str])] = &[
        ("delivery", &["cli", "http"]),
        (
            "application",
            &["assignments", "doctor", "engines", "generations", "worker"],
        ),
        (
            "infrastructure",
            &[
                "auth",
                "devstack",
                "migrate",
                "net",
                "pgtls",
                "providers",
                "queue",
                "rest",
            ],
        ),
        ("domain model", &["flow", "jobs"]),
        (
            "cross-cutting",
            &[
                "config",
                "error",
                "layers",
                "metrics",
                "secret",
                "telemetry",
            ],
        ),
    ];

    fn layer_of(module: &str) -> Option<usize> {
        LAYERS.iter().position(|(_, ms)| ms.contains(&module))
    }

    /// The top-level modules a file's code (not its comments) names as `crate::x`.
    fn uses(text: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for line in text.lines() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for (at, _) in code.match_indices("crate::") {
                let name: String = code[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
        found
    }

    fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("source folder").flatten() {
            let path = entry.path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn every_module_is_in_a_layer_and_uses_none_above_its_own() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
        let declared: Vec<&str> = lib
            .lines()
            .filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';'))
            .collect();
        for m in &declared {
            assert!(layer_of(m).is_some(), "module {m} is in no layer");
        }
        let mut upward = Vec::new();
        for m in &declared {
            let own = layer_of(m).unwrap_or(0);
            let mut paths = Vec::new();
            let dir = src.join(m);
            if dir.is_dir() {
                files(&dir, &mut paths);
            } else {
                paths.push(src.join(format!("{m}.rs")));
            }
            for path in paths {
                let text = std::fs::read_to_string(&path).expect("source file");
                for used in uses(&text) {
                    if layer_of(&used).is_some_and(|l| l < own) {
                        upward.push(format!("{} uses crate::{used}", path.display()));
                    }
                }
            }
        }
        assert!(upward.is_empty(), "a layer reaches up: {upward:#?}");
    }
}
