//! The regtest Lightning hub: a NIP-47 wallet service with a double-entry ledger, real BOLT11
//! invoices and a rate-limited faucet. Balances change only in this module.
//!
//! - [`crate::bolt11`] — create and decode regtest BOLT11 (shared with buyers and auditors);
//! - [`ledger`] — SQLite books and the audit;
//! - [`service`] — NIP-47 request handling, independent of any connection;
//! - this file — the loop that feeds relay events to the service and publishes its answers.

pub mod ledger;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

use nostr_sdk::{Event, Filter, RelayPoolNotification};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

pub use ledger::{AuditReport, FaucetLimits, Ledger};
pub use service::{HubSettings, Service};

use crate::protocol::kinds;
use crate::relay::MarketClient;

/// Requests handled in parallel (decrypting and signing run concurrently; the ledger serialises).
const WORKERS: usize = 4;
/// Answers and notifications on their way to the relay at once. Each waits for the relay's `OK`,
/// a full round trip: a worker that waited for its own (measured: 5 events a payment, 100 ms
/// each through a 100 ms link) capped the hub at ~8 payments/s however idle its CPU, and the
/// providers' look-ups of the payments that were late then took what was left. Workers hand
/// events off and take the next request; at this many in flight they wait, so memory is bounded.
const PUBLISHING: usize = 512;
/// How often the info event is re-published, for relays that lost it.
const INFO_INTERVAL: Duration = Duration::from_secs(600);

/// Errors starting the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The ledger could not be opened.
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    /// Talking to relays failed.
    #[error(transparent)]
    Relay(#[from] crate::relay::client::ClientError),
    /// Building an event failed.
    #[error(transparent)]
    Protocol(#[from] crate::protocol::nip47::Nip47Error),
}

/// A running hub. [`RunningHub::stop`] ends it; dropping it stops it too.
pub struct RunningHub {
    service: Arc<Service>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RunningHub {
    /// The service (for its public key and ledger).
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Stops receiving, finishes requests in hand, and returns.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            // Requests in hand are answered first; a relay that is gone must not hold the
            // stop (each answer is one SQLite transaction: an aborted one rolls back).
            if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
                tracing::warn!("hub still answering after {STOP_GRACE:?}; stopped anyway");
                task.abort();
            }
        }
    }
}

/// Longest a stopping hub spends on the requests it has in hand.
const STOP_GRACE: Duration = Duration::from_secs(5);

impl Drop for RunningHub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Publishes the hub's info event and starts answering requests that reach `client`'s relays.
pub async fn start(service: Service, client: Arc<MarketClient>) -> Result<RunningHub, HubError> {
    let service = Arc::new(service);
    let info = service.info_event()?;
    client.publish(&info).await?;
    let filter = Filter::new()
        .kind(kinds::NWC_REQUEST)
        .pubkey(service.public_key());
    client.subscribe(filter).await?;
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(run(service.clone(), client, stopped));
    tracing::info!(hub = %service.public_key(), "hub answering NIP-47 requests");
    Ok(RunningHub {
        service,
        stop: Some(stop),
        task: Some(task),
    })
}

async fn run(service: Arc<Service>, client: Arc<MarketClient>, mut stopped: oneshot::Receiver<()>) {
    let mut notifications = client.notifications();
    let (queue, receiver) = mpsc::channel::<Event>(10_000);
    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
    let publishing = Arc::new(Semaphore::new(PUBLISHING));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (service, client, receiver) = (service.clone(), client.clone(), receiver.clone());
        let publishing = publishing.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let next = receiver.lock().await.recv().await;
                let Some(event) = next else { break };
                let svc = service.clone();
                let outcome = match tokio::task::spawn_blocking(move || svc.handle(&event)).await {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::error!("request handler failed: {e}");
                        continue;
                    }
                };
                if outcome.publish.is_empty() {
                    continue;
                }
                let Ok(permit) = publishing.clone().acquire_owned().await else {
                    break;
                };
                let client = client.clone();
                // The response is sent first, notifications right behind it; none waits for
                // another's OK.
                tokio::spawn(async move {
                    let _permit = permit;
                    let sends = outcome.publish.iter().map(|ev| client.publish(ev));
                    for r in futures_util::future::join_all(sends).await {
                        if let Err(e) = r {
                            tracing::warn!("cannot publish wallet event: {e}");
                        }
                    }
                });
            }
        }));
    }
    let mut info_timer = tokio::time::interval(INFO_INTERVAL);
    info_timer.tick().await;
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            _ = info_timer.tick() => {
                if let Ok(info) = service.info_event() {
                    if let Err(e) = client.publish(&info).await {
                        tracing::warn!("cannot re-publish hub info: {e}");
                    }
                }
            }
            note = notifications.recv() => match note {
                Ok(RelayPoolNotification::Event { event, .. }) if event.kind == kinds::NWC_REQUEST => {
                    if queue.send(*event).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("hub fell behind and missed {n} relay messages; clients will retry");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    }
    drop(queue);
    for w in workers {
        let _ = w.await;
    }
    // Answers still on their way go out before the hub reports stopped (the stop's grace
    // bounds this when the relay is gone).
    let _ = publishing.acquire_many(PUBLISHING as u32).await;
}

#[cfg(test)]
mod tests {
    use nostr_sdk::nips::nip47::NostrWalletConnectURI;
    use nostr_sdk::{Keys, Timestamp};

    use super::*;
    use crate::protocol::nip47::{self, Encryption, MakeInvoiceParams, PayInvoiceParams, Request};
    use crate::relay::{EmbeddedRelay, Reachability, RelaySettings};
    use crate::wallet::nwc::{NwcOptions, NwcWallet};
    use crate::wallet::Wallet;

    /// A payment that reaches the hub while every worker is busy waits in the worker channel; if
    /// it expires there, the worker that finally takes it must drop it, not execute it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_that_expires_in_the_queue_is_not_executed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = RelaySettings {
            bind: "127.0.0.1:0".parse().expect("addr"),
            ..Default::default()
        };
        let relay = EmbeddedRelay::start(&settings, &dir.path().join("relay"))
            .await
            .expect("relay");
        let hub_keys = Keys::generate();
        let node = bitcoin::secp256k1::SecretKey::from_slice(&[9u8; 32]).expect("node key");
        let service = Service::new(
            hub_keys.clone(),
            node,
            Ledger::in_memory().expect("ledger"),
            HubSettings::default(),
        );
        let relays = [relay.url()];
        let connect = |keys: Keys| {
            MarketClient::connect(keys, &relays, Duration::from_secs(5), Reachability::OneShot)
        };
        let hub = start(
            service,
            Arc::new(connect(hub_keys.clone()).await.expect("hub")),
        )
        .await
        .expect("hub starts");
        let uri = |k: &Keys| {
            NostrWalletConnectURI::new(
                hub_keys.public_key(),
                vec![relay.url()],
                k.secret_key().clone(),
                None,
            )
        };
        let (alice_keys, bob_keys) = (Keys::generate(), Keys::generate());
        // Alice's raw requests and her wallet share one connection, so the relay delivers them
        // to the hub in the order sent.
        let alice_conn = Arc::new(connect(alice_keys.clone()).await.expect("alice"));
        let alice =
            NwcWallet::connect_on(alice_conn.clone(), &uri(&alice_keys), NwcOptions::default())
                .await
                .expect("alice wallet");
        let bob = NwcWallet::connect(&uri(&bob_keys), NwcOptions::default())
            .await
            .expect("bob wallet");
        alice.top_up(100_000, "test").await.expect("funded");
        let inv = bob
            .make_invoice(MakeInvoiceParams {
                amount: 1_000,
                description: None,
                description_hash: None,
                expiry: None,
            })
            .await
            .expect("invoice");

        // Hold the ledger: every worker blocks on its first request, the rest queue.
        let ledger = hub.service().ledger();
        let (held_tx, held) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let _guard = ledger.lock().unwrap_or_else(|p| p.into_inner());
            let _ = held_tx.send(());
            let _ = released.recv();
        });
        held.recv().expect("ledger held");
        let hub_pk = hub_keys.public_key();
        for _ in 0..WORKERS + 4 {
            let busy = nip47::request_event(
                &alice_keys,
                &hub_pk,
                Encryption::Nip44V2,
                &Request::GetBalance,
                None,
            )
            .expect("event");
            alice_conn.publish(&busy).await.expect("sent");
        }
        let expires = Timestamp::now() + 2;
        let payment = Request::PayInvoice(PayInvoiceParams {
            invoice: inv.invoice.clone().expect("bolt11"),
            amount: None,
        });
        let queued = nip47::request_event(
            &alice_keys,
            &hub_pk,
            Encryption::Nip44V2,
            &payment,
            Some(expires),
        )
        .expect("event");
        alice_conn.publish(&queued).await.expect("sent");
        // The hub's clock is this clock: wait for it to reach the expiration, then let go.
        while Timestamp::now() < expires {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        release.send(()).expect("release");
        holder.join().expect("holder");

        // Sent after the payment on the same connection, so answered after it was taken from the
        // queue; stopping the hub then waits for every request in hand.
        assert_eq!(alice.balance_msat().await.expect("balance"), 100_000);
        let service = hub.service().clone();
        hub.stop().await;
        {
            let ledger = service.ledger();
            let books = ledger.lock().unwrap_or_else(|p| p.into_inner());
            let seen = books
                .lookup(&bob_keys.public_key().to_hex(), &inv.payment_hash)
                .expect("lookup")
                .expect("bob's invoice");
            assert_eq!(
                seen.state,
                Some(nip47::TransactionState::Pending),
                "the expired payment was not executed"
            );
            assert_eq!(
                books
                    .balance(&alice_keys.public_key().to_hex())
                    .expect("balance"),
                100_000
            );
            assert_eq!(
                books
                    .balance(&bob_keys.public_key().to_hex())
                    .expect("balance"),
                0
            );
            assert!(books.audit().expect("audit").ok);
        }
        alice.shutdown().await;
        bob.shutdown().await;
    }
}
