//! Reading tags defensively: events from the network may have any shape.

use nostr_sdk::{Event, Tag, TagKind};

/// The values of the first tag named `name` (everything after the name).
pub fn values<'a>(event: &'a Event, name: &str) -> Option<&'a [String]> {
    event.tags.iter().find_map(|t| {
        let s = t.as_slice();
        (s.first().map(String::as_str) == Some(name)).then(|| &s[1..])
    })
}

/// The first value of the first tag named `name`.
pub fn first<'a>(event: &'a Event, name: &str) -> Option<&'a str> {
    values(event, name)?.first().map(String::as_str)
}

/// Every tag named `name`, as value slices.
pub fn all<'a>(event: &'a Event, name: &'a str) -> impl Iterator<Item = &'a [String]> + 'a {
    event.tags.iter().filter_map(move |t| {
        let s = t.as_slice();
        (s.first().map(String::as_str) == Some(name)).then(|| &s[1..])
    })
}

/// A tag from a name and values.
pub fn custom<I, S>(name: &str, values: I) -> Tag
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    Tag::custom(TagKind::custom(name), values)
}

/// Parses a millisatoshi amount written as digits. Anything else (`"100_000"`, `"1.5"`, `""`) is
/// not an amount: we never guess what a malformed number meant when money depends on it.
pub fn parse_msats(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_digits_only() {
        assert_eq!(parse_msats("1000"), Some(1000));
        for bad in [
            "",
            "100_000",
            "1.5",
            "-3",
            "1e3",
            " 7",
            "99999999999999999999999",
        ] {
            assert_eq!(parse_msats(bad), None, "{bad:?}");
        }
    }
}
