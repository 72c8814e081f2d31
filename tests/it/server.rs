//! Server behaviour: graceful shutdown, slowloris, connection limit, HTTP/2, readiness,
//! metrics, request ids.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use pixgate::auth::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

fn healthz(s: &Server) -> Request<Empty<Bytes>> {
    Request::get(s.url("/healthz"))
        .body(Empty::<Bytes>::new())
        .unwrap()
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let mut s = Server::start(Backend::Fs);
    let body = fixture("photo_320x240.jpg");
    let t = token("alice", Role::Editor);
    // Start an upload and send only half the body.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /v1/images HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {t}\r\ncontent-type: image/jpeg\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let half = body.len() / 2;
    c.write_all(&body[..half]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // SIGTERM while the request is in flight.
    unsafe {
        libc::kill(s.pid(), libc::SIGTERM);
    }
    // New connections are refused once the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(s.addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "listener still accepting 5 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The in-flight request completes normally.
    c.write_all(&body[half..]).await.unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    let status = s.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}\n{}",
        s.log()
    );
}

#[tokio::test]
async fn requests_past_their_deadline_get_503_timeout() {
    let s = Server::start_with(
        Backend::Fs,
        &[("PIXGATE__SERVER__REQUEST_TIMEOUT_SECS", "1")],
    );
    let t = token("alice", Role::Editor);
    let body = fixture("photo_320x240.jpg");
    // The head arrives at once; the body never completes.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /v1/images HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {t}\r\ncontent-type: image/jpeg\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&body[..100]).await.unwrap();
    let started = Instant::now();
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut out))
        .await
        .expect("no answer within 5 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out[..n]);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("\"timeout\""), "{text}");
    assert!(text.to_lowercase().contains("retry-after: 1"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Nothing was stored.
    let images = s.dir.path().join("data/originals/images");
    assert_eq!(
        std::fs::read_dir(&images).map(|d| d.count()).unwrap_or(0),
        0
    );
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let s = Server::start_with(
        Backend::Fs,
        &[("PIXGATE__SERVER__HEADER_READ_TIMEOUT_SECS", "1")],
    );
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "connection still open after 5 s of incomplete headers"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

#[tokio::test]
async fn silent_connections_are_closed() {
    let s = Server::start_with(
        Backend::Fs,
        &[("PIXGATE__SERVER__HEADER_READ_TIMEOUT_SECS", "1")],
    );
    // Connects and never sends a byte: must not hold a connection slot forever.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "silent connection still open after 5 s");
    assert!(started.elapsed() < Duration::from_secs(4));
    // Nor one that sends the first byte of an HTTP/2 preface and stops (hyper itself has no
    // timer on the preface).
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"PRI * HT").await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "partial HTTP/2 preface still open after 5 s");
    // An idle keep-alive connection after a response is closed the same way.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 512];
    let n = c.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    let read = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "idle keep-alive connection still open after 5 s"
    );
}

#[tokio::test]
async fn connection_limit_holds_extra_clients_back() {
    let s = Server::start_with(Backend::Fs, &[("PIXGATE__SERVER__MAX_CONNECTIONS", "2")]);
    let a = TcpStream::connect(s.addr).await.unwrap();
    let b = TcpStream::connect(s.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A third client is not served while two connections are held.
    let url = s.url("/healthz");
    let third = tokio::spawn(async move { get(&url, &[]).await.status });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !third.is_finished(),
        "third connection was served beyond the limit"
    );
    drop(a);
    let status = tokio::time::timeout(Duration::from_secs(5), third).await;
    assert_eq!(status.expect("served after a slot freed").unwrap(), 200);
    drop(b);
}

#[tokio::test]
async fn http2_cleartext_on_the_same_port() {
    let s = Server::start(Backend::Fs);
    let (mut send, _driver) = h2_connect(&s).await;
    let resp = send.send_request(healthz(&s)).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("ok"));
}

#[tokio::test]
async fn idle_http2_connections_are_closed() {
    let s = Server::start_with(Backend::Fs, &[("PIXGATE__SERVER__IDLE_TIMEOUT_SECS", "1")]);
    let (mut send, driver) = h2_connect(&s).await;
    assert_eq!(send.send_request(healthz(&s)).await.unwrap().status(), 200);
    // The client keeps the connection open and answers pings; the server must still let go.
    let closed = tokio::time::timeout(Duration::from_secs(6), driver).await;
    assert!(
        closed.is_ok(),
        "idle HTTP/2 connection still open after 6 s"
    );
}

#[tokio::test]
async fn clients_that_stop_reading_are_cut_off() {
    let s = Server::start_with(Backend::Fs, &[("PIXGATE__SERVER__IDLE_TIMEOUT_SECS", "1")]);
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    // ~10 MB of PNG: more than loopback socket buffers hold (4 MB send, 4 KB receive here).
    let path = signed(&format!("/rs:force:4000:3000:1/f:png/plain/{id}"));
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut c = socket.connect(s.addr).await.unwrap();
    c.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Do not read while the server computes and then blocks writing to us: wait until the
    // computation is done, then for the idle timeout and the hard close after it.
    let started = Instant::now();
    loop {
        let m = metrics(&s).await;
        if metric(&m, "pixgate_transform_duration_seconds_count", "") >= 1.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "transform never finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("computed in {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut got))
        .await
        .expect("connection neither finished nor closed")
        .unwrap();
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    let body = got.len() - head_end - 4;
    assert!(length > 8_000_000, "response too small to block: {length}");
    assert!(
        body < length,
        "the stalled connection was never cut ({body} of {length} bytes)"
    );
}

#[tokio::test]
async fn readiness_reflects_dependencies() {
    let fs = Server::start(Backend::Fs);
    let r = get(&fs.url("/readyz"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["checks"]["redis"], "disabled");
    let s3 = Server::start(Backend::S3);
    let r = get(&s3.url("/readyz"), &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(
        r.json()["checks"],
        serde_json::json!({"storage": "ok", "redis": "ok"})
    );
    // Redis configured but unreachable → still serving (limits fall back to the in-process
    // limiter), reported as degraded.
    let dead = format!("redis://127.0.0.1:{}/0", free_port());
    let s = Server::start_with(Backend::S3, &[("PIXGATE__REDIS__URL", &dead)]);
    let r = get(&s.url("/readyz"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "degraded");
    assert_eq!(r.json()["checks"]["redis"], "error");
    assert_eq!(r.json()["limiter"], "fallback");
    // A missing bucket → not ready.
    let s = Server::start_with(
        Backend::S3,
        &[("PIXGATE__STORAGE__S3_DERIVED_BUCKET", "no-such-bucket")],
    );
    let r = get(&s.url("/readyz"), &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["checks"]["storage"], "error");
    assert_eq!(get(&s.url("/healthz"), &[]).await.status, 200);
}

#[tokio::test]
async fn metrics_and_request_ids() {
    let s = Server::start(Backend::Fs);
    let r = get(&s.url("/healthz"), &[("x-request-id", "trace-abc.1")]).await;
    assert_eq!(r.header("x-request-id"), Some("trace-abc.1"));
    let r = get(&s.url("/healthz"), &[("x-request-id", "bad id\"")]).await;
    assert_eq!(r.header("x-request-id").unwrap().len(), 24);
    get(&s.url("/nope"), &[]).await;
    let text = metrics(&s).await;
    assert!(
        metric(
            &text,
            "pixgate_http_requests_total",
            "{route=\"healthz\",status_class=\"2xx\"}"
        ) >= 2.0
    );
    assert!(
        metric(
            &text,
            "pixgate_http_requests_total",
            "{route=\"transform\",status_class=\"4xx\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &text,
            "pixgate_http_response_bytes_total",
            "{route=\"healthz\"}"
        ) > 0.0,
        "bytes out not counted"
    );
    for name in [
        "pixgate_http_request_duration_seconds_bucket",
        "pixgate_inflight_requests",
        "pixgate_transform_queue_depth",
        "pixgate_http_response_bytes_total",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    // A separate metrics listener takes /metrics off the public port.
    let port = free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let s = Server::start_with(Backend::Fs, &[("PIXGATE__SERVER__METRICS_LISTEN", &addr)]);
    assert_eq!(get(&s.url("/metrics"), &[]).await.status, 404);
    let r = get(&format!("http://{addr}/metrics"), &[]).await;
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("pixgate_http_requests_total"));
    assert_eq!(
        get(&format!("http://{addr}/v1/images"), &[]).await.status,
        404
    );
}
