//! NIP-42 on the relay side: a per-connection challenge and the check of a client's `AUTH` event.
//!
//! The challenge is random per connection, so an `AUTH` event cannot be replayed on another
//! connection; the `relay` tag must name the host the client connected to (the `Host` header of
//! its upgrade request), so a hostile relay cannot pass on a challenge of ours and reuse the
//! answer. Ports are not compared: behind a TLS proxy the client's URL and our listener differ.

use nostr_sdk::{Event, Kind, PublicKey, TagKind, Timestamp, Url};

/// How far an `AUTH` event's `created_at` may be from now (NIP-42 suggests "about 10 minutes").
const MAX_SKEW_SECS: u64 = 600;

/// A fresh challenge: 16 random bytes in hex.
pub fn challenge() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks `event` as the answer to `challenge` on a connection made to `host` (the upgrade's
/// `Host` header, port ignored; `None` if it sent none). Returns the authenticated key, or the
/// reason the answer is refused.
pub fn verify(
    event: &Event,
    challenge: &str,
    host: Option<&str>,
    now: Timestamp,
) -> Result<PublicKey, String> {
    if event.kind != Kind::Authentication {
        return Err(format!(
            "AUTH needs a kind {} event, not kind {}",
            Kind::Authentication.as_u16(),
            event.kind.as_u16()
        ));
    }
    if event.verify().is_err() {
        return Err("AUTH event has a bad id or signature".into());
    }
    let skew = event.created_at.as_secs().abs_diff(now.as_secs());
    if skew > MAX_SKEW_SECS {
        return Err(format!(
            "AUTH event is {skew} s away from now (max {MAX_SKEW_SECS} s)"
        ));
    }
    let tag = |kind: TagKind| {
        event
            .tags
            .iter()
            .find(|t| t.kind() == kind)
            .and_then(|t| t.content())
    };
    if tag(TagKind::Challenge) != Some(challenge) {
        return Err("AUTH event does not answer this connection's challenge".into());
    }
    let Some(relay) = tag(TagKind::Relay) else {
        return Err("AUTH event has no relay tag".into());
    };
    if let Some(host) = host {
        let ours = strip_port(host);
        let theirs = Url::parse(relay)
            .ok()
            .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_owned()));
        match theirs {
            Some(h) if h.eq_ignore_ascii_case(ours) => {}
            _ => return Err(format!("AUTH event names relay {relay}, not {ours}")),
        }
    }
    Ok(event.pubkey)
}

/// `host:port` → `host`, `[::1]:7777` → `::1`.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use nostr_sdk::{EventBuilder, Keys, RelayUrl};

    use super::*;

    fn auth(keys: &Keys, challenge: &str, relay: &str) -> Event {
        EventBuilder::auth(challenge, RelayUrl::parse(relay).expect("url"))
            .sign_with_keys(keys)
            .expect("sign")
    }

    #[test]
    fn the_right_answer_authenticates_its_signer() {
        let keys = Keys::generate();
        let c = challenge();
        assert_eq!(c.len(), 32);
        assert_ne!(c, challenge(), "challenges are random");
        let ev = auth(&keys, &c, "ws://127.0.0.1:7777");
        let now = Timestamp::now();
        assert_eq!(
            verify(&ev, &c, Some("127.0.0.1:7777"), now),
            Ok(keys.public_key())
        );
        // Behind a proxy the port differs; the host must not.
        let ev = auth(&keys, &c, "wss://Relay.Example.com");
        assert!(verify(&ev, &c, Some("relay.example.com:7777"), now).is_ok());
        let ev = auth(&keys, &c, "ws://[::1]:7777");
        assert!(verify(&ev, &c, Some("[::1]:7777"), now).is_ok());
    }

    #[test]
    fn forgeries_and_replays_are_refused() {
        let keys = Keys::generate();
        let c = challenge();
        let now = Timestamp::now();
        let host = Some("127.0.0.1:7777");
        // Another connection's challenge.
        let replay = auth(&keys, &challenge(), "ws://127.0.0.1:7777");
        assert!(verify(&replay, &c, host, now)
            .expect_err("replay")
            .contains("challenge"));
        // Answered for another relay.
        let elsewhere = auth(&keys, &c, "wss://evil.example");
        assert!(verify(&elsewhere, &c, host, now)
            .expect_err("other relay")
            .contains("evil.example"));
        // Stale.
        let old = EventBuilder::auth(
            c.clone(),
            RelayUrl::parse("ws://127.0.0.1:7777").expect("url"),
        )
        .custom_created_at(Timestamp::from(now.as_secs() - 3600))
        .sign_with_keys(&keys)
        .expect("sign");
        assert!(verify(&old, &c, host, now).is_err());
        // Not an AUTH event.
        let note = EventBuilder::text_note(c.clone())
            .sign_with_keys(&keys)
            .expect("sign");
        assert!(verify(&note, &c, host, now)
            .expect_err("kind")
            .contains("kind"));
        // Signed by someone else: the JSON says `keys`, the signature does not.
        let mut forged: serde_json::Value =
            serde_json::to_value(auth(&keys, &c, "ws://127.0.0.1:7777")).expect("json");
        let other = auth(&Keys::generate(), &c, "ws://127.0.0.1:7777");
        forged["sig"] = serde_json::Value::String(other.sig.to_string());
        let forged: Event = serde_json::from_value(forged).expect("event");
        assert!(verify(&forged, &c, host, now)
            .expect_err("forged")
            .contains("signature"));
    }
}
