//! One thread per engine advances the epoch every [`TICK`]. Running guests check the epoch at
//! function entries and loop heads; each tick they yield to the async executor (so a busy guest
//! never starves other requests on its worker thread) and trap once past their deadline.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::Engine;

/// Epoch period: the granularity of timeouts and of yielding.
/// 1 ms: a CPU-bound guest holds its worker thread at most this long before others get a turn.
pub const TICK: Duration = Duration::from_millis(1);

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
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
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
