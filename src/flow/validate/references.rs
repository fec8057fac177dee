//! How a step reaches the others: `depends_on`, `for_each` and the steps its
//! templates read, each resolved to an index or reported with why it cannot be.

use std::collections::HashMap;

use crate::flow::document::{ExecutionMode, ForEach, OutputKind};
use crate::flow::issue::{quote, Issue};
use crate::flow::shape::RawStep;
use crate::flow::template::{self, ITEM_VARS, ROOT_INPUT, ROOT_STEPS};

/// What every step's checks need to know about the others.
pub(super) struct Ctx<'r, 'a> {
    pub(super) steps: &'r [RawStep<'a>],
    /// Step id -> index of its first occurrence.
    pub(super) index: &'r HashMap<&'a str, usize>,
    pub(super) mode: ExecutionMode,
    pub(super) outputs: Vec<OutputKind>,
    pub(super) fan_out: Vec<bool>,
}

impl Ctx<'_, '_> {
    /// Resolves a reference from step `from` to step `id`, reporting why it
    /// cannot be followed.
    pub(super) fn resolve(
        &self,
        from: usize,
        id: &str,
        path: &str,
        issues: &mut Vec<Issue>,
    ) -> Option<usize> {
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

pub(super) fn parse_for_each(spec: &str) -> Option<ForEach> {
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
pub(super) fn check_template(
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
