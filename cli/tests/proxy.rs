//! The PROXY protocol on the native listener, through the real binary on
//! both runtimes: behind a balancer in `proxy_protocol_from`, the client
//! its header names is the connection's address (binding, limits, audit
//! trail); a balancer's connection without a header, or anyone's with one
//! when it is not a balancer, is closed without a reply.

#[macro_use]
mod support;

use std::time::Duration;

use support::*;

const CLIENT: &str = "203.0.113.7";

/// A connection through the balancer (this test, at 127.0.0.1) for `client`.
fn through(server: &Server, client: &str) -> Client {
    let mut c = server.connect();
    c.send(format!("PROXY TCP4 {client} 127.0.0.1 51234 {}\r\n", server.native.port()).as_bytes());
    c
}

fn the_client_behind_the_balancer_is_the_connection(runtime: &str) {
    let server = Server::start(runtime, &[("TOKENIZER_AUTH_PROXY_PROTOCOL_FROM", "127.0.0.1, 10.0.0.0/8")]);
    let mut c = through(&server, CLIENT);
    assert_eq!(c.ask(&format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}")), "Passcode is sent");
    let code = server.outbox_passcode();
    let reply = through(&server, CLIENT).ask(&format!("{MAC}|{EMAIL}|{PHONE}|{PASSWORD}|{code}"));
    let token = reply.strip_prefix(LOGIN_PREFIX).unwrap_or_else(|| panic!("{reply}")).to_owned();
    assert_eq!(through(&server, CLIENT).ask(&token_line(&token)), "authorized");
    // Bound to the client, not to the balancer.
    assert_eq!(through(&server, "198.51.100.9").ask(&token_line(&token)), "unauthorized");
    // The balancer's own connection without a header: closed, no reply.
    let mut direct = server.connect();
    direct.send(format!("{}\n", token_line(&token)).as_bytes());
    assert!(direct.closed_within(Duration::from_secs(5)), "closed");
    // The audit trail names the client.
    let (status, dir) = server.stop_keeping_dir();
    assert!(status.success());
    let trail = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let logins: Vec<&str> = trail.lines().filter(|l| l.contains("\"event\":\"login\"")).collect();
    assert!(!logins.is_empty() && logins.iter().all(|l| l.contains(&format!("\"ip\":\"{CLIENT}\""))), "{trail}");
}

fn a_header_from_anyone_else_is_refused(runtime: &str) {
    let server = Server::start(runtime, &[]);
    let mut c = through(&server, CLIENT);
    c.send(format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}\n").as_bytes());
    assert!(c.closed_within(Duration::from_secs(5)), "closed");
    assert!(server.outbox_passcode_opt().is_none(), "nothing was served");
    // Without a header, served as ever.
    assert_eq!(server.connect().ask(&format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}")), "Passcode is sent");
    assert!(server.stop().success());
}

both_runtimes!(the_client_behind_the_balancer_is_the_connection, a_header_from_anyone_else_is_refused);
