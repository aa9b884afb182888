//! The `pylon` binary: parse the command line once, then hand over to the library.

fn main() -> std::process::ExitCode {
    // Everything this process creates is private to its user: the home holds the sealed
    // mnemonic, the wallet URI, the ledger, jobs.db and logs, and most of those files are created
    // by libraries (SQLite, LMDB, the log appender) that use the default mode 0644/0755. A umask
    // of 0o077 makes them 0600/0700 whatever the user's umask is, before any file is opened.
    #[cfg(unix)]
    // SAFETY: umask only swaps the process's file-mode creation mask; it cannot fail, touches no
    // memory, and runs here before any other thread exists.
    unsafe {
        libc::umask(0o077);
    }
    pylon::cli::main()
}
