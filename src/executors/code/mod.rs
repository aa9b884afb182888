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

    fn takes_urls(&self) -> bool {
        true
    }

    fn execute<'a>(&'a self, request: &'a JobRequest) -> BoxFuture<'a, Result<Output, ExecError>> {
        Box::pin(async move {
            let (path, content) = input(request)?;
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

/// The file to analyse: `i` text with a `path` param. A `url` input reaches here already fetched
/// (as text) by the provider, see [`crate::executors::fetch::inline_urls`].
fn input(request: &JobRequest) -> Result<(String, String), ExecError> {
    let invalid = |m: String| ExecError::new(FailureCode::InvalidInput, m);
    let first = request.inputs.first().ok_or_else(|| {
        invalid("no input: send the file as an `i` text tag (with a `path` param) or a url".into())
    })?;
    let (path, bytes) = match first.input_type {
        InputType::Text | InputType::Prompt => (
            request.param("path").unwrap_or("input.txt").to_string(),
            first.data.clone().into_bytes(),
        ),
        InputType::Url => {
            return Err(invalid(
                "url inputs are fetched by the provider before the job runs; \
                 inline them with executors::fetch::inline_urls"
                    .into(),
            ))
        }
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
