//! Relays: the embedded relay this binary can serve, and the client layer every role uses to reach
//! any relay.
//!
//! - [`settings`] — the embedded relay's tunables (`relay/defaults.toml` + `[relay]` in config);
//! - [`policy`] — what the embedded relay refuses, with NIP-01 prefixes;
//! - [`wire`] — client messages parsed at the edge, relay answers written;
//! - [`auth`] — NIP-42 challenges and their answers;
//! - [`engine`] — what all connections share: store, live fan-out, query gate;
//! - [`session`] — one connection's loop;
//! - [`nip11`] — its information document;
//! - [`server`] — the axum front: NIP-11, the connection cap, WebSocket upgrades;
//! - [`transport`] — client WebSockets with TCP_NODELAY;
//! - [`client`] — connect with fallback, publish, fetch.

pub mod auth;
pub mod client;
pub mod engine;
pub mod nip11;
pub mod policy;
pub mod server;
pub mod session;
pub mod settings;
pub mod transport;
pub mod wire;

pub use client::{FallbackInfo, MarketClient, Reachability};
pub use server::EmbeddedRelay;
pub use settings::{AuthMode, RelaySettings};
