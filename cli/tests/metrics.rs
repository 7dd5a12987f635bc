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
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_owned();
    (status, body)
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

both_runtimes!(the_admin_listener_serves_health_readiness_and_metrics);
