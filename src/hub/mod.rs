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
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use ledger::{AuditReport, FaucetLimits, Ledger};
pub use service::{HubSettings, Service};

use crate::protocol::kinds;
use crate::relay::MarketClient;

/// Requests handled in parallel (decrypting and signing run concurrently; the ledger serialises).
const WORKERS: usize = 4;
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
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

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
    client
        .sdk()
        .subscribe(filter, None)
        .await
        .map_err(crate::relay::client::ClientError::from)?;
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
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (service, client, receiver) = (service.clone(), client.clone(), receiver.clone());
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
                for ev in outcome.publish {
                    if let Err(e) = client.publish(&ev).await {
                        tracing::warn!("cannot publish wallet event: {e}");
                    }
                }
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
}
