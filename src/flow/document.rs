//! The typed flow: what a checked flow document becomes.
//!
//! Only [`parse_flow`](super::parse_flow) and
//! [`Flow::from_engine`](super::Flow::from_engine) build these from input, so
//! a `Flow` obtained from them has passed every check.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The plan tiers an engine can be meant for (the `tier` column's CHECK values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Hobby,
    Pro,
    Enterprise,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Hobby, Tier::Pro, Tier::Enterprise];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Hobby => "hobby",
            Tier::Pro => "pro",
            Tier::Enterprise => "enterprise",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error is a message for the caller, e.g. `unknown tier "gold";
/// expected one of: hobby, pro, enterprise`.
impl FromStr for Tier {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| unknown_value("tier", s, &["hobby", "pro", "enterprise"]))
    }
}

/// How the worker may order steps: in document order, or as the dependency
/// graph allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionMode {
    #[default]
    Sequential,
    Parallel,
}

impl ExecutionMode {
    pub const ALL: [ExecutionMode; 2] = [ExecutionMode::Sequential, ExecutionMode::Parallel];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionMode::Sequential => "sequential",
            ExecutionMode::Parallel => "parallel",
        }
    }
}

impl fmt::Display for ExecutionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExecutionMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sequential" => Ok(ExecutionMode::Sequential),
            "parallel" => Ok(ExecutionMode::Parallel),
            _ => Err(unknown_value(
                "execution mode",
                s,
                &["sequential", "parallel"],
            )),
        }
    }
}

/// What a step's output is: plain text, or JSON that later steps can index into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    #[default]
    Text,
    Json,
}

impl OutputKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::Text => "text",
            OutputKind::Json => "json",
        }
    }
}

impl fmt::Display for OutputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider and one of its models.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelRef {
    pub provider: String,
    pub model: String,
}

/// Fan-out source: one call per element of the JSON array at `path` inside
/// the parsed output of `step` (an empty path means the output itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ForEach {
    pub step: String,
    pub path: Vec<String>,
}

impl ForEach {
    /// The array to fan out over in the source step's parsed output, or
    /// `None` when the path leads nowhere or not to an array. Path parts
    /// index objects by key and arrays by decimal position.
    pub fn items<'v>(&self, output: &'v Value) -> Option<&'v [Value]> {
        let mut at = output;
        for part in &self.path {
            at = match at {
                Value::Object(map) => map.get(part)?,
                Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        at.as_array().map(Vec::as_slice)
    }
}

/// A step's configuration, typed. Absent optional settings stay `None` so
/// the worker, not the document, decides the defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepConfig {
    pub provider: String,
    pub model: String,
    pub prompt: String,
    pub system: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub fallbacks: Vec<ModelRef>,
    pub depends_on: Vec<String>,
    pub for_each: Option<ForEach>,
    pub output: OutputKind,
    pub timeout_s: Option<u64>,
    pub retries: Option<u32>,
}

/// One step: the typed config, plus the configuration object exactly as
/// given (with its `x_`/`ui` keys) so it can be stored unchanged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub id: String,
    pub name: String,
    pub config: StepConfig,
    pub configuration: Value,
}

/// A checked flow.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flow {
    pub name: String,
    pub description: Option<String>,
    /// `"full"` or `"streamlined"`.
    pub flow_type: String,
    pub execution_mode: ExecutionMode,
    pub tier: Option<Tier>,
    pub steps: Vec<Step>,
    /// How the React app's spellings were read (stage 0); empty for a canonical document.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<super::Note>,
    /// `deps[i]`: the steps step `i` depends on (explicit `depends_on`, template
    /// references and the `for_each` source), sorted; computed once, by validation,
    /// which built `steps` and refused any reference it could not resolve.
    #[serde(skip)]
    pub(super) deps: Vec<Vec<usize>>,
}

/// The `ai_engines` columns a deploy writes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineRow {
    pub name: String,
    pub description: Option<String>,
    pub flow_config: Value,
    pub models: Value,
    pub execution_mode: String,
    pub tier: Option<String>,
}

fn unknown_value(what: &str, got: &str, valid: &[&str]) -> String {
    format!(
        "unknown {what} {}; expected one of: {}",
        super::issue::quote(got),
        valid.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_round_trips_and_lists_valid_values_on_error() {
        for t in Tier::ALL {
            assert_eq!(t.as_str().parse::<Tier>().ok(), Some(t));
            assert_eq!(t.to_string(), t.as_str());
            assert_eq!(serde_json::to_value(t).ok(), Some(Value::from(t.as_str())));
        }
        let err = "gold".parse::<Tier>().err();
        let msg = err.unwrap_or_default();
        assert!(msg.contains("hobby, pro, enterprise"), "{msg}");
    }

    #[test]
    fn execution_mode_parses_and_defaults_to_sequential() {
        assert_eq!(ExecutionMode::default(), ExecutionMode::Sequential);
        assert_eq!(
            "parallel".parse::<ExecutionMode>().ok(),
            Some(ExecutionMode::Parallel)
        );
        assert!("Parallel".parse::<ExecutionMode>().is_err());
        assert_eq!(ExecutionMode::Sequential.to_string(), "sequential");
    }

    #[test]
    fn for_each_items_follow_the_path() {
        let out = serde_json::json!({"chapters": [{"t": 1}, {"t": 2}], "parts": [{"xs": [1]}]});
        let fe = |path: &[&str]| ForEach {
            step: "s".into(),
            path: path.iter().map(|p| p.to_string()).collect(),
        };
        assert_eq!(fe(&["chapters"]).items(&out).map(<[Value]>::len), Some(2));
        assert_eq!(
            fe(&["parts", "0", "xs"]).items(&out).map(<[Value]>::len),
            Some(1)
        );
        assert_eq!(fe(&[]).items(&out), None);
        assert_eq!(fe(&["nope"]).items(&out), None);
        assert_eq!(
            fe(&[])
                .items(&serde_json::json!([1, 2, 3]))
                .map(<[Value]>::len),
            Some(3)
        );
    }

    #[test]
    fn output_kind_serde_is_lowercase() {
        let k: Option<OutputKind> = serde_json::from_value(Value::from("json")).ok();
        assert_eq!(k, Some(OutputKind::Json));
        assert_eq!(OutputKind::default(), OutputKind::Text);
    }
}
