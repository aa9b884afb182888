//! `identity.enc`: the mnemonic sealed under a passphrase.
//!
//! Layout (all integers little-endian); the header is authenticated as associated data:
//!
//! ```text
//! 0   magic      8   b"PYLONID\0"
//! 8   version    1   1
//! 9   kdf        1   1 = Argon2id v0x13
//! 10  m_cost     4   KiB of memory
//! 14  t_cost     4   iterations
//! 18  p_cost     4   lanes
//! 22  salt       16
//! 38  nonce      12  ChaCha20-Poly1305
//! 50  key check  16  sha256("pylon identity key check" || key)[..16]
//! 66  ciphertext     mnemonic (UTF-8) + 16-byte tag
//! ```
//!
//! The key check lets a wrong passphrase be told apart from a damaged file; it reveals nothing
//! the tag does not, and guessing still costs one Argon2id run per try.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use bitcoin::hashes::{sha256, Hash};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use zeroize::Zeroizing;

use super::{Identity, IdentityError};

const MAGIC: &[u8; 8] = b"PYLONID\0";
const VERSION: u8 = 1;
const KDF_ARGON2ID: u8 = 1;
const HEADER_LEN: usize = 50;
const CHECK_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// Largest mnemonic we ever seal: 24 words of at most 8 letters plus spaces.
const MAX_PLAINTEXT: usize = 24 * 9;

/// Argon2id cost. 64 MiB and 3 passes take a fraction of a second here and make guessing expensive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfCost {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Passes over memory.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for KdfCost {
    fn default() -> Self {
        Self {
            m_cost: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }
}

impl KdfCost {
    /// Bounds checked before deriving, so a damaged header cannot ask for gigabytes of memory.
    fn is_sane(&self) -> bool {
        (8..=1024 * 1024).contains(&self.m_cost)
            && (1..=64).contains(&self.t_cost)
            && (1..=16).contains(&self.p_cost)
    }
}

/// Why a sealed identity could not be read or written. Each message is one line a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// No identity file at the path.
    #[error("no identity at {0}: run `pylon init` first")]
    Missing(PathBuf),
    /// Refused to overwrite.
    #[error("an identity already exists at {0}: pass --force to replace it (the old file is kept as a backup)")]
    Exists(PathBuf),
    /// The passphrase did not match.
    #[error("wrong passphrase for {0}")]
    WrongPassphrase(PathBuf),
    /// The file is shorter than its format requires.
    #[error("identity file {0} is truncated ({1} bytes): restore it from a backup or re-import your mnemonic with `pylon init --import --force`")]
    Truncated(PathBuf, usize),
    /// The file is not an identity file, or its contents were altered.
    #[error("identity file {0} is corrupt ({1}): restore it from a backup or re-import your mnemonic with `pylon init --import --force`")]
    Corrupt(PathBuf, &'static str),
    /// Written by a newer Pylon.
    #[error("identity file {0} has format version {1}, this pylon reads version {VERSION}: upgrade pylon")]
    UnsupportedVersion(PathBuf, u8),
    /// An empty passphrase was offered.
    #[error("the passphrase must not be empty")]
    EmptyPassphrase,
    /// The key derivation failed (bad parameters).
    #[error("key derivation failed: {0}")]
    Kdf(String),
    /// The decrypted mnemonic is not valid.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Filesystem error.
    #[error("{0}: {1}")]
    Io(PathBuf, io::Error),
}

/// Seals `mnemonic` under `passphrase` into the bytes of an identity file.
pub fn seal(mnemonic: &str, passphrase: &str, cost: KdfCost) -> Result<Vec<u8>, SealError> {
    if passphrase.is_empty() {
        return Err(SealError::EmptyPassphrase);
    }
    let salt: [u8; 16] = rand::random();
    let nonce: [u8; 12] = rand::random();
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.push(VERSION);
    header.push(KDF_ARGON2ID);
    header.extend_from_slice(&cost.m_cost.to_le_bytes());
    header.extend_from_slice(&cost.t_cost.to_le_bytes());
    header.extend_from_slice(&cost.p_cost.to_le_bytes());
    header.extend_from_slice(&salt);
    header.extend_from_slice(&nonce);
    debug_assert_eq!(header.len(), HEADER_LEN);

    let key = derive_key(passphrase, &salt, cost)?;
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&key[..]));
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: mnemonic.as_bytes(),
                aad: &header,
            },
        )
        .map_err(|_| SealError::Kdf("encryption failed".into()))?;

    let mut out = header;
    out.extend_from_slice(&key_check(&key));
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// The parts of a well-formed identity file, before any key is derived.
struct Parsed<'a> {
    header: &'a [u8],
    cost: KdfCost,
    salt: &'a [u8],
    nonce: &'a [u8],
    check: &'a [u8],
    ciphertext: &'a [u8],
}

/// Checks the file's structure without the passphrase: magic, version, lengths, parameters.
pub fn check_format(bytes: &[u8], path: &Path) -> Result<(), SealError> {
    parse(bytes, path).map(|_| ())
}

fn parse<'a>(bytes: &'a [u8], path: &Path) -> Result<Parsed<'a>, SealError> {
    let p = || path.to_path_buf();
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) {
            return Err(SealError::Truncated(p(), bytes.len()));
        }
        return Err(SealError::Corrupt(p(), "not a Pylon identity file"));
    }
    if bytes.len() > MAGIC.len() && bytes[8] != VERSION {
        return Err(SealError::UnsupportedVersion(p(), bytes[8]));
    }
    if bytes.len() < HEADER_LEN + CHECK_LEN + TAG_LEN + 1 {
        return Err(SealError::Truncated(p(), bytes.len()));
    }
    if bytes.len() > HEADER_LEN + CHECK_LEN + TAG_LEN + MAX_PLAINTEXT {
        return Err(SealError::Corrupt(
            p(),
            "file is longer than any sealed mnemonic",
        ));
    }
    if bytes[9] != KDF_ARGON2ID {
        return Err(SealError::Corrupt(p(), "unknown key derivation function"));
    }
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let cost = KdfCost {
        m_cost: u32_at(10),
        t_cost: u32_at(14),
        p_cost: u32_at(18),
    };
    if !cost.is_sane() {
        return Err(SealError::Corrupt(
            p(),
            "key derivation parameters out of range",
        ));
    }
    Ok(Parsed {
        header: &bytes[..HEADER_LEN],
        cost,
        salt: &bytes[22..38],
        nonce: &bytes[38..50],
        check: &bytes[HEADER_LEN..HEADER_LEN + CHECK_LEN],
        ciphertext: &bytes[HEADER_LEN + CHECK_LEN..],
    })
}

/// Opens the bytes of an identity file. `path` is only used in error messages.
pub fn open(bytes: &[u8], passphrase: &str, path: &Path) -> Result<Identity, SealError> {
    let p = || path.to_path_buf();
    let parts = parse(bytes, path)?;
    let key = derive_key(passphrase, parts.salt, parts.cost)?;
    if key_check(&key)[..] != parts.check[..] {
        return Err(SealError::WrongPassphrase(p()));
    }
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&key[..]));
    let plaintext = Zeroizing::new(
        cipher
            .decrypt(
                Nonce::from_slice(parts.nonce),
                Payload {
                    msg: parts.ciphertext,
                    aad: parts.header,
                },
            )
            .map_err(|_| SealError::Corrupt(p(), "contents fail authentication"))?,
    );
    let words = std::str::from_utf8(&plaintext)
        .map_err(|_| SealError::Corrupt(p(), "sealed mnemonic is not text"))?;
    Ok(Identity::from_mnemonic(words)?)
}

/// Reads and opens the identity file at `path`.
pub fn load(path: &Path, passphrase: &str) -> Result<Identity, SealError> {
    open(&read(path)?, passphrase, path)
}

/// Reads the identity file at `path` and checks its structure, without the passphrase.
pub fn inspect(path: &Path) -> Result<(), SealError> {
    check_format(&read(path)?, path)
}

fn read(path: &Path) -> Result<Vec<u8>, SealError> {
    match fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(SealError::Missing(path.to_path_buf()))
        }
        Err(e) => Err(SealError::Io(path.to_path_buf(), e)),
    }
}

/// What [`store`] did with a previous file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Previous {
    /// There was none.
    None,
    /// It was moved to this backup path.
    BackedUp(PathBuf),
}

/// Seals `identity` to `path` (mode 0600), atomically: the old file stays intact until the new one
/// is complete. An existing file is only replaced with `force`, and is then kept as a backup.
pub fn store(
    path: &Path,
    identity: &Identity,
    passphrase: &str,
    cost: KdfCost,
    force: bool,
) -> Result<Previous, SealError> {
    let io_err = |e| SealError::Io(path.to_path_buf(), e);
    let exists = path.exists();
    if exists && !force {
        return Err(SealError::Exists(path.to_path_buf()));
    }
    let bytes = seal(identity.mnemonic(), passphrase, cost)?;
    let tmp = path.with_extension("enc.tmp");
    {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(io_err)?;
        file.write_all(&bytes).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
    }
    let previous = if exists {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let backup = path.with_extension(format!("enc.bak-{stamp}"));
        fs::rename(path, &backup).map_err(io_err)?;
        Previous::BackedUp(backup)
    } else {
        Previous::None
    };
    fs::rename(&tmp, path).map_err(io_err)?;
    Ok(previous)
}

fn derive_key(
    passphrase: &str,
    salt: &[u8],
    cost: KdfCost,
) -> Result<Zeroizing<[u8; 32]>, SealError> {
    let params = Params::new(cost.m_cost, cost.t_cost, cost.p_cost, Some(32))
        .map_err(|e| SealError::Kdf(e.to_string()))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.as_bytes(), salt, &mut key[..])
        .map_err(|e| SealError::Kdf(e.to_string()))?;
    Ok(key)
}

fn key_check(key: &[u8; 32]) -> [u8; CHECK_LEN] {
    let mut data = Vec::with_capacity(24 + 32);
    data.extend_from_slice(b"pylon identity key check");
    data.extend_from_slice(key);
    let digest = sha256::Hash::hash(&data).to_byte_array();
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(&digest[..CHECK_LEN]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters: these tests are about the format, not the cost.
    const CHEAP: KdfCost = KdfCost {
        m_cost: 8,
        t_cost: 1,
        p_cost: 1,
    };

    fn sealed() -> (Identity, Vec<u8>) {
        let id = Identity::generate().expect("generate");
        let bytes = seal(id.mnemonic(), "correct horse", CHEAP).expect("seal");
        (id, bytes)
    }

    #[test]
    fn round_trip() {
        let (id, bytes) = sealed();
        let back = open(&bytes, "correct horse", Path::new("x")).expect("open");
        assert_eq!(back.public(), id.public());
    }

    #[test]
    fn wrong_passphrase_is_named() {
        let (_, bytes) = sealed();
        let err = open(&bytes, "battery staple", Path::new("x")).err();
        assert!(
            matches!(err, Some(SealError::WrongPassphrase(_))),
            "{err:?}"
        );
    }

    #[test]
    fn truncation_is_named_at_every_length() {
        let (_, bytes) = sealed();
        for len in 0..bytes.len() {
            let err = open(&bytes[..len], "correct horse", Path::new("x")).err();
            match err {
                Some(SealError::Truncated(_, n)) => assert_eq!(n, len),
                // Cutting inside the ciphertext leaves a well-formed header: authentication fails.
                Some(SealError::Corrupt(..)) if len > HEADER_LEN + CHECK_LEN + TAG_LEN => {}
                other => panic!("length {len}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let (_, bytes) = sealed();
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            let result = open(&damaged, "correct horse", Path::new("x"));
            assert!(result.is_err(), "flip at {at} went unnoticed");
        }
    }

    #[test]
    fn empty_passphrase_refused() {
        assert!(matches!(
            seal("a b c", "", CHEAP),
            Err(SealError::EmptyPassphrase)
        ));
    }

    #[test]
    fn absurd_cost_in_header_is_refused_before_deriving() {
        let (_, mut bytes) = sealed();
        bytes[10..14].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = open(&bytes, "correct horse", Path::new("x")).err();
        assert!(matches!(err, Some(SealError::Corrupt(..))), "{err:?}");
    }

    #[test]
    fn newer_version_is_named() {
        let (_, mut bytes) = sealed();
        bytes[8] = 9;
        let err = open(&bytes, "correct horse", Path::new("x")).err();
        assert!(
            matches!(err, Some(SealError::UnsupportedVersion(_, 9))),
            "{err:?}"
        );
    }

    #[test]
    fn store_refuses_then_backs_up_with_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("identity.enc");
        let first = Identity::generate().expect("generate");
        assert_eq!(
            store(&path, &first, "pw", CHEAP, false).expect("store"),
            Previous::None
        );
        let original = fs::read(&path).expect("read");
        let second = Identity::generate().expect("generate");
        assert!(matches!(
            store(&path, &second, "pw", CHEAP, false),
            Err(SealError::Exists(_))
        ));
        assert_eq!(
            fs::read(&path).expect("read"),
            original,
            "refusal left file untouched"
        );
        let Previous::BackedUp(backup) = store(&path, &second, "pw", CHEAP, true).expect("force")
        else {
            panic!("expected a backup");
        };
        assert_eq!(fs::read(&backup).expect("backup"), original);
        assert_eq!(load(&path, "pw").expect("load").public(), second.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
