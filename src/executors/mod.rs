//! Job kinds a provider can run. Each is an [`Executor`]; the provider looks them up by kind.

pub mod code;
pub mod fetch;
pub mod textgen;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::protocol::failure::FailureCode;
use crate::protocol::nip89::ParamDoc;
use crate::protocol::nip90::JobRequest;

/// A failed execution, with the code the buyer sees in `error` feedback.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ExecError {
    /// Why.
    pub code: FailureCode,
    /// Detail for the buyer.
    pub message: String,
}

impl ExecError {
    /// Shorthand.
    pub fn new(code: FailureCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A job's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The result event's content.
    pub content: String,
}

/// Runs one kind of job.
pub trait Executor: Send + Sync {
    /// The request kind served.
    fn kind(&self) -> u16;
    /// Backends, for the announcement.
    fn backends(&self) -> Vec<String>;
    /// Models served (text generation), for the announcement and status.
    fn models(&self) -> Vec<String> {
        Vec::new()
    }
    /// The `param` tags it reads, for the announcement.
    fn params(&self) -> Vec<ParamDoc> {
        Vec::new()
    }
    /// Whether the executor reads `url` inputs. The provider fetches them (safely, outside the
    /// execution slots: see [`fetch`]) and hands the executor their text; executors themselves
    /// never touch the network for an input.
    fn takes_urls(&self) -> bool {
        false
    }
    /// Runs the job.
    fn execute<'a>(&'a self, request: &'a JobRequest) -> BoxFuture<'a, Result<Output, ExecError>>;
}

/// The executors a node runs, by kind.
#[derive(Clone, Default)]
pub struct Registry {
    by_kind: BTreeMap<u16, Arc<dyn Executor>>,
}

impl Registry {
    /// Every executor built into this binary.
    pub fn builtin() -> Self {
        let mut r = Self::default();
        r.add(Arc::new(code::CodeAnalysis));
        r
    }

    /// Adds (or replaces) the executor for its kind.
    pub fn add(&mut self, executor: Arc<dyn Executor>) {
        self.by_kind.insert(executor.kind(), executor);
    }

    /// Keeps only `kinds`.
    pub fn retain(&mut self, kinds: &[u16]) {
        self.by_kind.retain(|k, _| kinds.contains(k));
    }

    /// The executor for `kind`.
    pub fn get(&self, kind: u16) -> Option<&Arc<dyn Executor>> {
        self.by_kind.get(&kind)
    }

    /// Kinds served.
    pub fn kinds(&self) -> Vec<u16> {
        self.by_kind.keys().copied().collect()
    }

    /// Backends of all executors.
    pub fn backends(&self) -> Vec<String> {
        self.by_kind.values().flat_map(|e| e.backends()).collect()
    }

    /// Models of all executors.
    pub fn models(&self) -> Vec<String> {
        self.by_kind.values().flat_map(|e| e.models()).collect()
    }

    /// The params each kind reads, keyed by kind number as text (the announcement's shape).
    pub fn params(&self) -> BTreeMap<String, Vec<ParamDoc>> {
        self.by_kind
            .iter()
            .map(|(k, e)| (k.to_string(), e.params()))
            .filter(|(_, p)| !p.is_empty())
            .collect()
    }
}
