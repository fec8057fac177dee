//! Stage 4: values, references and the dependency graph; builds the [`Flow`].
//!
//! Runs on a shape-checked, secret-free, ready document, so every value here
//! already has the right JSON type; this stage decides whether it makes sense.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::document::{ExecutionMode, Flow, ForEach, ModelRef, OutputKind, Step, StepConfig, Tier};
use super::graph;
use super::issue::{index_path, key_path, quote, Issue};
use super::shape::{RawFlow, RawStep, CONFIG_KEYS};
use super::template::{self, ITEM_VARS, ROOT_INPUT, ROOT_STEPS};
use super::PROVIDERS;

// The limits of a flow document. docs/flow.schema.json states each of them again for
// editors; `tests::the_json_schema_states_the_same_limits` holds the two together.
pub(crate) const MAX_STEPS: usize = 100;
pub(crate) const MAX_FALLBACKS: usize = 5;
pub(crate) const MAX_NAME_CHARS: usize = 200;
pub(crate) const MAX_ID_CHARS: usize = 64;
pub(crate) const FLOW_TYPES: &[&str] = &["full", "streamlined"];
pub(crate) const EXECUTION_MODES: &[&str] = &["sequential", "parallel"];
pub(crate) const OUTPUT_KINDS: &[&str] = &["text", "json"];
pub(crate) const TEMPERATURE: (f64, f64) = (0.0, 2.0);
pub(crate) const MAX_TOKENS: (u64, u64) = (1, 200_000);
pub(crate) const TIMEOUT_S: (u64, u64) = (1, 900);
pub(crate) const RETRIES: (u64, u64) = (0, 10);

pub(crate) fn build(raw: &RawFlow<'_>) -> Result<Flow, Vec<Issue>> {
    let mut issues = Vec::new();

    check_name(raw.name, "name", &mut issues);
    if !FLOW_TYPES.contains(&raw.flow_type) {
        issues.push(invalid_value(
            "type",
            "flow type",
            raw.flow_type,
            FLOW_TYPES,
        ));
    }
    let execution_mode = match raw.execution_mode {
        None => ExecutionMode::Sequential,
        Some(s) => s.parse().unwrap_or_else(|_| {
            issues.push(invalid_value(
                "execution_mode",
                "execution mode",
                s,
                EXECUTION_MODES,
            ));
            ExecutionMode::Sequential
        }),
    };
    let tier = raw.tier.and_then(|s| match s.parse::<Tier>() {
        Ok(t) => Some(t),
        Err(_) => {
            issues.push(invalid_value(
                "tier",
                "tier",
                s,
                &["hobby", "pro", "enterprise"],
            ));
            None
        }
    });
    if raw.steps.len() > MAX_STEPS {
        issues.push(Issue::new(
            "steps",
            "out_of_range",
            format!(
                "a flow has at most {MAX_STEPS} steps, this one has {}",
                raw.steps.len()
            ),
        ));
    }

    let index = step_ids(raw, &mut issues);
    let ctx = Ctx {
        steps: &raw.steps,
        index: &index,
        mode: execution_mode,
        outputs: raw.steps.iter().map(|s| output_kind(s)).collect(),
        fan_out: raw
            .steps
            .iter()
            .map(|s| config_str(s, "for_each").is_some())
            .collect(),
    };
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(raw.steps.len());
    let mut steps = Vec::with_capacity(raw.steps.len());
    for (i, step) in raw.steps.iter().enumerate() {
        let (built, edges) = build_step(&ctx, i, step, &mut issues);
        steps.push(built);
        deps.push(edges);
    }

    // Sequential flows already refuse forward references, which rules out
    // cycles; the cap keeps the search cheap on an oversized document.
    if execution_mode == ExecutionMode::Parallel && raw.steps.len() <= MAX_STEPS {
        for cycle in graph::find_cycles(&deps) {
            let ids: Vec<&str> = cycle
                .iter()
                .filter_map(|&i| raw.steps.get(i).map(|s| s.id))
                .collect();
            let first = cycle.first().copied().unwrap_or(0);
            let mut loop_text: Vec<String> = ids.iter().map(|id| quote(id)).collect();
            loop_text.extend(ids.first().map(|id| quote(id)));
            issues.push(
                Issue::new(
                    index_path("steps", first),
                    "cycle",
                    format!(
                        "steps depend on each other in a cycle: {}",
                        loop_text.join(" -> ")
                    ),
                )
                .with("steps", ids),
            );
        }
    }

    if !issues.is_empty() {
        return Err(issues);
    }
    Ok(Flow {
        name: raw.name.to_string(),
        description: raw.description.map(str::to_string),
        flow_type: raw.flow_type.to_string(),
        execution_mode,
        tier,
        steps,
        notes: Vec::new(),
        deps,
    })
}

/// What every step's checks need to know about the others.
struct Ctx<'r, 'a> {
    steps: &'r [RawStep<'a>],
    /// Step id -> index of its first occurrence.
    index: &'r HashMap<&'a str, usize>,
    mode: ExecutionMode,
    outputs: Vec<OutputKind>,
    fan_out: Vec<bool>,
}

impl Ctx<'_, '_> {
    /// Resolves a reference from step `from` to step `id`, reporting why it
    /// cannot be followed.
    fn resolve(&self, from: usize, id: &str, path: &str, issues: &mut Vec<Issue>) -> Option<usize> {
        let from_id = self.steps.get(from).map_or("", |s| s.id);
        let Some(&to) = self.index.get(id) else {
            issues.push(
                Issue::new(
                    path,
                    "unknown_step",
                    format!("there is no step {}", quote(id)),
                )
                .with("step_id", from_id),
            );
            return None;
        };
        if to == from {
            issues.push(
                Issue::new(
                    path,
                    "self_reference",
                    format!("step {} cannot depend on itself", quote(id)),
                )
                .with("step_id", from_id),
            );
            return None;
        }
        if self.mode == ExecutionMode::Sequential && to > from {
            issues.push(
                Issue::new(
                    path,
                    "forward_reference",
                    format!(
                        "step {} uses step {}, which runs after it in sequential mode; move it earlier or use parallel mode",
                        quote(from_id),
                        quote(id)
                    ),
                )
                .with("step_id", from_id),
            );
            return None;
        }
        Some(to)
    }
}

fn step_ids<'a>(raw: &RawFlow<'a>, issues: &mut Vec<Issue>) -> HashMap<&'a str, usize> {
    let mut index = HashMap::new();
    for (i, step) in raw.steps.iter().enumerate() {
        let path = key_path(&index_path("steps", i), "id");
        if !valid_id(step.id) {
            issues.push(Issue::new(
                path.clone(),
                "invalid_step_id",
                format!(
                    "step id {} must be 1 to {MAX_ID_CHARS} characters of a-z, 0-9, _ or -, starting with a letter",
                    quote(step.id)
                ),
            ));
        }
        if let Some(&first) = index.get(step.id) {
            issues.push(
                Issue::new(
                    path,
                    "duplicate_step_id",
                    format!(
                        "step id {} is already used by steps[{first}]",
                        quote(step.id)
                    ),
                )
                .with("step_id", step.id),
            );
        } else {
            index.insert(step.id, i);
        }
    }
    index
}

fn valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_ID_CHARS
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

fn check_name(name: &str, path: &str, issues: &mut Vec<Issue>) {
    let len = name.chars().count();
    if name.trim().is_empty() || len > MAX_NAME_CHARS {
        issues.push(Issue::new(
            path,
            "out_of_range",
            format!("a name must have 1 to {MAX_NAME_CHARS} characters (this one has {len})"),
        ));
    }
}

fn config_str<'a>(step: &RawStep<'a>, key: &str) -> Option<&'a str> {
    step.configuration?.get(key)?.as_str()
}

fn output_kind(step: &RawStep<'_>) -> OutputKind {
    match config_str(step, "output") {
        Some("json") => OutputKind::Json,
        _ => OutputKind::Text,
    }
}

/// Checks one step and returns it with the indices it depends on.
fn build_step(
    ctx: &Ctx<'_, '_>,
    i: usize,
    step: &RawStep<'_>,
    issues: &mut Vec<Issue>,
) -> (Step, Vec<usize>) {
    let base = index_path("steps", i);
    let cfg_path = key_path(&base, "configuration");
    let empty = Map::new();
    let cfg = step.configuration.unwrap_or(&empty);
    let at = |key: &str| key_path(&cfg_path, key);
    let id = step.id;
    let mut deps = Vec::new();

    let name = step.name.unwrap_or(id);
    if step.name.is_some() {
        check_name(name, &key_path(&base, "name"), issues);
    }

    for key in cfg.keys() {
        if !CONFIG_KEYS.iter().any(|(k, _)| k == key) && !is_passthrough(key) {
            issues.push(
                unknown_field(&at(key), key, CONFIG_KEYS.iter().map(|(k, _)| *k))
                    .with("step_id", id),
            );
        }
    }

    let get = |key: &str| cfg.get(key).filter(|v| !v.is_null());
    let text = |key: &str| get(key).and_then(Value::as_str).map(str::to_string);

    let provider = text("provider").unwrap_or_default();
    check_provider(&provider, &at("provider"), id, issues);
    let model = text("model").unwrap_or_default();
    let prompt = text("prompt").unwrap_or_default();
    let system = text("system");

    let temperature = get("temperature").and_then(|v| {
        let t = v
            .as_f64()
            .filter(|t| t.is_finite() && (TEMPERATURE.0..=TEMPERATURE.1).contains(t));
        if t.is_none() {
            issues.push(out_of_range(
                &at("temperature"),
                &format!(
                    "temperature must be a number from {} to {}",
                    TEMPERATURE.0, TEMPERATURE.1
                ),
                id,
            ));
        }
        t
    });
    let max_tokens = int_setting(
        get("max_tokens"),
        MAX_TOKENS.0,
        MAX_TOKENS.1,
        &at("max_tokens"),
        "max_tokens",
        id,
        issues,
    )
    .and_then(|n| u32::try_from(n).ok());
    let timeout_s = int_setting(
        get("timeout_s"),
        TIMEOUT_S.0,
        TIMEOUT_S.1,
        &at("timeout_s"),
        "timeout_s",
        id,
        issues,
    );
    let retries = int_setting(
        get("retries"),
        RETRIES.0,
        RETRIES.1,
        &at("retries"),
        "retries",
        id,
        issues,
    )
    .and_then(|n| u32::try_from(n).ok());

    let output = match text("output").as_deref() {
        None | Some("text") => OutputKind::Text,
        Some("json") => OutputKind::Json,
        Some(other) => {
            issues.push(
                invalid_value(&at("output"), "output", other, OUTPUT_KINDS).with("step_id", id),
            );
            OutputKind::Text
        }
    };

    let fallbacks = get("fallbacks")
        .and_then(Value::as_array)
        .map(|items| check_fallbacks(items, &at("fallbacks"), id, issues))
        .unwrap_or_default();

    let mut depends_on = Vec::new();
    if let Some(items) = get("depends_on").and_then(Value::as_array) {
        for (k, item) in items.iter().enumerate() {
            if let Some(dep) = item.as_str() {
                depends_on.push(dep.to_string());
                deps.extend(ctx.resolve(i, dep, &index_path(&at("depends_on"), k), issues));
            }
        }
    }

    let for_each = text("for_each").and_then(|spec| {
        let path = at("for_each");
        let fe = parse_for_each(&spec);
        if fe.is_none() {
            issues.push(
                Issue::new(
                    path.clone(),
                    "invalid_for_each",
                    "for_each must be \"<step_id>\" or \"<step_id>.<field>…\" (or the template path \"steps.<step_id>.output.<field>…\") with no empty parts",
                )
                .with("step_id", id),
            );
        }
        let fe = fe?;
        let source = ctx.resolve(i, &fe.step, &path, issues)?;
        deps.push(source);
        if ctx.outputs.get(source) != Some(&OutputKind::Json) {
            issues.push(
                Issue::new(
                    path,
                    "for_each_not_json",
                    format!(
                        "for_each reads step {}, whose output is not \"json\"; set its output to \"json\"",
                        quote(&fe.step)
                    ),
                )
                .with("step_id", id),
            );
        }
        Some(fe)
    });

    let has_items = for_each.is_some() || ctx.fan_out.get(i).copied().unwrap_or(false);
    deps.extend(check_template(
        ctx,
        i,
        &prompt,
        &at("prompt"),
        has_items,
        issues,
    ));
    if let Some(system) = &system {
        deps.extend(check_template(
            ctx,
            i,
            system,
            &at("system"),
            has_items,
            issues,
        ));
    }
    deps.sort_unstable();
    deps.dedup();

    let config = StepConfig {
        provider,
        model,
        prompt,
        system,
        temperature,
        max_tokens,
        fallbacks,
        depends_on,
        for_each,
        output,
        timeout_s,
        retries,
    };
    let step = Step {
        id: id.to_string(),
        name: name.to_string(),
        config,
        configuration: Value::Object(cfg.clone()),
    };
    (step, deps)
}

/// Keys the React app keeps for its own UI state; stored untouched.
fn is_passthrough(key: &str) -> bool {
    key.starts_with("x_") || key.starts_with("ui")
}

fn check_provider(provider: &str, path: &str, step_id: &str, issues: &mut Vec<Issue>) {
    if !PROVIDERS.contains(&provider) {
        issues.push(
            invalid_value(path, "provider", provider, PROVIDERS)
                .with("step_id", step_id)
                .renamed("unknown_provider"),
        );
    }
}

fn check_fallbacks(
    items: &[Value],
    path: &str,
    step_id: &str,
    issues: &mut Vec<Issue>,
) -> Vec<ModelRef> {
    if items.len() > MAX_FALLBACKS {
        issues.push(out_of_range(
            path,
            &format!(
                "at most {MAX_FALLBACKS} fallbacks are allowed, got {}",
                items.len()
            ),
            step_id,
        ));
    }
    let mut out = Vec::new();
    for (k, item) in items.iter().enumerate() {
        let Some(obj) = item.as_object() else {
            continue;
        };
        let item_path = index_path(path, k);
        for key in obj.keys() {
            if key != "provider" && key != "model" && !is_passthrough(key) {
                issues.push(
                    unknown_field(
                        &key_path(&item_path, key),
                        key,
                        ["provider", "model"].into_iter(),
                    )
                    .with("step_id", step_id),
                );
            }
        }
        let field = |key: &str| {
            obj.get(key)
                .and_then(Value::as_str)
                .map(str::trim)
                .unwrap_or("")
        };
        let (provider, model) = (field("provider"), field("model"));
        for (key, value) in [("provider", provider), ("model", model)] {
            if value.is_empty() {
                issues.push(
                    Issue::new(
                        key_path(&item_path, key),
                        "missing_field",
                        format!("fallback has no {key}"),
                    )
                    .with("step_id", step_id),
                );
            }
        }
        if !provider.is_empty() {
            check_provider(provider, &key_path(&item_path, "provider"), step_id, issues);
        }
        out.push(ModelRef {
            provider: provider.to_string(),
            model: model.to_string(),
        });
    }
    out
}

fn parse_for_each(spec: &str) -> Option<ForEach> {
    let mut parts = spec.split('.');
    let step = parts.next().filter(|s| !s.is_empty())?;
    let path: Vec<String> = parts.map(str::to_string).collect();
    if path.iter().any(|p| p.trim().is_empty()) {
        return None;
    }
    Some(ForEach {
        step: step.to_string(),
        path,
    })
}

/// Checks a template's syntax and variables; returns the steps it reads.
fn check_template(
    ctx: &Ctx<'_, '_>,
    i: usize,
    source: &str,
    path: &str,
    has_items: bool,
    issues: &mut Vec<Issue>,
) -> Vec<usize> {
    let id = ctx.steps.get(i).map_or("", |s| s.id);
    let analysis = match template::analyze(source) {
        Ok(a) => a,
        Err(e) => {
            issues.push(
                Issue::new(path, "template_syntax", format!("template error: {e}"))
                    .with("step_id", id),
            );
            return Vec::new();
        }
    };
    if analysis.dynamic_steps {
        issues.push(
            Issue::new(
                path,
                "dynamic_step_reference",
                "use steps.<id> or steps[\"<id>\"] so the step's dependencies are known before it runs",
            )
            .with("step_id", id),
        );
    }
    let mut deps = Vec::new();
    for var in &analysis.variables {
        let root = var.split('.').next().unwrap_or_default();
        if root == ROOT_INPUT {
            continue;
        }
        if let Some((target, rest)) = template::step_path(var) {
            let hyphenated = ctx.steps.iter().find(|s| {
                s.id.strip_prefix(target)
                    .is_some_and(|tail| tail.starts_with('-'))
            });
            if let (false, Some(similar)) = (ctx.index.contains_key(target), hyphenated) {
                // `steps.first-draft` parses as `steps.first - draft`.
                issues.push(
                    Issue::new(
                        path,
                        "unknown_step",
                        format!(
                            "there is no step {}; write steps[{}] for an id with hyphens",
                            quote(target),
                            quote(similar.id)
                        ),
                    )
                    .with("step_id", id),
                );
                continue;
            }
            let Some(j) = ctx.resolve(i, target, path, issues) else {
                continue;
            };
            deps.push(j);
            let fan_out = ctx.fan_out.get(j).copied().unwrap_or(false);
            let problem = match rest.first().copied() {
                None | Some("output") if rest.len() <= 1 => None,
                Some("output") if ctx.outputs.get(j) == Some(&OutputKind::Text) && !fan_out => {
                    Some(format!(
                    "{} reads a field of step {}, whose output is text; set its output to \"json\"",
                    var,
                    quote(target)
                ))
                }
                Some("output") => None,
                Some("outputs") if fan_out => None,
                Some("outputs") => Some(format!(
                    "{var}: only a for_each step has outputs; use steps.{target}.output"
                )),
                _ => Some(format!(
                    "{}: a step has only output and outputs",
                    quote(var)
                )),
            };
            if let Some(message) = problem {
                issues.push(Issue::new(path, "unknown_variable", message).with("step_id", id));
            }
            continue;
        }
        if root == ROOT_STEPS {
            continue;
        }
        if ITEM_VARS.contains(&root) {
            if !has_items {
                issues.push(
                    Issue::new(
                        path,
                        "unknown_variable",
                        format!("{} is only defined in a for_each step", quote(root)),
                    )
                    .with("step_id", id),
                );
            }
            continue;
        }
        if !template::is_global(root) {
            issues.push(
                Issue::new(
                    path,
                    "unknown_variable",
                    format!(
                        "unknown variable {}; templates can use input, steps and, in a for_each step, item, item_index and item_number",
                        quote(root)
                    ),
                )
                .with("step_id", id),
            );
        }
    }
    deps
}

/// An integer setting in `lo..=hi`. Integral floats (`100.0`, as some JSON
/// round trips write them) are accepted.
fn int_setting(
    value: Option<&Value>,
    lo: u64,
    hi: u64,
    path: &str,
    name: &str,
    step_id: &str,
    issues: &mut Vec<Issue>,
) -> Option<u64> {
    let value = value?;
    let n = value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= hi as f64)
            .map(|f| f as u64)
    });
    let n = n.filter(|n| (lo..=hi).contains(n));
    if n.is_none() {
        issues.push(out_of_range(
            path,
            &format!("{name} must be an integer from {lo} to {hi}"),
            step_id,
        ));
    }
    n
}

fn out_of_range(path: &str, message: &str, step_id: &str) -> Issue {
    Issue::new(path, "out_of_range", message).with("step_id", step_id)
}

fn invalid_value(path: &str, what: &str, got: &str, valid: &[&str]) -> Issue {
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

fn unknown_field<'k>(path: &str, key: &str, known: impl Iterator<Item = &'k str>) -> Issue {
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
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
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

fn edit_distance(a: &str, b: &str) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::codes::INVALID_FLOW;

    /// docs/flow.schema.json repeats the limits for editors: it must say what the
    /// checker enforces.
    #[test]
    fn the_json_schema_states_the_same_limits() {
        let schema: Value =
            serde_json::from_str(include_str!("../../docs/flow.schema.json")).expect("schema");
        let at = |path: &str| {
            schema
                .pointer(path)
                .cloned()
                .unwrap_or_else(|| panic!("{path} not in the schema"))
        };
        let words = |path: &str| -> Vec<String> {
            at(path)
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        let owned = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let tiers: Vec<&str> = Tier::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(words("/properties/type/enum"), owned(FLOW_TYPES));
        assert_eq!(
            words("/properties/execution_mode/enum"),
            owned(EXECUTION_MODES)
        );
        assert_eq!(words("/properties/tier/enum"), owned(&tiers));
        assert_eq!(words("/$defs/provider/enum"), owned(PROVIDERS));
        let cfg = "/$defs/configuration/properties";
        assert_eq!(words(&format!("{cfg}/output/enum")), owned(OUTPUT_KINDS));
        assert_eq!(at("/properties/steps/maxItems"), json!(MAX_STEPS));
        assert_eq!(at("/properties/name/maxLength"), json!(MAX_NAME_CHARS));
        assert_eq!(
            at("/$defs/step/properties/name/maxLength"),
            json!(MAX_NAME_CHARS)
        );
        assert_eq!(
            at(&format!("{cfg}/fallbacks/maxItems")),
            json!(MAX_FALLBACKS)
        );
        let range = |key: &str| {
            (
                at(&format!("{cfg}/{key}/minimum")),
                at(&format!("{cfg}/{key}/maximum")),
            )
        };
        let (lo, hi) = range("temperature");
        assert_eq!(
            (lo.as_f64(), hi.as_f64()),
            (Some(TEMPERATURE.0), Some(TEMPERATURE.1))
        );
        assert_eq!(
            range("max_tokens"),
            (json!(MAX_TOKENS.0), json!(MAX_TOKENS.1))
        );
        assert_eq!(range("timeout_s"), (json!(TIMEOUT_S.0), json!(TIMEOUT_S.1)));
        assert_eq!(range("retries"), (json!(RETRIES.0), json!(RETRIES.1)));
        assert_eq!(
            at("/$defs/stepId/pattern"),
            json!(format!("^[a-z][a-z0-9_-]{{0,{}}}$", MAX_ID_CHARS - 1))
        );
    }
    use crate::flow::parse_flow;
    use crate::flow::test_support::{flow, has, refused, step};
    use serde_json::json;

    fn accepted(doc: &Value) -> Flow {
        match parse_flow(doc) {
            Ok(f) => f,
            Err(e) => panic!("refused: {e} {:?}", e.details),
        }
    }

    #[test]
    fn duplicate_and_malformed_ids() {
        let doc = flow(
            "sequential",
            vec![
                step("a", json!({})),
                step("a", json!({})),
                step("B", json!({})),
            ],
        );
        let got = refused(&doc, INVALID_FLOW);
        assert!(has(&got, "steps[1].id", "duplicate_step_id"), "{got:?}");
        assert!(has(&got, "steps[2].id", "invalid_step_id"), "{got:?}");
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn unknown_steps_are_refused_everywhere() {
        let doc = flow(
            "parallel",
            vec![step(
                "a",
                json!({"depends_on": ["ghost"], "for_each": "phantom.items",
                       "prompt": "{{ steps.spirit.output }}"}),
            )],
        );
        let got = refused(&doc, INVALID_FLOW);
        assert!(
            has(&got, "steps[0].configuration.depends_on[0]", "unknown_step"),
            "{got:?}"
        );
        assert!(
            has(&got, "steps[0].configuration.for_each", "unknown_step"),
            "{got:?}"
        );
        assert!(
            has(&got, "steps[0].configuration.prompt", "unknown_step"),
            "{got:?}"
        );
    }

    #[test]
    fn self_references_are_refused() {
        let doc = flow(
            "parallel",
            vec![step(
                "a",
                json!({"depends_on": ["a"], "system": "{{ steps.a.output }}"}),
            )],
        );
        let got = refused(&doc, INVALID_FLOW);
        assert!(
            has(
                &got,
                "steps[0].configuration.depends_on[0]",
                "self_reference"
            ),
            "{got:?}"
        );
        assert!(
            has(&got, "steps[0].configuration.system", "self_reference"),
            "{got:?}"
        );
    }

    #[test]
    fn sequential_refuses_forward_references_parallel_allows_them() {
        let steps = vec![
            step(
                "a",
                json!({"prompt": "Use {{ steps.b.output }}", "depends_on": ["c"]}),
            ),
            step("b", json!({})),
            step("c", json!({})),
        ];
        let got = refused(&flow("sequential", steps.clone()), INVALID_FLOW);
        assert!(
            has(&got, "steps[0].configuration.prompt", "forward_reference"),
            "{got:?}"
        );
        assert!(
            has(
                &got,
                "steps[0].configuration.depends_on[0]",
                "forward_reference"
            ),
            "{got:?}"
        );
        let f = accepted(&flow("parallel", steps));
        assert_eq!(f.dependencies(0), vec![1, 2]);
        assert_eq!(f.depth(), 2);
        // Absent execution_mode means sequential.
        let mut doc = flow(
            "sequential",
            vec![
                step("a", json!({"depends_on": ["b"]})),
                step("b", json!({})),
            ],
        );
        if let Some(o) = doc.as_object_mut() {
            o.remove("execution_mode");
        }
        assert!(has(
            &refused(&doc, INVALID_FLOW),
            "steps[0].configuration.depends_on[0]",
            "forward_reference"
        ));
    }

    #[test]
    fn cycles_are_reported_with_their_steps() {
        let doc = flow(
            "parallel",
            vec![
                step("a", json!({"prompt": "{{ steps.c.output }}"})),
                step("b", json!({"depends_on": ["a"]})),
                step("c", json!({"for_each": "b", "prompt": "{{ item }}"})),
                step("d", json!({"depends_on": ["c"]})),
            ],
        );
        let err = parse_flow(&doc).err();
        let details = err.and_then(|e| e.details).unwrap_or_default();
        let cycles: Vec<&Value> = details["issues"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["code"] == "cycle")
            .collect();
        assert_eq!(cycles.len(), 1, "{details}");
        assert_eq!(cycles[0]["steps"], json!(["a", "c", "b"]));
        assert_eq!(cycles[0]["path"], "steps[0]");
    }

    #[test]
    fn for_each_needs_a_json_source() {
        let doc = flow(
            "sequential",
            vec![
                step("a", json!({})),
                step("b", json!({"for_each": "a.items", "prompt": "{{ item }}"})),
            ],
        );
        let got = refused(&doc, INVALID_FLOW);
        assert_eq!(
            got,
            [(
                "steps[1].configuration.for_each".to_string(),
                "for_each_not_json".to_string()
            )]
        );
        let doc = flow("sequential", vec![step("a", json!({"for_each": "a..b"}))]);
        assert!(has(
            &refused(&doc, INVALID_FLOW),
            "steps[0].configuration.for_each",
            "invalid_for_each"
        ));
    }

    #[test]
    fn providers_must_be_known_including_fallbacks() {
        let doc = flow(
            "sequential",
            vec![step(
                "a",
                json!({"provider": "openia", "fallbacks": [{"provider": "anthropic", "model": "m"},
                       {"provider": "cohere", "model": "c"}, {"provider": "openai", "model": ""}]}),
            )],
        );
        let got = refused(&doc, INVALID_FLOW);
        assert!(
            has(&got, "steps[0].configuration.provider", "unknown_provider"),
            "{got:?}"
        );
        assert!(
            has(
                &got,
                "steps[0].configuration.fallbacks[1].provider",
                "unknown_provider"
            ),
            "{got:?}"
        );
        assert!(
            has(
                &got,
                "steps[0].configuration.fallbacks[2].model",
                "missing_field"
            ),
            "{got:?}"
        );
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn parameters_out_of_range() {
        let fallbacks: Vec<Value> = (0..6)
            .map(|_| json!({"provider": "openai", "model": "m"}))
            .collect();
        let doc = flow(
            "sequential",
            vec![
                step(
                    "a",
                    json!({"temperature": 2.5, "max_tokens": 0, "timeout_s": 901, "retries": 11,
                       "fallbacks": fallbacks}),
                ),
                step(
                    "b",
                    json!({"temperature": -0.1, "max_tokens": 1.5, "retries": -1}),
                ),
            ],
        );
        let got = refused(&doc, INVALID_FLOW);
        for path in [
            "steps[0].configuration.temperature",
            "steps[0].configuration.max_tokens",
            "steps[0].configuration.timeout_s",
            "steps[0].configuration.retries",
            "steps[0].configuration.fallbacks",
            "steps[1].configuration.temperature",
            "steps[1].configuration.max_tokens",
            "steps[1].configuration.retries",
        ] {
            assert!(has(&got, path, "out_of_range"), "{path}: {got:?}");
        }
        assert_eq!(got.len(), 8);
        // The limits themselves are fine.
        let ok = flow(
            "sequential",
            vec![step(
                "a",
                json!({"temperature": 2, "max_tokens": 200000, "timeout_s": 900, "retries": 0}),
            )],
        );
        let f = accepted(&ok);
        assert_eq!(f.steps[0].config.max_tokens, Some(200_000));
        assert_eq!(f.steps[0].config.temperature, Some(2.0));
    }

    #[test]
    fn names_and_step_counts_are_bounded() {
        let mut doc = flow("sequential", vec![step("a", json!({}))]);
        doc["name"] = json!("n".repeat(201));
        doc["steps"][0]["name"] = json!("  ");
        let got = refused(&doc, INVALID_FLOW);
        assert!(has(&got, "name", "out_of_range"));
        assert!(has(&got, "steps[0].name", "out_of_range"));
        let many: Vec<Value> = (0..101)
            .map(|i| step(&format!("s{i}"), json!({})))
            .collect();
        assert!(has(
            &refused(&flow("parallel", many), INVALID_FLOW),
            "steps",
            "out_of_range"
        ));
    }

    #[test]
    fn enumerations_are_checked() {
        let mut doc = flow("async", vec![step("a", json!({"output": "xml"}))]);
        doc["type"] = json!("half");
        doc["tier"] = json!("gold");
        let got = refused(&doc, INVALID_FLOW);
        for path in [
            "type",
            "execution_mode",
            "tier",
            "steps[0].configuration.output",
        ] {
            assert!(has(&got, path, "invalid_value"), "{path}: {got:?}");
        }
    }

    #[test]
    fn unknown_configuration_keys_are_refused_but_ui_keys_kept() {
        let doc = flow(
            "sequential",
            vec![step(
                "a",
                json!({"max_token": 5, "x_color": "red", "uiState": {"open": true}}),
            )],
        );
        let err = parse_flow(&doc).err();
        let msg = err.as_ref().map(|e| e.message.clone()).unwrap_or_default();
        assert!(msg.contains("did you mean \"max_tokens\""), "{msg}");
        let got = err
            .as_ref()
            .map(crate::flow::test_support::issues)
            .unwrap_or_default();
        assert_eq!(
            got,
            [(
                "steps[0].configuration.max_token".to_string(),
                "unknown_field".to_string()
            )]
        );

        let doc = flow(
            "sequential",
            vec![step(
                "a",
                json!({"x_color": "red", "uiState": {"open": true}}),
            )],
        );
        let f = accepted(&doc);
        assert_eq!(f.steps[0].configuration["uiState"], json!({"open": true}));
        assert_eq!(f.steps[0].configuration["x_color"], "red");
    }

    #[test]
    fn template_problems() {
        let doc = flow(
            "sequential",
            vec![
                step("a", json!({"prompt": "{{ input.topic ", "output": "json"})),
                step(
                    "b",
                    json!({"prompt": "{{ topic | upper }} {{ item.title }} {{ loop.index }}"}),
                ),
                step(
                    "c",
                    json!({"prompt": "{{ steps.b.result }} {{ steps.b.outputs }} {{ steps.b.output.x }}"}),
                ),
                step(
                    "d",
                    json!({"prompt": "{% for s in steps %}{{ s }}{% endfor %}"}),
                ),
            ],
        );
        let got = refused(&doc, INVALID_FLOW);
        assert!(
            has(&got, "steps[0].configuration.prompt", "template_syntax"),
            "{got:?}"
        );
        let count =
            |path: &str, code: &str| got.iter().filter(|(p, c)| p == path && c == code).count();
        assert_eq!(
            count("steps[1].configuration.prompt", "unknown_variable"),
            3,
            "{got:?}"
        );
        assert_eq!(
            count("steps[2].configuration.prompt", "unknown_variable"),
            3,
            "{got:?}"
        );
        assert!(
            has(
                &got,
                "steps[3].configuration.prompt",
                "dynamic_step_reference"
            ),
            "{got:?}"
        );
    }

    #[test]
    fn templates_may_use_globals_filters_and_hyphenated_ids() {
        let doc = flow(
            "parallel",
            vec![
                step("first-draft", json!({"output": "json"})),
                step(
                    "b",
                    json!({"for_each": "first-draft.parts",
                           "prompt": "{% for i in range(2) %}{{ loop.index }}{% endfor %} {{ item_index }} {{ steps['first-draft'].output | tojson }} {{ input.x | default('y') }}"}),
                ),
            ],
        );
        let f = accepted(&doc);
        assert_eq!(f.dependencies(1), vec![0]);
        let cfg = &f.steps[1].config;
        assert_eq!(
            cfg.for_each,
            Some(ForEach {
                step: "first-draft".into(),
                path: vec!["parts".into()]
            })
        );
    }

    #[test]
    fn hyphenated_ids_in_attribute_syntax_get_a_hint() {
        let doc = flow(
            "sequential",
            vec![
                step("first-draft", json!({})),
                step("b", json!({"prompt": "{{ steps.first-draft.output }}"})),
            ],
        );
        let details = parse_flow(&doc)
            .err()
            .and_then(|e| e.details)
            .unwrap_or_default();
        let hinted = details["issues"].as_array().into_iter().flatten().any(|i| {
            i["code"] == "unknown_step"
                && i["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("steps[\"first-draft\"]"))
        });
        assert!(hinted, "{details}");
    }

    #[test]
    fn every_problem_of_the_stage_is_listed() {
        let doc = flow(
            "sequential",
            vec![
                step("a", json!({"provider": "nope", "temperature": 9})),
                step(
                    "b",
                    json!({"depends_on": ["zzz"], "prompt": "{{ what | trim }}"}),
                ),
            ],
        );
        let got = refused(&doc, INVALID_FLOW);
        assert_eq!(got.len(), 4, "{got:?}");
    }

    #[test]
    fn ids_follow_the_rules() {
        for ok in ["a", "outline", "chapter-2", "a_b", &"a".repeat(64)] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in ["", "1a", "_a", "A", "a b", "é", &"a".repeat(65)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn for_each_specs_parse() {
        assert_eq!(
            parse_for_each("outline.chapters"),
            Some(ForEach {
                step: "outline".into(),
                path: vec!["chapters".into()]
            })
        );
        assert_eq!(parse_for_each("outline").map(|f| f.path.len()), Some(0));
        assert_eq!(parse_for_each("outline..x"), None);
        assert_eq!(parse_for_each(".x"), None);
        assert_eq!(parse_for_each("x."), None);
    }

    #[test]
    fn suggestions_for_typos() {
        assert_eq!(
            closest("max_token", &["max_tokens", "model"]),
            Some("max_tokens")
        );
        assert_eq!(closest("zzzzzz", &["max_tokens", "model"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
