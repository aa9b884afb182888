//! Fetching a buyer's `url` input without handing the buyer the provider's network.
//!
//! The buyer chooses the URL and the provider publishes what it read, so a naive fetch is a
//! server-side request forgery: testers got a provider's local `secret.env` back in a public
//! result. Here every hop is checked before a byte is sent:
//!
//! - only `http` and `https`, no proxies (a proxy would resolve the name itself);
//! - the host is resolved first and every address is judged by [`address::classify`]; loopback,
//!   private, link-local, CGNAT, documentation, multicast and the other special ranges are
//!   refused unless the operator allows private addresses;
//! - the connection goes to exactly the addresses that were checked (the client's resolver is
//!   pinned to them and knows no other name), so DNS rebinding cannot swap them afterwards;
//! - redirects are followed here, at most [`MAX_REDIRECTS`], each hop checked again;
//! - the body is capped at [`FetchPolicy::max_bytes`] and the whole fetch at
//!   [`FetchPolicy::timeout`].

pub mod address;
mod inline;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::LOCATION;
use reqwest::{StatusCode, Url};

pub use address::{classify, Blocked};
pub use inline::{has_urls, inline_urls, MAX_URL_INPUTS};

/// Most redirects followed for one input.
pub const MAX_REDIRECTS: usize = 5;

/// The limits of one fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPolicy {
    /// Fetch from loopback and private addresses too (a provider on a trusted LAN, tests).
    pub allow_private: bool,
    /// Largest body read, in bytes.
    pub max_bytes: usize,
    /// Longest the whole fetch may take, redirects included.
    pub timeout: Duration,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        Self {
            allow_private: false,
            max_bytes: crate::executors::code::MAX_FILE_BYTES,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why a fetch did not happen or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not a URL.
    #[error("bad url `{0}`: {1}")]
    BadUrl(String, String),
    /// Not http(s).
    #[error("only http(s) urls are fetched, not {0}")]
    Scheme(String),
    /// The address is not one a provider connects to.
    #[error("refusing to fetch {url}: {why} ({ip})")]
    Refused {
        /// The URL of the refused hop.
        url: String,
        /// The address it resolved to.
        ip: IpAddr,
        /// What kind of address that is.
        why: Blocked,
    },
    /// The name did not resolve.
    #[error("cannot resolve the host of {0}: {1}")]
    Resolve(String, String),
    /// Connection or protocol failure.
    #[error("cannot fetch {0}: {1}")]
    Http(String, String),
    /// A non-success status.
    #[error("fetching {0}: HTTP {1}")]
    Status(String, StatusCode),
    /// Too many hops.
    #[error("fetching {0}: more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects(String),
    /// A redirect without a usable `Location`.
    #[error("fetching {0}: a redirect without a valid Location")]
    BadRedirect(String),
    /// Over the size limit.
    #[error("{0} is larger than {1} bytes")]
    TooLarge(String, usize),
    /// Over the time limit.
    #[error("fetching {0} took longer than {1:?}")]
    Timeout(String, Duration),
}

/// A fetched body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Where it was finally read from (after redirects).
    pub final_url: Url,
    /// The body.
    pub body: Vec<u8>,
}

/// Fetches `url` under `policy`: every hop resolved, checked and pinned.
pub async fn fetch(url: &str, policy: &FetchPolicy) -> Result<Fetched, FetchError> {
    fetch_checked(url, policy, &[]).await
}

/// [`fetch`], treating the socket addresses in `exempt` as public (tests stand up an "outside"
/// server on loopback this way; nothing outside this module can pass any).
async fn fetch_checked(
    url: &str,
    policy: &FetchPolicy,
    exempt: &[SocketAddr],
) -> Result<Fetched, FetchError> {
    let start = parse(url)?;
    match tokio::time::timeout(policy.timeout, follow(start, policy, exempt)).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Timeout(url.to_string(), policy.timeout)),
    }
}

fn parse(url: &str) -> Result<Url, FetchError> {
    let parsed = Url::parse(url).map_err(|e| FetchError::BadUrl(url.to_string(), e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(FetchError::Scheme(parsed.scheme().to_string()));
    }
    Ok(parsed)
}

async fn follow(
    mut url: Url,
    policy: &FetchPolicy,
    exempt: &[SocketAddr],
) -> Result<Fetched, FetchError> {
    for _hop in 0..=MAX_REDIRECTS {
        let addrs = checked_addrs(&url, policy, exempt).await?;
        let client = pinned_client(&url, &addrs)?;
        let shown = url.to_string();
        let mut resp = client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| FetchError::Http(shown.clone(), e.without_url().to_string()))?;
        let status = resp.status();
        if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
            let next = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|loc| url.join(loc).ok())
                .ok_or_else(|| FetchError::BadRedirect(shown.clone()))?;
            tracing::debug!(from = %url, to = %next, "following a redirect");
            url = parse(next.as_str())?;
            continue;
        }
        if !status.is_success() {
            return Err(FetchError::Status(shown, status));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > policy.max_bytes as u64)
        {
            return Err(FetchError::TooLarge(shown, policy.max_bytes));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| FetchError::Http(shown.clone(), e.without_url().to_string()))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > policy.max_bytes {
                return Err(FetchError::TooLarge(shown, policy.max_bytes));
            }
        }
        return Ok(Fetched {
            final_url: url,
            body,
        });
    }
    Err(FetchError::TooManyRedirects(url.to_string()))
}

/// The addresses `url`'s host resolves to, each one allowed by `policy`; an error naming the
/// first refused address when none is.
async fn checked_addrs(
    url: &Url,
    policy: &FetchPolicy,
    exempt: &[SocketAddr],
) -> Result<Vec<SocketAddr>, FetchError> {
    let shown = url.to_string();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| FetchError::BadUrl(shown.clone(), "no port".into()))?;
    let resolved: Vec<SocketAddr> = match host(url) {
        Some(Host::Ip(ip)) => vec![SocketAddr::new(ip, port)],
        Some(Host::Name(name)) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| FetchError::Resolve(shown.clone(), e.to_string()))?
            .collect(),
        None => return Err(FetchError::BadUrl(shown, "no host".into())),
    };
    if policy.allow_private {
        return if resolved.is_empty() {
            Err(FetchError::Resolve(shown, "no address".into()))
        } else {
            Ok(resolved)
        };
    }
    let mut refused = None;
    let mut allowed = Vec::new();
    for addr in resolved {
        match classify(addr.ip()) {
            Some(why) if !exempt.contains(&addr) => {
                refused.get_or_insert((addr.ip(), why));
            }
            _ => allowed.push(addr),
        }
    }
    match (allowed.is_empty(), refused) {
        (false, _) => Ok(allowed),
        (true, Some((ip, why))) => Err(FetchError::Refused {
            url: shown,
            ip,
            why,
        }),
        (true, None) => Err(FetchError::Resolve(shown, "no address".into())),
    }
}

enum Host<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

/// The URL's host: an address literal (the URL parser has already normalised odd IPv4 spellings
/// such as `0x7f.1`) or a name to resolve.
fn host(url: &Url) -> Option<Host<'_>> {
    let h = url.host_str()?;
    let bare = h.trim_start_matches('[').trim_end_matches(']');
    Some(match bare.parse::<IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) => Host::Name(h),
    })
}

/// A client for one hop that connects only to `addrs`: no redirects, no proxy, and a resolver
/// that knows the hop's host and nothing else.
fn pinned_client(url: &Url, addrs: &[SocketAddr]) -> Result<reqwest::Client, FetchError> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(NoDns))
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("pylon/", env!("CARGO_PKG_VERSION")));
    if let Some(Host::Name(name)) = host(url) {
        builder = builder.resolve_to_addrs(name, addrs);
    }
    builder
        .build()
        .map_err(|e| FetchError::Http(url.to_string(), e.to_string()))
}

/// A resolver that resolves nothing: names reach the connector only through the pinned
/// overrides, so a name this module did not check can never be looked up behind its back.
struct NoDns;

impl reqwest::dns::Resolve for NoDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_string();
        Box::pin(async move {
            Err::<reqwest::dns::Addrs, _>(
                format!("{name} was not checked before connecting").into(),
            )
        })
    }
}

#[cfg(test)]
mod tests;
