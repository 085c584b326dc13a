//! Fair CPU sharing between tenants. Each worker thread has one slot per tenant, and a guest of
//! that tenant runs wasm only while it holds its slot: it takes the slot whenever it is polled
//! (queueing behind the tenant's other guests on this thread if one of them has it), gives it
//! back whenever it waits for I/O (a request body, an inference), and at every epoch tick hands
//! it to the next of the tenant's guests in line. So a tenant that floods the node with
//! CPU-bound requests gets one turn per tick among the other tenants' work instead of one turn
//! per request, its new requests wait behind its own running ones, and short requests (most of
//! them) take a free slot and give it back without ever waiting.
//!
//! Where the slots live: the [`Runtime`](super::Runtime) owns a [`Workers`], one [`Slots`] per
//! worker thread by index, and server.rs tags every request it accepts with its worker's
//! [`Worker`] (a request extension, which reaches `Runtime::invoke` with the request). A
//! thread-local or a tokio task-local would find the same slots without being passed, but only
//! as long as the server kept to one current-thread runtime per listener: with the index in the
//! request, the wiring is visible where the request is accepted and where it is scheduled, and
//! two runtimes in one process never share slots. A request without a [`Worker`] (one that did
//! not come through server.rs) uses worker 0's slots: still correct, as slots are thread-safe,
//! only no longer one per thread.
//!
//! A slot exists only while a guest holds or waits for it (every [`CpuShare`] keeps it alive;
//! the last one to go removes it), so removed tenants, and tenants idle on a worker, cost
//! nothing.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::task::{Context, Poll};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// The worker thread a request was accepted on, set by server.rs as a request extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Worker(pub usize);

/// One runtime's tenant slots for each of its worker threads.
#[derive(Default)]
pub struct Workers {
    by_index: RwLock<Vec<Arc<Slots>>>,
}

impl Workers {
    /// A request of `tenant`'s on the worker named in the request's extensions (`Worker(0)` if
    /// none: see the module doc), holding no slot yet.
    pub fn share(&self, request: &http::Extensions, tenant: Arc<str>) -> CpuShare {
        let worker = request.get().copied().unwrap_or(Worker(0));
        self.slots(worker).share(tenant)
    }

    /// The slots of `worker`, created on its first request.
    fn slots(&self, worker: Worker) -> Arc<Slots> {
        let known = self.by_index.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(slots) = known.get(worker.0) {
            return Arc::clone(slots);
        }
        drop(known);
        let mut known = self
            .by_index
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if known.len() <= worker.0 {
            known.resize_with(worker.0 + 1, Arc::default);
        }
        Arc::clone(&known[worker.0])
    }
}

/// One worker thread's slots: one per tenant that has a guest holding or waiting for it.
#[derive(Default)]
pub struct Slots {
    /// Weak, so that the map does not keep a slot alive: [`Slot`]'s `Drop` removes the entry.
    tenants: Mutex<HashMap<Arc<str>, Weak<Slot>>>,
}

impl Slots {
    /// A request of `tenant`'s on this worker, holding no slot yet.
    pub fn share(self: &Arc<Self>, tenant: Arc<str>) -> CpuShare {
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = match tenants.get(&tenant).and_then(Weak::upgrade) {
            Some(slot) => slot,
            None => {
                let slot = Arc::new(Slot {
                    turn: Arc::new(Semaphore::new(1)),
                    tenant: Arc::clone(&tenant),
                    slots: Arc::clone(self),
                });
                tenants.insert(tenant, Arc::downgrade(&slot));
                slot
            }
        };
        CpuShare {
            slot,
            held: Arc::default(),
            at_tick: Arc::default(),
        }
    }

    /// Tenants with a slot on this worker.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.tenants.lock().unwrap().len()
    }
}

/// A tenant's slot on one worker, shared by the [`CpuShare`]s of its guests there.
struct Slot {
    /// One permit: the turn to run wasm.
    turn: Arc<Semaphore>,
    tenant: Arc<str>,
    slots: Arc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut tenants = self
            .slots
            .tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A new guest of the tenant may have put a fresh slot in the map since this one's last
        // share went away (the entry could no longer be upgraded): leave that one.
        if tenants
            .get(&self.tenant)
            .is_some_and(|entry| entry.strong_count() == 0)
        {
            tenants.remove(&self.tenant);
        }
    }
}

/// One request's claim on its tenant's slot on its worker thread.
#[derive(Clone)]
pub struct CpuShare {
    slot: Arc<Slot>,
    held: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
    /// Set while the guest is handing its slot over at a tick ([`CpuShare::next_turn`]).
    at_tick: Arc<AtomicBool>,
}

impl CpuShare {
    /// Whether both requests take turns on one slot.
    #[cfg(test)]
    pub(super) fn same_slot(&self, other: &CpuShare) -> bool {
        Arc::ptr_eq(&self.slot, &other.slot)
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
            let permit = Arc::clone(&share.slot.turn).acquire_owned().await.ok();
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
                match Arc::clone(&share.slot.turn).try_acquire_owned() {
                    Ok(permit) => share.hold(Some(permit)),
                    Err(TryAcquireError::NoPermits) => {
                        self.waiting = Some(Box::pin(Arc::clone(&share.slot.turn).acquire_owned()));
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
            let slots = Arc::new(Slots::default());
            let log = Arc::new(Mutex::new(Vec::new()));
            let mut tasks = Vec::new();
            for _ in 0..3 {
                let share = slots.share("noisy".into());
                tasks.push(tokio::spawn(share.clone().run(busy(
                    share,
                    "noisy",
                    4,
                    Arc::clone(&log),
                ))));
            }
            let share = slots.share("quiet".into());
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
            let slots = Arc::new(Slots::default());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let log = Arc::new(Mutex::new(Vec::new()));
            let waiting = slots.share("t".into());
            let first = {
                let (share, log) = (waiting.clone(), Arc::clone(&log));
                tokio::spawn(waiting.run(async move {
                    // CPU-bound first (it holds the slot across its tick), then waits for I/O.
                    busy(share, "first", 1, Arc::clone(&log)).await;
                    rx.await.unwrap();
                    log.lock().unwrap().push("first done");
                }))
            };
            let share = slots.share("t".into());
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

    #[test]
    fn a_tenant_slot_lives_while_a_guest_holds_it_or_waits_for_it() {
        let slots = Arc::new(Slots::default());
        let first = slots.share("t".into());
        let second = slots.share("t".into());
        let other = slots.share("u".into());
        assert!(first.same_slot(&second));
        assert_eq!(slots.len(), 2);
        drop(first);
        // `second` still counts on the slot: a newcomer must queue on the same one.
        let third = slots.share("t".into());
        assert!(second.same_slot(&third));
        assert_eq!(slots.len(), 2);
        drop((second, third));
        assert_eq!(slots.len(), 1, "the last guest of `t` is gone");
        drop(other);
        assert_eq!(slots.len(), 0);
    }

    #[test]
    fn a_tenant_slot_is_freed_when_its_last_guest_is_gone() {
        runtime().block_on(async {
            let slots = Arc::new(Slots::default());
            let log = Arc::new(Mutex::new(Vec::new()));
            let (a, b) = (slots.share("gone".into()), slots.share("gone".into()));
            // `b` waits in line for `a`'s slot at each of `a`'s ticks, and the other way round.
            let guests = [
                tokio::spawn(a.clone().run(busy(a, "a", 2, Arc::clone(&log)))),
                tokio::spawn(b.clone().run(busy(b, "b", 2, Arc::clone(&log)))),
            ];
            assert_eq!(slots.len(), 1);
            // A finished task's future (with its share) is dropped before its handle resolves.
            for guest in guests {
                guest.await.unwrap();
            }
            assert_eq!(*log.lock().unwrap(), ["a", "b", "a", "b"]);
            assert_eq!(slots.len(), 0, "a removed tenant leaves nothing behind");
        });
    }

    #[test]
    fn each_worker_has_its_own_slots() {
        let workers = Workers::default();
        let (zero, two) = (workers.slots(Worker(0)), workers.slots(Worker(2)));
        assert!(Arc::ptr_eq(&two, &workers.slots(Worker(2))));
        assert!(!Arc::ptr_eq(&zero, &two));
        assert!(!Arc::ptr_eq(&workers.slots(Worker(1)), &two));
        let (here, there) = (zero.share("t".into()), two.share("t".into()));
        assert!(!here.same_slot(&there));
    }
}
