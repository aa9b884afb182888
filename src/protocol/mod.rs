//! The protocol: every event kind and tag Pylon reads or writes is spelled here and nowhere else.
//!
//! - [`kinds`] — the kind numbers;
//! - [`nip47`] — Nostr Wallet Connect messages, encryption negotiation and event builders.
//!
//! Parsers here are defensive: they take events from anyone on the network and return errors,
//! never panics.

pub mod kinds;
pub mod nip47;
