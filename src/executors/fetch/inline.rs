//! Turning a request's `url` inputs into text inputs, so executors never touch the network.
//!
//! The provider does this before a job takes an execution slot (a slow URL must not hold one),
//! and the executor then sees an ordinary text input with the file name the URL gave it.

use std::time::Instant;

use super::{fetch, FetchPolicy};
use crate::executors::ExecError;
use crate::protocol::failure::FailureCode;
use crate::protocol::nip90::{InputType, JobRequest};

/// Most `url` inputs fetched for one job.
pub const MAX_URL_INPUTS: usize = 4;

/// Whether `request` has `url` inputs to fetch.
pub fn has_urls(request: &JobRequest) -> bool {
    request
        .inputs
        .iter()
        .any(|i| i.input_type == InputType::Url)
}

/// `request` with every `url` input fetched under `policy` (one deadline for all of them) and
/// replaced by its text. When the first input was a URL, its path becomes the `path` param, as
/// if the buyer had sent the file itself.
pub async fn inline_urls(
    request: &JobRequest,
    policy: &FetchPolicy,
) -> Result<JobRequest, ExecError> {
    let invalid = |m: String| ExecError::new(FailureCode::InvalidInput, m);
    let urls = request
        .inputs
        .iter()
        .filter(|i| i.input_type == InputType::Url)
        .count();
    if urls == 0 {
        return Ok(request.clone());
    }
    if urls > MAX_URL_INPUTS {
        return Err(invalid(format!(
            "{urls} url inputs; at most {MAX_URL_INPUTS} are fetched per job"
        )));
    }
    let deadline = Instant::now() + policy.timeout;
    let mut out = request.clone();
    let mut first_path = None;
    for (n, input) in out.inputs.iter_mut().enumerate() {
        if input.input_type != InputType::Url {
            continue;
        }
        let left = FetchPolicy {
            timeout: deadline.saturating_duration_since(Instant::now()),
            ..policy.clone()
        };
        let fetched = fetch(&input.data, &left)
            .await
            .map_err(|e| invalid(e.to_string()))?;
        let text = String::from_utf8(fetched.body)
            .map_err(|_| invalid(format!("{}: binary input (not UTF-8)", input.data)))?;
        if n == 0 {
            first_path = Some(file_name(&input.data));
        }
        input.data = text;
        input.input_type = InputType::Text;
    }
    if let Some(path) = first_path {
        out.params.insert(0, ("path".into(), path));
    }
    Ok(out)
}

/// The file name a URL gives its content: its path without the leading slash, or `index`.
fn file_name(url: &str) -> String {
    let path = reqwest::Url::parse(url)
        .map(|u| u.path().trim_start_matches('/').to_string())
        .unwrap_or_default();
    if path.is_empty() {
        "index".into()
    } else {
        path
    }
}
