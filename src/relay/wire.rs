//! The relay's side of the NIP-01 wire: client messages parsed into types at the edge, and the
//! relay's answers written as JSON text.
//!
//! Parsing never fails silently: whatever a client sends, [`parse`] says either what it asked for
//! or how to answer it — `OK false` when the message names an event, `CLOSED` when it names a
//! subscription, `NOTICE` otherwise — so the session can answer and keep the connection open.

use nostr_sdk::{Event, EventId, Filter, SubscriptionId};
use serde_json::{json, Value};

use super::policy::{Prefix, Refusal};

/// A well-formed client message.
#[derive(Debug)]
pub enum Inbound {
    /// `["EVENT", event]`: publish.
    Event(Box<Event>),
    /// `["REQ", id, filter…]`: stored events, then live ones.
    Req {
        /// The client's subscription id.
        id: SubscriptionId,
        /// At least one filter.
        filters: Vec<Filter>,
    },
    /// `["COUNT", id, filter…]` (NIP-45).
    Count {
        /// The client's query id.
        id: SubscriptionId,
        /// At least one filter.
        filters: Vec<Filter>,
    },
    /// `["CLOSE", id]`.
    Close(SubscriptionId),
    /// `["AUTH", event]` (NIP-42).
    Auth(Box<Event>),
}

/// How to answer a message that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// Nothing in it to answer by name.
    Notice(Refusal),
    /// It named a subscription: `CLOSED`.
    Closed(String, Refusal),
    /// It named an event: `OK false`.
    NotOk(EventId, Refusal),
}

impl Malformed {
    /// The answer to send.
    pub fn answer(&self) -> String {
        match self {
            Self::Notice(r) => notice(&r.to_string()),
            Self::Closed(id, r) => closed(id, &r.to_string()),
            Self::NotOk(id, r) => ok(id, false, &r.to_string()),
        }
    }
}

fn invalid(reason: impl Into<String>) -> Refusal {
    Refusal::new(Prefix::Invalid, reason)
}

/// Parses one text message from a client.
pub fn parse(text: &str) -> Result<Inbound, Malformed> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Malformed::Notice(invalid(format!("message is not JSON: {e}"))))?;
    let Value::Array(mut parts) = value else {
        return Err(Malformed::Notice(invalid(
            "a message must be a JSON array such as [\"REQ\", id, filter]",
        )));
    };
    let verb = match parts.first() {
        Some(Value::String(v)) => v.clone(),
        _ => {
            return Err(Malformed::Notice(invalid(
                "a message must start with its type, e.g. \"EVENT\" or \"REQ\"",
            )))
        }
    };
    match verb.as_str() {
        "EVENT" | "AUTH" => {
            let Some(raw) = parts.get_mut(1).map(Value::take) else {
                return Err(Malformed::Notice(invalid(format!("{verb} needs an event"))));
            };
            let id = raw
                .get("id")
                .and_then(Value::as_str)
                .and_then(|s| EventId::from_hex(s).ok());
            let event: Event = serde_json::from_value(raw).map_err(|e| {
                let why = invalid(format!("malformed event: {e}"));
                match id {
                    Some(id) => Malformed::NotOk(id, why),
                    None => Malformed::Notice(why),
                }
            })?;
            if parts.len() > 2 {
                return Err(Malformed::NotOk(
                    event.id,
                    invalid(format!("{verb} takes one event")),
                ));
            }
            Ok(if verb == "EVENT" {
                Inbound::Event(Box::new(event))
            } else {
                Inbound::Auth(Box::new(event))
            })
        }
        "REQ" | "COUNT" => {
            let id = subscription_id(&verb, parts.get(1))?;
            if parts.len() < 3 {
                return Err(Malformed::Closed(
                    id,
                    invalid(format!("{verb} needs at least one filter")),
                ));
            }
            let mut filters = Vec::with_capacity(parts.len() - 2);
            for (n, raw) in parts.drain(2..).enumerate() {
                let filter: Filter = serde_json::from_value(raw).map_err(|e| {
                    Malformed::Closed(id.clone(), invalid(format!("filter {}: {e}", n + 1)))
                })?;
                filters.push(filter);
            }
            let id = SubscriptionId::new(id);
            Ok(if verb == "REQ" {
                Inbound::Req { id, filters }
            } else {
                Inbound::Count { id, filters }
            })
        }
        "CLOSE" => {
            let id = subscription_id(&verb, parts.get(1))?;
            Ok(Inbound::Close(SubscriptionId::new(id)))
        }
        "NEG-OPEN" | "NEG-MSG" | "NEG-CLOSE" => Err(Malformed::Notice(Refusal::new(
            Prefix::Invalid,
            "negentropy (NIP-77) is not served by this relay",
        ))),
        other => Err(Malformed::Notice(invalid(format!(
            "unknown message type {other:?}; this relay speaks EVENT, REQ, CLOSE, COUNT and AUTH"
        )))),
    }
}

fn subscription_id(verb: &str, raw: Option<&Value>) -> Result<String, Malformed> {
    match raw {
        Some(Value::String(id)) if !id.is_empty() => Ok(id.clone()),
        _ => Err(Malformed::Notice(invalid(format!(
            "{verb} needs a subscription id (a non-empty string) second"
        )))),
    }
}

/// `["NOTICE", message]`.
pub fn notice(message: &str) -> String {
    json!(["NOTICE", message]).to_string()
}

/// `["OK", id, accepted, message]`.
pub fn ok(id: &EventId, accepted: bool, message: &str) -> String {
    json!(["OK", id.to_hex(), accepted, message]).to_string()
}

/// `["CLOSED", id, message]`.
pub fn closed(id: &str, message: &str) -> String {
    json!(["CLOSED", id, message]).to_string()
}

/// `["EOSE", id]`.
pub fn eose(id: &str) -> String {
    json!(["EOSE", id]).to_string()
}

/// `["COUNT", id, {"count": n}]`.
pub fn count(id: &str, n: usize) -> String {
    json!(["COUNT", id, { "count": n }]).to_string()
}

/// `["AUTH", challenge]`.
pub fn auth(challenge: &str) -> String {
    json!(["AUTH", challenge]).to_string()
}

/// `["EVENT", id, event]` from a subscription id already written as JSON and the event's JSON,
/// so an event fanned out to many subscribers is serialized once.
pub fn event(id_json: &str, event_json: &str) -> String {
    let mut out = String::with_capacity(id_json.len() + event_json.len() + 12);
    out.push_str("[\"EVENT\",");
    out.push_str(id_json);
    out.push(',');
    out.push_str(event_json);
    out.push(']');
    out
}

/// A subscription id as a JSON string.
pub fn id_json(id: &SubscriptionId) -> String {
    Value::String(id.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use nostr_sdk::{EventBuilder, JsonUtil, Keys};

    use super::*;

    fn notice_of(text: &str) -> String {
        match parse(text) {
            Err(Malformed::Notice(r)) => r.to_string(),
            other => panic!("expected a NOTICE for {text}, got {other:?}"),
        }
    }

    #[test]
    fn well_formed_messages_parse() {
        let ev = EventBuilder::text_note("hi")
            .sign_with_keys(&Keys::generate())
            .expect("sign");
        let text = format!("[\"EVENT\",{}]", ev.as_json());
        assert!(matches!(parse(&text), Ok(Inbound::Event(e)) if e.id == ev.id));
        match parse(r##"["REQ","s1",{"kinds":[1]},{"#t":["x"],"limit":3}]"##) {
            Ok(Inbound::Req { id, filters }) => {
                assert_eq!(id.as_str(), "s1");
                assert_eq!(filters.len(), 2);
                assert_eq!(filters[1].limit, Some(3));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(r#"["COUNT","c",{"kinds":[1]}]"#),
            Ok(Inbound::Count { .. })
        ));
        assert!(matches!(parse(r#"["CLOSE","s1"]"#), Ok(Inbound::Close(_))));
    }

    #[test]
    fn garbage_gets_a_notice() {
        assert!(notice_of("{not json").starts_with("invalid: message is not JSON"));
        assert!(notice_of(r#"{"REQ":1}"#).starts_with("invalid: a message must be a JSON array"));
        assert!(notice_of("[]").starts_with("invalid:"));
        assert!(notice_of("[42]").starts_with("invalid:"));
        assert!(notice_of(r#"["HELLO",1]"#).contains("unknown message type \"HELLO\""));
        assert!(notice_of(r#"["REQ",7,{}]"#).contains("subscription id"));
        assert!(
            notice_of(r#"["EVENT",{"content":"no id"}]"#).starts_with("invalid: malformed event")
        );
        assert!(notice_of(r#"["NEG-OPEN","n",{},"00"]"#).contains("NIP-77"));
    }

    #[test]
    fn named_subscriptions_and_events_get_closed_and_ok() {
        match parse(r#"["REQ","s2",{"kinds":"one"}]"#) {
            Err(Malformed::Closed(id, r)) => {
                assert_eq!(id, "s2");
                assert!(r.to_string().starts_with("invalid: filter 1"), "{r}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(r#"["REQ","s3"]"#), Err(Malformed::Closed(id, _)) if id == "s3"));
        let id = "a".repeat(64);
        match parse(&format!(r#"["EVENT",{{"id":"{id}","kind":"x"}}]"#)) {
            Err(m @ Malformed::NotOk(..)) => {
                let answer: Value = serde_json::from_str(&m.answer()).expect("json");
                assert_eq!(answer[0], "OK");
                assert_eq!(answer[1], id.as_str());
                assert_eq!(answer[2], false);
                assert!(answer[3].as_str().expect("msg").starts_with("invalid: "));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn event_frames_splice_pre_serialized_json() {
        let id = SubscriptionId::new("a\"b");
        let text = event(&id_json(&id), r#"{"k":1}"#);
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v, json!(["EVENT", "a\"b", {"k": 1}]));
    }
}
