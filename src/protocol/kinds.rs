//! Event kinds, by NIP.

use nostr_sdk::Kind;

/// NIP-47 wallet service info (replaceable).
pub const NWC_INFO: Kind = Kind::Custom(13194);
/// NIP-47 request, client → wallet (ephemeral).
pub const NWC_REQUEST: Kind = Kind::Custom(23194);
/// NIP-47 response, wallet → client (ephemeral).
pub const NWC_RESPONSE: Kind = Kind::Custom(23195);
/// NIP-47 notification encrypted with NIP-04 (the legacy kind).
pub const NWC_NOTIFICATION_NIP04: Kind = Kind::Custom(23196);
/// NIP-47 notification encrypted with NIP-44.
pub const NWC_NOTIFICATION_NIP44: Kind = Kind::Custom(23197);

/// NIP-90 job request kinds are 5000–5999; the result of kind `k` is `k + 1000`.
pub const JOB_REQUESTS: std::ops::RangeInclusive<u16> = 5000..=5999;
/// NIP-90 job results.
pub const JOB_RESULTS: std::ops::RangeInclusive<u16> = 6000..=6999;
/// Text generation (NIP-90 kind 5050).
pub const TEXT_GENERATION: u16 = 5050;
/// Code-file analysis, the repo-map microjob.
pub const CODE_ANALYSIS: u16 = 5960;
/// NIP-90 job feedback.
pub const JOB_FEEDBACK: Kind = Kind::Custom(7000);
/// Pylon payment receipt, signed by the provider once paid.
pub const RECEIPT: Kind = Kind::Custom(7001);
/// NIP-89 handler information (a provider's announcement).
pub const ANNOUNCE: Kind = Kind::Custom(31990);
/// Provider heartbeat (replaceable; "online" = unexpired).
pub const HEARTBEAT: Kind = Kind::Custom(11998);

/// The result kind for a request kind.
pub fn result_kind(request_kind: u16) -> Kind {
    Kind::Custom(request_kind.saturating_add(1000))
}

/// Names users type for request kinds.
pub fn kind_alias(name: &str) -> Option<u16> {
    match name {
        "code-analysis" => Some(CODE_ANALYSIS),
        "text-generation" => Some(TEXT_GENERATION),
        other => other.parse().ok().filter(|k| JOB_REQUESTS.contains(k)),
    }
}
