//! One thread per engine advances the epoch every [`TICK`], or every [`BUSY_TICK`] while some
//! guest is CPU-bound (still running at a tick: see [`CpuBound`]). Running guests check the
//! epoch at function entries and loop heads; each tick they yield to the async executor (so a
//! busy guest never starves other requests on its worker thread) and trap once past their
//! deadline. The faster tick only while needed: waking 4,000 times a second costs every request
//! on a small machine, but it is what keeps others' latency low next to a CPU-bound guest.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::Engine;

/// Epoch period: the granularity of timeouts and of yielding.
/// The tick while no guest is CPU-bound: the granularity of timeouts.
pub const TICK: Duration = Duration::from_millis(1);
/// The tick while some guest is CPU-bound: the longest it holds its worker thread before others
/// get a turn.
pub const BUSY_TICK: Duration = Duration::from_micros(250);

/// CPU-bound guests running now.
static CPU_BOUND: AtomicUsize = AtomicUsize::new(0);

/// Held by a guest from its first tick to its end: while any is held, the epoch ticks faster.
pub struct CpuBound(());

impl CpuBound {
    /// Marks the calling guest CPU-bound until the value is dropped.
    pub fn enter() -> Self {
        CPU_BOUND.fetch_add(1, Ordering::Relaxed);
        Self(())
    }
}

impl Drop for CpuBound {
    fn drop(&mut self) {
        CPU_BOUND.fetch_sub(1, Ordering::Relaxed);
    }
}

fn tick() -> Duration {
    if CPU_BOUND.load(Ordering::Relaxed) > 0 {
        BUSY_TICK
    } else {
        TICK
    }
}

/// Owns the ticker thread; dropping it stops and joins the thread.
pub struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts ticking `engine`. The thread holds a weak reference so it never keeps it alive.
    pub fn spawn(engine: &Engine) -> std::io::Result<Self> {
        let weak = engine.weak();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tensorlet-epoch".into())
            .spawn(move || {
                // `recv_timeout` doubles as the sleep and the stop signal.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick()) {
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
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
