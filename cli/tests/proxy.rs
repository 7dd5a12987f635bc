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

/// A client at `source` (an address of the loopback block: tests reach
/// nothing else), connected to `to`.
fn client_from(source: &str, to: std::net::SocketAddr) -> Client {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let source: std::net::IpAddr = source.parse().unwrap();
    socket.bind(&std::net::SocketAddr::new(source, 0).into()).unwrap();
    socket.connect(&to.into()).unwrap();
    Client::new(socket.into())
}

/// Two servers on one database behind a real HAProxy (Debian's package)
/// that opens each connection with a version 2 header: the client's
/// address reaches the binding and the limits, whichever server answers;
/// and a server that does not list the balancer closes its connections.
fn two_servers_behind_haproxy(runtime: &str) {
    let url = tokenizer_auth_tests::postgres::shared().database();
    let key = POSTGRES_KEY;
    let env = [
        ("TOKENIZER_AUTH_STORE_URL", url.as_str()),
        ("TOKENIZER_AUTH_SERVER_KEY", key),
        ("TOKENIZER_AUTH_PROXY_PROTOCOL_FROM", "127.0.0.1/32"),
        ("TOKENIZER_AUTH_FAILURES_PER_IP", "3"),
        ("TOKENIZER_AUTH_FAILURES_PER_EMAIL", "0"),
        ("TOKENIZER_AUTH_MAX_CONSECUTIVE_FAILURES", "0"),
    ];
    let admin = tempfile::tempdir().unwrap();
    let added = run_with(
        admin.path(),
        &["user", "add", EMAIL, "--phone", PHONE, "--password-stdin"],
        &format!("{PASSWORD}\n"),
        &env,
    );
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let a = Server::start_on(tempfile::tempdir().unwrap(), runtime, &env, &[]);
    let b = Server::start_on(tempfile::tempdir().unwrap(), runtime, &env, &[]);
    let lb = tokenizer_auth_tests::haproxy::Haproxy::start(&[a.native, b.native]);

    let ask = |source: &str, line: &str| client_from(source, lb.addr).ask(line);
    assert_eq!(ask("127.0.0.2", &format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}")), "Passcode is sent");
    let code = a.outbox_passcode_opt().or_else(|| b.outbox_passcode_opt()).expect("a passcode mailed");
    let reply = ask("127.0.0.2", &format!("{MAC}|{EMAIL}|{PHONE}|{PASSWORD}|{code}"));
    let token = reply.strip_prefix(LOGIN_PREFIX).unwrap_or_else(|| panic!("{reply}")).to_owned();
    // Round robin: these reach both servers.
    for _ in 0..4 {
        assert_eq!(ask("127.0.0.2", &token_line(&token)), "authorized");
        assert_eq!(ask("127.0.0.3", &token_line(&token)), "unauthorized", "bound to 127.0.0.2");
    }
    // The per-address bound counts the client behind the balancer.
    let wrong = format!("{MAC}|{EMAIL}|{PHONE}|wrong horse battery|AAAAAA");
    for _ in 0..3 {
        assert_eq!(ask("127.0.0.4", &wrong), "False");
    }
    assert_eq!(ask("127.0.0.4", &wrong), "error|rate_limited");
    assert_eq!(ask("127.0.0.5", &wrong), "False", "another client is not limited");
    drop(lb);
    assert!(a.stop().success());
    assert!(b.stop().success());

    // A server that does not list the balancer refuses its headers.
    let strict = Server::start(runtime, &[("TOKENIZER_AUTH_PROXY_PROTOCOL_FROM", "10.0.0.0/8")]);
    let lb = tokenizer_auth_tests::haproxy::Haproxy::start(&[strict.native]);
    let mut c = client_from("127.0.0.2", lb.addr);
    c.send(format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}\n").as_bytes());
    assert!(c.closed_within(Duration::from_secs(5)), "closed without a reply");
    assert!(strict.outbox_passcode_opt().is_none());
    drop(lb);
    assert!(strict.stop().success());
}

both_runtimes!(
    the_client_behind_the_balancer_is_the_connection,
    a_header_from_anyone_else_is_refused,
    two_servers_behind_haproxy,
);
