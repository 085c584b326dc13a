//! Accept loop and graceful shutdown. Each connection is served by hyper (HTTP/1.1) in its own
//! task; on shutdown the listener closes, connections finish their in-flight requests and close,
//! and the node waits for them up to the configured grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;

use crate::service::Node;

/// Binds `addr` with SO_REUSEADDR (so a restarted node can rebind while old connections sit in
/// TIME_WAIT) and a deep accept backlog for bursts.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves until `shutdown` resolves, then drains connections for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    max_connections: usize,
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
        let conn = http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            // Slow clients must send their headers in time.
            .header_read_timeout(Duration::from_secs(30))
            .serve_connection(
                TokioIo::new(stream),
                service_fn(move |req| {
                    let node = Arc::clone(&node);
                    async move { Ok::<_, std::convert::Infallible>(node.handle(req).await) }
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
