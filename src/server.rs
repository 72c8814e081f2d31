//! The accept loop: HTTP/1.1 and HTTP/2 (cleartext, prior knowledge) on one port, a connection
//! limit, a header-read timeout, and graceful shutdown.
//!
//! A connection permit is taken *before* `accept`, so at the limit new connections wait in the
//! kernel backlog instead of being accepted and starved. A connection must send its first byte
//! within the header-read timeout or it is closed, so silent connections cannot pin permits. On shutdown the listener is closed
//! first (no new connections), then in-flight requests get up to `shutdown_grace_secs`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::app::App;
use crate::http::{Listener, handle};
use crate::metrics::GaugeGuard;

/// HTTP/1 read buffer cap, which bounds the size of a request head.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    kind: Listener,
    shutdown: impl Future<Output = ()>,
) {
    let cfg = &app.config.server;
    let limit = usize::try_from(cfg.max_connections).unwrap_or(usize::MAX);
    let permits = Arc::new(Semaphore::new(limit));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(cfg.header_read_timeout_secs))
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(u32::try_from(cfg.http2_max_concurrent_streams).unwrap_or(u32::MAX))
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    let head_timeout = Duration::from_secs(cfg.header_read_timeout_secs);
    let graceful = GracefulShutdown::new();
    let grace = Duration::from_secs(cfg.shutdown_grace_secs);
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let gauge = GaugeGuard::new(&app.metrics.connections);
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let _gauge = gauge;
            // hyper's header-read timer starts with the first byte of a request, so a client
            // that connects and never speaks would hold a connection permit forever.
            let mut first = [0u8; 1];
            match tokio::time::timeout(head_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return, // silent past the deadline, closed, or failed
            }
            let service = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(app, req, peer, kind).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(error = %e, peer = %peer, "connection ended with error");
            }
        });
    }
    drop(listener);
    tracing::info!(?kind, "listener closed; draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!(?kind, "drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(?kind, "shutdown grace period elapsed with requests still in flight"),
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Binds an address (start-up code).
pub async fn bind(addr: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
