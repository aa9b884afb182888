//! Code-file analysis (kind 5960 → 6960): the repo-map microjob.

mod analyze;
mod infer;
pub mod language;
mod summary;

use futures_util::future::BoxFuture;

pub use analyze::{analyze, analyze_as};

use super::{ExecError, Executor, Output};
use crate::protocol::failure::FailureCode;
use crate::protocol::kinds;
use crate::protocol::nip89::ParamDoc;
use crate::protocol::nip90::{InputType, JobRequest};

/// The path a result names when the buyer sent none.
pub const DEFAULT_PATH: &str = "input.txt";

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

    fn params(&self) -> Vec<ParamDoc> {
        vec![
            ParamDoc::new(
                "path",
                "the file's path, echoed in the result; its extension names the language",
                &[],
            ),
            ParamDoc::new(
                "lang",
                "the language, overriding the path; without both, it is inferred from the \
                 content (shebang, then a parse with every grammar), else text",
                &language::Language::NAMES,
            ),
        ]
    }

    fn execute<'a>(&'a self, request: &'a JobRequest) -> BoxFuture<'a, Result<Output, ExecError>> {
        Box::pin(async move {
            let (path, content) = input(request)?;
            // Without a `path` param (a generic client) the content names the language: a
            // probe that parses it with every grammar, so it runs beside the runtime too.
            let (named, lang) = (
                request.param("path").map(str::to_string),
                request.param("lang").map(str::to_string),
            );
            let analysis = tokio::task::spawn_blocking(move || {
                infer::language(named.as_deref(), lang.as_deref(), &content)
                    .map(|language| analyze_as(&path, language, &content))
            })
            .await
            .map_err(|e| ExecError::new(FailureCode::ExecError, format!("analyzer crashed: {e}")))?
            .map_err(|m| ExecError::new(FailureCode::InvalidInput, m))?;
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
            request.param("path").unwrap_or(DEFAULT_PATH).to_string(),
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

#[cfg(test)]
mod tests {
    use nostr_sdk::Keys;

    use super::*;
    use crate::protocol::code_analysis::Analysis;
    use crate::protocol::nip90::{JobInput, NewJob};

    async fn run(params: Vec<(String, String)>, source: &str) -> Result<Analysis, ExecError> {
        let ev = NewJob {
            kind: kinds::CODE_ANALYSIS,
            inputs: vec![JobInput::text(source)],
            params,
            ..Default::default()
        }
        .to_event(&Keys::generate())
        .expect("request");
        let request = JobRequest::from_event(&ev, None).expect("parse");
        let out = CodeAnalysis.execute(&request).await?;
        Ok(Analysis::from_json(&out.content).expect("analysis"))
    }

    /// A generic NIP-90 client sends the code and nothing else: it still gets the language's
    /// definitions, not a text summary with none.
    #[tokio::test]
    async fn code_sent_without_a_path_is_analysed_in_its_language() {
        let source =
            "pub struct Point { x: i32 }\n\npub fn origin() -> Point {\n    Point { x: 0 }\n}\n";
        let a = run(Vec::new(), source).await.expect("analysis");
        assert_eq!(a.language, "rust");
        assert_eq!(a.path, DEFAULT_PATH);
        let names: Vec<_> = a.definitions.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["Point", "origin"]);
        let py = run(
            vec![("lang".into(), "python".into())],
            "def f():\n    return 1\n",
        )
        .await
        .expect("analysis");
        assert_eq!(py.language, "python");
        let err = run(vec![("lang".into(), "cobol".into())], source)
            .await
            .expect_err("unknown lang");
        assert_eq!(err.code, FailureCode::InvalidInput);
    }

    #[test]
    fn the_announcement_documents_path_and_lang() {
        let params = CodeAnalysis.params();
        let names: Vec<_> = params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["path", "lang"]);
        assert!(params[1].values.contains(&"rust".to_string()));
    }
}
