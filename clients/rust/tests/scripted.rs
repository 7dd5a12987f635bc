//! The client against a scripted peer, for what a correct server does not
//! do on demand: a second renewal on the retry, two successors for one
//! token, replies that are no replies, silence, a connection closed while
//! idle, and a window to keep. (The real server's replies are tested in
//! `cli/tests/rust_client.rs`.)

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use tokenizer_auth_client::{
    BaseToken, Call, Client, DeviceMac, Error, MemoryTokenStore, Options, StoredToken, TokenStore,
};
use tokenizer_auth_engine::LOGIN_PREFIX;

const MAC: &str = "aa:bb:cc:dd:ee:ff";

fn token(pair: &str) -> BaseToken {
    BaseToken::parse(pair.repeat(32).as_bytes()).unwrap()
}

/// What a peer does with a request line: the bytes to answer (none: say
/// nothing), and whether to hang up after.
type Answer = Box<dyn FnMut(&str) -> (Vec<u8>, bool) + Send>;

/// A listener on loopback whose connections are answered by one script;
/// it keeps every line it read, and counts connections.
struct Peer {
    addr: String,
    lines: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
}

impl Peer {
    fn new(answer: impl FnMut(&str) -> (Vec<u8>, bool) + Send + 'static) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let answer: Arc<Mutex<Answer>> = Arc::new(Mutex::new(Box::new(answer)));
        let (seen, count) = (Arc::clone(&lines), Arc::clone(&connections));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let (seen, answer) = (Arc::clone(&seen), Arc::clone(&answer));
                thread::spawn(move || serve(stream, &seen, &answer));
            }
        });
        Peer { addr, lines, connections }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, seen: &Mutex<Vec<String>>, answer: &Mutex<Answer>) {
    let mut writer = stream.try_clone().unwrap();
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        seen.lock().unwrap().push(line.clone());
        let (reply, hang_up) = answer.lock().unwrap()(&line);
        if writer.write_all(&reply).is_err() || hang_up {
            return;
        }
    }
}

fn reply(text: &str) -> (Vec<u8>, bool) {
    (format!("{text}\n").into_bytes(), false)
}

fn options(store: Arc<MemoryTokenStore>) -> Options {
    Options {
        timeout: Duration::from_secs(5),
        mac: Some(DeviceMac::parse(MAC).unwrap()),
        store: Box::new(store),
        ..Options::default()
    }
}

/// A client of `peer` whose store holds `held`.
fn client(peer: &Peer, held: BaseToken) -> (Client, Arc<MemoryTokenStore>) {
    let store = Arc::new(MemoryTokenStore::with(StoredToken { token: held, mac: None }));
    (Client::connect(&peer.addr, options(Arc::clone(&store))).unwrap(), store)
}

fn stored(store: &MemoryTokenStore) -> BaseToken {
    store.load().unwrap().unwrap().token
}

#[test]
fn requests_are_rendered_by_the_codec_and_renewal_is_retried_once() {
    let (old, new) = (token("aa"), token("bb"));
    let peer = Peer::new(move |line| match line {
        l if l.starts_with(&old.to_string()) => reply(&format!("renew|{new}")),
        l if l.starts_with("require_passcode|") => reply("Passcode is sent"),
        l if l.starts_with(MAC) => reply(&format!("{LOGIN_PREFIX}{old}")),
        _ => reply("authorized"),
    });
    let store = Arc::new(MemoryTokenStore::new());
    let mut client = Client::connect(&peer.addr, options(Arc::clone(&store))).unwrap();
    client.request_passcode("ada@example.com", "", "pw").unwrap();
    assert_eq!(client.login("ada@example.com", "555", "pw", "K7QX2M").unwrap(), old);
    assert_eq!(store.load().unwrap(), Some(StoredToken { token: old, mac: Some(DeviceMac::parse(MAC).unwrap()) }));
    client.request("put", &["key", "", "value with spaces"]).unwrap();
    assert_eq!(stored(&store), new);
    assert_eq!(
        peer.lines(),
        [
            format!("require_passcode|{MAC}|pw||ada@example.com"),
            format!("{MAC}|ada@example.com|555|pw|K7QX2M"),
            format!("{old}|{MAC}|put|key||value with spaces"),
            format!("{new}|{MAC}|put|key||value with spaces"),
        ]
    );
    assert_eq!(peer.connections.load(Ordering::SeqCst), 1, "one connection for every call");
}

#[test]
fn a_burst_stores_the_successor_once_and_retries_each_request_once() {
    let (old, new) = (token("aa"), token("bb"));
    let peer = Peer::new(move |line| {
        if line.starts_with(&old.to_string()) { reply(&format!("renew|{new}")) } else { reply("authorized") }
    });
    let saves = Arc::new(AtomicUsize::new(0));
    struct Counting(MemoryTokenStore, Arc<AtomicUsize>);
    impl TokenStore for Counting {
        fn load(&self) -> std::io::Result<Option<StoredToken>> {
            self.0.load()
        }
        fn save(&self, stored: &StoredToken) -> std::io::Result<()> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.save(stored)
        }
    }
    let store = Counting(MemoryTokenStore::with(StoredToken { token: old, mac: None }), Arc::clone(&saves));
    let options = Options { store: Box::new(store), window: 16, ..options(Arc::default()) };
    let mut client = Client::connect(&peer.addr, options).unwrap();
    let calls = vec![Call::Request { request: "status", data: &[] }; 100];
    let results = client.pipeline(&calls).unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(saves.load(Ordering::SeqCst), 1, "one successor, stored once");
    let lines = peer.lines();
    let with_old = lines.iter().filter(|l| l.starts_with(&old.to_string())).count();
    // What was sent before the renewal came back is retried; the rest went
    // out with the successor at once: 100 requests made with it in all.
    assert_eq!(lines.len() - with_old, 100);
    assert!(with_old <= 16, "{with_old} sent with the old token: more than the window");
}

#[test]
fn a_second_renewal_on_the_retry_is_stored_and_returned() {
    let (old, new, newer) = (token("aa"), token("bb"), token("cc"));
    let peer = Peer::new(move |line| {
        let successor = if line.starts_with(&old.to_string()) { new } else { newer };
        reply(&format!("renew|{successor}"))
    });
    let (mut client, store) = client(&peer, old);
    let e = client.request("status", &[]).unwrap_err();
    assert!(matches!(e, Error::TokenRenewedAgain) && e.is_retryable(), "{e:?}");
    assert_eq!(stored(&store), newer);
}

#[test]
fn two_successors_for_one_token_are_a_violation() {
    let (old, new, newer) = (token("aa"), token("bb"), token("cc"));
    let mut first = true;
    let peer = Peer::new(move |_| {
        let successor = if std::mem::take(&mut first) { new } else { newer };
        reply(&format!("renew|{successor}"))
    });
    let (mut client, _) = client(&peer, old);
    let e = client.pipeline(&[Call::Request { request: "a", data: &[] }; 2]).unwrap_err();
    assert!(matches!(&e, Error::Protocol(why) if why.contains("two different")), "{e:?}");
}

#[test]
fn replies_that_are_no_replies_are_violations_that_repeat_nothing() {
    let secret = "ab".repeat(32);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (format!("renew|{}\n", secret.to_uppercase()).into_bytes(), "not one of the native protocol"),
        (b"authorized, probably\n".to_vec(), "not one of the native protocol"),
        (b"\xff\xfe\n".to_vec(), "not UTF-8"),
        (vec![b'x'; 70 * 1024], "over 65536 bytes"),
        // A legacy port's pickled reply, and the close after it.
        (b"\x80\x04\x95\x09\0\0\0\0\0\0\0\x8c\x05False\x94\x2e".to_vec(), "legacy port"),
    ];
    for (bytes, why) in cases {
        let hang_up = bytes.first() == Some(&0x80);
        let peer = Peer::new(move |_| (bytes.clone(), hang_up));
        let (mut client, _) = client(&peer, token("aa"));
        let e = client.request("status", &[]).unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(matches!(e, Error::Protocol(_)) && shown.contains(why), "{shown}");
        assert!(!shown.to_lowercase().contains(&secret), "{shown}");
    }
}

#[test]
fn an_unknown_error_code_refuses_its_request_only() {
    let mut n = 0;
    let peer = Peer::new(move |_| {
        n += 1;
        reply(if n == 1 { "error|out_of_paper" } else { "authorized" })
    });
    let (mut client, _) = client(&peer, token("aa"));
    let results = client.pipeline(&[Call::Request { request: "a", data: &[] }; 2]).unwrap();
    assert!(matches!(&results[0], Err(Error::UnknownCode(code)) if code == "out_of_paper"), "{results:?}");
    assert!(results[1].is_ok());
}

#[test]
fn silence_is_a_timeout() {
    let peer = Peer::new(|_| (Vec::new(), false));
    let store = Arc::new(MemoryTokenStore::with(StoredToken { token: token("aa"), mac: None }));
    let options = Options { timeout: Duration::from_millis(300), ..options(store) };
    let mut client = Client::connect(&peer.addr, options).unwrap();
    let e = client.request("status", &[]).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }) && e.is_retryable(), "{e:?}");
    assert!(e.to_string().starts_with("no reply from 127.0.0.1:"), "{e}");
}

#[test]
fn a_connection_closed_while_idle_is_replaced_once() {
    // Each connection answers one request, then hangs up without a reply
    // to the next.
    let peer = Peer::new(|line| if line.ends_with("|first") { reply("authorized") } else { (Vec::new(), true) });
    let (mut client, _) = client(&peer, token("aa"));
    client.request("first", &[]).unwrap();
    // The kept connection is closed under the next call: sent again once,
    // on a new connection, where it is not answered either.
    let e = client.request("second", &[]).unwrap_err();
    assert!(matches!(e, Error::Closed { .. }), "{e:?}");
    assert_eq!(peer.connections.load(Ordering::SeqCst), 2);
    assert!(e.to_string().ends_with("closed the connection without a reply"), "{e}");
    // A call after a failed one opens a connection of its own.
    client.request("first", &[]).unwrap();
    assert_eq!(peer.connections.load(Ordering::SeqCst), 3);
}

#[test]
fn a_reply_after_which_the_server_closes_ends_the_burst() {
    let peer = Peer::new(|line| {
        if line.ends_with("|long") { (b"error|line_too_long\n".to_vec(), true) } else { reply("authorized") }
    });
    let (mut client, _) = client(&peer, token("aa"));
    let calls = [Call::Request { request: "ok", data: &[] }, Call::Request { request: "long", data: &[] }];
    assert!(matches!(client.pipeline(&calls), Err(Error::LineTooLong)));
    client.request("ok", &[]).unwrap();
}

#[test]
fn a_window_bounds_what_is_in_flight() {
    // The peer reads what has come, answers it all, and notes the most
    // requests it held unanswered.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let most = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        let (mut most, mut answered) = (0, 0);
        // A line cut by the read timeout is kept, and finished next time.
        let mut line = String::new();
        while answered < 100 {
            let mut read = 0;
            while reader.read_line(&mut line).is_ok() && line.ends_with('\n') {
                read += 1;
                line.clear();
            }
            most = most.max(read);
            writer.write_all("authorized\n".repeat(read).as_bytes()).unwrap();
            answered += read;
        }
        most
    });
    let store = Arc::new(MemoryTokenStore::with(StoredToken { token: token("aa"), mac: None }));
    let mut client = Client::connect(&addr, Options { window: 8, ..options(store) }).unwrap();
    let results = client.pipeline(&[Call::Request { request: "status", data: &[] }; 100]).unwrap();
    assert!(results.iter().all(Result::is_ok));
    let most = most.join().unwrap();
    assert!((1..=8).contains(&most), "{most} in flight");
}

#[test]
fn values_that_would_break_the_line_are_refused_before_sending() {
    let peer = Peer::new(|_| reply("authorized"));
    let (mut client, _) = client(&peer, token("aa"));
    let refused = [
        client.request_passcode("a|b@example.com", "", "pw"),
        client.request_passcode("a@example.com", "", "hunter|2"),
        client.request_passcode("a@example.com", "1\n2", "pw"),
        client.login("", "", "pw", "K7QX2M").map(drop),
        client.request("", &[]),
        client.request("get", &["a|b"]),
        client.request("get", &["a\rb"]),
    ];
    for result in refused {
        let e = result.unwrap_err();
        assert!(matches!(e, Error::Field { .. }) && !e.is_retryable(), "{e:?}");
        assert!(!e.to_string().contains("hunter"), "{e}");
    }
    assert!(peer.lines().is_empty(), "nothing sent: {:?}", peer.lines());
    let store = Arc::new(MemoryTokenStore::new());
    let mut no_mac = Client::connect(&peer.addr, Options { mac: None, ..options(Arc::clone(&store)) }).unwrap();
    assert!(matches!(no_mac.request("status", &[]), Err(Error::NoToken)));
    assert!(matches!(no_mac.request_passcode("a@example.com", "", "pw"), Err(Error::NoMac)));
    store.save(&StoredToken { token: token("aa"), mac: None }).unwrap();
    assert!(matches!(no_mac.request("status", &[]), Err(Error::NoMac)));
}

#[test]
fn secrets_stay_out_of_debug_output_and_a_client_moves_between_threads() {
    let call = Call::Passcode { email: "a@example.com", phone: "", password: "hunter2" };
    let stored = StoredToken { token: token("ab"), mac: None };
    let shown = format!("{call:?} {stored:?} {:?}", options(Arc::new(MemoryTokenStore::with(stored.clone()))));
    assert!(!shown.contains("hunter2") && !shown.contains(&"ab".repeat(32)), "{shown}");
    fn send<T: Send>() {}
    send::<Client>();
}

#[test]
fn a_server_that_is_not_there_is_a_connect_error() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let e = Client::connect(&closed, Options::default()).unwrap_err();
    assert!(matches!(e, Error::Connect { .. }) && e.is_retryable(), "{e:?}");
    assert!(e.to_string().starts_with(&format!("cannot connect to {closed}: ")), "{e}");
}
