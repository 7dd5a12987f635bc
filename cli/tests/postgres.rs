//! Servers on one PostgreSQL database (`store_url`), through the real
//! binary on both runtimes, against a real PostgreSQL server the tests
//! start (`tokenizer_auth_tests::postgres`): the whole flow, a token from
//! one server checked on another, a revocation by the admin command seen
//! by every server within `revocation_delay` though each answers checks
//! from its session cache, one login per passcode whichever server the
//! attempts reach, and a server with another key refused.

#[macro_use]
mod support;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::*;

/// The key every server on the test database shares.
const KEY: &str = POSTGRES_KEY;

/// A command of the binary on the database, with standard input.
fn command(dir: &std::path::Path, url: &str, args: &[&str], stdin: &str) -> Output {
    run_with(dir, args, stdin, &[("TOKENIZER_AUTH_STORE_URL", url), ("TOKENIZER_AUTH_SERVER_KEY", KEY)])
}

fn ok(dir: &std::path::Path, url: &str, args: &[&str], stdin: &str) -> String {
    let out = command(dir, url, args, stdin);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A server on the database, with a data folder of its own (its outbox).
fn server(runtime: &str, url: &str) -> Server {
    let env = [("TOKENIZER_AUTH_STORE_URL", url), ("TOKENIZER_AUTH_SERVER_KEY", KEY)];
    Server::start_on(tempfile::tempdir().unwrap(), runtime, &env, &[])
}

fn servers_share_one_postgres_database(runtime: &str) {
    let url = tokenizer_auth_tests::postgres::shared().database();
    let admin = tempfile::tempdir().unwrap();
    let added =
        ok(admin.path(), &url, &["user", "add", EMAIL, "--phone", PHONE, "--password-stdin"], &format!("{PASSWORD}\n"));
    assert_eq!(added, format!("added {EMAIL}\n"));
    assert!(!admin.path().join("op_creds.db").exists(), "the account is in the database, not in files");

    let a = server(runtime, &url);
    let b = server(runtime, &url);
    // A token from one is good on the other.
    let token = a.login();
    assert_eq!(b.connect().ask(&token_line(&token)), "authorized");
    assert_eq!(a.connect().ask(&token_line(&token)), "authorized");
    let listed = ok(admin.path(), &url, &["session", "list", EMAIL], "");
    assert_eq!(listed.lines().count(), 1, "{listed}");

    // A revocation is seen by both within the delay. The command's data
    // folder need not exist: only its audit trail is there, and it is
    // made, private.
    let fresh = admin.path().join("not-made-yet");
    ok(&fresh, &url, &["session", "revoke", EMAIL], "");
    let revoked = std::time::Instant::now();
    let mode =
        |p: &std::path::Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions());
    assert_eq!((mode(&fresh) & 0o777, mode(&fresh.join("audit.log")) & 0o777), (0o700, 0o600));
    refused_within(&[&a, &b], &token, revoked, REVOCATION_DELAY);

    // One passcode, many attempts spread over both servers: one login.
    let mut c = a.connect();
    assert_eq!(c.ask(&format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}")), "Passcode is sent");
    let code = a.outbox_passcode();
    let line = format!("{MAC}|{EMAIL}|{PHONE}|{PASSWORD}|{code}");
    let attempts: Vec<_> = (0..12)
        .map(|i| {
            let addr = if i % 2 == 0 { a.native } else { b.native };
            let line = line.clone();
            std::thread::spawn(move || Client::new(std::net::TcpStream::connect(addr).unwrap()).ask(&line))
        })
        .collect();
    let replies: Vec<String> = attempts.into_iter().map(|t| t.join().unwrap()).collect();
    let tokens = replies.iter().filter(|r| r.starts_with(LOGIN_PREFIX)).count();
    assert_eq!(tokens, 1, "{replies:?}");
    assert!(replies.iter().all(|r| r.starts_with(LOGIN_PREFIX) || r == "False"), "{replies:?}");

    // The brute-force counters are shared: the admin command reads them.
    let shown = ok(admin.path(), &url, &["limits", "show", EMAIL], "");
    assert!(shown.contains("failures_per_email"), "{shown}");

    // A server with another key refuses to start.
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(other.path())
        .args(["serve", "--runtime", runtime, "--listen", "127.0.0.1:0"])
        .args(["--legacy-passcode-listen", "127.0.0.1:0", "--legacy-login-listen", "127.0.0.1:0"])
        .env("TOKENIZER_AUTH_STORE_URL", &url)
        .env("TOKENIZER_AUTH_SERVER_KEY", "5".repeat(64))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("another server key"), "{said}");
    assert!(a.stop().success());
    assert!(b.stop().success());
}

/// `store copy`: a folder a server used, into a database; a second run
/// copies nothing; a server on the database takes over its sessions and
/// its live passcodes.
fn store_copy_moves_a_folder_and_a_second_run_copies_nothing(runtime: &str) {
    let old = Server::start(runtime, &[]);
    let token = old.login();
    // A passcode left live on another device, and a failure counted.
    let other_mac = "11:22:33:44:55:66";
    let mut c = old.connect();
    assert_eq!(c.ask(&format!("require_passcode|{other_mac}|{PASSWORD}|{PHONE}|{EMAIL}")), "Passcode is sent");
    let live = old.outbox_passcode();
    assert_eq!(c.ask(&format!("require_passcode|{MAC}|wrong horse battery|{PHONE}|{EMAIL}")), "False");
    let (status, folder) = old.stop_keeping_dir();
    assert!(status.success());
    let key: String =
        std::fs::read(folder.path().join("server.key")).unwrap().iter().map(|b| format!("{b:02x}")).collect();

    let url = tokenizer_auth_tests::postgres::shared().database();
    // A copy of the folder without its key is refused, and given no new
    // key: its passcodes were keyed by the one it lost.
    let keyless = tempfile::tempdir().unwrap();
    for file in ["op_creds.db", "op_passcodes.db"] {
        std::fs::copy(folder.path().join(file), keyless.path().join(file)).unwrap();
    }
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(keyless.path().join("cmd"))
        .args(["store", "copy", "--from", keyless.path().to_str().unwrap(), "--to", &url])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("server.key") && said.contains("server_key"), "{said}");
    assert!(!keyless.path().join("server.key").exists(), "no key made for the copy");
    let copy = |expect_new: bool| {
        let elsewhere = tempfile::tempdir().unwrap();
        let out = Command::new(BIN)
            .arg("--data-dir")
            .arg(elsewhere.path())
            .args(["store", "copy", "--from", folder.path().to_str().unwrap(), "--to", &url])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
        let accounts = if expect_new { "1 copied, 0 already there" } else { "0 copied, 1 already there" };
        assert!(said.contains(&format!("accounts: {accounts}")), "{said}");
        assert!(said.contains("the database holds every record"), "{said}");
        said
    };
    let first = copy(true);
    assert!(first.contains("sessions: 1 copied") && first.contains("live passcodes: 1 copied"), "{first}");
    assert!(first.contains("counters: ") && !first.contains("counters: 0 copied"), "{first}");
    let second = copy(false);
    assert!(second.contains("sessions: 0 copied, 1 already there"), "{second}");

    let env = [("TOKENIZER_AUTH_STORE_URL", url.as_str()), ("TOKENIZER_AUTH_SERVER_KEY", key.as_str())];
    let new = Server::start_on(tempfile::tempdir().unwrap(), runtime, &env, &[]);
    let mut c = new.connect();
    assert_eq!(c.ask(&token_line(&token)), "authorized");
    let reply = c.ask(&format!("{other_mac}|{EMAIL}|{PHONE}|{PASSWORD}|{live}"));
    assert!(reply.starts_with(LOGIN_PREFIX), "the copied passcode logs in: {reply}");
    assert!(new.stop().success());
}

/// `n` answers to `line`, sent at once, spread over `servers`.
fn burst(servers: &[&Server], n: usize, line: &str) -> Vec<String> {
    let addrs: Vec<_> = servers.iter().map(|s| s.native).collect();
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (addr, line) = (addrs[i % addrs.len()], line.to_owned());
            std::thread::spawn(move || Client::new(std::net::TcpStream::connect(addr).unwrap()).ask(&line))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Three servers on one database, started at once: the guarantees hold
/// across them, and one killed mid-burst loses nothing it acknowledged.
fn three_servers_keep_every_guarantee(runtime: &str) {
    let url = tokenizer_auth_tests::postgres::shared().database();
    let admin = tempfile::tempdir().unwrap();
    // A second account for the burst at the end, whose counters the
    // first parts leave alone.
    const OTHER: &str = "grace@example.com";
    for email in [EMAIL, OTHER] {
        ok(admin.path(), &url, &["user", "add", email, "--phone", PHONE, "--password-stdin"], &format!("{PASSWORD}\n"));
    }
    let env = [
        ("TOKENIZER_AUTH_STORE_URL", url.as_str()),
        ("TOKENIZER_AUTH_SERVER_KEY", KEY),
        ("TOKENIZER_AUTH_TOKEN_TTL", "2s"),
        // Every test client is 127.0.0.1: the per-email bound is the one
        // measured; the per-address ones would stop the bursts.
        ("TOKENIZER_AUTH_FAILURES_PER_EMAIL", "5"),
        ("TOKENIZER_AUTH_FAILURES_PER_IP", "0"),
        ("TOKENIZER_AUTH_PASSCODE_REQUESTS_PER_IP", "0"),
        ("TOKENIZER_AUTH_PASSCODE_REQUESTS_PER_EMAIL", "0"),
        ("TOKENIZER_AUTH_MAX_CONSECUTIVE_FAILURES", "0"),
    ];
    // Started together: the schema is made once, under its lock.
    let starting: Vec<_> = (0..3)
        .map(|_| {
            let runtime = runtime.to_owned();
            let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            std::thread::spawn(move || {
                let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                Server::start_on(tempfile::tempdir().unwrap(), &runtime, &env, &[])
            })
        })
        .collect();
    let servers: Vec<Server> = starting.into_iter().map(|t| t.join().unwrap()).collect();
    let all: Vec<&Server> = servers.iter().collect();

    // 50 logins with one passcode, over the three: one token.
    let mut c = servers[0].connect();
    assert_eq!(c.ask(&format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}")), "Passcode is sent");
    let code = servers[0].outbox_passcode();
    let replies = burst(&all, 50, &format!("{MAC}|{EMAIL}|{PHONE}|{PASSWORD}|{code}"));
    let tokens: Vec<&String> = replies.iter().filter(|r| r.starts_with(LOGIN_PREFIX)).collect();
    assert_eq!(tokens.len(), 1, "{replies:?}");
    let token = tokens[0].strip_prefix(LOGIN_PREFIX).unwrap().to_owned();

    // 20 checks of the expired token at once, over the three: one successor.
    std::thread::sleep(Duration::from_millis(2200));
    let renewals = burst(&all, 20, &token_line(&token));
    assert!(renewals.iter().all(|r| r.starts_with("renew|") && *r == renewals[0]), "{renewals:?}");
    let successor = renewals[0].strip_prefix("renew|").unwrap().to_owned();
    for server in &servers {
        assert_eq!(server.connect().ask(&token_line(&successor)), "authorized");
        // Within the grace (10 s), the old token gets the same successor
        // from every server, whatever its cache held.
        assert_eq!(server.connect().ask(&token_line(&token)), format!("renew|{successor}"));
    }

    // A bound, exact over the three: five failures of one email.
    let wrong = burst(&all, 40, &format!("{MAC}|nobody@example.com|{PHONE}|wrong horse battery|AAAAAA"));
    assert_eq!(wrong.iter().filter(|r| *r == "False").count(), 5, "{wrong:?}");
    assert_eq!(wrong.iter().filter(|r| *r == "error|rate_limited").count(), 35, "{wrong:?}");

    // A revocation on the database is seen by all three within the delay,
    // though each has the session in its cache (checked just above).
    ok(admin.path(), &url, &["session", "revoke", EMAIL], "");
    refused_within(&all, &successor, std::time::Instant::now(), REVOCATION_DELAY);

    // One server killed mid-burst: every login it acknowledged stands.
    let mut servers = servers;
    let victim = servers.pop().unwrap();
    let (addr, outbox) = (victim.native, victim.dir.join("outbox"));
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let burst_thread = {
        let acknowledged = std::sync::Arc::clone(&acknowledged);
        std::thread::spawn(move || {
            for i in 0..200u32 {
                let mac = format!("02:00:00:00:{:02x}:{:02x}", i / 256, i % 256);
                let Ok(stream) = std::net::TcpStream::connect(addr) else { return };
                let mut c = Client::new(stream);
                c.send(format!("require_passcode|{mac}|{PASSWORD}|{PHONE}|{OTHER}\n").as_bytes());
                let mut line = String::new();
                if std::io::BufRead::read_line(&mut c.reader, &mut line).unwrap_or(0) == 0 {
                    return;
                }
                let Some(code) = newest_passcode(&outbox) else { return };
                c.send(format!("{mac}|{OTHER}|{PHONE}|{PASSWORD}|{code}\n").as_bytes());
                let mut reply = String::new();
                if std::io::BufRead::read_line(&mut c.reader, &mut reply).unwrap_or(0) == 0 {
                    return;
                }
                if let Some(token) = reply.trim_end().strip_prefix(LOGIN_PREFIX) {
                    acknowledged.lock().unwrap().push((mac, token.to_owned()));
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(400));
    signal(&victim.child, "KILL");
    burst_thread.join().unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(!acknowledged.is_empty(), "logins were acknowledged before the kill");
    for (mac, token) in &acknowledged {
        let reply = servers[0].connect().ask(&format!("{token}|{mac}|get"));
        assert_eq!(reply, "authorized", "an acknowledged login of {mac} was lost");
    }
    drop(victim);
    for server in servers {
        assert!(server.stop().success());
    }
}

both_runtimes!(
    servers_share_one_postgres_database,
    store_copy_moves_a_folder_and_a_second_run_copies_nothing,
    three_servers_keep_every_guarantee,
);

/// TLS to the database: the URL's `sslmode=require` with the database's
/// authority in `store_ca`, through the binary; without the authority the
/// certificate does not check and nothing connects.
#[test]
fn the_database_is_reached_over_tls() {
    use tokenizer_auth_effects::store::PgStore;

    let pg = tokenizer_auth_tests::postgres::Postgres::start();
    let pki = support::pki::Pki::local();
    // The server's certificate and key, its own (PostgreSQL wants the key
    // private to its user), then TLS on, by a reload.
    let (cert, key) = (pg.dir().join("server.crt"), pg.dir().join("server.key"));
    std::fs::copy(&pki.cert, &cert).unwrap();
    std::fs::copy(&pki.key, &key).unwrap();
    let owner = std::fs::metadata(pg.dir()).map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
    let status = Command::new("chown").arg(owner.to_string()).arg(&cert).arg(&key).status().unwrap();
    assert!(status.success());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let url = pg.database();
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    for sql in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        admin.batch_execute(&sql).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let required = format!("{url}?sslmode=require");

    let mut store = PgStore::open_with(&required, Some(&pki.ca), 1).expect("TLS with the authority");
    store.ping().unwrap();
    let refused = PgStore::open(&required).err().expect("a certificate nobody vouches for is refused");
    assert!(refused.to_string().contains("certificate"), "{refused}");
    assert!(PgStore::open(&url).is_err(), "the certificate is checked whenever TLS is used");

    // A server over TLS to the database.
    let admin_dir = tempfile::tempdir().unwrap();
    let env = [
        ("TOKENIZER_AUTH_STORE_URL", required.as_str()),
        ("TOKENIZER_AUTH_STORE_CA", pki.ca.to_str().unwrap()),
        ("TOKENIZER_AUTH_SERVER_KEY", KEY),
    ];
    let added = run_with(
        admin_dir.path(),
        &["user", "add", EMAIL, "--phone", PHONE, "--password-stdin"],
        &format!("{PASSWORD}\n"),
        &env,
    );
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let server = Server::start_on(tempfile::tempdir().unwrap(), "mio", &env, &[]);
    let token = server.login();
    assert_eq!(server.connect().ask(&token_line(&token)), "authorized");
    assert!(server.stop().success());
}
