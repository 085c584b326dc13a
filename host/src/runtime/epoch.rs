//! One thread per engine advances the epoch every [`TICK`], or every [`BUSY_TICK`] while some
//! guest of that engine is CPU-bound (still running at a tick: see [`CpuBoundGuests`]). Running guests check the
//! epoch at function entries and loop heads; each tick they yield to the async executor (so a
//! busy guest never starves other requests on its worker thread) and trap once past their
//! deadline. The faster tick only while needed: waking 4,000 times a second costs every request
//! on a small machine, but it is what keeps others' latency low next to a CPU-bound guest.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::Engine;

/// The tick while no guest is CPU-bound: the granularity of timeouts.
pub const TICK: Duration = Duration::from_millis(1);
/// The tick while some guest is CPU-bound: the longest it holds its worker thread before others
/// get a turn.
pub const BUSY_TICK: Duration = Duration::from_micros(250);

/// How many of one engine's guests are CPU-bound now. Owned by that engine's [`EpochTicker`]
/// rather than a `static`: a second engine in the process (tests start several) must not make
/// this one tick faster, nor be slowed by it.
#[derive(Clone, Default)]
pub struct CpuBoundGuests(Arc<AtomicUsize>);

impl CpuBoundGuests {
    /// Marks the calling guest CPU-bound until the value is dropped.
    pub fn enter(&self) -> CpuBound {
        self.0.fetch_add(1, Ordering::Relaxed);
        CpuBound(Arc::clone(&self.0))
    }

    /// The period until the next tick.
    pub fn tick(&self) -> Duration {
        if self.0.load(Ordering::Relaxed) > 0 {
            BUSY_TICK
        } else {
            TICK
        }
    }
}

/// Held by a guest from its first tick to its end: while any is held, its engine's epoch ticks
/// faster.
pub struct CpuBound(Arc<AtomicUsize>);

impl Drop for CpuBound {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Owns the ticker thread; dropping it stops and joins the thread.
pub struct EpochTicker {
    cpu_bound: CpuBoundGuests,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts ticking `engine`. The thread holds a weak reference so it never keeps it alive.
    pub fn spawn(engine: &Engine) -> std::io::Result<Self> {
        let weak = engine.weak();
        let cpu_bound = CpuBoundGuests::default();
        let guests = cpu_bound.clone();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tensorlet-epoch".into())
            .spawn(move || {
                // `recv_timeout` doubles as the sleep and the stop signal.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(guests.tick())
                {
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })?;
        Ok(Self {
            cpu_bound,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The count that sets this engine's tick; each request's guest enters it at its first tick.
    pub fn cpu_bound(&self) -> &CpuBoundGuests {
        &self.cpu_bound
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
