//! Asking the user for secrets: from the environment for scripts, else from the terminal.

use anyhow::{bail, Context as _};
use zeroize::Zeroizing;

/// Environment variable read instead of prompting for the identity passphrase.
pub(crate) const PASSPHRASE_ENV: &str = "PYLON_PASSPHRASE";

/// The passphrase from `$PYLON_PASSPHRASE`, if set.
pub(crate) fn passphrase_from_env() -> anyhow::Result<Option<Zeroizing<String>>> {
    match std::env::var(PASSPHRASE_ENV) {
        Ok(v) if v.is_empty() => bail!("{PASSPHRASE_ENV} is set but empty"),
        Ok(v) => Ok(Some(Zeroizing::new(v))),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => bail!("{PASSPHRASE_ENV} is not valid UTF-8"),
    }
}

/// The passphrase to unlock an existing identity.
pub(crate) fn passphrase() -> anyhow::Result<Zeroizing<String>> {
    if let Some(p) = passphrase_from_env()? {
        return Ok(p);
    }
    let p =
        Zeroizing::new(rpassword::prompt_password("Identity passphrase: ").map_err(no_terminal)?);
    Ok(p)
}

/// A new passphrase, asked twice when typed.
pub(crate) fn new_passphrase() -> anyhow::Result<Zeroizing<String>> {
    if let Some(p) = passphrase_from_env()? {
        return Ok(p);
    }
    let first = Zeroizing::new(
        rpassword::prompt_password("New passphrase for this identity: ").map_err(no_terminal)?,
    );
    if first.is_empty() {
        bail!("the passphrase must not be empty");
    }
    let second =
        Zeroizing::new(rpassword::prompt_password("Repeat the passphrase: ").map_err(no_terminal)?);
    if first != second {
        bail!("the two passphrases differ; nothing was written");
    }
    Ok(first)
}

/// Mnemonic words for `init --import`: from stdin when it is piped, else typed without echo.
pub(crate) fn mnemonic() -> anyhow::Result<Zeroizing<String>> {
    use std::io::{IsTerminal, Read};
    if std::io::stdin().is_terminal() {
        let words =
            rpassword::prompt_password("Mnemonic words (input hidden): ").map_err(no_terminal)?;
        return Ok(Zeroizing::new(words));
    }
    let mut words = Zeroizing::new(String::new());
    std::io::stdin()
        .take(4096)
        .read_to_string(&mut words)
        .context("cannot read the mnemonic from stdin")?;
    Ok(words)
}

fn no_terminal(e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot prompt for a passphrase ({e}): set {PASSPHRASE_ENV} or run in a terminal"
    )
}
