//! `config.toml`: what a user may change, with every default written out by `pylon init`.
//!
//! The file is parsed once into [`Config`]; unknown keys are errors that name the key, so a typo
//! never silently falls back to a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nostr_sdk::RelayUrl;
use serde::{Deserialize, Serialize};

use crate::home::Home;
use crate::relay::settings::{RelaySettings, SettingsError};

/// The relay every role uses by default: the local appliance relay.
pub const DEFAULT_RELAY: &str = "ws://127.0.0.1:7777";
/// The public market relay, one config line (or `--relay`) away.
pub const PUBLIC_RELAY: &str = "wss://relay.openagents.com";
/// Default price of a job, in millisatoshis, for each kind Pylon serves.
pub const DEFAULT_PRICES: [(u16, u64); 2] = [(5050, 1_000), (5960, 1_000)];

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// Malformed TOML, an unknown key, or a wrong type.
    #[error("{0}: {1}")]
    Parse(PathBuf, String),
    /// A relay URL that is not ws:// or wss://.
    #[error("invalid relay URL `{0}`: {1} (expected ws://host:port or wss://host)")]
    RelayUrl(String, String),
    /// A price entry that is not a job kind.
    #[error("{0}: [prices] key `{1}` is not a job request kind (5000-5999)")]
    PriceKind(PathBuf, String),
    /// Bad `[relay]` table.
    #[error("{0}: {1}")]
    Relay(PathBuf, SettingsError),
    /// Cannot write the file.
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

/// The Lightning network money lives on. v0.1 is a testnet appliance: regtest only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Local regtest money from the embedded hub.
    #[default]
    Regtest,
}

/// The configuration every command runs with.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The file it came from; `None` when no file exists and defaults apply.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// Lightning network.
    pub network: Network,
    /// Relays every role connects to.
    #[serde(serialize_with = "urls_as_strings")]
    pub relays: Vec<RelayUrl>,
    /// How long a long-running role waits for its relays before falling back to the embedded relay.
    #[serde(rename = "fallback_timeout_secs", serialize_with = "secs")]
    pub fallback_timeout: Duration,
    /// The embedded relay.
    pub relay: RelaySettings,
    /// Price per job kind, msats.
    #[serde(serialize_with = "prices_by_kind_name")]
    pub prices: BTreeMap<u16, u64>,
}

/// The file as written: every field optional so a short file means "defaults for the rest".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    network: Option<Network>,
    relays: Option<Vec<String>>,
    fallback_timeout_secs: Option<u64>,
    relay: Option<toml::Table>,
    prices: Option<BTreeMap<String, u64>>,
}

impl Config {
    /// Reads `config.toml` from `home`, or the defaults when there is none.
    pub fn load(home: &Home) -> Result<Self, ConfigError> {
        let path = home.config_file();
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Self::parse("", &path).map(|mut c| {
                    c.source = None;
                    c
                })
            }
            Err(e) => Err(ConfigError::Read(path, e)),
        }
    }

    /// Parses the text of a config file; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text)
            .map_err(|e| ConfigError::Parse(path.to_path_buf(), one_line(&e)))?;
        let relays = match file.relays {
            Some(list) => list
                .iter()
                .map(|u| parse_relay_url(u))
                .collect::<Result<_, _>>()?,
            None => vec![parse_relay_url(DEFAULT_RELAY)?],
        };
        let relay = RelaySettings::with_overrides(file.relay.unwrap_or_default())
            .map_err(|e| ConfigError::Relay(path.to_path_buf(), e))?;
        let prices = match file.prices {
            Some(raw) => raw
                .into_iter()
                .map(|(k, v)| match k.parse::<u16>() {
                    Ok(kind) if (5000..=5999).contains(&kind) => Ok((kind, v)),
                    _ => Err(ConfigError::PriceKind(path.to_path_buf(), k)),
                })
                .collect::<Result<_, _>>()?,
            None => DEFAULT_PRICES.into_iter().collect(),
        };
        Ok(Self {
            source: Some(path.to_path_buf()),
            network: file.network.unwrap_or_default(),
            relays,
            fallback_timeout: Duration::from_secs(file.fallback_timeout_secs.unwrap_or(5)),
            relay,
            prices,
        })
    }

    /// Replaces the configured relays for this run (the global `--relay` flag).
    pub fn override_relays(&mut self, urls: &[String]) -> Result<(), ConfigError> {
        if !urls.is_empty() {
            self.relays = urls
                .iter()
                .map(|u| parse_relay_url(u))
                .collect::<Result<_, _>>()?;
        }
        Ok(())
    }

    /// Writes the commented default file to `home` unless one exists. Returns whether it wrote.
    pub fn write_default(home: &Home) -> Result<bool, ConfigError> {
        let path = home.config_file();
        if path.exists() {
            return Ok(false);
        }
        std::fs::write(&path, default_file_text()).map_err(|e| ConfigError::Write(path, e))?;
        Ok(true)
    }
}

/// The text `pylon init` writes: the defaults, each explained.
pub fn default_file_text() -> String {
    let prices: String = DEFAULT_PRICES
        .iter()
        .map(|(kind, msats)| {
            let what = match kind {
                5050 => "text generation",
                5960 => "code-file analysis (repo map)",
                _ => "",
            };
            format!("{kind} = {msats}  # {what}\n")
        })
        .collect();
    format!(
        r#"# Pylon configuration. Unknown keys are errors, so a typo is caught, not ignored.

# The Lightning network money lives on. v0.1 is a testnet appliance: "regtest" only.
network = "regtest"

# Relays every role connects to. The default is the local appliance relay, started by
# `pylon relay` (or `pylon up`). To join the public market instead:
#   relays = ["{PUBLIC_RELAY}"]
relays = ["{DEFAULT_RELAY}"]

# Seconds a long-running role (node, hub, web) waits for its relays before it starts the
# embedded relay in-process and uses it, so the market keeps running offline.
fallback_timeout_secs = 5

# The embedded relay. Any key of the built-in defaults can be set here
# (`pylon config show` lists them all), for example:
[relay]
# bind = "127.0.0.1:7777"
# allow_pubkeys = []          # only these authors may publish (hex or npub)
# allow_kinds = []            # only these kinds are accepted
# min_pow_job_requests = 0    # NIP-13 difficulty required of job requests

# What this node charges per job, in millisatoshis, by job request kind.
[prices]
{prices}"#
    )
}

/// Parses a relay URL, accepting only WebSocket schemes.
pub fn parse_relay_url(url: &str) -> Result<RelayUrl, ConfigError> {
    RelayUrl::parse(url).map_err(|e| ConfigError::RelayUrl(url.to_string(), e.to_string()))
}

/// TOML errors span several lines with a code excerpt; keep the message and the position.
fn one_line(e: &toml::de::Error) -> String {
    let position = e
        .span()
        .map(|s| format!(" (at byte {})", s.start))
        .unwrap_or_default();
    format!("{}{position}", e.message().trim())
}

fn urls_as_strings<S: serde::Serializer>(urls: &[RelayUrl], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(urls.iter().map(|u| u.as_str()))
}

/// TOML tables need string keys.
fn prices_by_kind_name<S: serde::Serializer>(
    prices: &BTreeMap<u16, u64>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(prices.iter().map(|(k, v)| (k.to_string(), v)))
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_file_parses_to_defaults() {
        let c = Config::parse(&default_file_text(), Path::new("config.toml")).expect("parses");
        assert_eq!(c.network, Network::Regtest);
        assert_eq!(c.relays.len(), 1);
        assert_eq!(c.relays[0].as_str().trim_end_matches('/'), DEFAULT_RELAY);
        assert_eq!(c.prices.get(&5960), Some(&1000));
        assert_eq!(c.relay, RelaySettings::default());
        assert_eq!(c.fallback_timeout, Duration::from_secs(5));
    }

    #[test]
    fn unknown_keys_are_named() {
        for (text, key) in [
            ("relayz = []", "relayz"),
            ("[relay]\nbindd = \"1.2.3.4:5\"", "bindd"),
            ("[wallet]\nx = 1", "wallet"),
        ] {
            let err = Config::parse(text, Path::new("c.toml"))
                .expect_err(text)
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn bad_values_are_explained() {
        let err = Config::parse("network = \"mainnet\"", Path::new("c"))
            .expect_err("mainnet")
            .to_string();
        assert!(err.contains("mainnet") && err.contains("regtest"), "{err}");
        let err = Config::parse("relays = [\"http://x\"]", Path::new("c"))
            .expect_err("http")
            .to_string();
        assert!(err.contains("http://x"), "{err}");
        let err = Config::parse("[prices]\ntext = 5", Path::new("c"))
            .expect_err("kind")
            .to_string();
        assert!(err.contains("`text`"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn relay_flag_overrides() {
        let mut c = Config::parse("", Path::new("c")).expect("defaults");
        c.override_relays(&["wss://relay.example.com".into()])
            .expect("valid");
        assert_eq!(
            c.relays[0].as_str().trim_end_matches('/'),
            "wss://relay.example.com"
        );
        assert!(c.override_relays(&["nope".into()]).is_err());
    }
}
