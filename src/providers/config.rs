//! Provider credentials and endpoints, only ever from the environment.

use super::anthropic::Anthropic;
use super::gemini::Gemini;
use super::openai::OpenAi;
use super::{http_client, offline, ChatProvider, ProviderRegistry};
use crate::error::Result;
use crate::secret::Secret;
use std::sync::Arc;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ProvidersConfig {
    /// OpenAI API key.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<Secret>,
    /// OpenAI base URL (point it at any OpenAI-compatible server to reuse the `openai` name).
    #[arg(
        long,
        env = "OPENAI_BASE_URL",
        default_value = "https://api.openai.com/v1"
    )]
    pub openai_base_url: String,

    /// Anthropic API key.
    #[arg(long, env = "ANTHROPIC_API_KEY", hide_env_values = true)]
    pub anthropic_api_key: Option<Secret>,
    /// Anthropic base URL.
    #[arg(
        long,
        env = "ANTHROPIC_BASE_URL",
        default_value = "https://api.anthropic.com/v1"
    )]
    pub anthropic_base_url: String,

    /// Google Gemini API key.
    #[arg(long, env = "GEMINI_API_KEY", hide_env_values = true)]
    pub gemini_api_key: Option<Secret>,
    /// Gemini base URL.
    #[arg(
        long,
        env = "GEMINI_BASE_URL",
        default_value = "https://generativelanguage.googleapis.com/v1beta"
    )]
    pub gemini_base_url: String,

    /// Ollama's OpenAI-compatible endpoint (provider `ollama`); set it to enable Ollama.
    #[arg(long, env = "OLLAMA_BASE_URL")]
    pub ollama_base_url: Option<String>,

    /// Any other OpenAI-compatible endpoint (provider `openai_compatible`): OpenRouter, Groq, vLLM.
    #[arg(long, env = "OPENAI_COMPATIBLE_BASE_URL")]
    pub openai_compatible_base_url: Option<String>,
    /// Key for OPENAI_COMPATIBLE_BASE_URL.
    #[arg(long, env = "OPENAI_COMPATIBLE_API_KEY", hide_env_values = true)]
    pub openai_compatible_api_key: Option<Secret>,

    /// Serve providers that have no credentials with the built-in offline provider
    /// (deterministic placeholder text, NOT model output). The demo turns this on.
    #[arg(long, env = "BOOKENGINE_OFFLINE_FALLBACK", default_value_t = false)]
    pub offline_fallback: bool,

    /// Serve providers that have no credentials with the `local` model when it is
    /// available (feature `local-model`); the offline fallback, if on, takes the rest.
    /// The demo turns this on.
    #[arg(long, env = "BOOKENGINE_LOCAL_FALLBACK", default_value_t = false)]
    pub local_fallback: bool,

    /// Concurrent calls per provider, per worker process.
    #[arg(long, env = "BOOKENGINE_PROVIDER_CONCURRENCY", default_value_t = 8)]
    pub provider_concurrency: usize,

    /// A llama-family GGUF model file for provider `local` (feature `local-model`);
    /// without it, `local` serves the default model once `bookengine models fetch` got it.
    #[arg(long, env = "BOOKENGINE_LOCAL_MODEL")]
    pub local_model: Option<std::path::PathBuf>,

    /// The `local` model's sampling seed (default 42): answers at a temperature
    /// above 0 repeat for the same seed and prompt.
    #[arg(long, env = "BOOKENGINE_LOCAL_SEED")]
    pub local_seed: Option<u64>,

    /// Where the default `local` model is kept (default: $XDG_CACHE_HOME/bookengine,
    /// else ~/.cache/bookengine).
    #[arg(long, env = "BOOKENGINE_MODEL_CACHE")]
    pub model_cache: Option<std::path::PathBuf>,
}

fn base(url: &str) -> String {
    url.trim().trim_end_matches('/').to_owned()
}

fn key(k: &Option<Secret>) -> Option<Secret> {
    k.clone().filter(|k| !k.expose().trim().is_empty())
}

impl ProvidersConfig {
    /// Build the registry. Providers without credentials are left out, or, with
    /// `offline_fallback`, answered by the in-process offline server.
    pub async fn registry(&self) -> Result<ProviderRegistry> {
        let http = http_client();
        let n = self.provider_concurrency;
        let mut reg = ProviderRegistry::default();
        let mut missing: Vec<&str> = Vec::new();

        match key(&self.openai_api_key) {
            Some(k) => reg.insert(
                "openai",
                "openai",
                Arc::new(OpenAi {
                    http: http.clone(),
                    base_url: base(&self.openai_base_url),
                    api_key: Some(k),
                    native: true,
                }),
                n,
            ),
            None => missing.push("openai"),
        }
        match key(&self.anthropic_api_key) {
            Some(k) => reg.insert(
                "anthropic",
                "anthropic",
                Arc::new(Anthropic {
                    http: http.clone(),
                    base_url: base(&self.anthropic_base_url),
                    api_key: Some(k),
                }),
                n,
            ),
            None => missing.push("anthropic"),
        }
        match key(&self.gemini_api_key) {
            Some(k) => reg.insert(
                "gemini",
                "gemini",
                Arc::new(Gemini {
                    http: http.clone(),
                    base_url: base(&self.gemini_base_url),
                    api_key: Some(k),
                }),
                n,
            ),
            None => missing.push("gemini"),
        }
        match &self.ollama_base_url {
            Some(url) => reg.insert(
                "ollama",
                "ollama",
                Arc::new(OpenAi {
                    http: http.clone(),
                    base_url: base(url),
                    api_key: None,
                    native: false,
                }),
                n,
            ),
            None => missing.push("ollama"),
        }
        match &self.openai_compatible_base_url {
            Some(url) => reg.insert(
                "openai_compatible",
                "openai_compatible",
                Arc::new(OpenAi {
                    http: http.clone(),
                    base_url: base(url),
                    api_key: key(&self.openai_compatible_api_key),
                    native: false,
                }),
                n,
            ),
            None => missing.push("openai_compatible"),
        }
        // A real small model on the CPU, when its file is there (never downloaded
        // here): one answer at a time per process.
        #[cfg(feature = "local-model")]
        if let Some(path) =
            super::local::resolve_model(self.local_model.as_deref(), self.model_cache.as_deref())
        {
            let local: Arc<dyn ChatProvider> = Arc::new(
                super::local::LocalModelProvider::new(path)
                    .with_seed(self.local_seed.unwrap_or(super::local::DEFAULT_SEED)),
            );
            reg.insert("local", "local", local.clone(), 1);
            if self.local_fallback {
                // One model behind every name: the engine's lock runs one answer at a time.
                for name in missing.drain(..) {
                    reg.insert(name, "local", local.clone(), 1);
                }
            }
        }
        if reg.get("local").is_none() {
            missing.push("local");
        }

        // `offline` is always there: flows may name it explicitly.
        let server = offline::start().await?;
        let offline_client: Arc<dyn ChatProvider> = Arc::new(OpenAi {
            http: http.clone(),
            base_url: server,
            api_key: None,
            native: false,
        });
        reg.insert("offline", "offline", offline_client.clone(), n.max(64));
        if self.offline_fallback {
            for name in missing {
                reg.insert(name, "offline", offline_client.clone(), n.max(64));
            }
        }
        Ok(reg)
    }
}

#[cfg(test)]
mod tests {
    use super::ProvidersConfig;

    /// The names a flow may use (`flow::PROVIDERS`, which the JSON Schema is held
    /// to) are exactly the names the registry serves, so the three never drift.
    #[tokio::test]
    async fn the_registry_serves_exactly_the_names_a_flow_may_use() {
        let config = ProvidersConfig {
            offline_fallback: true,
            ..Default::default()
        };
        let registry = config.registry().await.unwrap();
        let mut served: Vec<String> = registry.labels().into_iter().map(|(n, _)| n).collect();
        let mut allowed: Vec<String> = crate::flow::PROVIDERS
            .iter()
            .map(|s| s.to_string())
            .collect();
        served.sort();
        allowed.sort();
        assert_eq!(served, allowed);
    }
}
