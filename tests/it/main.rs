//! Integration tests: the real binary, the real embedded relay, real sockets on loopback.

mod appliance;
mod bench_relay;
mod cli_identity;
mod common;
mod dashboard;
mod executor;
mod external_relay;
mod fallback;
mod hub_process;
mod hub_wallet;
mod market;
mod money_drill;
mod paid_once;
mod provider_safety;
mod quality;
mod relay_hardening;
mod relay_process;
mod relay_protocol;
mod relay_store;
mod repomap;
mod resubscribe;
mod secrets;
mod soak;
mod textgen;
mod trust;
