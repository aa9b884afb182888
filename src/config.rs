//! `config.toml`: what a user may change, with every default written out by `pylon init`.
//!
//! The file is parsed once into [`Config`]; unknown keys are errors that name the key, so a typo
//! never silently falls back to a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nostr_sdk::nips::nip47::NostrWalletConnectURI;
use nostr_sdk::{PublicKey, RelayUrl};
use serde::{Deserialize, Serialize};

use crate::home::Home;
use crate::hub::{FaucetLimits, HubSettings};
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
    /// Bad `[wallet]` or `[hub]` values.
    #[error("{0}")]
    Wallet(String),
    /// Cannot write the file.
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

/// The Lightning network money lives on. The embedded hub and its faucet serve regtest only;
/// other networks need a real wallet through `wallet.nwc_uri`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Local regtest money from the embedded hub.
    #[default]
    Regtest,
    /// Bitcoin testnet.
    Testnet,
    /// Bitcoin signet.
    Signet,
    /// Real bitcoin.
    Mainnet,
}

impl Network {
    /// Whether the embedded hub, its faucet and hub discovery may be used.
    pub fn is_regtest(self) -> bool {
        self == Self::Regtest
    }
}

/// How this node reaches its wallet (the `[wallet]` table). Its `Debug` hides the URI's secret,
/// like its serialisation does, so a debug log of the config leaks nothing.
#[derive(Clone, Default, Serialize)]
pub struct WalletConfig {
    /// A `nostr+walletconnect://` URI: any NIP-47 wallet. Wins over everything else.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "redacted")]
    pub nwc_uri: Option<String>,
    /// A pinned Pylon hub (its service pubkey).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "pubkey_hex")]
    pub hub: Option<PublicKey>,
    /// Seconds a wallet request may take.
    pub timeout_secs: u64,
}

impl std::fmt::Debug for WalletConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalletConfig")
            .field("nwc_uri", &self.nwc_uri.as_deref().map(redact))
            .field("hub", &self.hub.map(|k| k.to_hex()))
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WalletFile {
    nwc_uri: Option<String>,
    hub: Option<String>,
    timeout_secs: Option<u64>,
}

impl std::fmt::Debug for WalletFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalletFile")
            .field("nwc_uri", &self.nwc_uri.as_deref().map(redact))
            .field("hub", &self.hub)
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

/// The `[llm]` table: where text generation runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// An OpenAI-compatible server (Ollama, llama-server, …). Unset: detect one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The model served by default. Unset: the server's first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Seconds one generation may take.
    #[serde(default = "default_llm_timeout")]
    pub timeout_secs: u64,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            model: None,
            timeout_secs: default_llm_timeout(),
        }
    }
}

fn default_llm_timeout() -> u64 {
    120
}

/// The `[provider]` table: what a node (`pylon node up`, `pylon up`, `pylon swarm`) risks for
/// buyers it does not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Fetch `url` inputs from loopback, private (RFC 1918, fc00::/7), link-local and other
    /// special addresses. Off: a buyer must not read the provider's own network through a job.
    #[serde(default)]
    pub allow_private_urls: bool,
    /// Also answer on request-named relays (`relays` tag) at loopback, private and other special
    /// addresses. Off: a request must not make the node connect into its own network.
    #[serde(default)]
    pub allow_private_relays: bool,
    /// Jobs running or awaiting payment at once for a buyer who has never paid this node;
    /// further jobs are pay-first. 0: every such buyer pays first.
    #[serde(default = "default_max_unpaid_jobs_unproven")]
    pub max_unpaid_jobs_unproven: u32,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            allow_private_urls: false,
            allow_private_relays: false,
            max_unpaid_jobs_unproven: default_max_unpaid_jobs_unproven(),
        }
    }
}

fn default_max_unpaid_jobs_unproven() -> u32 {
    2
}

impl ProviderConfig {
    /// These settings applied to a node's options.
    pub fn apply(&self, options: crate::provider::NodeOptions) -> crate::provider::NodeOptions {
        crate::provider::NodeOptions {
            allow_private_urls: self.allow_private_urls,
            allow_private_relays: self.allow_private_relays,
            max_unpaid_jobs_unproven: self.max_unpaid_jobs_unproven,
            ..options
        }
    }
}

/// The `[hub]` table, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HubFile {
    faucet_max_sats: Option<u64>,
    faucet_daily_sats: Option<u64>,
    faucet_requests_per_minute: Option<u32>,
    invoice_expiry_secs: Option<u64>,
    requests_per_second: Option<u32>,
    request_burst: Option<u32>,
    allow_clients: Option<Vec<String>>,
}

/// The `[buyer]` table: what this home pays without asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BuyerConfig {
    /// Most paid for one job that names no bid or `--max-sats`, sats (0: such jobs are never
    /// paid automatically).
    pub max_job_sats: u64,
    /// Most paid in any rolling 24 h, sats (0: no daily cap).
    pub max_daily_sats: u64,
}

impl Default for BuyerConfig {
    fn default() -> Self {
        let d = crate::buyer::SpendLimits::default();
        Self {
            max_job_sats: d.max_job_msats.unwrap_or(0) / 1000,
            max_daily_sats: d.max_daily_msats.unwrap_or(0) / 1000,
        }
    }
}

impl BuyerConfig {
    /// The buyer's caps in msats.
    pub fn limits(&self) -> crate::buyer::SpendLimits {
        let msats = |sats: u64| (sats > 0).then(|| sats.saturating_mul(1000));
        crate::buyer::SpendLimits {
            max_job_msats: msats(self.max_job_sats),
            max_daily_msats: msats(self.max_daily_sats),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BuyerFile {
    max_job_sats: Option<u64>,
    max_daily_sats: Option<u64>,
}

/// The `[trust]` table: whose word a verifier takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// Hubs whose settlement attestations `pylon job trace` accepts: npub / hex service keys,
    /// or 66-hex node keys.
    #[serde(default)]
    pub hubs: Vec<String>,
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
    /// How to reach the wallet.
    pub wallet: WalletConfig,
    /// The embedded hub.
    #[serde(serialize_with = "hub_settings")]
    pub hub: HubSettings,
    /// Text generation.
    pub llm: LlmConfig,
    /// Spending caps.
    pub buyer: BuyerConfig,
    /// Trusted hubs.
    pub trust: TrustConfig,
    /// Provider safety limits.
    pub provider: ProviderConfig,
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
    wallet: Option<WalletFile>,
    hub: Option<HubFile>,
    llm: Option<LlmConfig>,
    buyer: Option<BuyerFile>,
    trust: Option<TrustConfig>,
    provider: Option<ProviderConfig>,
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
        let wallet = parse_wallet(file.wallet.unwrap_or_default(), path)?;
        let hub = parse_hub(file.hub.unwrap_or_default(), path)?;
        let buyer_file = file.buyer.unwrap_or_default();
        let d = BuyerConfig::default();
        let buyer = BuyerConfig {
            max_job_sats: buyer_file.max_job_sats.unwrap_or(d.max_job_sats),
            max_daily_sats: buyer_file.max_daily_sats.unwrap_or(d.max_daily_sats),
        };
        let trust = file.trust.unwrap_or_default();
        crate::provenance::TrustedHubs::parse(&trust.hubs)
            .map_err(|e| ConfigError::Wallet(format!("{}: [trust] hubs: {e}", path.display())))?;
        Ok(Self {
            source: Some(path.to_path_buf()),
            network: file.network.unwrap_or_default(),
            relays,
            fallback_timeout: Duration::from_secs(file.fallback_timeout_secs.unwrap_or(5)),
            relay,
            prices,
            wallet,
            hub,
            llm: file.llm.unwrap_or_default(),
            buyer,
            trust,
            provider: file.provider.unwrap_or_default(),
        })
    }

    /// The hubs this home trusts to attest settlements: `[trust] hubs`, plus the hub its wallet
    /// is pinned to (`wallet.hub`, or the service of `wallet.nwc_uri`) — the hub it pays through.
    pub fn trusted_hubs(&self) -> crate::provenance::TrustedHubs {
        let mut t = crate::provenance::TrustedHubs::parse(&self.trust.hubs).unwrap_or_default();
        if let Some(hub) = self.wallet.hub {
            t.add_service(hub);
        }
        if let Some(Ok(uri)) = self
            .wallet
            .nwc_uri
            .as_deref()
            .map(NostrWalletConnectURI::parse)
        {
            t.add_service(uri.public_key);
        }
        t
    }

    /// Sets the NWC URI for this run (the `--nwc` flag), validating it.
    pub fn override_nwc(&mut self, uri: Option<&str>) -> Result<(), ConfigError> {
        if let Some(uri) = uri {
            NostrWalletConnectURI::parse(uri)
                .map_err(|e| ConfigError::Wallet(format!("--nwc: {e}")))?;
            self.wallet.nwc_uri = Some(uri.to_string());
        }
        Ok(())
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

    /// Writes the commented default file to `home` unless one exists, trusting `own_hub` (the
    /// hub this identity runs with `pylon hub` / `pylon up`). Returns whether it wrote.
    pub fn write_default(home: &Home, own_hub: Option<PublicKey>) -> Result<bool, ConfigError> {
        let path = home.config_file();
        if path.exists() {
            return Ok(false);
        }
        // Private from the start: a user may later add `wallet.nwc_uri`, which holds a secret.
        crate::home::write_private(&path, default_file_text_trusting(own_hub).as_bytes())
            .map_err(|e| ConfigError::Write(path, e))?;
        Ok(true)
    }
}

/// The text `pylon init` writes: the defaults, each explained.
pub fn default_file_text() -> String {
    default_file_text_trusting(None)
}

/// [`default_file_text`], trusting `own_hub`'s settlement attestations.
pub fn default_file_text_trusting(own_hub: Option<PublicKey>) -> String {
    let hubs = match own_hub.and_then(|k| nostr_sdk::ToBech32::to_bech32(&k).ok()) {
        Some(npub) => format!("[\"{npub}\"]  # this identity's own hub (`pylon hub`, `pylon up`)"),
        None => "[]".to_string(),
    };
    let b = BuyerConfig::default();
    let (max_job, max_daily) = (b.max_job_sats, b.max_daily_sats);
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

# How this node reaches its wallet. With neither key set, a node on regtest finds a Pylon hub
# on its relays by itself.
[wallet]
# nwc_uri = "nostr+walletconnect://..."   # any NIP-47 wallet (Alby Hub, LNbits, ...); wins
# hub = "npub1..."                        # pin one Pylon hub
timeout_secs = 20

# The regtest hub this node runs with `pylon hub` (or `pylon up`).
[hub]
faucet_max_sats = 100000            # largest faucet grant
faucet_daily_sats = 1000000         # per requesting key, rolling 24 h
faucet_requests_per_minute = 30
invoice_expiry_secs = 3600          # when a request gives none
requests_per_second = 500           # per client, sustained
request_burst = 2000
allow_clients = []                  # empty: any key may open an account

# Text generation (kind 5050): an OpenAI-compatible server. Unset, `pylon node up` looks for
# Ollama (127.0.0.1:11434) and llama-server (127.0.0.1:8080).
[llm]
# endpoint = "http://127.0.0.1:8080"
# model = "gemma-3-270m"
timeout_secs = 120

# What this home pays without asking. `--auto-pay` pays a job that names no --bid or
# --max-sats at most max_job_sats (0: never automatically); every payment counts against
# max_daily_sats over a rolling 24 h (0: no daily cap).
[buyer]
max_job_sats = {max_job}
max_daily_sats = {max_daily}

# Whose word proves a payment. A receipt is verified only with a settlement attestation signed by
# one of these hubs (npub or hex service key, or a 66-hex node key). The hub your wallet is
# pinned to (wallet.hub / wallet.nwc_uri) is trusted too. Nothing found on a relay is.
[trust]
hubs = {hubs}

# What a provider node risks for buyers it does not know.
[provider]
# Fetch `url` job inputs from loopback, private (10/8, 192.168/16, fc00::/7, ...), link-local
# and other special addresses. Off, a buyer cannot read this machine's own network through a job.
allow_private_urls = false
# Also send feedback and results to relays a request names (its `relays` tag) at such addresses.
# Off, a request cannot make this node connect into its own network.
allow_private_relays = false
# Jobs a buyer who has never paid this node may have running or awaiting payment at once;
# beyond that they pay first. 0: every such buyer pays first.
max_unpaid_jobs_unproven = 2

# What this node charges per job, in millisatoshis, by job request kind.
[prices]
{prices}"#
    )
}

fn parse_wallet(file: WalletFile, path: &Path) -> Result<WalletConfig, ConfigError> {
    let at = path.display();
    if let Some(uri) = &file.nwc_uri {
        NostrWalletConnectURI::parse(uri)
            .map_err(|e| ConfigError::Wallet(format!("{at}: [wallet] nwc_uri: {e}")))?;
    }
    let hub = file
        .hub
        .as_deref()
        .map(PublicKey::parse)
        .transpose()
        .map_err(|e| {
            ConfigError::Wallet(format!(
                "{at}: [wallet] hub is not a public key (npub or hex): {e}"
            ))
        })?;
    Ok(WalletConfig {
        nwc_uri: file.nwc_uri,
        hub,
        timeout_secs: file.timeout_secs.unwrap_or(20).max(1),
    })
}

fn parse_hub(file: HubFile, path: &Path) -> Result<HubSettings, ConfigError> {
    let d = HubSettings::default();
    let allow_clients = file
        .allow_clients
        .unwrap_or_default()
        .iter()
        .map(|k| {
            PublicKey::parse(k).map_err(|e| {
                ConfigError::Wallet(format!(
                    "{}: [hub] allow_clients: `{k}`: {e}",
                    path.display()
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(HubSettings {
        faucet: FaucetLimits {
            max_msat_per_request: file
                .faucet_max_sats
                .map_or(d.faucet.max_msat_per_request, |s| s.saturating_mul(1000)),
            max_msat_per_day: file
                .faucet_daily_sats
                .map_or(d.faucet.max_msat_per_day, |s| s.saturating_mul(1000)),
            max_requests_per_minute: file
                .faucet_requests_per_minute
                .unwrap_or(d.faucet.max_requests_per_minute),
        },
        default_expiry_secs: file
            .invoice_expiry_secs
            .unwrap_or(d.default_expiry_secs)
            .max(1),
        requests_per_second: file
            .requests_per_second
            .unwrap_or(d.requests_per_second)
            .max(1),
        request_burst: file.request_burst.unwrap_or(d.request_burst).max(1),
        allow_clients,
    })
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

fn redacted<S: serde::Serializer>(uri: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match uri.as_deref() {
        Some(u) => s.serialize_str(&redact(u)),
        None => s.serialize_none(),
    }
}

/// A wallet URI as it may be shown: where it points, never its secret.
pub fn redact(uri: &str) -> String {
    match NostrWalletConnectURI::parse(uri) {
        Ok(u) => format!(
            "nostr+walletconnect://{}?secret=<hidden>",
            u.public_key.to_hex()
        ),
        Err(_) => "<hidden>".into(),
    }
}

fn pubkey_hex<S: serde::Serializer>(key: &Option<PublicKey>, s: S) -> Result<S::Ok, S::Error> {
    match key {
        Some(k) => s.serialize_str(&k.to_hex()),
        None => s.serialize_none(),
    }
}

fn hub_settings<S: serde::Serializer>(h: &HubSettings, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("hub", 7)?;
    st.serialize_field("faucet_max_sats", &(h.faucet.max_msat_per_request / 1000))?;
    st.serialize_field("faucet_daily_sats", &(h.faucet.max_msat_per_day / 1000))?;
    st.serialize_field(
        "faucet_requests_per_minute",
        &h.faucet.max_requests_per_minute,
    )?;
    st.serialize_field("invoice_expiry_secs", &h.default_expiry_secs)?;
    st.serialize_field("requests_per_second", &h.requests_per_second)?;
    st.serialize_field("request_burst", &h.request_burst)?;
    let clients: Vec<String> = h.allow_clients.iter().map(|k| k.to_hex()).collect();
    st.serialize_field("allow_clients", &clients)?;
    st.end()
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
        assert_eq!(c.buyer, BuyerConfig::default());
        assert_eq!(c.buyer.limits().max_job_msats, Some(10_000));
        assert!(c.trust.hubs.is_empty());
    }

    #[test]
    fn buyer_caps_and_trusted_hubs() {
        let hub = nostr_sdk::Keys::generate().public_key();
        let c = Config::parse(
            &format!(
                "[buyer]\nmax_job_sats = 0\nmax_daily_sats = 7\n[trust]\nhubs = [\"{}\"]",
                hub.to_hex()
            ),
            Path::new("c"),
        )
        .expect("valid");
        assert_eq!(
            c.buyer.limits().max_job_msats,
            None,
            "0 turns the default off"
        );
        assert_eq!(c.buyer.limits().max_daily_msats, Some(7_000));
        assert!(!c.trusted_hubs().is_empty());
        let err = Config::parse("[trust]\nhubs = [\"nope\"]", Path::new("c")).expect_err("bad");
        assert!(err.to_string().contains("[trust] hubs"), "{err}");
        let err = Config::parse("[buyer]\nmax_sats = 1", Path::new("c")).expect_err("unknown");
        assert!(err.to_string().contains("max_sats"), "{err}");
        // init trusts the identity's own hub.
        let text = default_file_text_trusting(Some(hub));
        let c = Config::parse(&text, Path::new("c")).expect("valid");
        assert_eq!(c.trust.hubs.len(), 1);
    }

    #[test]
    fn provider_table_defaults() {
        let c = Config::parse("", Path::new("c")).expect("defaults");
        assert_eq!(c.provider, ProviderConfig::default());
        assert!(!c.provider.allow_private_urls);
    }

    #[test]
    fn provider_table() {
        let c = Config::parse(
            "[provider]\nallow_private_urls = true\nmax_unpaid_jobs_unproven = 0",
            Path::new("c"),
        )
        .expect("valid");
        assert!(c.provider.allow_private_urls);
        let options = c.provider.apply(crate::provider::NodeOptions::default());
        assert!(options.allow_private_urls);
        assert_eq!(options.max_unpaid_jobs_unproven, 0);
        let shown = toml::to_string(&c).expect("serializes");
        assert!(
            shown.contains("[provider]") && shown.contains("allow_private_urls = true"),
            "{shown}"
        );
        let err = Config::parse("[provider]\nallow_private_url = true", Path::new("c"))
            .expect_err("typo");
        assert!(err.to_string().contains("allow_private_url"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        for (text, key) in [
            ("relayz = []", "relayz"),
            ("[relay]\nbindd = \"1.2.3.4:5\"", "bindd"),
            ("[wallet]\nnwc = 1", "nwc"),
            ("[walet]\nhub = 1", "walet"),
        ] {
            let err = Config::parse(text, Path::new("c.toml"))
                .expect_err(text)
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn bad_values_are_explained() {
        let err = Config::parse("network = \"bitcoin\"", Path::new("c"))
            .expect_err("bitcoin")
            .to_string();
        assert!(err.contains("bitcoin") && err.contains("regtest"), "{err}");
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
    fn wallet_and_hub_tables() {
        let err =
            Config::parse("[wallet]\nhub = \"npub1nope\"", Path::new("c")).expect_err("bad key");
        assert!(err.to_string().contains("[wallet] hub"), "{err}");
        let hub = nostr_sdk::Keys::generate().public_key();
        let c = Config::parse(
            &format!(
                "network = \"signet\"\n[wallet]\nhub = \"{}\"\n[hub]\nfaucet_max_sats = 5",
                hub.to_hex()
            ),
            Path::new("c"),
        )
        .expect("valid");
        assert!(!c.network.is_regtest());
        assert_eq!(c.wallet.hub, Some(hub));
        assert_eq!(c.hub.faucet.max_msat_per_request, 5000);
        let err = Config::parse("[wallet]\nnwc_uri = \"http://nope\"", Path::new("c"))
            .expect_err("bad uri");
        assert!(err.to_string().contains("nwc_uri"), "{err}");
        let err = Config::parse("[hub]\nfaucet = 1", Path::new("c")).expect_err("unknown");
        assert!(err.to_string().contains("faucet"), "{err}");
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

    #[test]
    fn wallet_secret_never_shows_in_debug_or_serialised_config() {
        let client = nostr_sdk::Keys::generate();
        let uri = NostrWalletConnectURI::new(
            nostr_sdk::Keys::generate().public_key(),
            vec![RelayUrl::parse("ws://127.0.0.1:7777").expect("url")],
            client.secret_key().clone(),
            None,
        )
        .to_string();
        let secret = client.secret_key().to_secret_hex();
        assert!(uri.contains(&secret), "the test's URI holds the secret");
        let text = format!("[wallet]\nnwc_uri = \"{uri}\"");
        let c = Config::parse(&text, Path::new("c")).expect("valid");
        assert_eq!(c.wallet.nwc_uri.as_deref(), Some(uri.as_str()));
        let file: ConfigFile = toml::from_str(&text).expect("file");
        for shown in [
            format!("{c:?}"),
            format!("{file:?}"),
            toml::to_string(&c).expect("toml"),
        ] {
            assert!(!shown.contains(&secret), "{shown}");
            assert!(shown.contains("secret=<hidden>"), "{shown}");
        }
    }
}
