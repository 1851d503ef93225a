//! Connection bounds against the real binary over real sockets on 127.0.0.0/8: request
//! heads that never finish or trickle in are cut off, idle keep-alive connections are
//! closed, connections over the per-client and total caps are answered 503 (health
//! probes 200) while everyone else is served, and forwarding headers count only from
//! trusted proxies. Each flood is bounded in size and time and ends with its test.
//! The limits are set through the environment (`WHARF_…`), so a registry without them
//! still starts and the assertions, not the command line, tell what it lacks.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn start(env: &[(&str, &str)]) -> (TestServer, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (*k, std::ffi::OsStr::new(*v))).collect();
    (TestServer::start_in_env(data.path(), None, &[], &env), data)
}

/// A connection to the server from `source` (any address of 127.0.0.0/8 is this host).
async fn connect_from(source: [u8; 4], port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap()
}

/// Reads one response (head and `Content-Length` body): status, head, body.
async fn read_response(stream: &mut TcpStream) -> (u16, String, String) {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before a response: {}", String::from_utf8_lossy(&bytes));
        bytes.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0);
    while bytes.len() < head_end + length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed mid-body");
        bytes.extend_from_slice(&chunk[..n]);
    }
    let status = head[9..12].parse().unwrap();
    (status, head, String::from_utf8_lossy(&bytes[head_end..head_end + length]).into_owned())
}

/// One request on a fresh connection from `source`: status, head, body, time taken.
async fn request_from(source: [u8; 4], port: u16, path: &str) -> (u16, String, String, Duration) {
    let started = Instant::now();
    let mut stream = connect_from(source, port).await;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let (status, head, body) = tokio::time::timeout(Duration::from_secs(10), read_response(&mut stream))
        .await
        .unwrap_or_else(|_| panic!("no answer to GET {path} within 10 s"));
    (status, head, body, started.elapsed())
}

/// Waits up to `limit` for the server to close `stream`; how long that took, if it did.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut sink = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// Whether `stream` is still open (nothing to read, no end of stream).
fn still_open(stream: &TcpStream) -> bool {
    let mut sink = [0u8; 16];
    matches!(stream.try_read(&mut sink), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_and_trickling_request_heads_are_cut_off_while_healthz_answers() {
    let (server, _data) = start(&[
        ("WHARF_HEADER_READ_TIMEOUT", "2s"),
        ("WHARF_IDLE_TIMEOUT", "60s"),
        ("WHARF_MAX_CONNECTIONS", "2000"),
        ("WHARF_MAX_CONNECTIONS_PER_CLIENT", "2000"),
    ]);
    let port = server.port;
    const HALF_SENT: usize = 300;
    const TRICKLING: usize = 20;

    let opened = Instant::now();
    let mut half_sent = Vec::new();
    for i in 0..HALF_SENT {
        let mut stream = connect_from([127, 0, 1, (i % 200) as u8 + 1], port).await;
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        half_sent.push(stream);
    }
    // Slowloris: a header byte every 300 ms, for as long as the server listens.
    let trickling: Vec<_> = (0..TRICKLING)
        .map(|i| {
            tokio::spawn(async move {
                let mut stream = connect_from([127, 0, 2, i as u8 + 1], port).await;
                let started = Instant::now();
                stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
                while started.elapsed() < Duration::from_secs(8) {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if stream.write_all(b"a").await.is_err() || !still_open(&stream) {
                        return Some(started.elapsed());
                    }
                }
                None
            })
        })
        .collect();

    // Meanwhile everyone else is served at once.
    let (status, _, body, took) = request_from([127, 0, 0, 1], port, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert!(took < Duration::from_secs(1), "/healthz took {took:?} under {HALF_SENT} half-sent requests");
    eprintln!("/healthz answered in {took:?} with {HALF_SENT} half-sent and {TRICKLING} trickling heads open");

    let mut latest = Duration::ZERO;
    for (i, stream) in half_sent.iter_mut().enumerate() {
        let left = Duration::from_secs(6).saturating_sub(opened.elapsed());
        let closed = closed_within(stream, left).await;
        assert!(closed.is_some(), "half-sent request {i} still open {:?} after it began", opened.elapsed());
        latest = latest.max(opened.elapsed());
    }
    assert!(latest >= Duration::from_millis(1500), "closed before the 2 s header timeout: {latest:?}");
    eprintln!("all {HALF_SENT} half-sent requests closed within {latest:?} of opening (timeout 2 s)");
    for (i, task) in trickling.into_iter().enumerate() {
        let closed = task.await.unwrap();
        let closed = closed.unwrap_or_else(|| panic!("trickling request {i} was still open after 8 s"));
        assert!(closed >= Duration::from_millis(1500) && closed < Duration::from_secs(5), "trickler {i}: {closed:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_and_busy_ones_kept() {
    let (server, _data) = start(&[("WHARF_HEADER_READ_TIMEOUT", "10s"), ("WHARF_IDLE_TIMEOUT", "2s")]);
    let port = server.port;
    const IDLE: usize = 50;

    let mut idle = Vec::new();
    for i in 0..IDLE {
        let mut stream = connect_from([127, 0, 3, i as u8 + 1], port).await;
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(read_response(&mut stream).await.0, 200);
        idle.push(stream);
    }
    let went_idle = Instant::now();
    // One client keeps its connection busy with a request every 700 ms.
    let busy = tokio::spawn(async move {
        let mut stream = connect_from([127, 0, 4, 1], port).await;
        let started = Instant::now();
        let mut requests = 0;
        while started.elapsed() < Duration::from_secs(5) {
            stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            assert_eq!(read_response(&mut stream).await.0, 200, "the busy connection was served");
            requests += 1;
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        requests
    });

    tokio::time::sleep(Duration::from_millis(1000)).await;
    let open = idle.iter().filter(|s| still_open(s)).count();
    assert_eq!(open, IDLE, "idle connections closed before the 2 s idle timeout");
    for (i, stream) in idle.iter_mut().enumerate() {
        let left = Duration::from_secs(5).saturating_sub(went_idle.elapsed());
        assert!(closed_within(stream, left).await.is_some(), "idle connection {i} still open after 5 s");
    }
    eprintln!("all {IDLE} idle keep-alive connections closed within {:?} (timeout 2 s)", went_idle.elapsed());
    let requests = busy.await.unwrap();
    assert!(requests >= 6, "the busy connection was kept past the idle timeout: {requests} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limits_are_refused_with_503_and_healthz_still_answers() {
    let (server, _data) = start(&[
        ("WHARF_MAX_CONNECTIONS", "40"),
        ("WHARF_MAX_CONNECTIONS_PER_CLIENT", "20"),
        ("WHARF_TRUSTED_PROXIES", "none"),
        ("WHARF_IDLE_TIMEOUT", "60s"),
    ]);
    let port = server.port;
    let flooder = [127, 0, 5, 1];

    // One client holds its 20 connections, idle between requests.
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut stream = connect_from(flooder, port).await;
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(read_response(&mut stream).await.0, 200);
        held.push(stream);
    }
    // Its next 100 are each refused with a 503 that says why.
    const EXTRA: usize = 100;
    let started = Instant::now();
    let mut refused = 0;
    for _ in 0..EXTRA {
        let (status, head, body, _) = request_from(flooder, port, "/api/v1/repositories").await;
        if status == 503 {
            assert!(head.contains("Retry-After: 5"), "{head}");
            assert!(body.contains("too many connections from 127.0.5.1"), "{body}");
            refused += 1;
        }
    }
    assert_eq!(refused, EXTRA, "every connection over the per-client limit is refused");
    eprintln!("refused {refused} of {EXTRA} connections over the per-client limit in {:?}", started.elapsed());
    // A health probe over the limit is still answered.
    let (status, _, body, took) = request_from(flooder, port, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    eprintln!("/healthz from the client over its limit answered in {took:?}");
    // Another client is served.
    let (status, _, _, took) = request_from([127, 0, 6, 1], port, "/api/v1/repositories").await;
    assert_ne!(status, 503);
    eprintln!("another client was served in {took:?}");

    // Fill the total: 20 more from other addresses; then everyone new is refused.
    let mut others = Vec::new();
    for i in 0..20u8 {
        let mut stream = connect_from([127, 0, 7, i + 1], port).await;
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(read_response(&mut stream).await.0, 200);
        others.push(stream);
    }
    let (status, head, body, _) = request_from([127, 0, 8, 1], port, "/readyz").await;
    assert_eq!(status, 503, "{head}{body}");
    assert!(body.contains("maximum of 40 connections"), "{body}");
    let (status, _, body, _) = request_from([127, 0, 8, 1], port, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"), "health probes are answered at the total limit too");

    // Connections given back are available again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, _, _) = request_from(flooder, port, "/readyz").await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "closed connections were not given back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(others);
}

/// An npm tarball in the layout `npm publish` sends.
fn tarball(name: &str, version: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let data = serde_json::json!({"name": name, "version": version}).to_string().into_bytes();
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, "package/package.json", &data[..]).unwrap();
    builder.into_inner().unwrap().finish().unwrap()
}

/// The tarball URL of `demo@1.0.0` and cargo's download URL as the server shows them
/// to a client that sends `X-Forwarded-Host` and `X-Forwarded-Proto`.
async fn urls_seen_with_forwarding_headers(server: &TestServer) -> (String, String) {
    use base64::Engine;
    let token = server.token(&["main"], &["read", "publish"]).await;
    let bytes = tarball("demo", "1.0.0");
    let publish = serde_json::json!({
        "_id": "demo", "name": "demo", "dist-tags": {"latest": "1.0.0"},
        "versions": {"1.0.0": {"name": "demo", "version": "1.0.0"}},
        "_attachments": {"demo-1.0.0.tgz": {"content_type": "application/octet-stream",
            "data": base64::engine::general_purpose::STANDARD.encode(&bytes), "length": bytes.len()}}
    });
    let client = reqwest::Client::new();
    let published = client.put(server.url("/npm/main/demo")).bearer_auth(&token).json(&publish).send().await.unwrap();
    assert_eq!(published.status(), 201, "{}", published.text().await.unwrap());
    let forwarded = |path: &str| {
        client
            .get(server.url(path))
            .bearer_auth(&token)
            .header("X-Forwarded-Host", "mirror.attacker.invalid")
            .header("X-Forwarded-Proto", "https")
    };
    let packument: serde_json::Value = forwarded("/npm/main/demo").send().await.unwrap().json().await.unwrap();
    let tarball_url = packument["versions"]["1.0.0"]["dist"]["tarball"].as_str().unwrap().to_owned();
    let config: serde_json::Value =
        forwarded("/cargo/main/index/config.json").send().await.unwrap().json().await.unwrap();
    (tarball_url, config["dl"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    let (untrusting, _data) = start(&[("WHARF_TRUSTED_PROXIES", "10.0.0.0/8")]);
    let (tarball_url, dl) = urls_seen_with_forwarding_headers(&untrusting).await;
    assert_eq!(tarball_url, untrusting.url("/npm/main/demo/-/demo-1.0.0.tgz"), "X-Forwarded-* from a client");
    assert_eq!(dl, untrusting.url("/cargo/main/api/v1/crates"));

    // By default only loopback is trusted: a TLS-terminating sidecar in the pod.
    let (sidecar, _data) = start(&[]);
    let (tarball_url, dl) = urls_seen_with_forwarding_headers(&sidecar).await;
    assert_eq!(tarball_url, "https://mirror.attacker.invalid/npm/main/demo/-/demo-1.0.0.tgz");
    assert_eq!(dl, "https://mirror.attacker.invalid/cargo/main/api/v1/crates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_download_is_disconnected_a_slow_one_is_not() {
    use sha2::Digest;
    let (server, _data) = start(&[("WHARF_IDLE_TIMEOUT", "2s")]);
    let port = server.port;
    // Larger than what loopback's socket buffers hold, so the server must wait for the reader.
    let asset: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
    let size = asset.len();
    let token = server.token(&["main"], &["read", "publish"]).await;
    let checksum = hex::encode(sha2::Sha256::digest(&asset));
    let uploaded = reqwest::Client::new()
        .put(server.url("/generic/main/acme/big/1.0/big.bin"))
        .bearer_auth(&token)
        .header("X-Checksum-Sha256", checksum)
        .body(asset)
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 201);
    let download = format!(
        "GET /generic/main/acme/big/1.0/big.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    );

    // A reader that pauses often but keeps taking the response is kept past the idle
    // timeout. (The socket turns writable again only once a third or so of its send
    // buffer has drained, so the reader must take that much per timeout: here 1 MiB
    // every 250 ms against buffers of a few MiB.)
    let slow = {
        let download = download.clone();
        tokio::spawn(async move {
            let mut stream = connect_from([127, 0, 9, 1], port).await;
            stream.write_all(download.as_bytes()).await.unwrap();
            let mut chunk = vec![0u8; 1 << 20];
            let mut received = 0;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) {
                received += stream.read(&mut chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let slow_part = received;
            // Then the rest, at full speed: all of it arrives.
            loop {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => received += read,
                }
            }
            (slow_part, received)
        })
    };

    // A reader that takes the response head and then nothing.
    let mut stalled = connect_from([127, 0, 9, 2], port).await;
    stalled.write_all(download.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 1024];
    let n = stalled.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Whatever the socket buffers hold still arrives; then the stream must end early.
    let mut received = n;
    let mut sink = vec![0u8; 1 << 20];
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stalled.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(read) => received += read,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection stayed open");
    assert!(received < size, "the whole {size} bytes were sent to a client that read none of them for 5 s");
    eprintln!("a client that stopped reading got {received} of {size} bytes, then the connection was closed");

    let (slow_part, received) = slow.await.unwrap();
    assert!(received > size, "a slow but steady reader was cut off after {received} bytes");
    eprintln!("a reader pausing 250 ms between reads took {slow_part} bytes in 5 s, was kept, and got all");
}
