//! Integration tests: the real binary, the real embedded relay, real sockets on loopback.

mod cli_identity;
mod common;
mod fallback;
mod relay_process;
mod relay_protocol;
