//! `pylon doctor`: run every check and report; non-zero exit when one fails.

use std::process::ExitCode;

use super::output::{self, JsonFlag};
use super::{prompt, Context};
use crate::doctor;

pub(crate) type DoctorArgs = JsonFlag;

pub(crate) async fn run(ctx: &Context, args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let passphrase = prompt::passphrase_from_env()?;
    let report = doctor::run(
        &ctx.home,
        passphrase.as_ref().map(|p| p.as_str()),
        &ctx.relay_override,
    )
    .await;
    if args.json {
        output::print_json(&report)?;
    } else {
        for check in &report.checks {
            let mark = if check.ok { "ok  " } else { "FAIL" };
            println!("{mark}  {:<32} {}", check.name, check.detail);
        }
        let failed = report.checks.iter().filter(|c| !c.ok).count();
        if failed == 0 {
            println!("all {} checks passed", report.checks.len());
        } else {
            println!("{failed} of {} checks failed", report.checks.len());
        }
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
