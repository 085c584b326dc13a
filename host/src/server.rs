//! Accept loop and graceful shutdown. Each connection is served by hyper (HTTP/1.1) in its own
//! task; on shutdown the listener closes, connections finish their in-flight requests and close,
//! and the node waits for them up to the configured grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;

use crate::pace::{Gate, Paced, PauseReads};
use crate::runtime::Worker;
use crate::service::HttpService;

/// Binds `count` listeners to one address with SO_REUSEPORT, one per worker thread; the kernel
/// spreads connections over them. A plain bind first makes an address that is already in use
/// (by anyone, including another node) an error rather than a silent share, and turns port 0
/// into the one real port all listeners use.
pub fn bind(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let addr = std::net::TcpListener::bind(addr)?.local_addr()?;
    (0..count.max(1))
        .map(|_| {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            // SO_REUSEADDR: a restarted node can rebind while old connections sit in TIME_WAIT.
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            socket.bind(addr)?;
            socket.listen(1024)?.into_std()
        })
        .collect()
}

/// Runs one single-threaded runtime per listener, each on its own thread. A request then lives
/// on one thread from accept to response (connection, guest and body tasks alike), with no
/// cross-thread wake-ups on the hot path; each worker tags its requests with its index, so that
/// the runtime schedules tenants on that thread's own slots (runtime/fair.rs). Returns when every
/// worker has drained and stopped.
pub fn run_workers(
    listeners: Vec<std::net::TcpListener>,
    node: Arc<HttpService>,
    stop: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
    max_connections: usize,
    header_timeout: Duration,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let per_worker = (max_connections / listeners.len().max(1)).max(1);
    listeners
        .into_iter()
        .enumerate()
        .map(|(i, listener)| {
            let node = Arc::clone(&node);
            let mut stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("tensorlet-worker-{i}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => return tracing::error!("worker {i} cannot start: {e}"),
                    };
                    rt.block_on(async move {
                        let listener = match TcpListener::from_std(listener) {
                            Ok(l) => l,
                            Err(e) => return tracing::error!("worker {i} cannot listen: {e}"),
                        };
                        let shutdown = async move {
                            let _ = stop.wait_for(|stopped| *stopped).await;
                        };
                        serve(
                            listener,
                            Worker(i),
                            node,
                            shutdown,
                            grace,
                            per_worker,
                            header_timeout,
                        )
                        .await;
                    });
                })
        })
        .collect()
}

/// Serves until `shutdown` resolves, then drains connections for at most `grace`. Every request
/// carries `worker` as an extension: the worker thread that runs it and its guest.
pub async fn serve(
    listener: TcpListener,
    worker: Worker,
    node: Arc<HttpService>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    max_connections: usize,
    header_timeout: Duration,
) {
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // At the connection limit, stop accepting: clients queue in the kernel's backlog.
        let (permit, (stream, _peer)) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = async {
                let permit = Arc::clone(&connections).acquire_owned().await;
                (permit, listener.accept().await)
            } => match accepted {
                (Ok(permit), Ok(pair)) => (permit, pair),
                (Err(_closed), _) => break,
                (_, Err(e)) => {
                    // Out of file descriptors and the like: the error is per connection.
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            },
        };
        // Responses are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let node = Arc::clone(&node);
        let gate = Gate::default();
        let io = Paced::new(TokioIo::new(stream), gate.clone());
        let conn = http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            // Slow clients must send their headers in time.
            .header_read_timeout(header_timeout)
            .serve_connection(
                io,
                service_fn(move |mut req: http::Request<Incoming>| {
                    req.extensions_mut().insert(worker);
                    let node = Arc::clone(&node);
                    let gate = gate.clone();
                    async move {
                        let response = node.handle(req).await;
                        if let Some(PauseReads(pause)) = response.extensions().get() {
                            gate.pause(*pause);
                        }
                        Ok::<_, std::convert::Infallible>(response)
                    }
                }),
            );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period of {grace:?} over; dropping remaining connections");
    }
}
