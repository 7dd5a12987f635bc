//! Both runtimes, through the real binary over real TCP: the same suite
//! runs against `serve --runtime mio` and `serve --runtime std`.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

fn full_flow(runtime: &str) {
    let server = Server::start(runtime, &[]);
    let token = server.login();
    assert_eq!(token.len(), 64);
    let mut c = server.connect();
    assert_eq!(c.ask(&token_line(&token)), "authorized");
    assert_eq!(c.ask(&token_line(&"ab".repeat(32))), "unauthorized");
    assert!(server.stop().success(), "SIGTERM ends the server with exit 0");
}

fn expiry_and_renewal(runtime: &str) {
    let server = Server::start(runtime, &[("TOKENIZER_AUTH_TOKEN_TTL", "1s")]);
    let t1 = server.login();
    let mut c = server.connect();
    assert_eq!(c.ask(&token_line(&t1)), "authorized");
    std::thread::sleep(Duration::from_millis(1200));
    let reply = c.ask(&token_line(&t1));
    let t2 = reply.strip_prefix("renew|").unwrap_or_else(|| panic!("no renewal: {reply}")).to_owned();
    assert_eq!(c.ask(&token_line(&t1)), "unauthorized");
    assert_eq!(c.ask(&token_line(&t2)), "authorized");
}

fn pipelined_requests_are_answered_in_order(runtime: &str) {
    let server = Server::start(runtime, &[]);
    let token = server.login();
    let mut c = server.connect();
    let unknown = "cd".repeat(32);
    let mut burst = String::new();
    let mut want = Vec::new();
    for i in 0..300 {
        match i % 3 {
            0 => (burst.push_str(&token_line(&token)), want.push("authorized")),
            1 => (burst.push_str(&token_line(&unknown)), want.push("unauthorized")),
            _ => (burst.push_str("not a request"), want.push("error|malformed")),
        };
        burst.push('\n');
    }
    c.send(burst.as_bytes());
    for (i, expected) in want.iter().enumerate() {
        assert_eq!(&c.line(), expected, "reply {i}");
    }
}

/// A well-behaved client keeps getting answers while others misbehave.
fn bad_input_disturbs_nobody(runtime: &str) {
    let server = Server::start(runtime, &[("TOKENIZER_AUTH_PARTIAL_LINE_TIMEOUT", "1s")]);
    let token = server.login();
    let mut good = server.connect();
    let check = |good: &mut Client| assert_eq!(good.ask(&token_line(&token)), "authorized");
    check(&mut good);

    // 1,000 idle connections.
    let idle: Vec<TcpStream> = (0..1000).map(|_| TcpStream::connect(server.native).unwrap()).collect();
    check(&mut good);

    // A 1 MiB line: answered, then closed.
    let mut huge = server.connect();
    let _ = huge.stream.write_all(&vec![b'a'; 1024 * 1024]);
    assert_eq!(huge.line(), "error|line_too_long");
    assert!(huge.closed_within(Duration::from_secs(5)));
    check(&mut good);

    // Lines that are not requests: each gets malformed, the connection goes on.
    let mut bad = server.connect();
    let sixty = vec!["x"; 60].join("|");
    let lines: [&[u8]; 5] =
        [b"\xff\xfe not utf-8", b"nul\0inside|a|b|c|d", b"aa:bb:cc:dd:ee:ff|a|b|c|d|e", sixty.as_bytes(), b""];
    for line in lines {
        bad.send(line);
        bad.send(b"\n");
        assert_eq!(bad.line(), "error|malformed", "{:?}", String::from_utf8_lossy(line));
        check(&mut good);
    }

    // Half a line, then silence: closed once the partial-line timeout passes.
    let mut stalled = server.connect();
    stalled.send(b"require_passcode|aa:bb");
    check(&mut good);
    assert!(stalled.closed_within(Duration::from_secs(5)), "a stalled partial line is closed");
    check(&mut good);
    drop(idle);
    check(&mut good);
}

fn a_token_from_another_address_is_unauthorized(runtime: &str) {
    let server = Server::start(runtime, &[]);
    let token = server.login();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into()).unwrap();
    socket.connect(&server.native.into()).unwrap();
    let mut elsewhere = Client::new(socket.into());
    assert_eq!(elsewhere.ask(&token_line(&token)), "unauthorized");
    assert_eq!(server.connect().ask(&token_line(&token)), "authorized");
}

fn legacy(server: &Server, port: SocketAddr, request: &str) -> String {
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/legacy_client.py"))
        .args(["127.0.0.1", &port.port().to_string(), request])
        .output()
        .unwrap();
    assert!(out.status.success(), "legacy client: {}", String::from_utf8_lossy(&out.stderr));
    let _ = server;
    String::from_utf8(out.stdout).unwrap().trim_end_matches('\n').to_owned()
}

fn old_clients_keep_working(runtime: &str) {
    let server = Server::start(runtime, &[]);
    let request = format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}");
    assert_eq!(legacy(&server, server.legacy_passcode, &request), "Passcode is sent");
    let passcode = server.outbox_passcode();
    let login = legacy(&server, server.legacy_login, &format!("{MAC}|{EMAIL}|{PHONE}|{PASSWORD}|{passcode}"));
    assert!(login.starts_with(LOGIN_PREFIX), "{login}");
    let token = login.strip_prefix(LOGIN_PREFIX).unwrap();
    assert_eq!(server.connect().ask(&token_line(token)), "authorized");
    assert_eq!(legacy(&server, server.legacy_login, &format!("{MAC}|{EMAIL}|{PHONE}|{PASSWORD}|{passcode}")), "False");
}

fn sigint_also_stops_cleanly(runtime: &str) {
    let server = Server::start(runtime, &[]);
    let mut c = server.connect();
    assert_eq!(c.ask(&token_line(&"ab".repeat(32))), "unauthorized");
    let started = Instant::now();
    signal(&server.child, "INT");
    let mut server = server;
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

macro_rules! both_runtimes {
    ($($name:ident),* $(,)?) => {
        mod mio_runtime {
            $(#[test] fn $name() { super::$name("mio") })*
        }
        mod std_runtime {
            $(#[test] fn $name() { super::$name("std") })*
        }
    };
}

fn a_client_that_half_closes_gets_its_replies(runtime: &str) {
    let server = Server::start(runtime, &[]);
    let mut c = server.connect();
    c.send(format!("{}\nnot a request\n", token_line(&"ab".repeat(32))).as_bytes());
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(c.line(), "unauthorized");
    assert_eq!(c.line(), "error|malformed");
    assert!(c.closed_within(Duration::from_secs(5)));
}

/// The server keeps sessions in memory; a revocation by the admin command,
/// another process, still ends the session for the very next check.
fn a_session_revoked_by_the_admin_command_is_unauthorized_at_once(runtime: &str) {
    let server = Server::start(runtime, &[]);
    let token = server.login();
    let mut c = server.connect();
    for _ in 0..3 {
        assert_eq!(c.ask(&token_line(&token)), "authorized");
    }
    let revoke = Command::new(BIN).arg("--data-dir").arg(&server.dir).args(["session", "revoke", EMAIL]).output();
    assert!(revoke.unwrap().status.success());
    assert_eq!(c.ask(&token_line(&token)), "unauthorized");
    // A new login is cached again and works.
    let token = server.login();
    assert_eq!(c.ask(&token_line(&token)), "authorized");
}

both_runtimes!(
    a_session_revoked_by_the_admin_command_is_unauthorized_at_once,
    full_flow,
    expiry_and_renewal,
    pipelined_requests_are_answered_in_order,
    bad_input_disturbs_nobody,
    a_token_from_another_address_is_unauthorized,
    old_clients_keep_working,
    sigint_also_stops_cleanly,
    a_client_that_half_closes_gets_its_replies,
);
