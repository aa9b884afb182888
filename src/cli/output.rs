//! Printing helpers shared by commands.

use clap::Args;
use serde::Serialize;

/// The `--json` flag of read commands that take no other arguments.
#[derive(Debug, Args)]
pub(crate) struct JsonFlag {
    /// Print JSON instead of text
    #[arg(long)]
    pub(crate) json: bool,
}

/// Prints `value` as pretty JSON on stdout.
pub(crate) fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints `value` as one line of JSON (for streams of reports).
pub(crate) fn print_json_line<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// Prints a status line, ignoring a closed stdout: a long-running command whose reader went away
/// must still shut down cleanly.
pub(crate) fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}
