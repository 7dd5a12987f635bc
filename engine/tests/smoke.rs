//! Smoke test.
use std::net::IpAddr;
use tokenizer_auth_engine::testkit::World;
use tokenizer_auth_engine::{Config, Listener};

#[test]
fn smoke() {
    let mut w = World::new(Config::default(), 1);
    w.store.add_user("a@b.c", "555", "pw");
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let token = w.login(ip, "aa:bb:cc:dd:ee:ff", "a@b.c", "555", "pw").unwrap();
    let c = w.connect(Listener::Native, ip);
    let r = w.request(c, &format!("{token}|aa:bb:cc:dd:ee:ff|get"));
    assert_eq!(r, "authorized");
}
