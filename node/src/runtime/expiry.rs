//! The leader's expiry sweep: when the earliest deadline in the expiry index has passed, propose a
//! sweep entry ([`crate::fsm::command::Sweep`]). The entry carries the leader's timestamp; applying
//! it deletes the keys that timestamp has reached, the same keys on every replica. Reads already hide
//! a key from the first entry whose clock reached its deadline (`Kv::get`); the sweep is what
//! removes it, and what moves the state machine's clock on when no client writes do.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::raft_loop::Input;
use super::{RuntimeOptions, Status};
use crate::fsm::{Command, Engine, Kv, Reply, SWEEP_MAX_KEYS};

/// The longest the sweeper sleeps before it looks again (a deadline written meanwhile that comes
/// sooner also wakes it, through the status).
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Sweep expired keys while this node leads, until `shutdown`. From `opts`: the clock that stamps
/// the sweep's entries, the tick (how soon to look again after a sweep that did not apply), and the
/// switch that pauses the sweep (`sweeping`).
pub(crate) async fn sweep<E: Engine + 'static>(
    kv: Kv<E>,
    inputs: mpsc::Sender<Input<E>>,
    mut status: watch::Receiver<Status>,
    metrics: Arc<crate::metrics::Metrics>,
    opts: RuntimeOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let RuntimeOptions { clock, tick: retry, sweeping, .. } = opts;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let leading = status.borrow_and_update().role == "leader"
            && sweeping.load(std::sync::atomic::Ordering::Relaxed);
        // The state machine's clock may be ahead of this leader's (an earlier leader's clock ran
        // fast): keys it already hides are due too.
        let now = clock.now_ms().max(kv.clock());
        let wait = match kv.next_expiry() {
            Some(deadline) if leading && deadline <= now => {
                let (tx, rx) = oneshot::channel();
                let command = Command::sweep(SWEEP_MAX_KEYS).to_bytes();
                if inputs.send(Input::Propose { command, reply: tx }).await.is_err() {
                    return;
                }
                match rx.await {
                    Ok(Ok(Reply::Int(removed))) => {
                        metrics.keys_expired.inc_by(u64::try_from(removed).unwrap_or(0));
                        tracing::debug!(removed, "expiry sweep applied");
                        continue;
                    }
                    // Not applied (no leader, leadership moved, stopping): look again shortly.
                    other => {
                        tracing::debug!(?other, "expiry sweep not applied");
                        Some(retry)
                    }
                }
            }
            Some(deadline) if leading => Some(Duration::from_millis(deadline - now).min(MAX_SLEEP)),
            // Nothing due, or not leading: wait for the status to change (a new applied index may
            // carry a deadline; a won election makes this node the sweeper).
            _ => None,
        };
        let sleep = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            changed = status.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => {}
        }
    }
}
