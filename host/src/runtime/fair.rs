//! Fair CPU sharing between tenants. A guest that is still running at an epoch tick is CPU-bound;
//! from then on it runs only while it holds its tenant's slot on its worker thread (one slot per
//! tenant per thread), given back and queued for again at every tick. So on each worker thread a
//! tenant has at most one CPU-bound guest running at a time, and a tenant that floods the node
//! with CPU-bound requests gets one turn per tick among the others instead of one turn per
//! request. Short guests (most requests) never reach a tick and never wait.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

thread_local! {
    /// This worker thread's slot per tenant.
    static SLOTS: RefCell<HashMap<Arc<str>, Arc<Semaphore>>> = RefCell::new(HashMap::new());
}

/// One request's claim on its tenant's CPU slot.
pub struct CpuShare {
    tenant: Arc<str>,
    held: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
}

impl CpuShare {
    /// A request of `tenant`'s, holding no slot yet.
    pub fn new(tenant: Arc<str>) -> Self {
        Self {
            tenant,
            held: Arc::default(),
        }
    }

    /// At a tick: lets the other tasks of this thread run and the thread poll for I/O
    /// (`yield_now` defers the wake-up until then), then gives the slot back and waits for it
    /// again behind the tenant's other guests on this thread. The slot is kept across the yield
    /// so that handing it over does not wake another of the tenant's guests straight away:
    /// that would keep the run queue busy and delay the thread's I/O polling.
    pub fn next_turn(&self) -> impl Future<Output = ()> + Send + 'static {
        let slot = SLOTS.with(|slots| {
            Arc::clone(
                slots
                    .borrow_mut()
                    .entry(Arc::clone(&self.tenant))
                    .or_insert_with(|| Arc::new(Semaphore::new(1))),
            )
        });
        let held = Arc::clone(&self.held);
        async move {
            tokio::task::yield_now().await;
            drop(held.lock().unwrap_or_else(|e| e.into_inner()).take());
            if let Ok(permit) = slot.acquire_owned().await {
                *held.lock().unwrap_or_else(|e| e.into_inner()) = Some(permit);
            }
        }
    }
}
