//! Pylon: one binary that makes any machine a node of an open compute market on Nostr.
//!
//! The library holds every role; `main.rs` and [`cli`] are a thin shell over it.
//!
//! - [`home`], [`config`], [`identity`] — where data lives, what a user configures, who the node is;
//! - [`relay`] — the embedded relay and the client layer every role uses;
//! - [`doctor`] — environment checks;
//! - [`logging`] — tracing setup.

pub mod appliance;
pub mod bench;
pub mod bolt11;
pub mod buyer;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod executors;
pub mod fanout;
pub mod home;
pub mod hub;
pub mod identity;
pub mod logging;
pub mod memory;
pub mod protocol;
pub mod provenance;
pub mod provider;
pub mod ratelimit;
pub mod relay;
pub mod stats;
pub mod store;
pub mod wallet;
pub mod web;
