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

    /// The store of the `i`-th extra provider `pylon up --providers N` runs (the first provider
    /// is this home's own node and uses the home's store).
    pub fn extra_node_dir(&self, i: usize) -> PathBuf {
        self.root.join("nodes").join(i.to_string())
    }

    /// Rotating log files.
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Where `pylon up` writes the operator's `nostr+walletconnect://` URI (mode 0600). It holds
    /// the wallet account's secret, so it goes to a private file instead of stdout, where it would
    /// end up in terminal scrollback and container logs.
    pub fn nwc_uri_file(&self) -> PathBuf {
        self.root.join("nwc.uri")
    }

    /// Creates the home directory (mode 0700: it holds secrets) if it is missing, and makes an
    /// existing one private: the directory and everything in it lose their group and other
    /// permission bits (0755 becomes 0700, 0644 becomes 0600). Returns what it changed, so
    /// `pylon init` can say so rather than fix it silently.
    pub fn create(&self) -> io::Result<Vec<Tightened>> {
        if !self.root.is_dir() {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                builder.mode(0o700);
            }
            builder.create(&self.root)?;
        }
        self.tighten()
    }

    /// Removes group and other permission bits from the home and every file and directory in it
    /// (symbolic links are neither followed nor changed: a link may point outside the home).
    pub fn tighten(&self) -> io::Result<Vec<Tightened>> {
        let mut changed = Vec::new();
        tighten_tree(&self.root, &mut changed)?;
        Ok(changed)
    }
}

/// One permission change made by [`Home::tighten`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tightened {
    /// The file or directory.
    pub path: PathBuf,
    /// Its permission bits before (e.g. `0o755`).
    pub from: u32,
    /// Its permission bits after (e.g. `0o700`).
    pub to: u32,
}

impl std::fmt::Display for Tightened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tightened permissions of {} from {:04o} to {:04o}",
            self.path.display(),
            self.from,
            self.to
        )
    }
}

/// Writes `contents` to `path` readable by the owner only (mode 0600), even if the file existed
/// with wider permissions: the mode is set on the open file before anything secret is written.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(unix)]
fn tighten_tree(path: &Path, changed: &mut Vec<Tightened>) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let at = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let meta = std::fs::symlink_metadata(path).map_err(at)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let from = meta.permissions().mode() & 0o7777;
    // Only bits are removed, never added: 0755 becomes 0700, 0644 becomes 0600 (and setuid,
    // setgid and sticky bits go too).
    let to = from & 0o700;
    if from != to {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(to)).map_err(at)?;
        changed.push(Tightened {
            path: path.to_path_buf(),
            from,
            to,
        });
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(at)? {
            tighten_tree(&entry.map_err(at)?.path(), changed)?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn tighten_tree(_path: &Path, _changed: &mut Vec<Tightened>) -> io::Result<()> {
    // Permission bits are a Unix notion; elsewhere the home inherits its parent's ACL.
    Ok(())
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

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(p)
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    }

    #[cfg(unix)]
    #[test]
    fn create_tightens_an_open_home_and_reports_each_change() {
        use std::os::unix::fs::PermissionsExt;
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("home");
        std::fs::create_dir_all(root.join("logs")).expect("mkdir");
        std::fs::write(root.join("config.toml"), "x").expect("write");
        std::fs::write(root.join("logs").join("pylon.log"), "x").expect("write");
        std::fs::write(root.join("private"), "x").expect("write");
        set(&root, 0o755);
        set(&root.join("logs"), 0o775);
        set(&root.join("config.toml"), 0o644);
        set(&root.join("logs").join("pylon.log"), 0o666);
        set(&root.join("private"), 0o600);
        // A link to a file outside the home must not change that file.
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "x").expect("write");
        set(&outside, 0o644);
        std::os::unix::fs::symlink(&outside, root.join("link")).expect("symlink");

        let home = Home::new(&root);
        let changed = home.create().expect("create");
        let mut seen: Vec<(PathBuf, u32, u32)> = changed
            .iter()
            .map(|t| (t.path.clone(), t.from, t.to))
            .collect();
        seen.sort();
        let mut want = vec![
            (root.clone(), 0o755, 0o700),
            (root.join("config.toml"), 0o644, 0o600),
            (root.join("logs"), 0o775, 0o700),
            (root.join("logs").join("pylon.log"), 0o666, 0o600),
        ];
        want.sort();
        assert_eq!(seen, want);
        assert_eq!(
            changed[0].to_string(),
            format!(
                "tightened permissions of {} from 0755 to 0700",
                root.display()
            )
        );
        assert_eq!(mode(&root.join("private")), 0o600);
        assert_eq!(mode(&outside), 0o644);
        // Nothing left to do the second time.
        assert!(home.create().expect("create again").is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn create_makes_a_missing_home_private_and_write_private_resets_the_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let home = Home::new(dir.path().join("a").join("home"));
        assert!(home.create().expect("create").is_empty());
        assert_eq!(mode(home.root()), 0o700);
        let file = home.nwc_uri_file();
        std::fs::write(&file, "old").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_private(&file, b"new").expect("write_private");
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "new");
    }
}
