//! Text generation (kind 5050 → 6050) on a local model behind an OpenAI-compatible server.

pub mod backend;
pub mod server;

use std::time::Duration;

use futures_util::future::BoxFuture;

pub use backend::{Backend, BackendError};

use super::{ExecError, Executor, Output};
use crate::protocol::failure::FailureCode;
use crate::protocol::kinds;
use crate::protocol::nip89::ParamDoc;
use crate::protocol::nip90::{InputType, JobRequest};

/// Largest prompt accepted, bytes.
pub const MAX_PROMPT_BYTES: usize = 32 * 1024;
/// Most tokens generated for one job, whatever the buyer asks.
pub const MAX_TOKENS_CAP: u32 = 1024;
/// Tokens generated when the buyer does not say.
pub const DEFAULT_MAX_TOKENS: u32 = 256;

/// The executor.
#[derive(Debug, Clone)]
pub struct TextGeneration {
    backend: Backend,
    models: Vec<String>,
}

impl TextGeneration {
    /// Serves `models` from `backend` (the first is the default).
    pub fn new(backend: Backend, models: Vec<String>) -> Self {
        Self { backend, models }
    }

    /// Models served.
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }
}

impl Executor for TextGeneration {
    fn kind(&self) -> u16 {
        kinds::TEXT_GENERATION
    }

    fn backends(&self) -> Vec<String> {
        vec![format!(
            "{} ({})",
            self.backend.name(),
            self.backend.endpoint()
        )]
    }

    fn params(&self) -> Vec<ParamDoc> {
        let models: Vec<&str> = self.models.iter().map(String::as_str).collect();
        vec![
            ParamDoc::new("model", "the model; the first served by default", &models),
            ParamDoc::new(
                "max_tokens",
                &format!("tokens to generate, 1–{MAX_TOKENS_CAP} (default {DEFAULT_MAX_TOKENS})"),
                &[],
            ),
            ParamDoc::new(
                "temperature",
                "sampling temperature (the backend's default)",
                &[],
            ),
            ParamDoc::new("top_p", "nucleus sampling (the backend's default)", &[]),
            ParamDoc::new(
                "top_k",
                "top-k sampling, a whole number (the backend's default)",
                &[],
            ),
        ]
    }

    fn models(&self) -> Vec<String> {
        self.models.clone()
    }

    fn execute<'a>(&'a self, request: &'a JobRequest) -> BoxFuture<'a, Result<Output, ExecError>> {
        Box::pin(async move {
            let invalid = |m: String| ExecError::new(FailureCode::InvalidInput, m);
            let prompt = request
                .inputs
                .iter()
                .find(|i| matches!(i.input_type, InputType::Text | InputType::Prompt))
                .map(|i| i.data.as_str())
                .ok_or_else(|| {
                    invalid("no prompt: send it as an `i` tag of type text (or prompt)".into())
                })?;
            if prompt.trim().is_empty() {
                return Err(invalid("the prompt is empty".into()));
            }
            if prompt.len() > MAX_PROMPT_BYTES {
                return Err(invalid(format!(
                    "the prompt is {} bytes; the limit is {MAX_PROMPT_BYTES}",
                    prompt.len()
                )));
            }
            let model =
                match request.param("model") {
                    Some(m) if !m.is_empty() => {
                        if !self.models.iter().any(|s| s == m) {
                            return Err(ExecError::new(
                                FailureCode::ModelMissing,
                                format!(
                                    "model `{m}` is not served here (served: {})",
                                    self.models.join(", ")
                                ),
                            ));
                        }
                        m.to_string()
                    }
                    _ => self.models.first().cloned().ok_or_else(|| {
                        ExecError::new(FailureCode::ModelMissing, "no model served")
                    })?,
                };
            let number =
                |names: &[&str]| names.iter().find_map(|n| request.param(n)).map(str::trim);
            let parse_f = |names: &[&str]| -> Result<Option<f64>, ExecError> {
                number(names)
                    .map(|v| {
                        v.parse::<f64>().map_err(|_| {
                            invalid(format!("{} must be a number, not `{v}`", names[0]))
                        })
                    })
                    .transpose()
            };
            let max_tokens = match number(&["max_tokens", "max-tokens"]) {
                Some(v) => v.parse::<u32>().map_err(|_| {
                    invalid(format!("max_tokens must be a whole number, not `{v}`"))
                })?,
                None => DEFAULT_MAX_TOKENS,
            }
            .clamp(1, MAX_TOKENS_CAP);
            let sampling = backend::Sampling {
                max_tokens,
                temperature: parse_f(&["temperature"])?,
                top_p: parse_f(&["top_p", "top-p"])?,
                top_k: number(&["top_k", "top-k"])
                    .map(|v| {
                        v.parse::<u32>().map_err(|_| {
                            invalid(format!("top_k must be a whole number, not `{v}`"))
                        })
                    })
                    .transpose()?,
            };
            match self.backend.complete(&model, prompt, &sampling).await {
                Ok(c) => Ok(Output { content: c.text }),
                Err(BackendError::ModelMissing(m)) => Err(ExecError::new(
                    FailureCode::ModelMissing,
                    format!("model `{m}` is gone from the backend"),
                )),
                Err(BackendError::Timeout(t)) => Err(ExecError::new(
                    FailureCode::Timeout,
                    format!("the model did not answer within {t:?}"),
                )),
                Err(e) => Err(ExecError::new(FailureCode::ExecError, e.to_string())),
            }
        })
    }
}

/// How long one generation may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

#[cfg(test)]
mod tests {
    use nostr_sdk::Keys;

    use super::*;
    use crate::protocol::nip90::{JobInput, NewJob};

    fn request(input: JobInput, params: &[(&str, &str)]) -> JobRequest {
        let job = NewJob {
            kind: kinds::TEXT_GENERATION,
            inputs: vec![input],
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let keys = Keys::generate();
        let event = job.to_event(&keys).expect("sign");
        JobRequest::from_event(&event, None).expect("parse")
    }

    fn executor(endpoint: &str, timeout: Duration) -> TextGeneration {
        TextGeneration::new(
            Backend::new("openai", endpoint, timeout),
            vec!["m1".into(), "m2".into()],
        )
    }

    async fn failure(tg: &TextGeneration, req: &JobRequest) -> FailureCode {
        match tg.execute(req).await {
            Ok(o) => panic!("expected a failure, got {o:?}"),
            Err(e) => e.code,
        }
    }

    /// An address where nothing listens.
    fn dead_endpoint() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        drop(l);
        format!("http://127.0.0.1:{port}")
    }

    #[tokio::test]
    async fn bad_requests_are_refused_before_the_backend_is_called() {
        let tg = executor(&dead_endpoint(), Duration::from_secs(5));
        let text = |s: &str| JobInput::text(s);
        let cases = [
            (
                request(text("hi"), &[("model", "gpt-9")]),
                FailureCode::ModelMissing,
            ),
            (request(text("  "), &[]), FailureCode::InvalidInput),
            (
                request(text(&"x".repeat(MAX_PROMPT_BYTES + 1)), &[]),
                FailureCode::InvalidInput,
            ),
            (
                request(text("hi"), &[("max_tokens", "-3")]),
                FailureCode::InvalidInput,
            ),
            (
                request(text("hi"), &[("temperature", "warm")]),
                FailureCode::InvalidInput,
            ),
            (
                request(text("hi"), &[("top-p", "1/2")]),
                FailureCode::InvalidInput,
            ),
            (
                request(text("hi"), &[("top_k", "2.5")]),
                FailureCode::InvalidInput,
            ),
            (
                request(JobInput::url("https://example.com/p.txt"), &[]),
                FailureCode::InvalidInput,
            ),
        ];
        for (req, code) in cases {
            assert_eq!(
                failure(&tg, &req).await,
                code,
                "{:?} {:?}",
                req.inputs,
                req.params
            );
        }
    }

    #[tokio::test]
    async fn a_dead_backend_is_an_exec_error() {
        let tg = executor(&dead_endpoint(), Duration::from_secs(5));
        let req = request(JobInput::text("hi"), &[("model", "m2"), ("top_p", "0.5")]);
        assert_eq!(failure(&tg, &req).await, FailureCode::ExecError);
    }

    #[tokio::test]
    async fn a_stalled_backend_times_out_and_the_token_cap_holds() {
        use tokio::io::AsyncReadExt;
        // Accepts the connection, reads the request, never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let held = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.ends_with(b"}") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(s);
        });
        let tg = executor(&url, Duration::from_millis(500));
        let prompt = JobInput {
            input_type: InputType::Prompt,
            ..JobInput::text("hi")
        };
        let req = request(prompt, &[("max_tokens", "5000"), ("top-k", "7")]);
        assert_eq!(failure(&tg, &req).await, FailureCode::Timeout);
        let sent = rx.await.expect("request seen");
        let body = &sent[sent.find("\r\n\r\n").expect("headers") + 4..];
        let v: serde_json::Value = serde_json::from_str(body).expect("json body");
        assert_eq!(v["max_tokens"], MAX_TOKENS_CAP);
        assert_eq!(v["top_k"], 7);
        assert_eq!(v["model"], "m1");
        assert_eq!(v["messages"][0]["content"], "hi");
        held.abort();
    }
}
