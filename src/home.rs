//! The data directory (`$PYLON_HOME`, default `~/.pylon`) and the names of the files in it.
//!
//! Every path the program writes is spelled here once, so the layout in DESIGN.md has a single owner.

use std::io;
use std::path::{Path, PathBuf};

/// Environment variable that overrides the default home directory.
pub const HOME_ENV: &str = "PYLON_HOME";

/// A Pylon home directory. It may not exist yet: `pylon init` creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// Uses `dir` as the home directory.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { root: dir.into() }
    }

    /// Resolves the home from an explicit flag, then `$PYLON_HOME`, then `~/.pylon`.
    pub fn resolve(flag: Option<&Path>) -> io::Result<Self> {
        if let Some(dir) = flag {
            return Ok(Self::new(dir));
        }
        if let Some(dir) = std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
            return Ok(Self::new(dir));
        }
        match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => Ok(Self::new(PathBuf::from(home).join(".pylon"))),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "cannot find a home directory: set $PYLON_HOME or pass --home DIR",
            )),
        }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The sealed mnemonic.
    pub fn identity_file(&self) -> PathBuf {
        self.root.join("identity.enc")
    }

    /// The user's configuration.
    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    /// The embedded relay's LMDB store.
    pub fn relay_dir(&self) -> PathBuf {
        self.root.join("relay")
    }

    /// The hub's directory.
    pub fn hub_dir(&self) -> PathBuf {
        self.root.join("hub")
    }

    /// The hub's SQLite ledger.
    pub fn hub_ledger(&self) -> PathBuf {
        self.hub_dir().join("ledger.db")
    }

    /// The running node's status snapshot (rewritten every second by `pylon node up`).
    pub fn node_status_file(&self) -> PathBuf {
        self.root.join("node.json")
    }

    /// Rotating log files.
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Creates the home directory (mode 0700: it holds secrets) if it is missing.
    pub fn create(&self) -> io::Result<()> {
        if self.root.is_dir() {
            return Ok(());
        }
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(&self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_flag_wins() {
        let home = Home::resolve(Some(Path::new("/tmp/x"))).expect("resolves");
        assert_eq!(home.root(), Path::new("/tmp/x"));
        assert_eq!(home.identity_file(), Path::new("/tmp/x/identity.enc"));
        assert_eq!(home.relay_dir(), Path::new("/tmp/x/relay"));
    }
}
