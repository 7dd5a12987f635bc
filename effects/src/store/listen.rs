//! A server's ear on a PostgreSQL database: one thread, on a connection of
//! its own, that tells the server's [`NotifiedCache`] of every change other
//! servers (and this one) make to the sessions, and how fresh the cache is
//! (the rules are in `notified`).
//!
//! It listens on the channel the database's trigger notifies
//! ([`SESSIONS_CHANNEL`]) and on one of its own, named after its backend's
//! process id (unique among the database's live connections), on which it
//! sends itself a beat four times per `revocation_delay`. When a beat comes
//! back, the changes committed before it was sent have come before it. A
//! lost connection makes the cache untrusted at once, and the thread
//! connects again, with a growing pause (at most a second).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use postgres::fallible_iterator::FallibleIterator;
use tokenizer_auth_engine::MasterToken;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::notified::NotifiedCache;
use super::postgres::describe;

/// The channel of the sessions' changes (the trigger of migration 3 in
/// `postgres` sends on it): a master token in hex, or `*` for all.
pub(super) const SESSIONS_CHANNEL: &str = "tokenizer_auth_sessions";

/// The listener's `application_name`, as `pg_stat_activity` shows it.
pub const LISTENER_NAME: &str = "tokenizer-auth listener";

/// The most beats awaited at once; older ones are given up.
const BEATS_AWAITED: usize = 64;

/// The listener thread. [`Listener::stop`] ends it.
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Listener {
    /// Starts listening for `cache`.
    pub(super) fn start(url: String, tls: MakeRustlsConnect, cache: Arc<NotifiedCache>) -> std::io::Result<Listener> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread =
            std::thread::Builder::new().name("store-listen".into()).spawn(move || run(&url, &tls, &cache, &stopped))?;
        Ok(Listener { stop, thread })
    }

    /// Stops the thread (within a beat) and waits for it.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

fn run(url: &str, tls: &MakeRustlsConnect, cache: &NotifiedCache, stop: &AtomicBool) {
    let beat = (cache.delay() / 4).max(Duration::from_millis(1));
    let mut pause = FIRST_PAUSE;
    let mut told = false;
    while !stop.load(Ordering::Relaxed) {
        let outcome = listen(url, tls, cache, stop, beat, &mut told, &mut pause);
        cache.deaf();
        let Err(why) = outcome else { return };
        // Said once per outage, not once per attempt.
        if told {
            tracing::warn!(error = %why, "session cache: the database's notifications are lost; every check reads \
                the database until they are back");
            told = false;
        }
        let until = Instant::now() + pause;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
        }
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// The first pause before connecting again; it doubles up to a second.
const FIRST_PAUSE: Duration = Duration::from_millis(50);

/// The longest wait for a notification before the thread looks at `stop`.
const LONGEST_WAIT: Duration = Duration::from_millis(100);

/// Listens until `stop` (`Ok`) or the connection fails (`Err`, why).
/// `told`: whether the log has said the cache is listening.
fn listen(
    url: &str,
    tls: &MakeRustlsConnect,
    cache: &NotifiedCache,
    stop: &AtomicBool,
    beat: Duration,
    told: &mut bool,
    pause: &mut Duration,
) -> Result<(), String> {
    let pg = |e: postgres::Error| describe(&e);
    let mut config: postgres::Config = url.parse().map_err(pg)?;
    // A database that stops answering is noticed, and the thread can stop.
    let mut client = config
        .application_name(LISTENER_NAME)
        .connect_timeout(Duration::from_secs(5))
        .keepalives_idle(Duration::from_secs(10))
        .tcp_user_timeout(Duration::from_secs(10))
        .connect(tls.clone())
        .map_err(pg)?;
    let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).map_err(pg)?.get(0);
    let beats = format!("tokenizer_auth_beat_{pid}");
    client.batch_execute(&format!("LISTEN {SESSIONS_CHANNEL}; LISTEN {beats}")).map_err(pg)?;
    // Changes committed before the LISTEN held were not told.
    cache.forget_everything();
    *pause = FIRST_PAUSE;
    if !*told {
        tracing::info!("session cache: told of the database's changes");
        *told = true;
    }
    // Each beat asks which backend sends it: behind a pooler that hands
    // statements to any backend (pgbouncer's transaction mode), the
    // LISTEN may live on another one, which hears nothing; the listener
    // needs one backend of its own (docs/STORES.md).
    let send = format!("SELECT pg_backend_pid(), pg_notify('{beats}', $1)");
    let mut awaited: VecDeque<(u64, Instant, SystemTime)> = VecDeque::new();
    let (mut sent, mut next_beat) = (0u64, Instant::now());
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next_beat {
            sent += 1;
            let wall = SystemTime::now();
            let by: i32 = client.query_one(&send, &[&sent.to_string()]).map_err(pg)?.get(0);
            if by != pid {
                return Err(format!("the beats come from backend {by}, the LISTEN is on {pid}: a pooler between"));
            }
            awaited.push_back((sent, now, wall));
            if awaited.len() > BEATS_AWAITED {
                awaited.pop_front();
            }
            next_beat = now + beat;
        }
        let wait = next_beat.saturating_duration_since(Instant::now()).min(LONGEST_WAIT);
        let Some(told) = client.notifications().timeout_iter(wait).next().map_err(pg)? else {
            if client.is_closed() {
                return Err("the connection closed".to_owned());
            }
            continue;
        };
        if told.channel() == SESSIONS_CHANNEL {
            match MasterToken::parse(told.payload()) {
                Some(master) => cache.forget(&master),
                // `*`, or anything else: forget everything.
                None => cache.forget_everything(),
            }
        } else if told.channel() == beats
            && let Ok(beat) = told.payload().parse::<u64>()
        {
            while let Some(&(n, at, wall)) = awaited.front().filter(|(n, ..)| *n <= beat) {
                awaited.pop_front();
                if n == beat {
                    cache.fresh_as_of(at, wall);
                }
            }
        }
    }
    Ok(())
}
