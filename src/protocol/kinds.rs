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
