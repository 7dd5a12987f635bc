//! Both runtimes, through the real binary over real TCP: the same suite
//! runs against `serve --runtime mio` and `serve --runtime std`, and again
//! with the records on a PostgreSQL database (`store_url`).

#[macro_use]
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
    // The log says what happened, to whom, from where (docs/OPERATIONS.md).
    for outcome in ["\"outcome\":\"sent\"", "\"outcome\":\"logged_in\""] {
        assert!(logged(&server, &["\"audit\"", outcome, EMAIL, "127.0.0.1", "\"listener\":\"native\""]), "{outcome}");
    }
    assert!(
        !server.log.lock().unwrap().iter().any(|l| l.contains(&token) || l.contains(PASSWORD)),
        "a secret in the log"
    );
    assert!(server.stop().success(), "SIGTERM ends the server with exit 0");
}

/// Renewal as a device uses it (docs/PROTOCOL.md, "Renewal"): 16
/// pipelined and 4 parallel checks of one expired token all get the same
/// `renew|X`; X works; within the grace the old token still gets X, after
/// it the old token revokes the session, X included, and that is logged.
fn expiry_and_renewal(runtime: &str) {
    const TTL: Duration = Duration::from_secs(3);
    const GRACE: Duration = Duration::from_secs(3);
    // Margins past each deadline: waiting past one is never a race.
    const MARGIN: Duration = Duration::from_millis(500);
    let env = [("TOKENIZER_AUTH_TOKEN_TTL", "3s"), ("TOKENIZER_AUTH_RENEW_GRACE", "3s")];
    let server = Server::start(runtime, &env);
    let t1 = server.login();
    // The server stamped the login before this instant.
    let logged_in = Instant::now();
    let mut c = server.connect();
    assert_eq!(c.ask(&token_line(&t1)), "authorized");
    std::thread::sleep((logged_in + TTL + MARGIN).saturating_duration_since(Instant::now()));

    let line = format!("{}\n", token_line(&t1));
    let mut parallel: Vec<Client> = (0..4).map(|_| server.connect()).collect();
    c.send(line.repeat(16).as_bytes());
    for p in &mut parallel {
        p.send(line.as_bytes());
    }
    let mut replies: Vec<String> = (0..16).map(|_| c.line()).collect();
    replies.extend(parallel.iter_mut().map(Client::line));
    // The rotation happened before this instant.
    let rotated = Instant::now();
    let x = replies[0].strip_prefix("renew|").unwrap_or_else(|| panic!("no renewal: {replies:?}")).to_owned();
    assert!(replies.iter().all(|r| *r == replies[0]), "more than one successor: {replies:?}");
    assert_eq!(c.ask(&token_line(&x)), "authorized");
    assert_eq!(c.ask(&token_line(&t1)), format!("renew|{x}"), "the old token within the grace");

    std::thread::sleep((rotated + GRACE + MARGIN).saturating_duration_since(Instant::now()));
    assert_eq!(c.ask(&token_line(&t1)), "unauthorized", "the old token after the grace");
    assert_eq!(c.ask(&token_line(&x)), "unauthorized", "the session was not revoked");
    assert!(logged(&server, &["a rotated-away token came back", EMAIL, MAC]), "no reuse logged");
    let log = server.log.lock().unwrap();
    assert!(!log.iter().any(|l| l.contains(&t1) || l.contains(&x)), "a token in the log");
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

/// A native connection from 127.0.0.`host`.
fn connect_from(server: &Server, host: u8) -> Client {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from(([127, 0, 0, host], 0)).into()).unwrap();
    socket.connect(&server.native.into()).unwrap();
    Client::new(socket.into())
}

fn wrong_login() -> String {
    format!("{MAC}|{EMAIL}|{PHONE}|wrong password|AAAAAA")
}

/// One wrong login on a connection from each of `hosts`, plus `legacy`
/// more on the old login port, all sent before any reply is read; the
/// native replies.
fn burst(server: &Server, hosts: &[u8], legacy_logins: usize) -> Vec<String> {
    let mut clients: Vec<Client> = hosts.iter().map(|&h| connect_from(server, h)).collect();
    std::thread::scope(|scope| {
        let legacy: Vec<_> =
            (0..legacy_logins).map(|_| scope.spawn(|| legacy(server, server.legacy_login, &wrong_login()))).collect();
        for c in &mut clients {
            c.send(format!("{}\n", wrong_login()).as_bytes());
        }
        let replies = clients.iter_mut().map(Client::line).collect();
        for l in legacy {
            assert_eq!(l.join().unwrap(), "False", "the old port answers errors False too");
        }
        replies
    })
}

/// `tokenizer-auth limits ...` on the running server's files, with the
/// server's settings (`env`).
fn limits(server: &Server, env: &[(&str, &str)], args: &[&str]) -> String {
    let mut command = Command::new(BIN);
    command.arg("--data-dir").arg(&server.dir).arg("limits").args(args);
    command.envs(server.store_env.iter().map(|(k, v)| (k, v))).envs(env.iter().copied());
    let out = command.output().unwrap();
    assert!(out.status.success(), "limits {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Waits for a log line holding every one of `parts`.
fn logged(server: &Server, parts: &[&str]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if server.log.lock().unwrap().iter().any(|line| parts.iter().all(|p| line.contains(p))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// With the lockout at 10, three bursts of 32 parallel wrong logins (a few
/// of them on the old login port) make exactly 10 password checks: 10
/// `False` at most, the rest refused. The refusals are logged without the
/// password; `limits show` tells the operator, and `limits reset` lets the
/// account in again on the running server.
fn the_lockout_holds_under_parallel_bursts(runtime: &str) {
    let env = [("TOKENIZER_AUTH_MAX_CONSECUTIVE_FAILURES", "10")];
    let server = Server::start(runtime, &env);
    let mut checked = 0;
    for _ in 0..3 {
        let replies = burst(&server, &[1; 28], 4);
        for reply in &replies {
            assert!(reply == "False" || reply == "error|rate_limited", "{reply}");
        }
        checked += replies.iter().filter(|r| *r == "False").count();
    }
    assert!(checked <= 10, "{checked} password checks with the lockout at 10");
    // Every check was counted before it was made: the streak holds them all.
    let shown = limits(&server, &env, &["show", EMAIL]);
    assert!(shown.contains(&format!("max_consecutive_failures\t{EMAIL}\t10 counted (limit 10)")), "{shown}");
    assert!(shown.contains("refusing"), "{shown}");
    assert!(logged(&server, &["request refused by a limit", "max_consecutive_failures", EMAIL]), "no refusal logged");
    assert!(!server.log.lock().unwrap().iter().any(|line| line.contains("wrong password")), "a password in the log");

    let mut c = server.connect();
    assert_eq!(c.ask(&format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}")), "error|rate_limited");
    assert_eq!(limits(&server, &env, &["reset", EMAIL]), format!("reset 2 counters of {EMAIL}\n"));
    assert_eq!(limits(&server, &env, &["show", EMAIL]), "");
    let token = server.login();
    assert_eq!(c.ask(&token_line(&token)), "authorized");
}

/// A burst of 30 wrong logins for one email from 30 addresses makes at most
/// 20 password checks, the per-email limit; the per-IP counters saw one
/// each.
fn the_per_email_limit_holds_across_addresses(runtime: &str) {
    let server = Server::start(runtime, &[]);
    let hosts: Vec<u8> = (1..=30).collect();
    let replies = burst(&server, &hosts, 0);
    let checked = replies.iter().filter(|r| *r == "False").count();
    assert!(checked <= 20, "{checked} password checks with the per-email limit at 20");
    assert_eq!(replies.iter().filter(|r| *r == "error|rate_limited").count(), 30 - checked);
    let shown = limits(&server, &[], &["show", EMAIL]);
    assert!(shown.contains(&format!("failures_per_email\t{EMAIL}\t{checked} counted (limit 20)")), "{shown}");
    assert!(logged(&server, &["request refused by a limit", "failures_per_email", EMAIL]), "no refusal logged");
    let shown = limits(&server, &[], &["show", "127.0.0.30"]);
    assert!(shown.is_empty() || shown.contains("failures_per_ip\t127.0.0.30\t1 counted"), "{shown}");
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
/// another process, still ends the session for the very next check on the
/// files, and within `revocation_delay` on PostgreSQL.
fn a_session_revoked_by_the_admin_command_is_unauthorized_at_once(runtime: &str) {
    let server = Server::start(runtime, &[]);
    let token = server.login();
    let mut c = server.connect();
    for _ in 0..3 {
        assert_eq!(c.ask(&token_line(&token)), "authorized");
    }
    let revoke = Command::new(BIN)
        .arg("--data-dir")
        .arg(&server.dir)
        .args(["session", "revoke", EMAIL])
        .envs(server.store_env.iter().map(|(k, v)| (k, v)))
        .output();
    assert!(revoke.unwrap().status.success());
    refused_within(&[&server], &token, Instant::now(), revocation_delay(runtime));
    // A new login is cached again and works.
    let token = server.login();
    assert_eq!(c.ask(&token_line(&token)), "authorized");
}

/// The server's resident memory in bytes.
fn resident(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// A client that never reads floods malformed lines, failing logins and
/// token checks (docs/SECURITY.md, "Connections"): the server stops reading
/// it once `max_backlog` bytes wait, its memory stays flat, it drops the
/// client `write_timeout` after the client stopped taking bytes, and a
/// client beside it is answered quickly throughout.
fn a_client_that_never_reads_is_bounded_and_dropped(runtime: &str) {
    let server = Server::start(runtime, &[]);
    let token = server.login();
    let mut good = server.connect();
    assert_eq!(good.ask(&token_line(&token)), "authorized");
    // Every hashing worker holds its argon2 working memory once it has
    // verified a password: in the baseline, not in the growth.
    let wrong = format!("{MAC}|{EMAIL}|{PHONE}|wrong password|AAAAAA");
    let mut warm: Vec<Client> = (0..8).map(|_| server.connect()).collect();
    for c in &mut warm {
        c.send(format!("{wrong}\n").as_bytes());
    }
    for c in &mut warm {
        c.line();
    }
    let before = resident(&server);

    let flood = TcpStream::connect(server.native).unwrap();
    // Short write timeouts: the flooder notices at once when the server
    // stops taking its bytes, and when the server drops it.
    flood.set_write_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut chunk = String::new();
    for i in 0..300 {
        match i % 3 {
            0 => chunk.push_str("x\n"),
            1 => chunk.push_str(&format!("{wrong}\n")),
            _ => chunk.push_str(&format!("{}\n", token_line(&"cd".repeat(32)))),
        }
    }
    let flooder = std::thread::spawn(move || {
        let started = Instant::now();
        let mut last_progress = Instant::now();
        let mut sent = 0usize;
        let mut stream = &flood;
        while started.elapsed() < Duration::from_secs(25) {
            match stream.write(chunk.as_bytes()) {
                Ok(n) if n > 0 => {
                    sent += n;
                    last_progress = Instant::now();
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                // Reset or broken pipe: the server dropped the connection.
                _ => return Some((last_progress, Instant::now(), sent)),
            }
        }
        None
    });

    let mut latencies = Vec::new();
    let mut peak = before;
    while !flooder.is_finished() {
        let asked = Instant::now();
        assert_eq!(good.ask(&token_line(&token)), "authorized");
        latencies.push(asked.elapsed());
        peak = peak.max(resident(&server));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (stalled_at, dropped_at, sent) = flooder.join().unwrap().expect("the server never dropped the flooder");
    let grew = peak.saturating_sub(before);
    assert!(grew < 32 << 20, "resident memory grew by {} MiB ({sent} bytes flooded)", grew >> 20);
    let waited = dropped_at - stalled_at;
    assert!(waited <= Duration::from_secs(11), "dropped {waited:?} after the flooder stalled (write_timeout 10 s)");
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!(
        "{runtime}: {sent} bytes flooded; resident memory +{} KiB; dropped {waited:?} after the stall; \
         well-behaved p99 {p99:?} over {} checks",
        grew >> 10,
        latencies.len()
    );
    // A server the flooder held up would answer in seconds (it is dropped
    // after write_timeout, 10 s); the margin is wide because this machine
    // may be busy with other tests.
    assert!(p99 < Duration::from_millis(500), "p99 of the well-behaved client {p99:?} ({} checks)", latencies.len());
}

/// The suite on both runtimes, and on a PostgreSQL database (`store_url`).
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        both_runtimes!($($name),*);
        on_postgres!($($name),*);
    };
}

suite!(
    a_client_that_never_reads_is_bounded_and_dropped,
    the_lockout_holds_under_parallel_bursts,
    the_per_email_limit_holds_across_addresses,
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

/// The CPU time (in clock ticks) of each of the server's threads, by name.
fn thread_ticks(server: &Server) -> Vec<(String, u64)> {
    let tasks = format!("/proc/{}/task", server.child.id());
    std::fs::read_dir(tasks)
        .unwrap()
        .filter_map(|task| {
            let path = task.ok()?.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?.trim().to_owned();
            let stat = std::fs::read_to_string(path.join("stat")).ok()?;
            // After the name in brackets: state, ..., utime (14th), stime.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some((name, fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?))
        })
        .collect()
}

/// `loops` event loops (mio): the first accepts and deals connections out
/// in turn, so of two clients the second is served by the second loop, on
/// its own thread; with one loop there is no second.
#[test]
fn connections_are_dealt_to_every_event_loop() {
    for loops in ["2", "1"] {
        let server = Server::start("mio", &[("TOKENIZER_AUTH_LOOPS", loops)]);
        let line = token_line(&server.login());
        let mut clients: Vec<Client> = (0..2).map(|_| server.connect()).collect();
        let second = |ticks: &[(String, u64)]| ticks.iter().find(|(name, _)| name == "event-loop-1").map(|(_, t)| *t);
        let before = second(&thread_ticks(&server));
        assert_eq!(before.is_some(), loops == "2", "loops = {loops}: {:?}", thread_ticks(&server));
        // Enough checks on each connection for its loop to spend many
        // clock ticks (10 ms each) on them.
        let batch = format!("{line}\n").repeat(500);
        for _ in 0..60 {
            for c in &mut clients {
                c.send(batch.as_bytes());
            }
            for c in &mut clients {
                for _ in 0..500 {
                    assert_eq!(c.line(), "authorized");
                }
            }
        }
        if let (Some(before), Some(after)) = (before, second(&thread_ticks(&server))) {
            assert!(after >= before + 3, "the second loop did {} ticks of work", after - before);
        }
        assert!(server.stop().success());
    }
}

/// `max_connections` bounds the server, not each loop: with two loops and
/// a bound of 3, a connection that came and went first (which skews the
/// turns) does not make a loop refuse while the other has room: three are
/// served, the fourth is refused.
#[test]
fn max_connections_bounds_the_server_across_loops() {
    let server = Server::start("mio", &[("TOKENIZER_AUTH_MAX_CONNECTIONS", "3")]);
    let unknown = token_line(&"ab".repeat(32));
    assert_eq!(server.connect().ask(&unknown), "unauthorized");
    // Its close reaches the server.
    std::thread::sleep(Duration::from_millis(300));
    let mut held = Vec::new();
    for i in 0..3 {
        let mut c = server.connect();
        assert_eq!(c.ask(&unknown), "unauthorized", "connection {i}");
        held.push(c);
    }
    assert_eq!(server.connect().ask(&unknown), "error|too_many_connections");
    drop(held);
    assert!(server.stop().success());
}
