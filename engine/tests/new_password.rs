//! The longest password the admin commands accept is exactly the longest a
//! request line carries: checked against the engine's own line limit and
//! parser, on both requests that hold a password.

use std::net::IpAddr;

use tokenizer_auth_engine::testkit::World;
use tokenizer_auth_engine::{Config, Listener, NewPasswordRule};

const EMAIL: &str = "ada@example.com";
const PHONE: &str = "5550100";
/// The longest MAC spelling.
const MAC: &str = "aa:bb:cc:dd:ee:ff";

fn local() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

#[test]
fn the_longest_password_allowed_fits_a_request_line_and_one_more_byte_does_not() {
    let config = Config { max_line: 300, ..Config::default() };
    let rule = NewPasswordRule::for_account(8, config.max_line, EMAIL, PHONE);
    let longest = "p".repeat(rule.max_bytes);
    assert!(rule.check(&longest).is_ok());
    let mut w = World::new(config.clone(), 3);
    w.store.add_user(EMAIL, PHONE, &longest);
    let token = w.login(local(), MAC, EMAIL, PHONE, &longest);
    assert!(token.is_ok(), "{token:?}");

    let too_long = format!("{longest}p");
    assert!(rule.check(&too_long).is_err());
    let mut w = World::new(config, 3);
    w.store.add_user(EMAIL, PHONE, &too_long);
    let c = w.connect(Listener::Native, local());
    let reply = w.request(c, &format!("require_passcode|{MAC}|{too_long}|{PHONE}|{EMAIL}"));
    assert_eq!(reply, "error|line_too_long");
}
