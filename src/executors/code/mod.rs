//! Code-file analysis (kind 5960 → 6960): the repo-map microjob.

mod analyze;
pub mod language;
mod summary;

use futures_util::future::BoxFuture;

pub use analyze::analyze;

use super::{ExecError, Executor, Output};
use crate::protocol::failure::FailureCode;
use crate::protocol::kinds;
use crate::protocol::nip90::{InputType, JobRequest};

/// Largest file analysed, in bytes. A job event must fit a relay's 512 KiB limit with its tags.
pub const MAX_FILE_BYTES: usize = 256 * 1024;

/// The executor.
#[derive(Debug, Default, Clone)]
pub struct CodeAnalysis;

impl Executor for CodeAnalysis {
    fn kind(&self) -> u16 {
        kinds::CODE_ANALYSIS
    }

    fn backends(&self) -> Vec<String> {
        vec![format!(
            "tree-sitter {}",
            "0.27 (rust, python, javascript, typescript, go)"
        )]
    }

    fn execute<'a>(&'a self, request: &'a JobRequest) -> BoxFuture<'a, Result<Output, ExecError>> {
        Box::pin(async move {
            let (path, content) = input(request).await?;
            let analysis = tokio::task::spawn_blocking(move || analyze(&path, &content))
                .await
                .map_err(|e| {
                    ExecError::new(FailureCode::ExecError, format!("analyzer crashed: {e}"))
                })?;
            let json = serde_json::to_string(&analysis)
                .map_err(|e| ExecError::new(FailureCode::ExecError, e.to_string()))?;
            Ok(Output { content: json })
        })
    }
}

/// The file to analyse: `i` text with a `path` param, or an `i` url.
async fn input(request: &JobRequest) -> Result<(String, String), ExecError> {
    let invalid = |m: String| ExecError::new(FailureCode::InvalidInput, m);
    let first = request.inputs.first().ok_or_else(|| {
        invalid("no input: send the file as an `i` text tag (with a `path` param) or a url".into())
    })?;
    let (path, bytes) = match first.input_type {
        InputType::Text | InputType::Prompt => (
            request.param("path").unwrap_or("input.txt").to_string(),
            first.data.clone().into_bytes(),
        ),
        InputType::Url => fetch(&first.data).await?,
        ref other => {
            return Err(invalid(format!(
                "input type `{other:?}` is not supported; use text or url"
            )))
        }
    };
    if bytes.len() > MAX_FILE_BYTES {
        return Err(invalid(format!(
            "file is {} bytes; the limit is {MAX_FILE_BYTES}",
            bytes.len()
        )));
    }
    if bytes.contains(&0) {
        return Err(invalid("binary input (contains NUL bytes)".into()));
    }
    let content =
        String::from_utf8(bytes).map_err(|_| invalid("binary input (not UTF-8)".into()))?;
    Ok((path, content))
}

async fn fetch(url: &str) -> Result<(String, Vec<u8>), ExecError> {
    let invalid = |m: String| ExecError::new(FailureCode::InvalidInput, m);
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(format!("bad url: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "only http(s) urls are fetched, not {}",
            parsed.scheme()
        )));
    }
    let path = parsed.path().trim_start_matches('/').to_string();
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| ExecError::new(FailureCode::ExecError, e.to_string()))?;
    let mut resp = client
        .get(parsed)
        .send()
        .await
        .map_err(|e| invalid(format!("cannot fetch {url}: {}", e.without_url())))?;
    if !resp.status().is_success() {
        return Err(invalid(format!("fetching {url}: HTTP {}", resp.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| invalid(format!("reading {url}: {}", e.without_url())))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_FILE_BYTES {
            return Err(invalid(format!(
                "{url} is larger than {MAX_FILE_BYTES} bytes"
            )));
        }
    }
    Ok((
        if path.is_empty() {
            "index".into()
        } else {
            path
        },
        body,
    ))
}
