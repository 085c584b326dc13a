//! A small executor for async handlers, over `wasi:io/poll`.
//!
//! One request runs in one instance on one thread, so the executor is single-threaded: it polls
//! the handler's future, and when that future waits on the host (a body chunk, an outbound
//! response, a timer), it blocks in `wasi:io/poll.poll` on every pollable the pending futures
//! registered, wakes those that are ready and polls again. Futures from other crates that wait
//! on pollables of their own work too when they register through [`wait`].
//!
//! ```no_run
//! use std::time::Duration;
//! use tensorlet_sdk::{Request, rt};
//!
//! async fn handle(_req: Request) -> String {
//!     // Both timers run at once: this answers after about 50 ms, not 80.
//!     let a = async { rt::sleep(Duration::from_millis(50)).await; "a" };
//!     let b = async { rt::sleep(Duration::from_millis(30)).await; "b" };
//!     let (a, b) = rt::join(a, b).await;
//!     format!("{a}{b}")
//! }
//!
//! tensorlet_sdk::export_async_handler!(handle);
//! ```

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use wasi::io::poll::{Pollable, poll};

/// A boxed future, for [`join_all`] over futures of different types with one output type
/// (`Box::pin(f) as BoxFuture<'_, T>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

thread_local! {
    /// Pollables the pending futures wait on, with who to wake. Emptied at each turn: a future
    /// still waiting registers again when it is polled.
    static WAITING: RefCell<Vec<(Rc<Pollable>, Waker)>> = const { RefCell::new(Vec::new()) };
}

/// Whether the future was woken since it was last polled.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs `future` to completion on this thread, blocking in `wasi:io/poll` while it waits. Usable
/// from a plain handler too (for example to run [`fetch`](crate::fetch) calls at once).
///
/// ```no_run
/// # use tensorlet_sdk::{Error, Request, fetch, http, rt};
/// fn handle(_req: Request) -> Result<String, Error> {
///     let get = |url: &str| fetch(http::Request::get(url).body(Vec::new()).unwrap());
///     // Two calls at once from a plain (not async) handler.
///     let (a, b) = rt::block_on(rt::join(get("http://a.fn.internal/"), get("http://b.fn.internal/")));
///     Ok(format!("{} {}", a?.status(), b?.status()))
/// }
/// # tensorlet_sdk::export_handler!(handle);
/// ```
///
/// # Panics
///
/// If the future is pending without waiting on anything (a future from another runtime, such
/// as a tokio timer): nothing could ever wake it.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let flag = Arc::new(Flag(AtomicBool::new(true)));
    let waker = Waker::from(Arc::clone(&flag));
    let mut cx = Context::from_waker(&waker);
    loop {
        if flag.0.swap(false, Ordering::AcqRel) {
            // What is still pending registers again while polled.
            WAITING.with(|w| w.borrow_mut().clear());
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            continue;
        }
        let waiting = WAITING.with(|w| std::mem::take(&mut *w.borrow_mut()));
        assert!(
            !waiting.is_empty(),
            "tensorlet-sdk: the handler's future is pending but waits on nothing the host can \
             wake (a future of another async runtime?)"
        );
        let pollables: Vec<&Pollable> = waiting.iter().map(|(p, _)| &**p).collect();
        for ready in poll(&pollables) {
            waiting[ready as usize].1.wake_by_ref();
        }
    }
}

/// Waits until `pollable` is ready, letting other futures run meanwhile: the way to await any
/// `wasi:io` pollable (a stream, a timer, an outbound response).
///
/// ```no_run
/// # async fn f(stream: &wasi::io::streams::InputStream) {
/// tensorlet_sdk::rt::wait(stream.subscribe()).await;
/// # }
/// ```
pub async fn wait(pollable: Pollable) {
    Wait(Rc::new(pollable)).await
}

struct Wait(Rc<Pollable>);

impl Future for Wait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.ready() {
            return Poll::Ready(());
        }
        let entry = (Rc::clone(&self.0), cx.waker().clone());
        WAITING.with(|w| w.borrow_mut().push(entry));
        Poll::Pending
    }
}

/// Waits for `duration` (on the host's monotonic clock) without blocking other futures.
///
/// ```no_run
/// # async fn f() {
/// tensorlet_sdk::rt::sleep(std::time::Duration::from_millis(100)).await;
/// # }
/// ```
pub async fn sleep(duration: Duration) {
    let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    wait(wasi::clocks::monotonic_clock::subscribe_duration(nanos)).await
}

/// Runs the futures at once and gives their outputs in the same order.
///
/// ```no_run
/// # use tensorlet_sdk::{Error, fetch, rt};
/// # async fn f() -> Result<(), Error> {
/// let urls = ["http://a.fn.internal/", "http://b.fn.internal/"];
/// let get = |url: &str| fetch(tensorlet_sdk::http::Request::get(url).body(Vec::new()).unwrap());
/// for answer in rt::join_all(urls.map(get)).await {
///     println!("{}", answer?.status());
/// }
/// # Ok(()) }
/// ```
pub async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let futures: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    JoinAll {
        outputs: futures.iter().map(|_| None).collect(),
        futures,
    }
    .await
}

/// Runs two futures of any types at once.
pub async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (a, b) = (Box::pin(a), Box::pin(b));
    let mut a = JoinAll {
        futures: vec![Some(a)],
        outputs: vec![None],
    };
    let mut b = JoinAll {
        futures: vec![Some(b)],
        outputs: vec![None],
    };
    std::future::poll_fn(|cx| {
        let ready_a = Pin::new(&mut a).poll_part(cx);
        let ready_b = Pin::new(&mut b).poll_part(cx);
        if ready_a && ready_b {
            let out_a = a.outputs[0].take().expect("a ended");
            let out_b = b.outputs[0].take().expect("b ended");
            Poll::Ready((out_a, out_b))
        } else {
            Poll::Pending
        }
    })
    .await
}

struct JoinAll<F: Future> {
    futures: Vec<Option<Pin<Box<F>>>>,
    outputs: Vec<Option<F::Output>>,
}

// The outputs are never pinned; the futures are pinned in their boxes.
impl<F: Future> Unpin for JoinAll<F> {}

impl<F: Future> JoinAll<F> {
    /// Polls the futures still running; whether all have ended.
    fn poll_part(self: Pin<&mut Self>, cx: &mut Context<'_>) -> bool {
        let this = self.get_mut();
        for (slot, output) in this.futures.iter_mut().zip(&mut this.outputs) {
            if let Some(future) = slot
                && let Poll::Ready(value) = future.as_mut().poll(cx)
            {
                *output = Some(value);
                *slot = None;
            }
        }
        this.futures.iter().all(Option::is_none)
    }
}

impl<F: Future> Future for JoinAll<F> {
    type Output = Vec<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if !self.as_mut().poll_part(cx) {
            return Poll::Pending;
        }
        let outputs = std::mem::take(&mut self.outputs);
        Poll::Ready(
            outputs
                .into_iter()
                .map(|o| o.expect("every future ended"))
                .collect(),
        )
    }
}
