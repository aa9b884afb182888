//! NIP-47 Nostr Wallet Connect: the JSON messages, the encryption negotiation, and the events
//! that carry them.
//!
//! Requests and responses are ephemeral events (23194/23195) whose content is a JSON-RPC-like
//! object encrypted with NIP-44 (`["encryption","nip44_v2"]` on the request) or, for older
//! clients, NIP-04 (no tag). A response always uses the scheme of its request. Notifications go
//! out twice: kind 23197 with NIP-44 and the legacy kind 23196 with NIP-04.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use nostr_sdk::base64::engine::general_purpose::STANDARD as BASE64;
use nostr_sdk::base64::Engine;
use nostr_sdk::nips::nip44::v2::ConversationKey;
use nostr_sdk::nips::{nip04, nip44};
use nostr_sdk::{Event, EventBuilder, EventId, Keys, PublicKey, Tag, TagKind, Timestamp};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::{kinds, tags};

/// Hub-only method: the faucet pays an invoice of the caller's (regtest only).
pub const METHOD_FAUCET: &str = "faucet";
/// Tag on a Pylon hub's info event, so nodes on regtest can find a hub without configuration.
pub const HUB_MARKER: &str = "pylon-hub";

/// Errors building or reading NIP-47 events.
#[derive(Debug, thiserror::Error)]
pub enum Nip47Error {
    /// The request names an encryption scheme we do not speak.
    #[error("unsupported encryption `{0}`")]
    UnsupportedEncryption(String),
    /// Encrypting or decrypting failed (wrong keys, or not a ciphertext).
    #[error("cannot {0} content: {1}")]
    Crypto(&'static str, String),
    /// The decrypted content is not the expected JSON.
    #[error("malformed {0}: {1}")]
    Malformed(&'static str, String),
    /// Signing the event failed.
    #[error("cannot sign event: {0}")]
    Sign(String),
}

/// The payload encryption of a request and its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "&'static str")]
pub enum Encryption {
    /// NIP-44 version 2 (preferred).
    Nip44V2,
    /// NIP-04 (legacy clients).
    Nip04,
}

impl From<Encryption> for &'static str {
    fn from(e: Encryption) -> Self {
        e.as_str()
    }
}

impl Encryption {
    /// The name used in `encryption` tags.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nip44V2 => "nip44_v2",
            Self::Nip04 => "nip04",
        }
    }

    /// Parses a tag value.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "nip44_v2" => Some(Self::Nip44V2),
            "nip04" => Some(Self::Nip04),
            _ => None,
        }
    }

    /// The scheme of an incoming request: its `encryption` tag, or — without one — NIP-04 when the
    /// content looks like NIP-04 (`…?iv=…`), else NIP-44. Unknown names are an error the wallet
    /// answers with `UNSUPPORTED_ENCRYPTION`.
    pub fn of_request(event: &Event) -> Result<Self, Nip47Error> {
        match tags::first(event, "encryption") {
            Some(names) => names
                .split_whitespace()
                .find_map(Self::parse)
                .ok_or_else(|| Nip47Error::UnsupportedEncryption(names.to_string())),
            None if event.content.contains("?iv=") => Ok(Self::Nip04),
            None => Ok(Self::Nip44V2),
        }
    }

    /// Encrypts `plaintext` from `keys` to `peer`.
    pub fn encrypt(
        self,
        keys: &Keys,
        peer: &PublicKey,
        plaintext: &str,
    ) -> Result<String, Nip47Error> {
        let result = match self {
            Self::Nip44V2 => conversation_key(keys, peer).and_then(|key| {
                nip44::v2::encrypt_to_bytes(&key, plaintext.as_bytes())
                    .map(|bytes| BASE64.encode(bytes))
                    .map_err(|e| e.to_string())
            }),
            Self::Nip04 => {
                nip04::encrypt(keys.secret_key(), peer, plaintext).map_err(|e| e.to_string())
            }
        };
        result.map_err(|e| Nip47Error::Crypto("encrypt", e))
    }

    /// Decrypts `ciphertext` sent by `peer` to `keys`.
    pub fn decrypt(
        self,
        keys: &Keys,
        peer: &PublicKey,
        ciphertext: &str,
    ) -> Result<String, Nip47Error> {
        let result = match self {
            Self::Nip44V2 => conversation_key(keys, peer).and_then(|key| {
                let payload = BASE64
                    .decode(ciphertext.trim())
                    .map_err(|e| format!("not base64: {e}"))?;
                if payload.first() != Some(&2) {
                    return Err("not a NIP-44 version 2 payload".to_string());
                }
                let bytes =
                    nip44::v2::decrypt_to_bytes(&key, &payload).map_err(|e| e.to_string())?;
                String::from_utf8(bytes).map_err(|_| "plaintext is not UTF-8".to_string())
            }),
            Self::Nip04 => {
                nip04::decrypt(keys.secret_key(), peer, ciphertext).map_err(|e| e.to_string())
            }
        };
        result.map_err(|e| Nip47Error::Crypto("decrypt", e))
    }
}

/// The NIP-44 conversation key between `keys` and `peer`, derived once per pair: the derivation is
/// an ECDH, and a wallet and its clients exchange many messages over the same few pairs. The cache
/// is bounded; when full it starts over.
fn conversation_key(keys: &Keys, peer: &PublicKey) -> Result<ConversationKey, String> {
    const CAPACITY: usize = 4096;
    type Cache = HashMap<(PublicKey, PublicKey), ConversationKey>;
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let pair = (keys.public_key(), *peer);
    if let Some(key) = cache.lock().ok().and_then(|c| c.get(&pair).copied()) {
        return Ok(key);
    }
    let key = ConversationKey::derive(keys.secret_key(), peer).map_err(|e| e.to_string())?;
    if let Ok(mut c) = cache.lock() {
        if c.len() >= CAPACITY {
            c.clear();
        }
        c.insert(pair, key);
    }
    Ok(key)
}

/// NIP-47 error codes. Codes from other wallets that we do not know are kept as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Too many requests; retry later.
    RateLimited,
    /// Unknown or intentionally unsupported method.
    NotImplemented,
    /// Not enough funds.
    InsufficientBalance,
    /// The payment could not be made.
    PaymentFailed,
    /// No such invoice for this client.
    NotFound,
    /// A spending (or faucet) quota is used up.
    QuotaExceeded,
    /// Not allowed for this key.
    Restricted,
    /// No wallet for this key.
    Unauthorized,
    /// The wallet failed internally.
    Internal,
    /// The request's encryption scheme is not supported.
    UnsupportedEncryption,
    /// Anything else, including malformed requests.
    Other,
    /// A code this version does not know.
    Unknown(String),
}

impl ErrorCode {
    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::RateLimited => "RATE_LIMITED",
            Self::NotImplemented => "NOT_IMPLEMENTED",
            Self::InsufficientBalance => "INSUFFICIENT_BALANCE",
            Self::PaymentFailed => "PAYMENT_FAILED",
            Self::NotFound => "NOT_FOUND",
            Self::QuotaExceeded => "QUOTA_EXCEEDED",
            Self::Restricted => "RESTRICTED",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Internal => "INTERNAL",
            Self::UnsupportedEncryption => "UNSUPPORTED_ENCRYPTION",
            Self::Other => "OTHER",
            Self::Unknown(s) => s,
        }
    }

    fn from_wire(s: &str) -> Self {
        match s {
            "RATE_LIMITED" => Self::RateLimited,
            "NOT_IMPLEMENTED" => Self::NotImplemented,
            "INSUFFICIENT_BALANCE" => Self::InsufficientBalance,
            "PAYMENT_FAILED" => Self::PaymentFailed,
            "NOT_FOUND" => Self::NotFound,
            "QUOTA_EXCEEDED" => Self::QuotaExceeded,
            "RESTRICTED" => Self::Restricted,
            "UNAUTHORIZED" => Self::Unauthorized,
            "INTERNAL" => Self::Internal,
            "UNSUPPORTED_ENCRYPTION" => Self::UnsupportedEncryption,
            "OTHER" => Self::Other,
            other => Self::Unknown(other.to_string()),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Self::from_wire(&s))
    }
}

/// The `error` object of a response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ErrorBody {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
}

impl ErrorBody {
    /// Shorthand constructor.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// `pay_invoice` parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayInvoiceParams {
    /// BOLT11 invoice.
    pub invoice: String,
    /// Amount in msats, for invoices without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<u64>,
}

/// `make_invoice` parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MakeInvoiceParams {
    /// Amount in msats.
    pub amount: u64,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Hex sha256 of a description, instead of the description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description_hash: Option<String>,
    /// Seconds until the invoice expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<u64>,
}

/// `lookup_invoice` parameters: one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LookupInvoiceParams {
    /// Hex payment hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_hash: Option<String>,
    /// BOLT11 invoice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice: Option<String>,
}

/// Incoming (invoices) or outgoing (payments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransactionType {
    /// Money in.
    Incoming,
    /// Money out.
    Outgoing,
}

/// `list_transactions` parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ListTransactionsParams {
    /// Oldest creation time, inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// Newest creation time, inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
    /// Page size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Items to skip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Include unpaid invoices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpaid: Option<bool>,
    /// Only this direction.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<TransactionType>,
}

/// `faucet` parameters (Pylon hub, regtest only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaucetParams {
    /// An invoice of the caller's own account on the hub.
    pub invoice: String,
}

/// A request, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `get_info`.
    GetInfo,
    /// `get_balance`.
    GetBalance,
    /// `make_invoice`.
    MakeInvoice(MakeInvoiceParams),
    /// `pay_invoice`.
    PayInvoice(PayInvoiceParams),
    /// `lookup_invoice`.
    LookupInvoice(LookupInvoiceParams),
    /// `list_transactions`.
    ListTransactions(ListTransactionsParams),
    /// `faucet`.
    Faucet(FaucetParams),
}

/// Why a request could not be parsed; carries the method name so the error response can name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRejection {
    /// The `method` field, when one was readable.
    pub method: String,
    /// The error to answer with.
    pub error: ErrorBody,
}

impl Request {
    /// The method name on the wire.
    pub fn method(&self) -> &'static str {
        match self {
            Self::GetInfo => "get_info",
            Self::GetBalance => "get_balance",
            Self::MakeInvoice(_) => "make_invoice",
            Self::PayInvoice(_) => "pay_invoice",
            Self::LookupInvoice(_) => "lookup_invoice",
            Self::ListTransactions(_) => "list_transactions",
            Self::Faucet(_) => METHOD_FAUCET,
        }
    }

    /// Whether the request changes money: these are remembered by request id so a retry never
    /// runs twice.
    pub fn is_mutating(&self) -> bool {
        matches!(
            self,
            Self::PayInvoice(_) | Self::MakeInvoice(_) | Self::Faucet(_)
        )
    }

    /// The JSON object `{"method", "params"}`.
    pub fn to_json(&self) -> String {
        let params = match self {
            Self::GetInfo | Self::GetBalance => Value::Object(Default::default()),
            Self::MakeInvoice(p) => to_value(p),
            Self::PayInvoice(p) => to_value(p),
            Self::LookupInvoice(p) => to_value(p),
            Self::ListTransactions(p) => to_value(p),
            Self::Faucet(p) => to_value(p),
        };
        serde_json::json!({ "method": self.method(), "params": params }).to_string()
    }

    /// Parses decrypted request JSON. Unknown methods → `NOT_IMPLEMENTED`; bad params → `OTHER`.
    pub fn parse(json: &str) -> Result<Self, RequestRejection> {
        let reject = |method: &str, code, message: String| RequestRejection {
            method: method.to_string(),
            error: ErrorBody::new(code, message),
        };
        let value: Value = serde_json::from_str(json)
            .map_err(|e| reject("", ErrorCode::Other, format!("request is not JSON: {e}")))?;
        let method = value
            .get("method")
            .and_then(Value::as_str)
            .ok_or_else(|| reject("", ErrorCode::Other, "request has no method".into()))?;
        let params = match value.get("params") {
            None | Some(Value::Null) => Value::Object(Default::default()),
            Some(p) => p.clone(),
        };
        fn typed<T: serde::de::DeserializeOwned>(
            method: &str,
            params: Value,
        ) -> Result<T, RequestRejection> {
            serde_json::from_value(params).map_err(|e| RequestRejection {
                method: method.to_string(),
                error: ErrorBody::new(ErrorCode::Other, format!("invalid {method} params: {e}")),
            })
        }
        Ok(match method {
            "get_info" => Self::GetInfo,
            "get_balance" => Self::GetBalance,
            "make_invoice" => Self::MakeInvoice(typed(method, params)?),
            "pay_invoice" => Self::PayInvoice(typed(method, params)?),
            "lookup_invoice" => Self::LookupInvoice(typed(method, params)?),
            "list_transactions" => Self::ListTransactions(typed(method, params)?),
            METHOD_FAUCET => Self::Faucet(typed(method, params)?),
            other => {
                return Err(reject(
                    other,
                    ErrorCode::NotImplemented,
                    format!("method `{other}` is not implemented"),
                ))
            }
        })
    }
}

/// A response body: `result_type`, and either `result` or `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The method answered.
    pub result_type: String,
    /// Set on failure.
    #[serde(default)]
    pub error: Option<ErrorBody>,
    /// Set on success.
    #[serde(default)]
    pub result: Option<Value>,
}

impl Response {
    /// A success.
    pub fn ok(method: &str, result: impl Serialize) -> Self {
        Self {
            result_type: method.to_string(),
            error: None,
            result: Some(to_value(&result)),
        }
    }

    /// A failure.
    pub fn err(method: &str, error: ErrorBody) -> Self {
        Self {
            result_type: method.to_string(),
            error: Some(error),
            result: None,
        }
    }

    /// Parses decrypted response JSON.
    pub fn parse(json: &str) -> Result<Self, Nip47Error> {
        serde_json::from_str(json).map_err(|e| Nip47Error::Malformed("response", e.to_string()))
    }

    /// The typed result, or the error the wallet sent.
    pub fn into_result<T: serde::de::DeserializeOwned>(self) -> Result<T, ResponseError> {
        if let Some(error) = self.error {
            return Err(ResponseError::Wallet(error));
        }
        let value = self.result.unwrap_or(Value::Null);
        serde_json::from_value(value).map_err(|e| ResponseError::Malformed(e.to_string()))
    }
}

/// A response that is not a usable success.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResponseError {
    /// The wallet answered with an error.
    #[error("wallet error {0}")]
    Wallet(ErrorBody),
    /// The result did not have the expected shape.
    #[error("malformed wallet result: {0}")]
    Malformed(String),
}

/// `get_info` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GetInfoResult {
    /// Node alias.
    #[serde(default)]
    pub alias: String,
    /// Node colour.
    #[serde(default)]
    pub color: String,
    /// Node public key (hex).
    #[serde(default)]
    pub pubkey: String,
    /// mainnet, testnet, signet or regtest.
    #[serde(default)]
    pub network: String,
    /// Chain height (0 on the hub: it has no chain).
    #[serde(default)]
    pub block_height: u64,
    /// Chain tip hash.
    #[serde(default)]
    pub block_hash: String,
    /// Methods this connection may call.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Notification types sent.
    #[serde(default)]
    pub notifications: Vec<String>,
}

/// `get_balance` result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceResult {
    /// Balance in msats.
    pub balance: u64,
}

/// `pay_invoice` (and `faucet`) result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayResult {
    /// Hex preimage: proof of payment.
    pub preimage: String,
    /// Fees in msats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fees_paid: Option<u64>,
}

/// Settlement state of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransactionState {
    /// Not paid yet.
    Pending,
    /// Paid.
    Settled,
    /// Expired unpaid.
    Expired,
    /// Failed.
    Failed,
}

/// An invoice or payment, as `make_invoice`, `lookup_invoice`, `list_transactions` and
/// notifications describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// Direction.
    #[serde(rename = "type")]
    pub kind: TransactionType,
    /// State (newer NIP-47; optional from other wallets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<TransactionState>,
    /// BOLT11.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice: Option<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Description hash (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description_hash: Option<String>,
    /// Preimage, once settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preimage: Option<String>,
    /// Payment hash (hex).
    pub payment_hash: String,
    /// Amount in msats.
    pub amount: u64,
    /// Fees in msats.
    #[serde(default)]
    pub fees_paid: u64,
    /// Creation time (unix seconds).
    pub created_at: u64,
    /// Expiry time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Settlement time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<u64>,
    /// NIP-47's free-form `metadata`; a Pylon hub puts its settlement attestation here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TransactionMetadata>,
}

/// A transaction's `metadata` object: what Pylon reads from it, and everything else kept as is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionMetadata {
    /// The settling hub's signed statement (settled transactions of a Pylon hub).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pylon_settlement: Option<crate::protocol::settlement::Attestation>,
    /// Other wallets' metadata.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl Transaction {
    /// The settlement attestation, when the wallet gave one.
    pub fn attestation(&self) -> Option<&crate::protocol::settlement::Attestation> {
        self.metadata.as_ref()?.pylon_settlement.as_ref()
    }

    /// Whether the transaction has settled (the state, or a settlement time from wallets that
    /// predate `state`).
    pub fn is_settled(&self) -> bool {
        self.state == Some(TransactionState::Settled) || self.settled_at.is_some()
    }
}

/// `list_transactions` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListTransactionsResult {
    /// Newest first.
    pub transactions: Vec<Transaction>,
}

/// Notification types.
pub const PAYMENT_RECEIVED: &str = "payment_received";
/// Notification types.
pub const PAYMENT_SENT: &str = "payment_sent";

/// A notification body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// `payment_received` or `payment_sent`.
    pub notification_type: String,
    /// The transaction.
    pub notification: Transaction,
}

/// What a wallet service's 13194 info event says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletInfo {
    /// The service's public key.
    pub service: PublicKey,
    /// When the info was published.
    pub created_at: Timestamp,
    /// Supported methods (and `notifications`).
    pub capabilities: Vec<String>,
    /// Supported schemes; empty tag means NIP-04 only.
    pub encryptions: Vec<Encryption>,
    /// Notification types.
    pub notifications: Vec<String>,
    /// Set by a Pylon hub, with its network.
    pub pylon_hub_network: Option<String>,
    /// The node key a Pylon hub signs invoices and settlement attestations with (hex). The info
    /// event is signed by the service key, so this binds the two for verifiers.
    pub node: Option<String>,
}

impl WalletInfo {
    /// Parses an info event; `None` if it is not kind 13194.
    pub fn from_event(event: &Event) -> Option<Self> {
        if event.kind != kinds::NWC_INFO {
            return None;
        }
        let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        let encryptions = match tags::first(event, "encryption") {
            Some(v) => v.split_whitespace().filter_map(Encryption::parse).collect(),
            None => vec![Encryption::Nip04],
        };
        let is_hub = event.tags.iter().any(|t| {
            t.as_slice().first().map(String::as_str) == Some("t") && t.content() == Some(HUB_MARKER)
        });
        Some(Self {
            service: event.pubkey,
            created_at: event.created_at,
            capabilities: words(&event.content),
            encryptions,
            notifications: tags::first(event, "notifications")
                .map(words)
                .unwrap_or_default(),
            pylon_hub_network: if is_hub {
                Some(
                    tags::first(event, "network")
                        .unwrap_or("regtest")
                        .to_string(),
                )
            } else {
                None
            },
            node: tags::first(event, NODE_TAG).map(str::to_lowercase),
        })
    }

    /// The scheme a client should use with this wallet: NIP-44 when offered.
    pub fn preferred_encryption(&self) -> Encryption {
        if self.encryptions.contains(&Encryption::Nip44V2) {
            Encryption::Nip44V2
        } else {
            Encryption::Nip04
        }
    }
}

/// The info-event tag naming a Pylon hub's node key.
pub const NODE_TAG: &str = "node";

/// Builds a wallet service's info event. A Pylon hub passes its network and its node key.
pub fn info_event(
    keys: &Keys,
    capabilities: &[&str],
    notifications: &[&str],
    pylon_hub: Option<(&str, &str)>,
) -> Result<Event, Nip47Error> {
    let mut tags = vec![
        Tag::custom(TagKind::custom("encryption"), ["nip44_v2 nip04"]),
        Tag::custom(TagKind::custom("notifications"), [notifications.join(" ")]),
    ];
    if let Some((network, node)) = pylon_hub {
        tags.push(Tag::hashtag(HUB_MARKER));
        tags.push(Tag::custom(TagKind::custom("network"), [network]));
        tags.push(Tag::custom(TagKind::custom(NODE_TAG), [node]));
    }
    EventBuilder::new(kinds::NWC_INFO, capabilities.join(" "))
        .tags(tags)
        .sign_with_keys(keys)
        .map_err(|e| Nip47Error::Sign(e.to_string()))
}

/// Builds an encrypted request event from a client to `wallet`.
pub fn request_event(
    client: &Keys,
    wallet: &PublicKey,
    encryption: Encryption,
    request: &Request,
    expiration: Option<Timestamp>,
) -> Result<Event, Nip47Error> {
    let content = encryption.encrypt(client, wallet, &request.to_json())?;
    let mut tags = vec![Tag::public_key(*wallet)];
    if encryption == Encryption::Nip44V2 {
        tags.push(Tag::custom(
            TagKind::custom("encryption"),
            [encryption.as_str()],
        ));
    }
    if let Some(at) = expiration {
        tags.push(Tag::expiration(at));
    }
    EventBuilder::new(kinds::NWC_REQUEST, content)
        .tags(tags)
        .sign_with_keys(client)
        .map_err(|e| Nip47Error::Sign(e.to_string()))
}

/// Builds an encrypted response event to `client` for `request_id`.
pub fn response_event(
    wallet: &Keys,
    client: &PublicKey,
    request_id: EventId,
    encryption: Encryption,
    response: &Response,
) -> Result<Event, Nip47Error> {
    let json = serde_json::to_string(response)
        .map_err(|e| Nip47Error::Malformed("response", e.to_string()))?;
    let content = encryption.encrypt(wallet, client, &json)?;
    EventBuilder::new(kinds::NWC_RESPONSE, content)
        .tags([Tag::public_key(*client), Tag::event(request_id)])
        .sign_with_keys(wallet)
        .map_err(|e| Nip47Error::Sign(e.to_string()))
}

/// Builds notification events for `client`, one per scheme: 23197 for NIP-44, the legacy 23196
/// for NIP-04.
pub fn notification_events(
    wallet: &Keys,
    client: &PublicKey,
    notification: &Notification,
    schemes: &[Encryption],
) -> Result<Vec<Event>, Nip47Error> {
    let json = serde_json::to_string(notification)
        .map_err(|e| Nip47Error::Malformed("notification", e.to_string()))?;
    schemes
        .iter()
        .map(|&enc| {
            let kind = match enc {
                Encryption::Nip44V2 => kinds::NWC_NOTIFICATION_NIP44,
                Encryption::Nip04 => kinds::NWC_NOTIFICATION_NIP04,
            };
            let content = enc.encrypt(wallet, client, &json)?;
            EventBuilder::new(kind, content)
                .tag(Tag::public_key(*client))
                .sign_with_keys(wallet)
                .map_err(|e| Nip47Error::Sign(e.to_string()))
        })
        .collect()
}

/// The request id a response answers (its first `e` tag).
pub fn responded_request(event: &Event) -> Option<EventId> {
    event.tags.event_ids().next().copied()
}

/// The NIP-40 expiration of an event, if it has a parseable one.
pub fn expiration(event: &Event) -> Option<Timestamp> {
    tags::first(event, "expiration")?
        .parse::<u64>()
        .ok()
        .map(Timestamp::from)
}

fn to_value<T: Serialize + ?Sized>(v: &T) -> Value {
    // Serialising our own plain structs cannot fail.
    serde_json::to_value(v).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let cases = [
            Request::GetInfo,
            Request::GetBalance,
            Request::MakeInvoice(MakeInvoiceParams {
                amount: 21_000,
                description: Some("job".into()),
                description_hash: None,
                expiry: Some(600),
            }),
            Request::PayInvoice(PayInvoiceParams {
                invoice: "lnbcrt1...".into(),
                amount: None,
            }),
            Request::LookupInvoice(LookupInvoiceParams {
                payment_hash: Some("ab".repeat(32)),
                invoice: None,
            }),
            Request::ListTransactions(ListTransactionsParams {
                limit: Some(10),
                kind: Some(TransactionType::Incoming),
                ..Default::default()
            }),
            Request::Faucet(FaucetParams {
                invoice: "lnbcrt1...".into(),
            }),
        ];
        for req in cases {
            assert_eq!(Request::parse(&req.to_json()).expect("parses"), req);
        }
    }

    #[test]
    fn bad_requests_get_the_right_codes() {
        let unknown =
            Request::parse(r#"{"method":"pay_keysend","params":{}}"#).expect_err("unknown");
        assert_eq!(unknown.error.code, ErrorCode::NotImplemented);
        assert_eq!(unknown.method, "pay_keysend");
        let bad =
            Request::parse(r#"{"method":"pay_invoice","params":{"invoice":5}}"#).expect_err("bad");
        assert_eq!(bad.error.code, ErrorCode::Other);
        assert_eq!(bad.method, "pay_invoice");
        for junk in ["", "null", "[]", "{}", r#"{"method":7}"#, "\u{0}"] {
            assert_eq!(
                Request::parse(junk).expect_err(junk).error.code,
                ErrorCode::Other
            );
        }
        // A missing params object is allowed for methods without parameters.
        assert_eq!(
            Request::parse(r#"{"method":"get_balance"}"#).expect("ok"),
            Request::GetBalance
        );
    }

    #[test]
    fn error_codes_keep_unknown_text() {
        let body: ErrorBody =
            serde_json::from_str(r#"{"code":"SOMETHING_NEW","message":"x"}"#).expect("parses");
        assert_eq!(body.code, ErrorCode::Unknown("SOMETHING_NEW".into()));
        let body: ErrorBody =
            serde_json::from_str(r#"{"code":"UNSUPPORTED_ENCRYPTION","message":"x"}"#)
                .expect("parses");
        assert_eq!(body.code, ErrorCode::UnsupportedEncryption);
        assert_eq!(
            serde_json::to_value(&body).expect("json")["code"],
            "UNSUPPORTED_ENCRYPTION"
        );
    }

    #[test]
    fn encryption_is_negotiated_from_the_request() {
        let client = Keys::generate();
        let wallet = Keys::generate();
        for enc in [Encryption::Nip44V2, Encryption::Nip04] {
            let ev = request_event(
                &client,
                &wallet.public_key(),
                enc,
                &Request::GetBalance,
                None,
            )
            .expect("event");
            assert_eq!(Encryption::of_request(&ev).expect("known"), enc);
            let plain = enc
                .decrypt(&wallet, &ev.pubkey, &ev.content)
                .expect("decrypts");
            assert_eq!(Request::parse(&plain).expect("parses"), Request::GetBalance);
        }
        let odd = EventBuilder::new(kinds::NWC_REQUEST, "x")
            .tag(Tag::custom(TagKind::custom("encryption"), ["nip44_v9"]))
            .sign_with_keys(&client)
            .expect("sign");
        assert!(matches!(
            Encryption::of_request(&odd),
            Err(Nip47Error::UnsupportedEncryption(_))
        ));
        // Garbage never decrypts, and never panics.
        assert!(Encryption::Nip44V2
            .decrypt(&wallet, &client.public_key(), "garbage")
            .is_err());
        assert!(Encryption::Nip04
            .decrypt(&wallet, &client.public_key(), "garbage?iv=zz")
            .is_err());
    }

    #[test]
    fn nip44_with_cached_keys_matches_the_reference_implementation() {
        let (a, b) = (Keys::generate(), Keys::generate());
        for round in 0..3 {
            let text = format!("{{\"method\":\"get_balance\",\"round\":{round}}}");
            let ours = Encryption::Nip44V2
                .encrypt(&a, &b.public_key(), &text)
                .expect("encrypt");
            let theirs = nip44::decrypt(b.secret_key(), &a.public_key(), &ours).expect("decrypt");
            assert_eq!(theirs, text);
            let back = nip44::encrypt(b.secret_key(), &a.public_key(), &text, nip44::Version::V2)
                .expect("encrypt");
            assert_eq!(
                Encryption::Nip44V2
                    .decrypt(&a, &b.public_key(), &back)
                    .expect("decrypt"),
                text
            );
        }
        // A third party holds a different conversation key: the cache must not leak across pairs.
        let c = Keys::generate();
        let to_b = Encryption::Nip44V2
            .encrypt(&a, &b.public_key(), "secret")
            .expect("encrypt");
        assert!(Encryption::Nip44V2
            .decrypt(&c, &a.public_key(), &to_b)
            .is_err());
        // Garbage, another version byte, and a tampered MAC are errors, not panics.
        let mut tampered = BASE64.decode(&to_b).expect("base64");
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let mut v1 = BASE64.decode(&to_b).expect("base64");
        v1[0] = 1;
        for bad in [
            "".to_string(),
            "#not base64".to_string(),
            BASE64.encode([2u8; 10]),
            BASE64.encode(v1),
            BASE64.encode(tampered),
        ] {
            assert!(
                Encryption::Nip44V2
                    .decrypt(&b, &a.public_key(), &bad)
                    .is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn response_and_notifications_round_trip() {
        let client = Keys::generate();
        let wallet = Keys::generate();
        let resp = Response::ok("get_balance", BalanceResult { balance: 42 });
        let ev = response_event(
            &wallet,
            &client.public_key(),
            EventId::all_zeros(),
            Encryption::Nip44V2,
            &resp,
        )
        .expect("event");
        assert_eq!(responded_request(&ev), Some(EventId::all_zeros()));
        let plain = Encryption::Nip44V2
            .decrypt(&client, &wallet.public_key(), &ev.content)
            .expect("decrypt");
        let back: BalanceResult = Response::parse(&plain)
            .expect("parse")
            .into_result()
            .expect("ok");
        assert_eq!(back.balance, 42);

        let err = Response::err(
            "pay_invoice",
            ErrorBody::new(ErrorCode::InsufficientBalance, "no"),
        );
        let json = serde_json::to_string(&err).expect("json");
        match Response::parse(&json)
            .expect("parse")
            .into_result::<PayResult>()
        {
            Err(ResponseError::Wallet(body)) => {
                assert_eq!(body.code, ErrorCode::InsufficientBalance)
            }
            other => panic!("{other:?}"),
        }

        let n = Notification {
            notification_type: PAYMENT_RECEIVED.into(),
            notification: Transaction {
                kind: TransactionType::Incoming,
                state: Some(TransactionState::Settled),
                invoice: None,
                description: None,
                description_hash: None,
                preimage: Some("00".repeat(32)),
                payment_hash: "11".repeat(32),
                amount: 1000,
                fees_paid: 0,
                created_at: 1,
                expires_at: None,
                settled_at: Some(2),
                metadata: None,
            },
        };
        let evs = notification_events(
            &wallet,
            &client.public_key(),
            &n,
            &[Encryption::Nip44V2, Encryption::Nip04],
        )
        .expect("events");
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].kind, kinds::NWC_NOTIFICATION_NIP44);
        assert_eq!(evs[1].kind, kinds::NWC_NOTIFICATION_NIP04);
        let a = Encryption::Nip44V2
            .decrypt(&client, &wallet.public_key(), &evs[0].content)
            .expect("44");
        let b = Encryption::Nip04
            .decrypt(&client, &wallet.public_key(), &evs[1].content)
            .expect("04");
        assert_eq!(a, b);
    }

    #[test]
    fn info_event_is_understood() {
        let wallet = Keys::generate();
        let ev = info_event(
            &wallet,
            &["get_info", "pay_invoice", "notifications"],
            &[PAYMENT_RECEIVED, PAYMENT_SENT],
            Some(("regtest", "02aa")),
        )
        .expect("info");
        let info = WalletInfo::from_event(&ev).expect("info");
        assert_eq!(info.preferred_encryption(), Encryption::Nip44V2);
        assert_eq!(info.pylon_hub_network.as_deref(), Some("regtest"));
        assert_eq!(info.node.as_deref(), Some("02aa"));
        assert!(info.capabilities.contains(&"pay_invoice".to_string()));
        assert_eq!(info.notifications.len(), 2);
        // Another wallet's info without an encryption tag speaks NIP-04 only.
        let plain = EventBuilder::new(kinds::NWC_INFO, "pay_invoice get_balance")
            .sign_with_keys(&wallet)
            .expect("sign");
        let info = WalletInfo::from_event(&plain).expect("info");
        assert_eq!(info.preferred_encryption(), Encryption::Nip04);
        assert!(info.pylon_hub_network.is_none());
        assert!(info.node.is_none());
    }
}
