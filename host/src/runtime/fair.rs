//! Fair CPU sharing between tenants. Each worker thread has one slot per tenant, and a guest of
//! that tenant runs wasm only while it holds its slot: it takes the slot whenever it is polled
//! (queueing behind the tenant's other guests on this thread if one of them has it), gives it
//! back whenever it waits for I/O (a request body, an inference), and at every epoch tick hands
//! it to the next of the tenant's guests in line. So a tenant that floods the node with
//! CPU-bound requests gets one turn per tick among the other tenants' work instead of one turn
//! per request, its new requests wait behind its own running ones, and short requests (most of
//! them) take a free slot and give it back without ever waiting.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, TryAcquireError};

thread_local! {
    /// This worker thread's slot per tenant.
    static SLOTS: RefCell<HashMap<Arc<str>, Arc<Semaphore>>> = RefCell::new(HashMap::new());
}

/// One request's claim on its tenant's slot on the current worker thread.
#[derive(Clone)]
pub struct CpuShare {
    slot: Arc<Semaphore>,
    held: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
    /// Set while the guest is handing its slot over at a tick ([`CpuShare::next_turn`]).
    at_tick: Arc<AtomicBool>,
}

impl CpuShare {
    /// A request of `tenant`'s on the calling worker thread, holding no slot yet. The request
    /// must stay on this thread (the workers are single-threaded runtimes).
    pub fn new(tenant: Arc<str>) -> Self {
        let slot = SLOTS.with(|slots| {
            Arc::clone(
                slots
                    .borrow_mut()
                    .entry(tenant)
                    .or_insert_with(|| Arc::new(Semaphore::new(1))),
            )
        });
        Self {
            slot,
            held: Arc::default(),
            at_tick: Arc::default(),
        }
    }

    fn hold(&self, permit: Option<OwnedSemaphorePermit>) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = permit;
    }

    fn holds(&self) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// At a tick: lets the other tasks of this thread run and the thread poll for I/O
    /// (`yield_now` defers the wake-up until then), then gives the slot back and waits for it
    /// again behind the tenant's other guests on this thread. The slot is kept across the yield
    /// so that handing it over does not wake another of the tenant's guests straight away:
    /// that would keep the run queue busy and delay the thread's I/O polling.
    pub fn next_turn(&self) -> impl Future<Output = ()> + Send + 'static {
        let share = self.clone();
        share.at_tick.store(true, Ordering::Relaxed);
        async move {
            tokio::task::yield_now().await;
            share.hold(None);
            let permit = Arc::clone(&share.slot).acquire_owned().await.ok();
            share.hold(permit);
            share.at_tick.store(false, Ordering::Relaxed);
        }
    }

    /// Runs `guest` (its instantiation and its handler) under this share's turns.
    pub fn run<F: Future>(&self, guest: F) -> Turns<F> {
        Turns {
            share: self.clone(),
            guest: Box::pin(guest),
            waiting: None,
            yielding: None,
        }
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A guest's future that is polled only while it holds its tenant's slot.
pub struct Turns<F> {
    share: CpuShare,
    guest: Pin<Box<F>>,
    /// Waiting in line for the slot before the guest may run again.
    waiting: Option<Acquire>,
    /// Holding the slot just taken from the line, until the thread has polled for I/O.
    yielding: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl<F: Future> Future for Turns<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let share = self.share.clone();
        // At a tick the guest's own `next_turn` owns the slot's hand-over.
        if !share.at_tick.load(Ordering::Relaxed) && !share.holds() {
            if self.waiting.is_none() {
                match Arc::clone(&share.slot).try_acquire_owned() {
                    Ok(permit) => share.hold(Some(permit)),
                    Err(TryAcquireError::NoPermits) => {
                        self.waiting = Some(Box::pin(Arc::clone(&share.slot).acquire_owned()));
                    }
                    Err(TryAcquireError::Closed) => {}
                }
            }
            if let Some(waiting) = self.waiting.as_mut() {
                let Poll::Ready(permit) = waiting.as_mut().poll(cx) else {
                    return Poll::Pending;
                };
                self.waiting = None;
                share.hold(permit.ok());
                // The slot came from a guest that just gave it back, in this same pass of the
                // run queue. Running at once would let a line of the tenant's short steps run
                // back to back before the thread polls for I/O again: defer the turn instead.
                self.yielding = Some(Box::pin(tokio::task::yield_now()));
            }
        }
        if let Some(yielding) = self.yielding.as_mut() {
            if yielding.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.yielding = None;
        }
        let polled = self.guest.as_mut().poll(cx);
        // Waiting for I/O (or finished): the tenant's other guests may run meanwhile.
        if polled.is_ready() || !share.at_tick.load(Ordering::Relaxed) {
            share.hold(None);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    /// A guest that runs `turns` ticks' worth of work, noting each turn.
    async fn busy(share: CpuShare, name: &'static str, turns: usize, log: Arc<Mutex<Vec<&str>>>) {
        for _ in 0..turns {
            log.lock().unwrap().push(name);
            share.next_turn().await;
        }
    }

    #[test]
    fn a_flooding_tenant_gets_one_turn_per_round() {
        runtime().block_on(async {
            let log = Arc::new(Mutex::new(Vec::new()));
            let mut tasks = Vec::new();
            for _ in 0..3 {
                let share = CpuShare::new("noisy".into());
                tasks.push(tokio::spawn(share.clone().run(busy(
                    share,
                    "noisy",
                    4,
                    Arc::clone(&log),
                ))));
            }
            let share = CpuShare::new("quiet".into());
            tasks.push(tokio::spawn(share.clone().run(busy(
                share,
                "quiet",
                4,
                Arc::clone(&log),
            ))));
            for t in tasks {
                t.await.unwrap();
            }
            let log = log.lock().unwrap();
            // Without slots the order is noisy, noisy, noisy, quiet, ...: here the noisy
            // tenant never gets two turns in a row while quiet still has work.
            let quiet_done = log.iter().rposition(|n| *n == "quiet").unwrap();
            assert!(quiet_done < 8, "{log:?}");
            assert!(
                !log[..quiet_done]
                    .windows(2)
                    .any(|w| w == ["noisy", "noisy"]),
                "{log:?}"
            );
        });
    }

    #[test]
    fn a_guest_waiting_for_io_lets_its_tenant_run() {
        runtime().block_on(async {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let log = Arc::new(Mutex::new(Vec::new()));
            let waiting = CpuShare::new("t".into());
            let first = {
                let (share, log) = (waiting.clone(), Arc::clone(&log));
                tokio::spawn(waiting.run(async move {
                    // CPU-bound first (it holds the slot across its tick), then waits for I/O.
                    busy(share, "first", 1, Arc::clone(&log)).await;
                    rx.await.unwrap();
                    log.lock().unwrap().push("first done");
                }))
            };
            let share = CpuShare::new("t".into());
            let second = tokio::spawn(share.clone().run(busy(
                share,
                "second",
                2,
                Arc::clone(&log),
            )));
            // Bounded: with the slot kept across the I/O wait, `second` would never run.
            tokio::time::timeout(std::time::Duration::from_secs(10), second)
                .await
                .expect("the waiting guest gave its slot back")
                .unwrap();
            tx.send(()).unwrap();
            first.await.unwrap();
            assert_eq!(
                *log.lock().unwrap(),
                ["first", "second", "second", "first done"]
            );
        });
    }
}
