//! Relays: the embedded relay this binary can serve, and the client layer every role uses to reach
//! any relay.
//!
//! - [`settings`] — the embedded relay's tunables (`relay/defaults.toml` + `[relay]` in config);
//! - [`policy`] — what the embedded relay refuses;
//! - [`nip11`] — its information document;
//! - [`server`] — the axum front and `LocalRelay` behind it;
//! - [`transport`] — client WebSockets with TCP_NODELAY;
//! - [`client`] — connect with fallback, publish, fetch.

pub mod client;
pub mod nip11;
pub mod policy;
pub mod server;
pub mod settings;
pub mod transport;

pub use client::{FallbackInfo, MarketClient, Reachability};
pub use server::EmbeddedRelay;
pub use settings::RelaySettings;
