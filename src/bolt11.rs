//! Real BOLT11 invoices on regtest (`lnbcrt…`): created and signed with a node key (the hub's),
//! and decoded — with signature and network checks — by anyone who must trust one: the hub
//! before paying, a buyer before paying a provider, an auditor checking a receipt.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::{All, Secp256k1, SecretKey};
use lightning_invoice::{
    Bolt11Invoice, Bolt11InvoiceDescriptionRef, Currency, Description, InvoiceBuilder,
    PaymentSecret,
};

/// Minimum final CLTV delta written into invoices (LDK's default; nothing routes on the hub).
const MIN_FINAL_CLTV: u64 = 144;
/// Longest accepted invoice expiry.
pub const MAX_EXPIRY_SECS: u64 = 30 * 24 * 3600;

/// Why an invoice could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvoiceError {
    /// The text is not a BOLT11 invoice.
    #[error("not a valid BOLT11 invoice: {0}")]
    Parse(String),
    /// Valid, but for another network.
    #[error("invoice is for {0}, not regtest")]
    WrongNetwork(String),
    /// Amount zero, or too large for BOLT11.
    #[error("invalid amount: {0}")]
    Amount(String),
    /// Description longer than 639 bytes, or a malformed hash.
    #[error("invalid description: {0}")]
    Description(String),
    /// Expiry out of range.
    #[error("invalid expiry: {0}")]
    Expiry(String),
}

/// What goes in the invoice's description field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// A plain description (at most 639 bytes).
    Description(String),
    /// The sha256 of a description, hex.
    DescriptionHash(String),
}

/// A freshly created invoice and its secret preimage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInvoice {
    /// The encoded invoice.
    pub bolt11: String,
    /// Hex sha256 of the preimage.
    pub payment_hash: String,
    /// Hex 32 random bytes; revealed to the payer on settlement.
    pub preimage: String,
    /// Amount in msats.
    pub amount_msat: u64,
    /// Description, if given as text.
    pub description: Option<String>,
    /// Description hash, if given as a hash.
    pub description_hash: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
}

/// Creates and signs a regtest invoice for `amount_msat`.
pub fn create(
    node_key: &SecretKey,
    amount_msat: u64,
    purpose: &Purpose,
    expiry_secs: u64,
) -> Result<NewInvoice, InvoiceError> {
    if amount_msat == 0 {
        return Err(InvoiceError::Amount("must be at least 1 msat".into()));
    }
    // 21 million BTC in msats: anything above cannot be encoded meaningfully.
    if amount_msat > 2_100_000_000_000_000_000 {
        return Err(InvoiceError::Amount("exceeds the bitcoin supply".into()));
    }
    if expiry_secs == 0 || expiry_secs > MAX_EXPIRY_SECS {
        return Err(InvoiceError::Expiry(format!(
            "{expiry_secs} s (allowed 1..={MAX_EXPIRY_SECS})"
        )));
    }
    let preimage: [u8; 32] = rand::random();
    let payment_hash = sha256::Hash::hash(&preimage);
    let secret = PaymentSecret(rand::random());
    let now = SystemTime::now();
    let created_at = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let builder = InvoiceBuilder::new(Currency::Regtest);
    let (builder, description, description_hash) = match purpose {
        Purpose::Description(text) => {
            let d = Description::new(text.clone())
                .map_err(|e| InvoiceError::Description(format!("{e} (at most 639 bytes)")))?;
            (builder.description(d.to_string()), Some(text.clone()), None)
        }
        Purpose::DescriptionHash(hex) => {
            let hash = parse_hash(hex).map_err(InvoiceError::Description)?;
            (
                builder.description_hash(hash),
                None,
                Some(hex.to_lowercase()),
            )
        }
    };
    let secp = signing_context();
    // The explicit payee key (`n`) lets every reader verify the signature against it instead of
    // recovering the key from the signature: the same check for a fraction of the work.
    let invoice = builder
        .payee_pub_key(node_key.public_key(secp))
        .payment_hash(payment_hash)
        .payment_secret(secret)
        .timestamp(now)
        .min_final_cltv_expiry_delta(MIN_FINAL_CLTV)
        .amount_milli_satoshis(amount_msat)
        .expiry_time(Duration::from_secs(expiry_secs))
        .build_signed(|msg| secp.sign_ecdsa_recoverable(msg, node_key))
        .map_err(|e| InvoiceError::Parse(e.to_string()))?;
    Ok(NewInvoice {
        bolt11: invoice.to_string(),
        payment_hash: payment_hash.to_string(),
        preimage: hex_lower(&preimage),
        amount_msat,
        description,
        description_hash,
        created_at,
        expires_at: created_at + expiry_secs,
    })
}

/// One signing context for the process: building one costs more than signing with it.
fn signing_context() -> &'static Secp256k1<All> {
    static CONTEXT: std::sync::OnceLock<Secp256k1<All>> = std::sync::OnceLock::new();
    CONTEXT.get_or_init(Secp256k1::new)
}

/// The facts of a decoded invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Hex payment hash.
    pub payment_hash: String,
    /// Amount in msats, if the invoice carries one.
    pub amount_msat: Option<u64>,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// The payee's node key (hex, compressed).
    pub payee: String,
    /// The description, when given as text.
    pub description: Option<String>,
    /// The description hash, when given as a hash.
    pub description_hash: Option<String>,
}

/// Decodes a regtest invoice, checking its signature. Other networks are refused.
pub fn decode(bolt11: &str) -> Result<Decoded, InvoiceError> {
    let trimmed = bolt11.trim();
    let trimmed = trimmed.strip_prefix("lightning:").unwrap_or(trimmed);
    let invoice: Bolt11Invoice = trimmed
        .parse()
        .map_err(|e: lightning_invoice::ParseOrSemanticError| InvoiceError::Parse(e.to_string()))?;
    if invoice.currency() != Currency::Regtest {
        return Err(InvoiceError::WrongNetwork(format!(
            "{:?}",
            invoice.currency()
        )));
    }
    let created_at = invoice.duration_since_epoch().as_secs();
    let (description, description_hash) = match invoice.description() {
        Bolt11InvoiceDescriptionRef::Direct(d) => (Some(d.to_string()), None),
        Bolt11InvoiceDescriptionRef::Hash(h) => (None, Some(h.0.to_string())),
    };
    Ok(Decoded {
        payment_hash: invoice.payment_hash().to_string(),
        amount_msat: invoice.amount_milli_satoshis(),
        created_at,
        expires_at: created_at.saturating_add(invoice.expiry_time().as_secs()),
        payee: invoice.get_payee_pub_key().to_string(),
        description,
        description_hash,
    })
}

/// Checks `sha256(preimage) == payment_hash`, both hex. The proof anyone can verify.
pub fn preimage_matches(preimage_hex: &str, payment_hash_hex: &str) -> bool {
    let Ok(preimage) = hex_decode(preimage_hex) else {
        return false;
    };
    sha256::Hash::hash(&preimage).to_string() == payment_hash_hex.to_lowercase()
}

fn parse_hash(hex: &str) -> Result<sha256::Hash, String> {
    let bytes = hex_decode(hex)?;
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "description_hash must be 32 bytes (64 hex characters)".to_string())?;
    Ok(sha256::Hash::from_byte_array(array))
}

fn hex_decode(hex: &str) -> Result<Vec<u8>, String> {
    if hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{hex}` is not hex"));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use bitcoin::secp256k1::PublicKey;

    use super::*;

    fn key() -> SecretKey {
        SecretKey::from_slice(&[7u8; 32]).expect("key")
    }

    #[test]
    fn creates_real_regtest_invoices() {
        let inv =
            create(&key(), 21_000, &Purpose::Description("job abc".into()), 600).expect("create");
        assert!(inv.bolt11.starts_with("lnbcrt"), "{}", inv.bolt11);
        assert!(preimage_matches(&inv.preimage, &inv.payment_hash));
        let d = decode(&inv.bolt11).expect("decode");
        assert_eq!(d.payment_hash, inv.payment_hash);
        assert_eq!(d.amount_msat, Some(21_000));
        assert_eq!(d.description.as_deref(), Some("job abc"));
        assert_eq!(d.expires_at, inv.expires_at);
        let secp = Secp256k1::new();
        assert_eq!(
            d.payee,
            PublicKey::from_secret_key(&secp, &key()).to_string()
        );
        // sub-satoshi amounts survive the encoding
        let odd = create(&key(), 1_234, &Purpose::Description(String::new()), 60).expect("create");
        assert_eq!(
            decode(&odd.bolt11).expect("decode").amount_msat,
            Some(1_234)
        );
    }

    #[test]
    fn the_payee_key_is_explicit_and_must_match_the_signature() {
        let secp = Secp256k1::new();
        let payee = PublicKey::from_secret_key(&secp, &key());
        let build = |n: Option<PublicKey>, signer: &SecretKey| {
            let b = InvoiceBuilder::new(Currency::Regtest)
                .description("x".into())
                .payment_hash(sha256::Hash::hash(b"p"))
                .payment_secret(PaymentSecret([1; 32]))
                .current_timestamp()
                .min_final_cltv_expiry_delta(144)
                .amount_milli_satoshis(1000);
            let b = match n {
                Some(pk) => b.payee_pub_key(pk),
                None => b,
            };
            b.build_raw()
                .expect("raw")
                .sign::<_, ()>(|m| Ok(secp.sign_ecdsa_recoverable(m, signer)))
                .expect("sign")
                .to_string()
        };
        // Ours carry `n`, and it is the hub's key.
        let ours = create(&key(), 1000, &Purpose::Description("x".into()), 60).expect("create");
        assert_eq!(
            decode(&ours.bolt11).expect("decode").payee,
            payee.to_string()
        );
        // An invoice without `n` (as many wallets write them) still decodes, by key recovery.
        let keyless = build(None, &key());
        assert_eq!(decode(&keyless).expect("decode").payee, payee.to_string());
        // One that names the hub but was signed by someone else is refused.
        let other = SecretKey::from_slice(&[9u8; 32]).expect("key");
        assert!(decode(&build(Some(payee), &other)).is_err());
    }

    #[test]
    fn description_hash_invoices() {
        let hash = "ab".repeat(32);
        let inv =
            create(&key(), 1000, &Purpose::DescriptionHash(hash.clone()), 60).expect("create");
        assert_eq!(
            decode(&inv.bolt11).expect("decode").description_hash,
            Some(hash)
        );
        assert!(create(&key(), 1000, &Purpose::DescriptionHash("zz".into()), 60).is_err());
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert!(matches!(
            create(&key(), 0, &Purpose::Description("x".into()), 60),
            Err(InvoiceError::Amount(_))
        ));
        assert!(matches!(
            create(&key(), 1, &Purpose::Description("x".repeat(700)), 60),
            Err(InvoiceError::Description(_))
        ));
        assert!(matches!(
            create(&key(), 1, &Purpose::Description("x".into()), 0),
            Err(InvoiceError::Expiry(_))
        ));
        for junk in ["", "lnbc1", "hello", "lnbcrt1qqqqqq", "\u{0}\u{0}"] {
            assert!(decode(junk).is_err(), "{junk:?}");
        }
        // A valid invoice for another network is refused by network.
        let secp = Secp256k1::new();
        let mainnet = InvoiceBuilder::new(Currency::Bitcoin)
            .description("x".into())
            .payment_hash(sha256::Hash::hash(b"p"))
            .payment_secret(PaymentSecret([1; 32]))
            .current_timestamp()
            .min_final_cltv_expiry_delta(144)
            .amount_milli_satoshis(1000)
            .build_signed(|m| secp.sign_ecdsa_recoverable(m, &key()))
            .expect("build")
            .to_string();
        assert!(matches!(
            decode(&mainnet),
            Err(InvoiceError::WrongNetwork(_))
        ));
    }

    #[test]
    fn preimage_check() {
        assert!(!preimage_matches("00", &"00".repeat(32)));
        assert!(!preimage_matches("not hex", "ab"));
    }
}
