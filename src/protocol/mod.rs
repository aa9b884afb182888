//! The protocol: every event kind and tag Pylon reads or writes is spelled here and nowhere else.
//!
//! - [`kinds`] — the kind numbers;
//! - [`tags`] — defensive tag reading;
//! - [`failure`] — the one failure taxonomy;
//! - [`nip90`] — job requests, results and feedback;
//! - [`nip89`] — provider announcements; [`heartbeat`] — liveness;
//! - [`receipt`] — payment receipts anyone can verify; [`settlement`] — the hub's signed word that money moved;
//! - [`payment_link`] — what an invoice description says about job and provider;
//! - [`nip47`] — Nostr Wallet Connect messages, encryption negotiation and event builders.
//!
//! Parsers here are defensive: they take events from anyone on the network and return errors,
//! never panics.

pub mod code_analysis;
pub mod failure;
pub mod heartbeat;
pub mod kinds;
pub mod nip47;
pub mod nip89;
pub mod nip90;
pub mod payment_link;
pub mod receipt;
pub mod settlement;
pub mod tags;
