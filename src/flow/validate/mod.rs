//! Stage 4: values, references and the dependency graph; builds the [`Flow`].
//!
//! Runs on a shape-checked, secret-free, ready document, so every value here
//! already has the right JSON type; this stage decides whether it makes sense.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::document::{ExecutionMode, Flow, ModelRef, OutputKind, Step, StepConfig, Tier};
use super::graph;
use super::issue::{index_path, key_path, quote, Issue};
use super::shape::{RawFlow, RawStep, CONFIG_KEYS};
use super::PROVIDERS;

mod common_issues;
mod references;

use common_issues::{invalid_value, out_of_range, unknown_field};
use references::{check_template, parse_for_each, Ctx};

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

#[cfg(test)]
mod tests;
