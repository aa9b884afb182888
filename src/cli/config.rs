//! `pylon config show`: the configuration in effect, after defaults and flags.

use std::process::ExitCode;

use clap::Subcommand;

use super::output::{self, JsonFlag};
use super::Context;

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print the effective configuration (defaults filled in, --relay applied)
    Show(JsonFlag),
}

pub(crate) fn run(ctx: &Context, cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::Show(flags) => {
            let config = ctx.config()?;
            if flags.json {
                #[derive(serde::Serialize)]
                struct Shown<'a> {
                    source: Option<String>,
                    #[serde(flatten)]
                    config: &'a crate::config::Config,
                }
                output::print_json(&Shown {
                    source: config.source.as_ref().map(|p| p.display().to_string()),
                    config: &config,
                })?;
            } else {
                match &config.source {
                    Some(p) => println!("# from {}", p.display()),
                    None => println!(
                        "# no config.toml in {}: defaults",
                        ctx.home.root().display()
                    ),
                }
                print!("{}", toml::to_string_pretty(&config)?);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
