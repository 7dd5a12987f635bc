//! Example-based tests of every flow and every error code, driven through
//! the deterministic harness: no sockets, no sleeps.

use std::net::IpAddr;

use chrono::TimeDelta;
use tokenizer_auth_engine::testkit::{Completion, World, test_hash};
use tokenizer_auth_engine::{
    Config, ConnId, CounterKey, Effect, ErrorCode, Input, LOGIN_PREFIX, Listener, Notice, Output, PasswordHash, Reuse,
    Secret, StoredPasscode, UserRecord, Window,
};

const MAC: &str = "aa:bb:cc:dd:ee:ff";
const EMAIL: &str = "ada@example.com";
const PHONE: &str = "+15550100";
const PASSWORD: &str = "correct horse";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn local() -> IpAddr {
    ip("127.0.0.1")
}

/// The next notice that is not of the audit trail (those are checked on
/// their own, in `the_audit_trail_says_what_came_of_each_request`).
fn next_notice(w: &mut World) -> Option<Notice> {
    std::iter::from_fn(|| w.engine.poll_notice()).find(|n| !matches!(n, Notice::Audit(_)))
}

/// The audit trail's events so far: (event, outcome, email, listener).
fn audits(w: &mut World) -> Vec<(&'static str, &'static str, String, Option<Listener>)> {
    std::iter::from_fn(|| w.engine.poll_notice())
        .filter_map(|n| match n {
            Notice::Audit(e) => Some((e.kind.as_str(), e.outcome.as_str(), e.subject.email, e.listener)),
            _ => None,
        })
        .collect()
}

fn world() -> World {
    world_with(Config::default())
}

fn world_with(config: Config) -> World {
    let mut w = World::new(config, 7);
    w.store.add_user(EMAIL, PHONE, PASSWORD);
    w
}

fn require_passcode(w: &mut World, conn: ConnId, password: &str, email: &str) -> String {
    w.request(conn, &format!("require_passcode|{MAC}|{password}|{PHONE}|{email}"))
}

fn login_line(email: &str, password: &str, passcode: &str) -> String {
    format!("{MAC}|{email}|{PHONE}|{password}|{passcode}")
}

fn token_line(token: &str, mac: &str) -> String {
    format!("{token}|{mac}|get|some|data")
}

#[test]
fn passcode_request_mails_a_passcode_and_stores_only_its_digest() {
    let mut w = world();
    let c = w.connect(Listener::Native, local());
    assert_eq!(require_passcode(&mut w, c, PASSWORD, EMAIL), "Passcode is sent");
    let code = w.passcode_for(EMAIL).expect("a mail");
    assert_eq!(code.len(), 6);
    assert!(code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()));
    let mail = &w.mailbox[0];
    assert!(mail.body.expose().contains(EMAIL));
    let record = w.store.passcodes.values().next().expect("stored");
    assert!(matches!(record.code, StoredPasscode::Keyed { .. }));
    assert!(!record.code.to_column().contains(&code));
    assert_eq!(record.expires_at, w.now + TimeDelta::minutes(3));
}

#[test]
fn bad_credentials_on_a_passcode_request_get_false_and_no_mail() {
    let mut w = world();
    let c = w.connect(Listener::Native, local());
    assert_eq!(require_passcode(&mut w, c, "wrong", EMAIL), "False");
    assert_eq!(require_passcode(&mut w, c, PASSWORD, "nobody@example.com"), "False");
    let wrong_phone = w.request(c, &format!("require_passcode|{MAC}|{PASSWORD}|+1000|{EMAIL}"));
    assert_eq!(wrong_phone, "False");
    assert!(w.mailbox.is_empty());
    assert!(w.store.passcodes.is_empty());
    assert_eq!(w.verifications, 3, "one verification per request, dummy included");
}

#[test]
fn a_relay_that_is_down_leaves_no_passcode() {
    let mut w = world();
    w.relay_down = true;
    let c = w.connect(Listener::Native, local());
    assert_eq!(require_passcode(&mut w, c, PASSWORD, EMAIL), "error|mail_unavailable");
    assert!(w.store.passcodes.is_empty());
    w.relay_down = false;
    assert_eq!(require_passcode(&mut w, c, PASSWORD, EMAIL), "Passcode is sent");
}

#[test]
fn a_full_login_issues_a_token_and_consumes_the_passcode() {
    let mut w = world();
    let token = w.login(local(), MAC, EMAIL, PHONE, PASSWORD).unwrap();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert!(w.store.passcodes.is_empty(), "the passcode is consumed");
    assert_eq!(w.store.sessions.len(), 1);
    let session = w.store.sessions.values().next().unwrap();
    assert_eq!(session.email, EMAIL);
    assert_eq!(session.mac.to_string(), MAC);
    let c = w.connect(Listener::Native, local());
    assert_eq!(w.request(c, &token_line(&token, MAC)), "authorized");
    // The MAC may be spelled any accepted way.
    assert_eq!(w.request(c, &token_line(&token, "AA-BB-CC-DD-EE-FF")), "authorized");
}

#[test]
fn the_passcode_works_once() {
    let mut w = world();
    let c = w.connect(Listener::Native, local());
    require_passcode(&mut w, c, PASSWORD, EMAIL);
    let code = w.passcode_for(EMAIL).unwrap();
    assert!(w.request(c, &login_line(EMAIL, PASSWORD, &code)).starts_with(LOGIN_PREFIX));
    assert_eq!(w.request(c, &login_line(EMAIL, PASSWORD, &code)), "False");
}

#[test]
fn a_wrong_passcode_counts_a_guess() {
    let mut w = world();
    let c = w.connect(Listener::Native, local());
    require_passcode(&mut w, c, PASSWORD, EMAIL);
    assert_eq!(w.request(c, &login_line(EMAIL, PASSWORD, "ZZZZZZ")), "False");
    assert_eq!(w.store.passcodes.values().next().unwrap().attempts, 1);
}

#[test]
fn a_passcode_is_bound_to_the_device_and_address_it_was_issued_to() {
    let mut w = world();
    let c = w.connect(Listener::Native, local());
    require_passcode(&mut w, c, PASSWORD, EMAIL);
    let code = w.passcode_for(EMAIL).unwrap();
    let other = w.connect(Listener::Native, ip("127.0.0.2"));
    assert_eq!(w.request(other, &login_line(EMAIL, PASSWORD, &code)), "False");
    let other_mac = format!("aa:bb:cc:dd:ee:00|{EMAIL}|{PHONE}|{PASSWORD}|{code}");
    assert_eq!(w.request(c, &other_mac), "False");
}

#[test]
fn an_expired_token_is_rotated_once() {
    let mut w = world();
    let t1 = w.login(local(), MAC, EMAIL, PHONE, PASSWORD).unwrap();
    w.advance(TimeDelta::hours(1));
    let c = w.connect(Listener::Native, local());
    let reply = w.request(c, &token_line(&t1, MAC));
    let t2 = reply.strip_prefix("renew|").expect(&reply).to_owned();
    assert_ne!(t1, t2);
    assert_eq!(w.store.sessions.len(), 1);
    assert_eq!(w.store.rotations.len(), 1, "the token rotated away is on record");
    // Within the grace, the old token learns the same successor again.
    assert_eq!(w.request(c, &token_line(&t1, MAC)), format!("renew|{t2}"));
    assert_eq!(w.request(c, &token_line(&t2, MAC)), "authorized");
    assert_eq!((w.store.sessions.len(), w.store.rotations.len()), (1, 1), "nothing rotated twice");
    // After it, the old token is reuse: the session goes, the new token
    // with it, and the operator hears who, from where.
    w.advance(Config::default().session.renew_grace + TimeDelta::milliseconds(1));
    assert_eq!(w.request(c, &token_line(&t1, MAC)), "unauthorized");
    assert_eq!(w.request(c, &token_line(&t2, MAC)), "unauthorized");
    assert!(w.store.sessions.is_empty() && w.store.rotations.is_empty());
    let notice = next_notice(&mut w).expect("a notice of the reuse");
    assert!(
        matches!(&notice, Notice::TokenReuse { email, why: Reuse::AfterGrace, revoked: true, .. } if email == EMAIL),
        "{notice}"
    );
    assert!(!notice.to_string().contains(&t1) && !notice.to_string().contains(&t2), "a token in the notice");
}

#[test]
fn a_check_under_way_when_its_token_rotates_is_not_reuse_however_slow_the_store() {
    // No grace at all, and a store that answers the second check's
    // rotation 50 ms after the first committed: the second check was read
    // before the rotation, so it learns the same successor.
    let mut config = Config::default();
    config.session.renew_grace = TimeDelta::zero();
    let mut w = world_with(config);
    let t1 = w.login(local(), MAC, EMAIL, PHONE, PASSWORD).unwrap();
    w.advance(TimeDelta::hours(1));
    let (c1, c2) = (w.connect(Listener::Native, local()), w.connect(Listener::Native, local()));
    let line = format!("{}\n", token_line(&t1, MAC));
    w.send(c1, line.as_bytes());
    w.send(c2, line.as_bytes());
    // Both reads, then the first rotation commits.
    for _ in 0..3 {
        assert!(w.step());
    }
    w.advance(TimeDelta::milliseconds(50));
    w.settle();
    let (r1, r2) = (w.take_received(c1), w.take_received(c2));
    let (r1, r2) = (String::from_utf8_lossy(&r1), String::from_utf8_lossy(&r2));
    assert!(r1.starts_with("renew|"), "{r1:?}");
    assert_eq!(r1, r2, "one successor for both checks");
    assert_eq!((w.store.sessions.len(), next_notice(&mut w)), (1, None), "nothing revoked");
}

#[test]
fn a_rotated_away_token_from_another_device_revokes_the_session_at_once() {
    let mut w = world();
    let t1 = w.login(local(), MAC, EMAIL, PHONE, PASSWORD).unwrap();
    w.advance(TimeDelta::hours(1));
    let c = w.connect(Listener::Native, local());
    let t2 = w.request(c, &token_line(&t1, MAC)).strip_prefix("renew|").unwrap().to_owned();
    // Inside the grace, but from another address.
    let elsewhere = w.connect(Listener::Native, ip("127.0.0.9"));
    assert_eq!(w.request(elsewhere, &token_line(&t1, MAC)), "unauthorized");
    assert_eq!(w.request(c, &token_line(&t2, MAC)), "unauthorized");
    assert!(matches!(next_notice(&mut w), Some(Notice::TokenReuse { why: Reuse::OtherBinding, revoked: true, .. })));
    // A current token from another device is merely refused: nothing to
    // revoke, nobody told.
    let t3 = w.login(local(), MAC, EMAIL, PHONE, PASSWORD).unwrap();
    assert_eq!(w.request(elsewhere, &token_line(&t3, MAC)), "unauthorized");
    assert_eq!(w.request(c, &token_line(&t3, MAC)), "authorized");
    assert_eq!(next_notice(&mut w), None);
}

#[test]
fn concurrent_renewals_of_one_token_give_one_new_token() {
    let mut w = world();
    let t1 = w.login(local(), MAC, EMAIL, PHONE, PASSWORD).unwrap();
    w.advance(TimeDelta::hours(2));
    let conns: Vec<ConnId> = (0..5).map(|_| w.connect(Listener::Native, local())).collect();
    for &c in &conns {
        w.send(c, format!("{}\n", token_line(&t1, MAC)).as_bytes());
    }
    w.complete_in(Completion::Shuffled(3));
    w.settle();
    let replies: Vec<String> = conns.iter().map(|&c| String::from_utf8(w.take_received(c)).unwrap()).collect();
    assert!(replies[0].starts_with("renew|"), "{replies:?}");
    assert!(replies.iter().all(|r| *r == replies[0]), "one successor for all: {replies:?}");
    assert_eq!(w.store.sessions.len(), 1);
}

#[test]
fn no_renewal_past_the_absolute_session_age() {
    let mut config = Config::default();
    config.session.max_age = TimeDelta::hours(3);
    let mut w = world_with(config);
    let t1 = w.login(local(), MAC, EMAIL, PHONE, PASSWORD).unwrap();
    w.advance(TimeDelta::minutes(150));
    let c = w.connect(Listener::Native, local());
    let t2 = w.request(c, &token_line(&t1, MAC)).strip_prefix("renew|").unwrap().to_owned();
    // The renewed token expires with the session, not an hour later.
    w.advance(TimeDelta::minutes(30));
    let c = w.connect(Listener::Native, local());
    assert_eq!(w.request(c, &token_line(&t2, MAC)), "unauthorized");
}

#[test]
fn a_token_from_another_address_or_device_is_unauthorized() {
    let mut w = world();
    let token = w.login(local(), MAC, EMAIL, PHONE, PASSWORD).unwrap();
    let elsewhere = w.connect(Listener::Native, ip("127.0.0.2"));
    assert_eq!(w.request(elsewhere, &token_line(&token, MAC)), "unauthorized");
    let c = w.connect(Listener::Native, local());
    assert_eq!(w.request(c, &token_line(&token, "aa:bb:cc:dd:ee:01")), "unauthorized");
    // An IPv4-mapped IPv6 peer is the same client as its IPv4 address.
    let mapped = w.connect(Listener::Native, ip("::ffff:127.0.0.1"));
    assert_eq!(w.request(mapped, &token_line(&token, MAC)), "authorized");
}

#[test]
fn unknown_tokens_are_unauthorized() {
    let mut w = world();
    let c = w.connect(Listener::Native, local());
    assert_eq!(w.request(c, &token_line(&"ab".repeat(32), MAC)), "unauthorized");
}

#[test]
fn malformed_lines_get_malformed_and_the_connection_goes_on() {
    let mut w = world();
    let c = w.connect(Listener::Native, local());
    let sixty = vec!["x"; 60].join("|");
    let bad: [&[u8]; 7] = [
        b"",
        b"\xff\xfe\xfd",
        b"aa:bb:cc:dd:ee:ff|a\0b|1|2|3",
        b"aa:bb:cc:dd:ee:ff|a|1|2|3|4",
        sixty.as_bytes(),
        b"require_passcode|not-a-mac|pw|1|a@b.c",
        b"just some words",
    ];
    for line in bad {
        let mut bytes = line.to_vec();
        bytes.push(b'\n');
        w.send(c, &bytes);
        w.settle();
        assert_eq!(w.take_received(c), b"error|malformed\n", "{:?}", String::from_utf8_lossy(line));
    }
    assert!(!w.is_closed(c));
    assert_eq!(w.request(c, &token_line(&"ab".repeat(32), MAC)), "unauthorized");
}

#[test]
fn an_overlong_line_is_answered_then_closed() {
    let mut w = world();
    let c = w.connect(Listener::Native, local());
    w.send(c, &vec![b'a'; 5000]);
    assert_eq!(w.take_received(c), b"error|line_too_long\n");
    assert!(w.is_half_closed(c), "the write side is shut once the reply is out");
    assert!(!w.engine.wants_input(c) || !w.is_closed(c), "what still comes is read and discarded");
    w.send(c, b"more that nobody reads\n");
    assert!(w.take_received(c).is_empty());
    w.advance(Config::default().close_linger);
    assert!(w.is_closed(c), "closed after the linger");
    assert_eq!(w.engine.connections(), 0);
}

#[test]
fn replies_keep_request_order_whatever_order_effects_complete_in() {
    let mut w = world();
    let token = w.login(local(), MAC, EMAIL, PHONE, PASSWORD).unwrap();
    let c = w.connect(Listener::Native, local());
    let unknown = "cd".repeat(32);
    let lines =
        format!("{}\n{}\nbad\n{}\n", token_line(&token, MAC), token_line(&unknown, MAC), token_line(&token, MAC));
    w.send(c, lines.as_bytes());
    w.complete_in(Completion::Reversed);
    w.settle();
    let got = String::from_utf8(w.take_received(c)).unwrap();
    assert_eq!(got, "authorized\nunauthorized\nerror|malformed\nauthorized\n");
}

#[test]
fn a_store_that_is_down_gives_a_retryable_error() {
    let mut w = world();
    let token = w.login(local(), MAC, EMAIL, PHONE, PASSWORD).unwrap();
    w.store.down = true;
    let c = w.connect(Listener::Native, local());
    assert_eq!(w.request(c, &token_line(&token, MAC)), "error|store_unavailable");
    assert_eq!(require_passcode(&mut w, c, PASSWORD, EMAIL), "error|store_unavailable");
    w.store.down = false;
    assert_eq!(w.request(c, &token_line(&token, MAC)), "authorized");
}

#[test]
fn a_failed_guess_is_not_answered_false_unless_it_was_counted() {
    let mut w = world();
    let c = w.connect(Listener::Native, local());
    require_passcode(&mut w, c, PASSWORD, EMAIL);
    // Let the reads and the verification through, then fail the write.
    w.send(c, format!("{}\n", login_line(EMAIL, PASSWORD, "ZZZZZZ")).as_bytes());
    while !w.pending().iter().any(|(_, e)| matches!(e, Effect::Write(_))) {
        assert!(w.step());
    }
    w.store.down = true;
    w.settle();
    assert_eq!(w.take_received(c), b"error|store_unavailable\n");
}

#[test]
fn more_password_checks_than_the_queue_holds_get_busy() {
    let mut w = world_with(Config { max_password_checks: 2, ..Config::default() });
    let conns: Vec<ConnId> = (0..3).map(|_| w.connect(Listener::Native, local())).collect();
    for &c in &conns {
        w.send(c, format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}\n").as_bytes());
    }
    // Complete the three reads first, so all three reach the password check.
    for _ in 0..3 {
        w.step();
    }
    w.settle();
    let replies: Vec<Vec<u8>> = conns.iter().map(|&c| w.take_received(c)).collect();
    assert_eq!(replies[0], b"Passcode is sent\n");
    assert_eq!(replies[1], b"Passcode is sent\n");
    assert_eq!(replies[2], b"error|busy\n");
}

#[test]
fn a_hasher_that_fails_gives_busy() {
    let mut w = world();
    w.hasher_down = true;
    let c = w.connect(Listener::Native, local());
    assert_eq!(require_passcode(&mut w, c, PASSWORD, EMAIL), "error|busy");
}

/// A request answered `busy` after its places were reserved, its password
/// never checked, gives its failure back: a server under load does not lock
/// out the clients it could not serve.
#[test]
fn busy_gives_back_the_failure_it_reserved() {
    let mut w = world();
    w.hasher_down = true;
    let failures = |w: &World| -> u32 {
        w.store
            .counters
            .iter()
            .filter(|(k, _)| {
                matches!(k, CounterKey::FailuresByEmail(_) | CounterKey::FailuresByIp(_) | CounterKey::FailureStreak(_))
            })
            .map(|(_, c)| c.count)
            .sum()
    };
    for _ in 0..3 {
        let c = w.connect(Listener::Native, local());
        assert_eq!(require_passcode(&mut w, c, PASSWORD, EMAIL), "error|busy");
        assert_eq!(w.request(c, &login_line(EMAIL, PASSWORD, "AAAAAA")), "error|busy");
    }
    assert_eq!(failures(&w), 0, "failures left counted: {:?}", w.store.counters);
    w.hasher_down = false;
    let c = w.connect(Listener::Native, local());
    assert_eq!(w.request(c, &login_line(EMAIL, "wrong", "AAAAAA")), "False");
    assert!(failures(&w) > 0, "a checked failure stays counted");
}

#[test]
fn passcode_requests_are_rate_limited_per_email() {
    let mut config = Config::default();
    config.limits.passcode_requests_per_email = Window::new(2, TimeDelta::minutes(15));
    let mut w = world_with(config);
    let c = w.connect(Listener::Native, local());
    assert_eq!(require_passcode(&mut w, c, PASSWORD, EMAIL), "Passcode is sent");
    assert_eq!(require_passcode(&mut w, c, PASSWORD, EMAIL), "Passcode is sent");
    let before = w.verifications;
    assert_eq!(require_passcode(&mut w, c, PASSWORD, EMAIL), "error|rate_limited");
    assert_eq!(w.verifications, before, "a refused request costs no hashing");
    w.advance(TimeDelta::minutes(15));
    let c = w.connect(Listener::Native, local());
    assert_eq!(require_passcode(&mut w, c, PASSWORD, EMAIL), "Passcode is sent");
}

#[test]
fn failed_logins_are_rate_limited_per_ip() {
    let mut config = Config::default();
    config.limits.failures_per_ip = Window::new(3, TimeDelta::minutes(15));
    let mut w = world_with(config);
    let c = w.connect(Listener::Native, local());
    for _ in 0..3 {
        assert_eq!(w.request(c, &login_line(EMAIL, "nope", "AAAAAA")), "False");
    }
    assert_eq!(w.request(c, &login_line("someone@else.org", "nope", "AAAAAA")), "error|rate_limited");
    let elsewhere = w.connect(Listener::Native, ip("127.0.0.9"));
    assert_eq!(w.request(elsewhere, &login_line(EMAIL, "nope", "AAAAAA")), "False");
}

/// An IPv6 client is counted by its /64, the block one subscriber usually
/// holds: fresh addresses inside it share one count, another /64 has its
/// own. Each refusal is a notice for the operator, naming the limit and the
/// prefix.
#[test]
fn ipv6_clients_are_rate_limited_per_prefix() {
    let mut config = Config::default();
    config.limits.failures_per_ip = Window::new(3, TimeDelta::minutes(15));
    let mut w = world_with(config);
    for host in ["2001:db8:0:1::a", "2001:db8:0:1::b", "2001:db8:0:1:ffff:ffff:ffff:fffe"] {
        let c = w.connect(Listener::Native, ip(host));
        assert_eq!(w.request(c, &login_line(EMAIL, "nope", "AAAAAA")), "False");
    }
    assert!(next_notice(&mut w).is_none());
    let inside = w.connect(Listener::Native, ip("2001:db8:0:1:1234::1"));
    assert_eq!(w.request(inside, &login_line("someone@else.org", "nope", "AAAAAA")), "error|rate_limited");
    assert_eq!(
        next_notice(&mut w),
        Some(Notice::Refused {
            limit: "failures_per_ip",
            subject: "2001:db8:0:1::/64".into(),
            peer: ip("2001:db8:0:1:1234::1")
        })
    );
    let outside = w.connect(Listener::Native, ip("2001:db8:0:2::a"));
    assert_eq!(w.request(outside, &login_line(EMAIL, "nope", "AAAAAA")), "False");
    // With the prefix at 128, every address is counted on its own.
    let mut config = Config::default();
    config.limits.failures_per_ip = Window::new(1, TimeDelta::minutes(15));
    config.limits.ipv6_prefix = 128;
    let mut w = world_with(config);
    for host in ["2001:db8:0:1::a", "2001:db8:0:1::b"] {
        let c = w.connect(Listener::Native, ip(host));
        assert_eq!(w.request(c, &login_line(EMAIL, "nope", "AAAAAA")), "False");
    }
}

#[test]
fn too_many_connections_are_told_so_and_closed() {
    let mut w = world_with(Config { max_connections: 2, ..Config::default() });
    let a = w.connect(Listener::Native, local());
    let _b = w.connect(Listener::Native, local());
    let c = w.connect(Listener::Native, local());
    assert_eq!(w.take_received(c), b"error|too_many_connections\n");
    assert!(w.is_finished(c));
    assert!(!w.is_finished(a));
}

#[test]
fn idle_connections_and_stalled_lines_time_out() {
    let mut w = world();
    let idle = w.connect(Listener::Native, local());
    let stalled = w.connect(Listener::Native, local());
    w.send(stalled, b"require_passcode|aa:bb");
    w.advance(TimeDelta::seconds(9));
    assert!(!w.is_finished(stalled));
    w.advance(TimeDelta::seconds(1));
    assert!(w.is_finished(stalled), "a partial line gets 10 s");
    assert!(!w.is_finished(idle));
    w.advance(TimeDelta::seconds(50));
    assert!(w.is_finished(idle), "an idle connection gets 60 s");
    w.advance(Config::default().close_linger);
    assert_eq!(w.engine.connections(), 0);
}

#[test]
fn activity_keeps_a_connection_open() {
    let mut w = world();
    let c = w.connect(Listener::Native, local());
    for _ in 0..10 {
        w.advance(TimeDelta::seconds(30));
        assert_eq!(w.request(c, &token_line(&"ab".repeat(32), MAC)), "unauthorized");
    }
    assert!(!w.is_closed(c));
}

#[test]
fn a_pipelining_client_is_paused_then_served_in_full() {
    let mut w = world_with(Config { max_pipeline: 4, ..Config::default() });
    let c = w.connect(Listener::Native, local());
    let line = format!("{}\n", token_line(&"ab".repeat(32), MAC));
    w.send(c, line.repeat(10).as_bytes());
    assert!(!w.engine.wants_input(c));
    assert_eq!(w.pending().len(), 4);
    w.settle();
    assert!(w.engine.wants_input(c));
    assert_eq!(w.take_received(c), "unauthorized\n".repeat(10).as_bytes());
}

fn unpickle(bytes: &[u8]) -> String {
    // PROTO 4, FRAME n, SHORT_BINUNICODE len, text, MEMOIZE, STOP
    assert_eq!(&bytes[..3], &[0x80, 0x04, 0x95]);
    assert_eq!(bytes[11], 0x8c);
    let len = usize::from(bytes[12]);
    assert_eq!(&bytes[13 + len..], &[0x94, 0x2e]);
    String::from_utf8(bytes[13..13 + len].to_vec()).unwrap()
}

#[test]
fn legacy_clients_get_one_pickled_reply_per_connection() {
    let mut w = world();
    let c = w.connect(Listener::LegacyPasscode, local());
    w.send(c, format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}").as_bytes());
    w.settle();
    assert_eq!(unpickle(&w.take_received(c)), "Passcode is sent");
    assert!(w.is_finished(c));

    let code = w.passcode_for(EMAIL).unwrap();
    let c = w.connect(Listener::LegacyLogin, local());
    w.send(c, login_line(EMAIL, PASSWORD, &code).as_bytes());
    w.settle();
    let reply = unpickle(&w.take_received(c));
    assert!(reply.starts_with(LOGIN_PREFIX), "{reply}");
    assert!(w.is_finished(c));
}

#[test]
fn legacy_requests_split_across_reads_are_joined_within_the_wait() {
    let mut w = world();
    let c = w.connect(Listener::LegacyPasscode, local());
    w.send(c, format!("require_passcode|{MAC}|{PASSWORD}").as_bytes());
    w.advance(TimeDelta::milliseconds(100));
    w.send(c, format!("|{PHONE}|{EMAIL}").as_bytes());
    w.settle();
    assert_eq!(unpickle(&w.take_received(c)), "Passcode is sent");
}

#[test]
fn legacy_requests_that_never_complete_get_false() {
    let mut w = world();
    let c = w.connect(Listener::LegacyLogin, local());
    w.send(c, b"aa:bb:cc:dd:ee:ff|ada");
    w.advance(TimeDelta::milliseconds(200));
    w.settle();
    assert_eq!(unpickle(&w.take_received(c)), "False");
    assert!(w.is_finished(c));
    let silent = w.connect(Listener::LegacyLogin, local());
    w.advance(TimeDelta::seconds(10));
    assert!(w.is_finished(silent));
    assert!(w.take_received(silent).is_empty());
}

#[test]
fn legacy_ports_take_only_their_own_request() {
    let mut w = world();
    let c = w.connect(Listener::LegacyLogin, local());
    w.send(c, format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}").as_bytes());
    w.settle();
    assert_eq!(unpickle(&w.take_received(c)), "False");
    assert!(w.mailbox.is_empty());
}

#[test]
fn a_plaintext_password_from_the_old_server_is_rehashed_on_success() {
    let mut w = World::new(Config::default(), 9);
    w.store.put_user(UserRecord {
        email: EMAIL.into(),
        phone: PHONE.into(),
        password: PasswordHash::from_column(PASSWORD),
    });
    w.login(local(), MAC, EMAIL, PHONE, PASSWORD).unwrap();
    assert_eq!(w.store.users[EMAIL].password, test_hash(PASSWORD));
}

#[test]
fn a_plaintext_passcode_from_the_old_server_still_logs_in() {
    let mut w = world();
    let c = w.connect(Listener::Native, local());
    require_passcode(&mut w, c, PASSWORD, EMAIL);
    let record = w.store.passcodes.values_mut().next().unwrap();
    record.code = StoredPasscode::Plain(Secret::new("OLD123"));
    assert!(w.request(c, &login_line(EMAIL, PASSWORD, "OLD123")).starts_with(LOGIN_PREFIX));
}

/// Every variant of `ErrorCode`, named once: the list is both the
/// pattern of an exhaustive match (a new variant does not compile until it
/// is named here) and the list the match returns, so naming it is listing
/// it.
macro_rules! every_error_code {
    ($($code:ident),* $(,)?) => {
        |code: ErrorCode| match code {
            $(ErrorCode::$code)|* => vec![$(ErrorCode::$code),*],
        }
    };
}

#[test]
fn error_code_all_holds_every_variant_once() {
    let every = every_error_code!(
        Malformed,
        LineTooLong,
        RateLimited,
        Busy,
        StoreUnavailable,
        MailUnavailable,
        TooManyConnections,
    );
    let every = every(ErrorCode::Malformed);
    assert_eq!(ErrorCode::ALL.to_vec(), every, "ErrorCode::ALL against every variant, in order");
    let texts: std::collections::BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(texts.len(), ErrorCode::ALL.len(), "two codes share a wire text");
}

#[test]
fn the_error_codes_of_docs_protocol_are_exactly_the_real_ones() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md")).unwrap();
    // Every `error|<code>` the page names, in its table, its greppable
    // list or its prose (the table escapes the bar: `error\|<code>`).
    let doc = doc.replace("\\|", "|");
    let documented: std::collections::BTreeSet<&str> = doc
        .split("`error|")
        .skip(1)
        .map(|rest| rest.split('`').next().unwrap_or_default())
        // "`error|` followed by the code" names none.
        .filter(|code| !code.is_empty())
        .collect();
    let real: std::collections::BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(documented, real, "the error codes docs/PROTOCOL.md names against ErrorCode::ALL");
    // Each in the table of codes, with when and then.
    for code in ErrorCode::ALL {
        assert!(doc.contains(&format!("| `error|{}` |", code.as_str())), "{code:?} has no row in the table");
    }
}

#[test]
fn a_burst_of_lines_past_the_pipeline_limit_is_answered_in_full() {
    let mut w = world();
    let c = w.connect(Listener::Native, local());
    let burst = format!("{}\n{}", login_line(EMAIL, "nope", "AAAAAA"), "\n".repeat(200));
    w.send(c, burst.as_bytes());
    w.settle();
    let got = String::from_utf8(w.take_received(c)).unwrap();
    assert_eq!(got, format!("False\n{}", "error|malformed\n".repeat(200)));
}

#[test]
fn a_full_length_line_whose_line_feed_comes_later_is_served() {
    // A real token request of exactly `max_line` bytes.
    let line = token_line(&"ab".repeat(32), MAC);
    let mut w = world_with(Config { max_line: line.len(), ..Config::default() });
    let c = w.connect(Listener::Native, local());
    w.send(c, format!("{line}\r").as_bytes());
    assert!(w.engine.wants_input(c), "a CR may still be followed by its LF");
    w.send(c, b"\n");
    w.settle();
    assert_eq!(w.take_received(c), b"unauthorized\n", "the full-length line is served as the request it is");
    // A line that can only end up too long is answered at once.
    w.send(c, "z".repeat(line.len() + 1).as_bytes());
    assert_eq!(w.take_received(c), b"error|line_too_long\n");
}

#[test]
fn a_client_that_half_closes_still_gets_its_replies() {
    let mut w = world();
    let c = w.connect(Listener::Native, local());
    w.send(c, format!("{}\n", token_line(&"ab".repeat(32), MAC)).as_bytes());
    w.input(tokenizer_auth_engine::Input::Closed { conn: c });
    w.settle();
    assert_eq!(w.take_received(c), b"unauthorized\n");
    assert!(w.is_closed(c));
    assert_eq!(w.engine.connections(), 0);
}

#[test]
fn a_peer_that_takes_nothing_is_dropped_after_the_write_timeout() {
    let mut w = world_with(Config { max_backlog: 1024, ..Config::default() });
    let c = w.connect(Listener::Native, local());
    w.stop_reading(c);
    w.send(c, "x\n".repeat(2000).as_bytes());
    assert!(w.unsent(c) >= 1024);
    assert!(!w.engine.wants_input(c), "no input is wanted past max_backlog");
    w.advance(TimeDelta::seconds(9));
    w.read_some(c, 16);
    w.advance(TimeDelta::seconds(9));
    assert!(!w.is_closed(c), "taking bytes restarts the write timeout");
    w.advance(TimeDelta::seconds(1));
    assert!(w.is_closed(c), "10 s with nothing taken");
    assert!(!w.is_half_closed(c), "dropped, not finished");
    assert_eq!(w.engine.connections(), 0);
}

#[test]
fn a_reader_that_catches_up_is_served_in_full() {
    let mut w = world_with(Config { max_backlog: 100, ..Config::default() });
    let c = w.connect(Listener::Native, local());
    w.stop_reading(c);
    w.send(c, "x\n".repeat(500).as_bytes());
    assert!(!w.engine.wants_input(c));
    w.resume_reading(c);
    assert!(w.engine.wants_input(c), "input is wanted again once the peer took the backlog");
    assert_eq!(w.take_received(c), "error|malformed\n".repeat(500).as_bytes());
}

#[test]
fn shutdown_finishes_what_is_in_flight_then_stops() {
    let mut w = world();
    let busy = w.connect(Listener::Native, local());
    let idle = w.connect(Listener::Native, local());
    w.send(busy, format!("{}\n", token_line(&"ab".repeat(32), MAC)).as_bytes());
    assert_eq!(w.pending().len(), 1);
    w.input(Input::Shutdown);
    assert!(w.is_half_closed(idle), "an idle connection is finished at once");
    assert!(!w.engine.wants_input(busy));
    let late = w.connect(Listener::Native, local());
    assert!(w.is_closed(late), "a connection accepted after the shutdown is closed unserved");
    assert!(!w.outputs.contains(&Output::Stopped));
    w.settle();
    assert_eq!(w.take_received(busy), b"unauthorized\n");
    w.advance(Config::default().close_linger);
    assert_eq!(w.outputs.iter().filter(|o| **o == Output::Stopped).count(), 1);
    assert_eq!(w.engine.connections(), 0);
}

#[test]
fn shutdown_gives_up_after_its_grace() {
    let mut w = world();
    let c = w.connect(Listener::Native, local());
    w.send(c, format!("{}\n", token_line(&"ab".repeat(32), MAC)).as_bytes());
    w.input(Input::Shutdown);
    w.advance(Config::default().shutdown_grace);
    assert!(w.is_closed(c), "the grace is over: dropped");
    assert_eq!(w.outputs.last(), Some(&Output::Stopped));
}

#[test]
fn every_forgotten_connection_is_closed_explicitly() {
    let mut w = world();
    let quiet = w.connect(Listener::Native, local());
    w.hang_up(quiet);
    let failed = w.connect(Listener::Native, local());
    w.input(Input::Failed { conn: failed });
    for conn in [quiet, failed] {
        assert_eq!(w.outputs.iter().filter(|o| **o == Output::Close { conn }).count(), 1);
    }
    assert_eq!(w.engine.connections(), 0);
}

#[test]
fn the_metrics_count_replies_refusals_and_effects() {
    use tokenizer_auth_engine::metrics::{EFFECT_KINDS, LIMITS, REPLY_KINDS};
    let mut config = Config::default();
    config.limits.passcode_requests_per_email = Window::new(1, TimeDelta::minutes(15));
    config.max_connections = 2;
    let mut w = world_with(config);
    let c = w.connect(Listener::Native, local());
    assert_eq!(require_passcode(&mut w, c, PASSWORD, EMAIL), "Passcode is sent");
    assert_eq!(require_passcode(&mut w, c, PASSWORD, EMAIL), "error|rate_limited");
    assert_eq!(w.request(c, &token_line(&"ab".repeat(32), MAC)), "unauthorized");
    assert_eq!(w.request(c, "not a request"), "error|malformed");
    let _second = w.connect(Listener::Native, local());
    let third = w.connect(Listener::Native, local());
    w.settle();
    assert_eq!(w.take_received(third), b"error|too_many_connections\n");

    let m = w.engine.metrics().clone();
    let replies = |kind: &str| m.replies[REPLY_KINDS.iter().position(|k| *k == kind).unwrap()];
    assert_eq!(
        ["passcode_sent", "rate_limited", "unauthorized", "malformed", "too_many_connections", "authorized"]
            .map(replies),
        [1, 1, 1, 1, 1, 0]
    );
    assert_eq!(m.connections_refused, 1);
    let limit = LIMITS.iter().position(|l| *l == "passcode_requests_per_email").unwrap();
    assert_eq!(m.limit_refusals[limit], 1);
    assert_eq!(m.limit_refusals.iter().sum::<u64>(), 1);
    for (kind, stats) in EFFECT_KINDS.iter().zip(&m.effects) {
        assert_eq!(stats.performed, stats.completed, "{kind}: all answered");
        assert_eq!(stats.latency_buckets.iter().sum::<u64>(), stats.completed, "{kind}: one bucket each");
    }
    let count = |kind: &str| m.effects[EFFECT_KINDS.iter().position(|k| *k == kind).unwrap()].completed;
    assert_eq!(count("send_mail"), 1);
    assert_eq!(count("verify_password"), 1, "the refused request verified nothing");
    assert!(count("read") >= 2 && count("write") >= 2);
    assert_eq!(w.engine.password_checks(), 0);
}

#[test]
fn the_audit_trail_says_what_came_of_each_request() {
    let mut config = Config::default();
    config.limits.passcode_requests_per_email = Window::new(3, TimeDelta::minutes(15));
    config.session.token_ttl = TimeDelta::minutes(1);
    let mut w = world_with(config);
    let c = w.connect(Listener::Native, local());
    let native = Some(Listener::Native);
    let e = |s: &str| s.to_owned();
    assert_eq!(require_passcode(&mut w, c, "wrong", EMAIL), "False");
    assert_eq!(require_passcode(&mut w, c, PASSWORD, "nobody@example.com"), "False");
    assert_eq!(require_passcode(&mut w, c, PASSWORD, EMAIL), "Passcode is sent");
    assert_eq!(
        audits(&mut w),
        [
            ("passcode_requested", "wrong_password", e(EMAIL), native),
            ("passcode_requested", "unknown_email", e("nobody@example.com"), native),
            ("passcode_requested", "sent", e(EMAIL), native),
        ]
    );
    assert_eq!(require_passcode(&mut w, c, PASSWORD, EMAIL), "Passcode is sent");
    assert_eq!(require_passcode(&mut w, c, PASSWORD, EMAIL), "error|rate_limited");
    let code = w.passcode_for(EMAIL).unwrap();
    let wrong = if code == "AAAAAA" { "BBBBBB" } else { "AAAAAA" };
    assert_eq!(w.request(c, &login_line(EMAIL, PASSWORD, wrong)), "False");
    assert_eq!(w.request(c, &login_line(EMAIL, "wrong", &code)), "False");
    assert_eq!(w.request(c, &login_line("nobody@example.com", PASSWORD, &code)), "False");
    let reply = w.request(c, &login_line(EMAIL, PASSWORD, &code));
    let token = reply.strip_prefix(LOGIN_PREFIX).expect("logged in").to_owned();
    assert_eq!(w.request(c, &login_line(EMAIL, PASSWORD, &code)), "False", "the passcode was used");
    let outcomes: Vec<(&str, &str)> = audits(&mut w).into_iter().map(|(event, outcome, ..)| (event, outcome)).collect();
    assert_eq!(
        outcomes,
        [
            ("passcode_requested", "sent"),
            ("passcode_requested", "rate_limited"),
            ("login", "wrong_passcode"),
            ("login", "wrong_password"),
            ("login", "unknown_email"),
            ("login", "logged_in"),
            ("login", "no_live_passcode"),
        ]
    );
    w.advance(TimeDelta::minutes(2));
    let c = w.connect(Listener::Native, local());
    assert!(w.request(c, &token_line(&token, MAC)).starts_with("renew|"));
    assert_eq!(audits(&mut w), [("token_renewed", "renewed", e(EMAIL), native)]);
    // An old client's port is said so.
    let old = w.connect(Listener::LegacyPasscode, local());
    w.send(old, format!("require_passcode|{MAC}|wrong|{PHONE}|{EMAIL}").as_bytes());
    w.hang_up(old);
    w.settle();
    assert_eq!(audits(&mut w), [("passcode_requested", "rate_limited", e(EMAIL), Some(Listener::LegacyPasscode))]);
}

#[test]
fn the_audit_trail_tells_an_expired_passcode_and_one_a_concurrent_login_took() {
    let mut w = world();
    let c = w.connect(Listener::Native, local());
    assert_eq!(require_passcode(&mut w, c, PASSWORD, EMAIL), "Passcode is sent");
    let code = w.passcode_for(EMAIL).unwrap();
    w.advance(Config::default().passcode.lifetime + TimeDelta::seconds(1));
    let c = w.connect(Listener::Native, local());
    assert_eq!(w.request(c, &login_line(EMAIL, PASSWORD, &code)), "False");
    assert_eq!(require_passcode(&mut w, c, PASSWORD, EMAIL), "Passcode is sent");
    let code = w.passcode_for(EMAIL).unwrap();
    // Two logins with the right passcode at once: both are read and
    // counted before either consumes it.
    let both: Vec<ConnId> = (0..2).map(|_| w.connect(Listener::Native, local())).collect();
    for &c in &both {
        w.send(c, format!("{}\n", login_line(EMAIL, PASSWORD, &code)).as_bytes());
    }
    w.settle();
    let replies: Vec<String> = both.iter().map(|&c| String::from_utf8(w.take_received(c)).unwrap()).collect();
    assert!(replies[0].starts_with(LOGIN_PREFIX) && replies[1] == "False\n", "{replies:?}");
    let outcomes: Vec<&str> = audits(&mut w).into_iter().map(|(_, outcome, ..)| outcome).collect();
    // In the order decided: the loser's consumption fails before the
    // winner's session is stored.
    assert_eq!(outcomes, ["sent", "expired_passcode", "sent", "passcode_used", "logged_in"]);
}

#[test]
fn the_audit_trail_tells_the_failure_that_locked_the_account_and_the_refusals_that_follow() {
    let mut config = Config::default();
    config.limits.max_consecutive_failures = 3;
    let mut w = world_with(config);
    let c = w.connect(Listener::Native, local());
    assert_eq!(require_passcode(&mut w, c, "wrong", EMAIL), "False");
    assert_eq!(require_passcode(&mut w, c, PASSWORD, EMAIL), "Passcode is sent");
    let code = w.passcode_for(EMAIL).unwrap();
    // The passcode sent does not end the streak (only a login does): the
    // third failure in a row locks the account.
    assert_eq!(w.request(c, &login_line(EMAIL, "wrong", &code)), "False");
    assert_eq!(w.request(c, &login_line(EMAIL, "wrong", &code)), "False");
    assert_eq!(require_passcode(&mut w, c, PASSWORD, EMAIL), "error|rate_limited");
    assert_eq!(w.request(c, &login_line(EMAIL, PASSWORD, &code)), "error|rate_limited");
    let outcomes: Vec<(&str, &str)> = audits(&mut w).into_iter().map(|(event, outcome, ..)| (event, outcome)).collect();
    assert_eq!(
        outcomes,
        [
            ("passcode_requested", "wrong_password"),
            ("passcode_requested", "sent"),
            ("login", "wrong_password"),
            ("login", "wrong_password"),
            ("account_locked", "wrong_password"),
            ("passcode_requested", "locked"),
            ("login", "locked"),
        ]
    );
}

/// A balancer at 127.0.0.1, in `proxy_protocol_from`.
fn behind_a_balancer() -> World {
    let blocks = vec![tokenizer_auth_engine::codec::proxy::Cidr::parse("127.0.0.0/8").unwrap()];
    world_with(Config { proxy_protocol_from: blocks, ..Config::default() })
}

/// A connection through the balancer for the client at `client`.
fn proxied(w: &mut World, client: &str) -> ConnId {
    let c = w.connect(Listener::Native, local());
    w.send(c, format!("PROXY TCP4 {client} 192.0.2.1 51234 7160\r\n").as_bytes());
    c
}

#[test]
fn behind_a_balancer_the_client_named_by_its_header_is_the_connection() {
    let mut w = behind_a_balancer();
    let client = "203.0.113.7";
    let c = proxied(&mut w, client);
    assert_eq!(require_passcode(&mut w, c, PASSWORD, EMAIL), "Passcode is sent");
    let code = w.passcode_for(EMAIL).unwrap();
    // The passcode was issued to the client's address: a login through
    // the balancer for the same client takes it.
    let c = proxied(&mut w, client);
    let reply = w.request(c, &login_line(EMAIL, PASSWORD, &code));
    let token = reply.strip_prefix(LOGIN_PREFIX).expect("logged in").to_owned();
    // The token is bound to the client's address, not the balancer's.
    let c = proxied(&mut w, client);
    assert_eq!(w.request(c, &token_line(&token, MAC)), "authorized");
    let c = proxied(&mut w, "198.51.100.9");
    assert_eq!(w.request(c, &token_line(&token, MAC)), "unauthorized");
    // A header cut into single bytes is the same header.
    let c = w.connect(Listener::Native, local());
    for byte in format!("PROXY TCP4 {client} 192.0.2.1 51234 7160\r\n").bytes() {
        w.send(c, &[byte]);
        w.settle();
    }
    assert_eq!(w.request(c, &token_line(&token, MAC)), "authorized");
    // A health check by the balancer itself keeps its own address.
    let c = w.connect(Listener::Native, local());
    w.send(c, b"PROXY UNKNOWN\r\n");
    assert_eq!(w.request(c, &token_line(&token, MAC)), "unauthorized");
}

#[test]
fn a_header_is_required_from_a_balancer_and_refused_from_anyone_else() {
    let mut w = behind_a_balancer();
    // The balancer without a header, or with a broken one: closed, no reply.
    for first in ["abc|aa:bb:cc:dd:ee:ff|get\n", "PROXY TCP4 nonsense\r\n", "PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n"] {
        let c = w.connect(Listener::Native, local());
        w.send(c, first.as_bytes());
        w.settle();
        assert!(w.is_closed(c), "{first:?}");
        assert!(w.take_received(c).is_empty(), "{first:?}");
    }
    // Anyone else with a header (v1 or v2): closed, no reply.
    let mut v2 = tokenizer_auth_engine::codec::proxy::V2_SIGNATURE.to_vec();
    v2.extend_from_slice(&[0x21, 0x11, 0, 12, 203, 0, 113, 7, 192, 0, 2, 1, 0, 80, 0, 80]);
    for first in [&b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 7160\r\n"[..], &v2] {
        let c = w.connect(Listener::Native, "198.51.100.1".parse().unwrap());
        w.send(c, first);
        w.settle();
        assert!(w.is_closed(c));
        assert!(w.take_received(c).is_empty());
    }
    // Anyone else without one is served as ever, empty lines included.
    let c = w.connect(Listener::Native, "198.51.100.1".parse().unwrap());
    assert_eq!(w.request(c, ""), "error|malformed");
    assert_eq!(require_passcode(&mut w, c, PASSWORD, EMAIL), "Passcode is sent");
    // The legacy ports take no header: the old clients send none.
    let c = w.connect(Listener::LegacyPasscode, local());
    w.send(c, format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}").as_bytes());
    w.hang_up(c);
    w.settle();
    assert!(!w.take_received(c).is_empty());
}

#[test]
fn a_session_behind_a_balancer_replays_from_its_capture() {
    let mut w = behind_a_balancer();
    let mut capture = w.engine.start_capture();
    let c = proxied(&mut w, "203.0.113.7");
    assert_eq!(require_passcode(&mut w, c, PASSWORD, EMAIL), "Passcode is sent");
    let code = w.passcode_for(EMAIL).unwrap();
    let c = w.connect(Listener::Native, local());
    for byte in b"PROXY TCP4 203.0.113.7 192.0.2.1 1 7160\r\n" {
        w.send(c, &[*byte]);
    }
    assert!(w.request(c, &login_line(EMAIL, PASSWORD, &code)).starts_with(LOGIN_PREFIX));
    let refused = w.connect(Listener::Native, "198.51.100.1".parse().unwrap());
    w.send(refused, b"PROXY TCP4 203.0.113.7 192.0.2.1 1 7160\r\n");
    w.settle();
    capture.extend(w.engine.take_capture());
    let text = String::from_utf8_lossy(&capture);
    assert!(!text.contains(PASSWORD), "no password in the capture");
    let records = tokenizer_auth_engine::capture::Replay::new(&capture).unwrap().run().unwrap();
    assert!(records > 5, "{records} records");
}
