//! Breaches of the driving contract by a runtime: a result for an effect
//! never asked for, a second result, a result of another kind. The engine
//! keeps the first as its error, tells no client anything (above all not
//! `store_unavailable`), and does nothing more. A late result for an effect
//! a shutdown abandoned is no breach.

use std::net::IpAddr;

use chrono::TimeDelta;
use tokenizer_auth_engine::testkit::World;
use tokenizer_auth_engine::{
    Config, ConnId, ContractError, Effect, EffectId, EffectKind, EffectResult, Input, Listener, PasswordHash, Secret,
};

const MAC: &str = "aa:bb:cc:dd:ee:ff";
const EMAIL: &str = "ada@example.com";
const PHONE: &str = "+15550100";
const PASSWORD: &str = "correct horse";

fn local() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

/// A world with one account, and a passcode request on one connection
/// waiting for its first effect (the account's read).
fn waiting_request() -> (World, ConnId) {
    let mut w = World::new(Config::default(), 7);
    w.store.add_user(EMAIL, PHONE, PASSWORD);
    let conn = w.connect(Listener::Native, local());
    w.send(conn, format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}\n").as_bytes());
    assert_eq!(w.pending().len(), 1);
    (w, conn)
}

/// Completes effects in order until the one pending is of `kind`.
fn run_until(w: &mut World, kind: EffectKind) -> EffectId {
    loop {
        match w.pending().first() {
            Some((id, effect)) if effect.kind() == kind => return *id,
            Some(_) => assert!(w.step()),
            None => panic!("no {kind} was asked for"),
        }
    }
}

/// Feeds `result` for `id` past the world (which would refuse to break the
/// contract), and returns the engine's error.
fn feed(w: &mut World, id: EffectId, result: EffectResult) -> Option<ContractError> {
    w.engine.handle(w.now, &mut w.rng, Input::Completed { id, result });
    w.engine.error().copied()
}

/// The engine is stopped for good with `expected`: nothing went out for the
/// breach, the client heard nothing, and later inputs (a new request, an
/// honest result for what was still in flight, a timeout, another breach,
/// a shutdown) change nothing.
fn assert_stopped_for_good(w: &mut World, conn: ConnId, expected: ContractError) {
    assert_eq!(w.engine.error(), Some(&expected));
    assert_eq!(w.engine.poll_output(), None);
    assert!(w.take_received(conn).is_empty(), "the client was told about the breach");
    let (in_flight, connections) = (w.engine.effects_in_flight(), w.engine.connections());
    let honest: Vec<(EffectId, EffectResult)> =
        w.pending().to_vec().into_iter().map(|(id, effect)| (id, w.execute(&effect))).collect();
    let request = format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}\n");
    let mut later = vec![
        Input::Received { conn, bytes: b"not a request\n" },
        Input::Opened { conn: ConnId(99), peer: local(), listener: Listener::Native },
        Input::Received { conn: ConnId(99), bytes: request.as_bytes() },
    ];
    later.extend(honest.into_iter().map(|(id, result)| Input::Completed { id, result }));
    later.extend([
        Input::Completed { id: EffectId(u64::MAX), result: EffectResult::Failed },
        Input::Timeout,
        Input::Shutdown,
    ]);
    for input in later {
        w.now += TimeDelta::minutes(5);
        w.engine.handle(w.now, &mut w.rng, input);
        assert_eq!(w.engine.poll_output(), None, "output after a breach");
        assert_eq!(w.engine.poll_notice(), None, "a notice after a breach");
        assert_eq!(w.engine.error(), Some(&expected), "the first breach is not kept");
    }
    assert_eq!(w.engine.effects_in_flight(), in_flight, "an effect taken or asked for after a breach");
    assert_eq!(w.engine.connections(), connections, "a connection taken after a breach");
    assert_eq!(w.engine.poll_timeout(), None, "a deadline after a breach");
    assert!(!w.engine.wants_input(conn), "input wanted after a breach");
}

#[test]
fn a_result_for_an_effect_never_asked_for_stops_the_engine() {
    let (mut w, conn) = waiting_request();
    let outputs = w.outputs.len();
    let stray = EffectId(1 << 40);
    assert_eq!(feed(&mut w, stray, EffectResult::Committed), Some(ContractError::UnknownEffect(stray)));
    assert_eq!(w.outputs.len(), outputs);
    assert_stopped_for_good(&mut w, conn, ContractError::UnknownEffect(stray));
}

#[test]
fn a_second_result_for_an_effect_stops_the_engine() {
    let (mut w, conn) = waiting_request();
    let (read, effect) = w.pending()[0].clone();
    let result = w.execute(&effect);
    // The honest first result moves the request on.
    assert!(w.step());
    assert_eq!(w.pending().len(), 1);
    assert_eq!(feed(&mut w, read, result), Some(ContractError::DuplicateResult(read)));
    assert_stopped_for_good(&mut w, conn, ContractError::DuplicateResult(read));
}

#[test]
fn a_result_of_another_kind_stops_the_engine_and_no_client_hears_of_it() {
    let snapshot = || EffectResult::Read(Box::default());
    let hash = || EffectResult::Hashed(PasswordHash::Plain(Secret::new("x")));
    // A result of every other kind, for each kind a passcode request waits
    // on: once told `store_unavailable` or `mail_unavailable`.
    let cases: [(EffectKind, Vec<(EffectResult, EffectKind)>); 4] = [
        (
            EffectKind::Read,
            vec![
                (EffectResult::Committed, EffectKind::Write),
                (EffectResult::Conflict, EffectKind::Write),
                (EffectResult::Verified(true), EffectKind::VerifyPassword),
                (hash(), EffectKind::HashPassword),
                (EffectResult::Sent, EffectKind::SendMail),
            ],
        ),
        (
            EffectKind::Write,
            vec![(snapshot(), EffectKind::Read), (EffectResult::Verified(false), EffectKind::VerifyPassword)],
        ),
        (
            EffectKind::VerifyPassword,
            vec![(EffectResult::Committed, EffectKind::Write), (EffectResult::Sent, EffectKind::SendMail)],
        ),
        (EffectKind::SendMail, vec![(EffectResult::Committed, EffectKind::Write), (snapshot(), EffectKind::Read)]),
    ];
    for (expected, results) in cases {
        for (result, got) in results {
            let (mut w, conn) = waiting_request();
            let id = run_until(&mut w, expected);
            let breach = ContractError::WrongResult { id, expected, got };
            assert_eq!(feed(&mut w, id, result), Some(breach), "{expected} answered by a {got}");
            assert_stopped_for_good(&mut w, conn, breach);
        }
    }
}

#[test]
fn a_late_result_for_an_effect_a_shutdown_abandoned_is_no_breach() {
    let (mut w, conn) = waiting_request();
    let (read, effect) = w.pending()[0].clone();
    w.input(Input::Shutdown);
    // The grace runs out with the read still out: the engine stops without
    // it.
    w.advance(TimeDelta::minutes(1));
    assert_eq!(w.engine.effects_in_flight(), 0);
    assert!(w.is_closed(conn));
    let outputs = w.outputs.len();
    let result = w.execute(&effect);
    assert_eq!(feed(&mut w, read, result.clone()), None);
    assert_eq!(w.engine.poll_output(), None);
    assert_eq!(w.outputs.len(), outputs);
    // Once only.
    assert_eq!(feed(&mut w, read, result), Some(ContractError::DuplicateResult(read)));
}

#[test]
fn a_late_result_of_another_kind_is_still_a_breach() {
    let (mut w, _) = waiting_request();
    let read = w.pending()[0].0;
    w.input(Input::Shutdown);
    w.advance(TimeDelta::minutes(1));
    let breach = ContractError::WrongResult { id: read, expected: EffectKind::Read, got: EffectKind::SendMail };
    assert_eq!(feed(&mut w, read, EffectResult::Sent), Some(breach));
}

#[test]
fn each_result_answers_its_effects_kind() {
    let effects = [
        Effect::Read(Default::default()),
        Effect::HashPassword { password: Secret::new("x") },
        Effect::VerifyPassword { hash: PasswordHash::Plain(Secret::new("x")), candidate: Secret::new("x") },
    ];
    let kinds: Vec<EffectKind> = effects.iter().map(Effect::kind).collect();
    assert_eq!(kinds, [EffectKind::Read, EffectKind::HashPassword, EffectKind::VerifyPassword]);
    assert_eq!(EffectResult::Committed.kind(), Some(EffectKind::Write));
    assert_eq!(EffectResult::Conflict.kind(), Some(EffectKind::Write));
    assert_eq!(EffectResult::Sent.kind(), Some(EffectKind::SendMail));
    assert_eq!(EffectResult::Failed.kind(), None);
}

#[test]
fn breaches_say_what_happened() {
    let id = EffectId(7);
    assert_eq!(ContractError::UnknownEffect(id).to_string(), "a result for effect 7, which was never asked for");
    assert_eq!(ContractError::DuplicateResult(id).to_string(), "a second result for effect 7");
    let wrong = ContractError::WrongResult { id, expected: EffectKind::Read, got: EffectKind::Write };
    assert_eq!(wrong.to_string(), "effect 7 is a store read, but its result answers a store write");
}
