//! The accept loop: HTTP/1.1 and HTTP/2 (cleartext, prior knowledge) on one port, a connection
//! limit, head and idle timeouts, and graceful shutdown.
//!
//! A connection permit is taken *before* `accept`, so at the limit new connections wait in the
//! kernel backlog instead of being accepted and starved. A connection must send its opening
//! bytes within the header-read timeout, and one with no request in flight for
//! `idle_timeout_secs` is closed gracefully, so silent or idle clients cannot pin permits.
//! On shutdown the listener is closed first (no new connections), every connection is told to
//! finish (HTTP/1 after its current request, HTTP/2 with GOAWAY), and in-flight requests get up
//! to `shutdown_grace_secs`.
//!
//! With `server.tls_cert_file`/`tls_key_file` the main listener speaks TLS only (rustls,
//! ALPN `h2` and `http/1.1`); the handshake must finish within the header-read timeout.

pub mod config;
pub use config::{ClientIpHeader, ServerConfig};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::app::App;
use crate::http::{Listener, handle};
use crate::metrics::GaugeGuard;

/// HTTP/1 read buffer cap, which bounds the size of a request head.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The HTTP/2 connection preface a prior-knowledge client starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves `listener` until `shutdown` turns true, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    kind: Listener,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let cfg = &app.config.server;
    let limit = u32::try_from(cfg.max_connections).unwrap_or(u32::MAX);
    let permits = Arc::new(Semaphore::new(limit as usize));
    let builder = Arc::new(http_builder(cfg));
    let limits = ConnLimits {
        head: Duration::from_secs(cfg.header_read_timeout_secs),
        idle: Duration::from_secs(cfg.idle_timeout_secs),
    };
    let grace = Duration::from_secs(cfg.shutdown_grace_secs);

    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = stopped(&mut shutdown) => break,
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
            () = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let gauge = GaugeGuard::new(&app.metrics.connections);
        let task = connection(
            stream,
            tls.clone(),
            Conn {
                peer,
                app: app.clone(),
                kind,
                builder: builder.clone(),
                limits,
                shutdown: shutdown.clone(),
            },
        );
        tokio::spawn(async move {
            task.await;
            drop(permit);
            drop(gauge);
        });
    }
    drop(listener);
    tracing::info!(?kind, "listener closed; draining in-flight requests");
    // Every live connection holds a permit: all of them back means all drained.
    match tokio::time::timeout(grace, permits.acquire_many(limit)).await {
        Ok(_) => tracing::info!(?kind, "drained"),
        Err(_) => tracing::warn!(
            ?kind,
            "shutdown grace period elapsed with requests still in flight"
        ),
    }
}

/// The HTTP/1.1 + HTTP/2 connection builder: head timeout and size, keep-alives, streams.
fn http_builder(cfg: &ServerConfig) -> auto::Builder<TokioExecutor> {
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
    builder
}

/// Resolves once the shutdown flag is set (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The returned guard is dropped here, so callers' futures stay `Send`.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[derive(Clone, Copy)]
struct ConnLimits {
    /// Time to the first bytes of a request head (and of the HTTP/2 preface).
    head: Duration,
    /// Time a connection may stay open with no request in flight.
    idle: Duration,
}

/// Request activity on one connection, for the idle watchdog.
struct Activity {
    in_flight: AtomicUsize,
    last: std::sync::Mutex<Instant>, // held only to read or write an Instant; never across .await
}

impl Activity {
    fn touch(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(
            self.last
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed(),
        )
    }
}

/// Marks a request in flight until dropped (also when the request is cancelled).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: &Arc<Activity>) -> InFlight {
        a.in_flight.fetch_add(1, Ordering::AcqRel);
        a.touch();
        InFlight(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Waits until the client has said enough to be handed to hyper: hyper's HTTP/1 header timer
/// starts only with the first byte, and its HTTP/2 preface read has no timer at all, so a
/// client that stays silent (or sends `P` and stops) would otherwise hold a permit forever.
async fn opening_bytes(stream: &TcpStream, deadline: Duration) -> bool {
    let until = tokio::time::Instant::now() + deadline;
    let mut buf = [0u8; 24];
    loop {
        let n = match tokio::time::timeout_at(until, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return false, // silent past the deadline, or failed
        };
        if n == 0 {
            return false; // closed
        }
        if n == buf.len() || buf[..n] != H2_PREFACE[..n] {
            return true; // an HTTP/1 request line, or a complete preface
        }
        // A partial preface: peek returns at once while bytes wait, so poll gently.
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What serving one connection needs.
struct Conn {
    peer: SocketAddr,
    app: Arc<App>,
    kind: Listener,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: ConnLimits,
    shutdown: watch::Receiver<bool>,
}

/// Serves one connection: opening bytes, the TLS handshake if configured, then hyper.
async fn connection(stream: TcpStream, tls: Option<TlsAcceptor>, conn: Conn) {
    if !opening_bytes(&stream, conn.limits.head).await {
        return;
    }
    match tls {
        None => serve_io(stream, false, conn).await,
        Some(acceptor) => {
            match tokio::time::timeout(conn.limits.head, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => serve_io(tls_stream, true, conn).await,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %conn.peer, error = %e, "TLS handshake failed");
                }
                Err(_) => tracing::debug!(peer = %conn.peer, "TLS handshake timed out"),
            }
        }
    }
}

/// Serves HTTP on an established stream, with an idle watchdog and graceful shutdown on the
/// server's signal.
async fn serve_io<S>(stream: S, tls: bool, conn: Conn)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        peer,
        app,
        kind,
        builder,
        limits,
        mut shutdown,
    } = conn;
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        last: std::sync::Mutex::new(Instant::now()),
    });
    let service_activity = activity.clone();
    let service = service_fn(move |req| {
        let app = app.clone();
        let guard = InFlight::new(&service_activity);
        async move {
            let resp = handle(app, req, peer, kind, tls).await;
            drop(guard);
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    // Set once a graceful close was asked for: hyper then finishes what is in flight, but has
    // no write timeout, so a client that stops reading would hold the connection forever.
    // After another idle period the connection is dropped outright.
    let mut hard_close: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval((limits.idle / 4).max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            // Polled first: a shutdown noticed in the same pass must not cut a connection
            // whose request bytes have already arrived.
            biased;
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, peer = %peer, "connection ended with error");
                }
                return;
            }
            () = stopped(&mut shutdown), if hard_close.is_none() => {
                conn.as_mut().graceful_shutdown();
                hard_close = Some(tokio::time::Instant::now() + limits.idle);
            }
            _ = tick.tick() => match hard_close {
                None if activity.idle_for().is_some_and(|idle| idle >= limits.idle) => {
                    conn.as_mut().graceful_shutdown();
                    hard_close = Some(tokio::time::Instant::now() + limits.idle);
                }
                Some(at) if tokio::time::Instant::now() >= at => {
                    tracing::debug!(peer = %peer, "connection did not drain; closing it");
                    return;
                }
                _ => {}
            },
        }
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

/// The TLS acceptor for `server.tls_cert_file` and `server.tls_key_file` (start-up code).
pub fn tls_acceptor(cert_file: &str, key_file: &str) -> Result<TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("server.tls_cert_file {cert_file}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("server.tls_cert_file {cert_file}: no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("server.tls_key_file {key_file}: {e}"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("server.tls_key_file: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Binds an address (start-up code).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
