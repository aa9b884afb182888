//! An OpenAI-compatible chat backend (Ollama, llama.cpp's `llama-server`, llama-cpp-python, vLLM…):
//! `/v1/models` and `/v1/chat/completions`, with timeouts so a dead backend never hangs a job.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

/// Where Ollama and llama-server listen by default.
pub const DEFAULT_ENDPOINTS: [(&str, &str); 2] = [
    ("ollama", "http://127.0.0.1:11434"),
    ("llama.cpp", "http://127.0.0.1:8080"),
];

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// Nothing answers at the endpoint.
    #[error("backend unreachable at {0}: {1}")]
    Unreachable(String, String),
    /// The model is not served.
    #[error("model `{0}` is not served")]
    ModelMissing(String),
    /// Too slow.
    #[error("backend did not answer within {0:?}")]
    Timeout(Duration),
    /// Answered, but not as expected.
    #[error("backend error: {0}")]
    Protocol(String),
}

/// A completion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Completion {
    /// The generated text.
    pub text: String,
    /// The model that answered.
    pub model: String,
    /// Tokens generated (from `usage`, when reported).
    pub completion_tokens: Option<u64>,
}

/// Sampling settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sampling {
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Temperature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Top-k (llama.cpp and Ollama accept it beside the OpenAI fields).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
}

/// An OpenAI-compatible endpoint.
#[derive(Debug, Clone)]
pub struct Backend {
    name: String,
    endpoint: String,
    http: reqwest::Client,
    timeout: Duration,
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
}

impl Backend {
    /// A backend at `endpoint` (e.g. `http://127.0.0.1:8080`), calls bounded by `timeout`.
    pub fn new(name: &str, endpoint: &str, timeout: Duration) -> Self {
        Self {
            name: name.to_string(),
            endpoint: endpoint
                .trim_end_matches('/')
                .trim_end_matches("/v1")
                .to_string(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
            timeout,
        }
    }

    /// Which kind of server this is (`ollama`, `llama.cpp`, `openai`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The base URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The models served.
    pub async fn models(&self) -> Result<Vec<String>, BackendError> {
        let url = format!("{}/v1/models", self.endpoint);
        let resp = tokio::time::timeout(Duration::from_secs(5), self.http.get(&url).send())
            .await
            .map_err(|_| BackendError::Timeout(Duration::from_secs(5)))?
            .map_err(|e| {
                BackendError::Unreachable(self.endpoint.clone(), e.without_url().to_string())
            })?;
        if !resp.status().is_success() {
            return Err(BackendError::Protocol(format!(
                "GET /v1/models: HTTP {}",
                resp.status()
            )));
        }
        let list: ModelList = resp
            .json()
            .await
            .map_err(|e| BackendError::Protocol(e.to_string()))?;
        Ok(list.data.into_iter().map(|m| m.id).collect())
    }

    /// One chat completion of `prompt` with `model`.
    pub async fn complete(
        &self,
        model: &str,
        prompt: &str,
        sampling: &Sampling,
    ) -> Result<Completion, BackendError> {
        let mut body = json!({
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": sampling.max_tokens,
            "stream": false,
        });
        if let Some(t) = sampling.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(p) = sampling.top_p {
            body["top_p"] = json!(p);
        }
        if let Some(k) = sampling.top_k {
            body["top_k"] = json!(k);
        }
        let url = format!("{}/v1/chat/completions", self.endpoint);
        let call = async {
            let resp = self.http.post(&url).json(&body).send().await.map_err(|e| {
                BackendError::Unreachable(self.endpoint.clone(), e.without_url().to_string())
            })?;
            let status = resp.status();
            let text = resp
                .text()
                .await
                .map_err(|e| BackendError::Protocol(e.to_string()))?;
            // Ollama answers 404 "model … not found"; other servers say "not found" in a 400.
            let not_found = status == reqwest::StatusCode::NOT_FOUND
                || (status.is_client_error() && text.to_ascii_lowercase().contains("not found"));
            if not_found {
                return Err(BackendError::ModelMissing(model.to_string()));
            }
            if !status.is_success() {
                return Err(BackendError::Protocol(format!(
                    "HTTP {status}: {}",
                    text.chars().take(200).collect::<String>()
                )));
            }
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| BackendError::Protocol(e.to_string()))?;
            let content = v["choices"][0]["message"]["content"]
                .as_str()
                .ok_or_else(|| BackendError::Protocol("no choices[0].message.content".into()))?;
            Ok(Completion {
                text: content.to_string(),
                model: v["model"].as_str().unwrap_or(model).to_string(),
                completion_tokens: v["usage"]["completion_tokens"].as_u64(),
            })
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| BackendError::Timeout(self.timeout))?
    }
}

/// Finds a running local backend: Ollama, then llama-server, each at its default address.
pub async fn detect(timeout: Duration) -> Option<(Backend, Vec<String>)> {
    detect_among(&DEFAULT_ENDPOINTS, timeout).await
}

/// The first of `candidates` (name, endpoint) that answers with at least one model.
pub async fn detect_among(
    candidates: &[(&str, &str)],
    timeout: Duration,
) -> Option<(Backend, Vec<String>)> {
    for (name, endpoint) in candidates {
        let b = Backend::new(name, endpoint, timeout);
        if let Ok(models) = b.models().await {
            if !models.is_empty() {
                return Some((b, models));
            }
        }
    }
    None
}
