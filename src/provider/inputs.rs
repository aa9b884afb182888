//! A job's `url` inputs, fetched by the provider before the job takes an execution slot.
//!
//! Fetching inside the slot let four slow URLs from fresh keys hold every slot of a node (a
//! 0.02 s job waited 9.7 s). Here fetches wait only for the fetch limits
//! ([`super::policy::FetchGate`]: a few at once, fewer per buyer) and run under the node's
//! [`crate::executors::fetch::FetchPolicy`]; the executor then gets the text.

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use super::job::Job;
use crate::executors::{fetch, ExecError};
use crate::protocol::failure::FailureCode;
use crate::protocol::nip90::JobRequest;

impl Job<'_> {
    /// The request the executor runs: this one, or a copy with its `url` inputs inlined as text.
    /// Fetching jobs count as queued.
    pub(super) async fn inputs(&self) -> Result<Cow<'_, JobRequest>, ExecError> {
        let s = self.s;
        let takes_urls = s
            .executors
            .get(self.request.kind)
            .is_some_and(|e| e.takes_urls());
        if !takes_urls || !fetch::has_urls(self.request) {
            return Ok(Cow::Borrowed(self.request));
        }
        s.queued.fetch_add(1, Ordering::SeqCst);
        let fetched = async {
            let Some(_pass) = s.fetches.enter(self.request.buyer).await else {
                return Err(ExecError::new(
                    FailureCode::ShuttingDown,
                    "this node no longer fetches inputs",
                ));
            };
            fetch::inline_urls(self.request, &s.options.fetch_policy()).await
        }
        .await;
        s.queued.fetch_sub(1, Ordering::SeqCst);
        if let Err(e) = &fetched {
            tracing::debug!(job = %self.id(), "url input not fetched: {e}");
        }
        fetched.map(Cow::Owned)
    }
}
