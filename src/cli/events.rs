//! `pylon events`: fetch stored events from the relays, raw. Needs no identity.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use nostr_sdk::{Filter, Keys, Kind, PublicKey, Timestamp, ToBech32};

use super::{output, Context};
use crate::relay::client::ONE_SHOT_TIMEOUT;
use crate::relay::{MarketClient, Reachability};

#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    /// Only these kinds (repeatable), e.g. --kind 31990 --kind 5960
    #[arg(long = "kind", value_name = "KIND")]
    kinds: Vec<u16>,
    /// Only events by this author (hex or npub; repeatable)
    #[arg(long = "author", value_name = "PUBKEY")]
    authors: Vec<String>,
    /// Only events newer than this many seconds
    #[arg(long, value_name = "SECS")]
    since: Option<u64>,
    /// At most this many events
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Seconds to wait for the relays' stored events
    #[arg(long, default_value_t = 5)]
    timeout: u64,
    /// Print the events as a JSON array (as signed, verifiable by anyone)
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(ctx: &Context, args: EventsArgs) -> anyhow::Result<ExitCode> {
    let config = ctx.config()?;
    let mut filter = Filter::new().limit(args.limit);
    if !args.kinds.is_empty() {
        filter = filter.kinds(args.kinds.iter().copied().map(Kind::from));
    }
    if !args.authors.is_empty() {
        let authors = args
            .authors
            .iter()
            .map(|a| PublicKey::parse(a).map_err(|e| anyhow::anyhow!("--author {a}: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        filter = filter.authors(authors);
    }
    if let Some(secs) = args.since {
        filter = filter.since(Timestamp::now() - secs);
    }
    // Reading needs no identity: a throwaway key is enough to talk to relays.
    let client = MarketClient::connect(
        Keys::generate(),
        &config.relays,
        ONE_SHOT_TIMEOUT,
        Reachability::OneShot,
    )
    .await?;
    let events = client
        .fetch(filter, Duration::from_secs(args.timeout))
        .await;
    client.shutdown().await;
    let events: Vec<_> = events?.into_iter().collect();
    if args.json {
        output::print_json(&events)?;
        return Ok(ExitCode::SUCCESS);
    }
    if events.is_empty() {
        println!("no events");
    }
    for event in &events {
        let author = event
            .pubkey
            .to_bech32()
            .unwrap_or_else(|_| event.pubkey.to_hex());
        let mut content: String = event.content.chars().take(80).collect();
        if event.content.chars().count() > 80 {
            content.push('…');
        }
        println!(
            "{}  kind {:<5} {}  {}  {}",
            event.created_at.to_human_datetime(),
            event.kind.as_u16(),
            &event.id.to_hex()[..12],
            &author[..16.min(author.len())],
            content.replace('\n', " ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
