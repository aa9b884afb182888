//! The relay's NIP-11 information document, built from its settings.

use serde_json::{json, Value};

use super::settings::RelaySettings;

/// NIPs the embedded relay implements: basic protocol, deletion (by `e` and `a` tags), this
/// document, expiration, AUTH, COUNT, protected events, and proof of work when configured.
pub fn supported_nips(settings: &RelaySettings) -> Vec<u16> {
    let mut nips = vec![1, 9, 11, 40, 42, 45, 70];
    if settings.min_pow_job_requests > 0 {
        nips.push(13);
    }
    nips.sort_unstable();
    nips
}

/// The JSON served for `Accept: application/nostr+json`. Every limit in it is one the relay
/// enforces, with the meaning NIP-11 gives it.
pub fn document(settings: &RelaySettings) -> Value {
    let restricted = !settings.allow_pubkeys.is_empty()
        || !settings.allow_kinds.is_empty()
        || !settings.deny_kinds.is_empty()
        || settings.min_pow_job_requests > 0
        || settings.auth.for_writes();
    json!({
        "name": settings.name,
        "description": settings.description,
        "software": "pylon",
        "version": env!("CARGO_PKG_VERSION"),
        "supported_nips": supported_nips(settings),
        "limitation": {
            "max_message_length": settings.max_message_bytes,
            "max_subscriptions": settings.max_subscriptions,
            "max_filters": settings.max_filters,
            "max_limit": settings.max_filter_limit,
            "default_limit": settings.default_filter_limit,
            "max_subid_length": settings.max_subid_length,
            "max_event_tags": settings.max_event_tags,
            "max_content_length": settings.max_content_chars,
            // Proof of work is asked of job requests only; see "pylon" below.
            "min_pow_difficulty": 0,
            "auth_required": settings.auth.for_reads(),
            "payment_required": false,
            "restricted_writes": restricted,
            "created_at_upper_limit": settings.max_future_seconds,
        },
        // Not standard NIP-11 keys: the market-specific limits, so clients can pace themselves.
        "pylon": {
            "max_event_bytes": settings.max_event_bytes,
            "events_per_second": settings.events_per_second,
            "event_burst": settings.event_burst,
            "min_pow_job_requests": settings.min_pow_job_requests,
            "allow_kinds": settings.allow_kinds,
            "deny_kinds": settings.deny_kinds,
            "idle_timeout_secs": settings.idle_timeout_secs,
            "auth": settings.auth,
            "live_buffer_events": settings.live_buffer_events,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_names_pylon_and_limits() {
        let s = RelaySettings::default();
        let doc = document(&s);
        assert_eq!(doc["name"], "pylon");
        assert_eq!(doc["limitation"]["max_content_length"], s.max_content_chars);
        assert_eq!(doc["limitation"]["max_message_length"], s.max_message_bytes);
        assert_eq!(doc["limitation"]["created_at_upper_limit"], 900);
        assert_eq!(doc["limitation"]["auth_required"], false);
        assert_eq!(doc["limitation"]["restricted_writes"], false);
        let nips: Vec<u64> = doc["supported_nips"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        assert!(nips.contains(&1) && nips.contains(&11) && !nips.contains(&13));
    }
}
