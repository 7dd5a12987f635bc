//! The admin listener through the real binary on both runtimes
//! (docs/OPERATIONS.md, "Metrics and health"): health, readiness, and
//! metrics that count what a client just did.

#[macro_use]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::*;

/// One HTTP/1.0 exchange: (status, body).
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_raw(addr, format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
}

/// Sends `request` as it is: (status, body).
fn http_raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    try_http(addr, request).unwrap()
}

fn try_http(addr: SocketAddr, request: &[u8]) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request)?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_owned();
    Ok((status, body))
}

/// The value of the sample `name` (with its labels, as written), if shown.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn the_admin_listener_serves_health_readiness_and_metrics(runtime: &str) {
    let server = Server::start(runtime, &[("TOKENIZER_AUTH_ADMIN_LISTEN", "127.0.0.1:0")]);
    let admin = server.admin.expect("the admin listener's address in the listening line");
    assert_eq!(http(admin, "GET", "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(http(admin, "GET", "/readyz"), (200, "ready\n".to_owned()));
    assert_eq!(http(admin, "GET", "/nothing").0, 404);
    assert_eq!(http(admin, "POST", "/metrics").0, 405);
    assert_eq!(http_raw(admin, b"\x16\x03\x01 not http\r\n\r\n").0, 400);

    let token = server.login();
    let mut c = server.connect();
    assert_eq!(c.ask(&token_line(&token)), "authorized");
    assert_eq!(c.ask(&token_line(&token)), "authorized");
    assert_eq!(c.ask(&token_line(&"ab".repeat(32))), "unauthorized");
    assert_eq!(c.ask("not a request"), "error|malformed");

    let (status, metrics) = http(admin, "GET", "/metrics");
    assert_eq!(status, 200);
    let value = |name: &str| sample(&metrics, name).unwrap_or_else(|| panic!("no {name} in\n{metrics}"));
    for (kind, n) in
        [("passcode_sent", 1.0), ("logged_in", 1.0), ("authorized", 2.0), ("unauthorized", 1.0), ("malformed", 1.0)]
    {
        assert_eq!(value(&format!("tokenizer_auth_replies_total{{kind=\"{kind}\"}}")), n, "{kind}");
    }
    assert_eq!(value("tokenizer_auth_replies_total{kind=\"busy\"}"), 0.0);
    assert!(value("tokenizer_auth_connections_open") >= 1.0, "this client is connected");
    assert_eq!(value("tokenizer_auth_mail_sent_total"), 1.0);
    assert_eq!(value("tokenizer_auth_mail_failed_total"), 0.0);
    assert_eq!(value("tokenizer_auth_effect_latency_seconds_count{kind=\"send_mail\"}"), 1.0);
    assert_eq!(value("tokenizer_auth_effect_latency_seconds_count{kind=\"verify_password\"}"), 2.0);
    assert_eq!(value("tokenizer_auth_effects_in_flight{kind=\"read\"}"), 0.0);
    assert!(value("tokenizer_auth_session_cache_hits_total") >= 2.0, "the checks of a new session hit the cache");
    assert!(value("tokenizer_auth_commit_group_size_count") >= 2.0, "the passcode and the session were committed");
    assert_eq!(value("tokenizer_auth_password_checks_queued"), 0.0);
    assert_eq!(value("tokenizer_auth_limit_refusals_total{limit=\"failures_per_ip\"}"), 0.0);
    assert!(metrics.ends_with("# EOF\n"));
    assert!(!metrics.contains(&token) && !metrics.contains(EMAIL), "no secret or email in the metrics");
    assert!(server.stop().success());
}

/// Silent and oversized clients on the admin port take no more than its
/// few threads, and are let go within seconds; the protocol is not
/// disturbed.
fn the_admin_listener_is_bounded_under_a_flood(runtime: &str) {
    let server = Server::start(runtime, &[("TOKENIZER_AUTH_ADMIN_LISTEN", "127.0.0.1:0")]);
    let admin = server.admin.unwrap();
    let threads = || std::fs::read_dir(format!("/proc/{}/task", server.child.id())).unwrap().count();
    let before = threads();
    let mut flood: Vec<TcpStream> = (0..200).map(|_| TcpStream::connect(admin).unwrap()).collect();
    for s in flood.iter_mut().take(20) {
        let _ = s.write_all(&vec![b'a'; 20_000]);
    }
    std::thread::sleep(Duration::from_millis(300));
    // (A thread per connection would be 200 more; the runtimes' own may
    // come and go meanwhile.)
    assert!(threads() < before + 10, "{} threads for a flood, {before} before", threads());
    let mut c = server.connect();
    assert_eq!(c.ask(&token_line(&"ab".repeat(32))), "unauthorized", "the protocol is not disturbed");
    drop(flood);
    // Once the flood is gone, scrapes are answered again.
    let started = std::time::Instant::now();
    loop {
        let answered = try_http(admin, b"GET /healthz HTTP/1.0\r\n\r\n").ok();
        if answered == Some((200, "ok\n".to_owned())) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the admin listener did not recover");
        std::thread::sleep(Duration::from_millis(100));
    }
}

both_runtimes!(the_admin_listener_serves_health_readiness_and_metrics, the_admin_listener_is_bounded_under_a_flood,);
