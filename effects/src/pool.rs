//! Worker threads that carry out effects, so that no runtime thread that
//! serves sockets ever waits on a disk, a hash or a relay.
//!
//! Pools by what an effect waits on: store reads (SQLite, each worker with
//! its own connections), store writes (one writer per file), the hasher
//! (argon2id, CPU bound) and the mail relay (network). Separate pools keep
//! a flood of logins, whose hashing saturates the CPU, from queueing the
//! token checks' store reads behind it, and keep reads from waiting behind
//! a commit's `fsync`. Results go to a callback, in whatever order they
//! finish.
//!
//! Store workers take everything queued when they wake (up to a bound):
//! a reader answers it from one read transaction, a writer commits it as
//! one group with one `fsync` (see [`Store::write_group`]).
//!
//! [`EffectPool::submit`] is the one place that looks at which kind an
//! effect is: each queue carries its kind's payload, so a worker never
//! meets an effect it cannot run. One
//! writer per file is what makes groups form: batches queue while the
//! previous group syncs, and the next group takes them all.
//!
//! The store workers share one session cache ([`Cache`], unless
//! `Settings::session_cache` is 0), so most token checks read no file and
//! no database; a thread fills it at start, while the server already
//! serves. On PostgreSQL a listener thread keeps it told of the other
//! servers' changes (`store::listen`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, unbounded};
use tokenizer_auth_engine::{
    CredsBatch, Effect, EffectId, EffectResult, Lookup, Mail, PasscodesBatch, PasswordHash, Secret, WriteBatch,
};

use crate::loop_reads::LoopReads;
use crate::mail::Mailer;
use crate::password::PasswordHasher;
use crate::runner::{committed, hash, send, settle, snapshots, verify};
use crate::serve::ServeError;
use crate::settings::Settings;
use crate::store::{Cache, Commit, Listener, Store, StoreError};

/// Called with each effect's result, on a worker thread.
pub type OnResult = Arc<dyn Fn(EffectId, EffectResult) + Send + Sync>;

/// The work of the hashers.
enum PasswordJob {
    Verify { hash: PasswordHash, candidate: Secret },
    Hash { password: Secret },
}

/// The most lookups a reader answers from one read transaction.
const READ_GROUP: usize = 64;
/// The most batches a writer commits in one transaction.
const WRITE_GROUP: usize = 256;

/// Fills the session cache from the file, while the server already serves.
fn warm(store: &Store) {
    let started = std::time::Instant::now();
    match store.warm_cache() {
        Ok(sessions) => {
            tracing::info!(sessions, millis = started.elapsed().as_millis() as u64, "session cache filled");
        }
        // Nothing is lost: every session is still read from the file.
        Err(e) => tracing::warn!(error = %e, "session cache not filled"),
    }
}

/// The upper bounds of the commit group size buckets (batches per
/// transaction); the last bucket, past them, is `+Inf`. `WRITE_GROUP` caps
/// a group at 256.
pub const GROUP_SIZE_BOUNDS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/// What the workers count for the metrics, shared with whoever reads them
/// (the admin listener): relaxed atomic adds, once per mail or per commit
/// group, on the workers' threads, never on the event loop.
#[derive(Default)]
pub struct PoolStats {
    mail_sent: AtomicU64,
    mail_failed: AtomicU64,
    /// Commit groups by size (see [`GROUP_SIZE_BOUNDS`]); one writer per
    /// file adds to them.
    group_sizes: [AtomicU64; GROUP_SIZE_BOUNDS.len() + 1],
    group_batches: AtomicU64,
    cache: Option<Cache>,
}

/// [`PoolStats`] read at one instant.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct PoolCounts {
    /// Mail the relay (or the outbox) took.
    pub mail_sent: u64,
    /// Mail that could not be sent.
    pub mail_failed: u64,
    /// Commit groups by size, not cumulative (see [`GROUP_SIZE_BOUNDS`]).
    pub group_sizes: [u64; GROUP_SIZE_BOUNDS.len() + 1],
    /// Batches in all the groups.
    pub group_batches: u64,
    /// Session lookups answered by the cache, and read from the file
    /// (none without a cache).
    pub cache_hits: u64,
    /// See `cache_hits`.
    pub cache_misses: u64,
}

impl PoolStats {
    fn mail(&self, result: &EffectResult) {
        let counter = if matches!(result, EffectResult::Sent) { &self.mail_sent } else { &self.mail_failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn group(&self, batches: usize) {
        let size = batches as u64;
        let bucket = GROUP_SIZE_BOUNDS.iter().position(|&bound| size <= bound).unwrap_or(GROUP_SIZE_BOUNDS.len());
        self.group_sizes[bucket].fetch_add(1, Ordering::Relaxed);
        self.group_batches.fetch_add(size, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn counts(&self) -> PoolCounts {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (cache_hits, cache_misses) = self.cache.as_ref().map_or((0, 0), |c| c.lookups());
        PoolCounts {
            mail_sent: load(&self.mail_sent),
            mail_failed: load(&self.mail_failed),
            group_sizes: std::array::from_fn(|i| load(&self.group_sizes[i])),
            group_batches: load(&self.group_batches),
            cache_hits,
            cache_misses,
        }
    }
}

/// The effect workers.
pub struct EffectPool {
    reads: Sender<(EffectId, Lookup)>,
    creds_writes: Sender<(EffectId, CredsBatch)>,
    passcode_writes: Sender<(EffectId, PasscodesBatch)>,
    passwords: Sender<(EffectId, PasswordJob)>,
    mail: Sender<(EffectId, Mail)>,
    threads: Vec<JoinHandle<()>>,
    /// Keeps a PostgreSQL session cache true (see `store::listen`).
    listener: Option<Listener>,
    /// A handle on the store with the session cache, from which each event
    /// loop gets its own [`LoopReads`] (none without a cache).
    loop_store: Option<Mutex<Store>>,
    stats: Arc<PoolStats>,
}

/// Starts `count` threads that each take up to `group` queued jobs at a
/// time and hand them to `run`, which returns one result per job.
fn spawn<S: Send + 'static, J: Send + 'static>(
    name: &str,
    count: usize,
    group: usize,
    jobs: &Receiver<(EffectId, J)>,
    on_result: &OnResult,
    make: impl Fn() -> S,
    run: impl Fn(&mut S, &[&J]) -> Vec<EffectResult> + Send + Clone + 'static,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..count.max(1))
        .map(|i| {
            let (jobs, on_result, run, mut state) = (jobs.clone(), on_result.clone(), run.clone(), make());
            std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || {
                let mut taken: Vec<(EffectId, J)> = Vec::with_capacity(group);
                while let Ok(first) = jobs.recv() {
                    taken.push(first);
                    taken.extend(jobs.try_iter().take(group - 1));
                    let work: Vec<&J> = taken.iter().map(|(_, j)| j).collect();
                    let mut results = run(&mut state, &work).into_iter();
                    for (id, _) in taken.drain(..) {
                        on_result(id, results.next().unwrap_or(EffectResult::Failed));
                    }
                }
            })
        })
        .collect()
}

/// A store worker's connections; `None` if they could not be opened, and
/// then each of its effects fails (retryable for the client).
type StoreConn = Option<Store>;

/// How a writer commits a group of batches of one kind, in one
/// transaction (`Store::write_creds_group`, `write_passcodes_group`).
type CommitGroup<B> = fn(&mut Store, &[&B]) -> Vec<Result<Commit, StoreError>>;

/// A writer's work on each group it takes: count the group, commit it with
/// `commit` (one transaction), settle each batch.
fn writer<B: 'static>(
    stats: &Arc<PoolStats>,
    commit: CommitGroup<B>,
) -> impl Fn(&mut StoreConn, &[&B]) -> Vec<EffectResult> + Send + Clone + 'static {
    let stats = Arc::clone(stats);
    move |s: &mut StoreConn, batches: &[&B]| match s {
        Some(store) => {
            stats.group(batches.len());
            commit(store, batches).into_iter().map(|r| settle(r.map(committed))).collect()
        }
        None => unavailable(batches.len()),
    }
}

/// A store worker's answer when it has no connection.
fn unavailable(count: usize) -> Vec<EffectResult> {
    vec![EffectResult::Failed; count]
}

impl EffectPool {
    /// Starts the workers. Each store worker has its own connections to
    /// the files, which are opened and migrated once here first (so a bad
    /// data folder fails now).
    pub fn start(settings: &Settings, hasher: &PasswordHasher, on_result: OnResult) -> Result<EffectPool, ServeError> {
        // One cache for every store connection of this process; its rules
        // are in `store::cache`.
        let mut store = Store::open(&settings.store())?;
        store.claim_key(&settings.engine.server_key)?;
        let cache = store.new_cache(settings.session_cache, settings.revocation_delay);
        let store = match &cache {
            None => store,
            Some(cache) => store.with_cache(cache),
        };
        let listener = store.listen().map_err(ServeError::os("cannot start the store's listener"))?;
        let loop_store = match &cache {
            Some(_) => Some(Mutex::new(store.for_event_loop()?)),
            None => None,
        };
        let stats = Arc::new(PoolStats { cache, ..PoolStats::default() });
        let mailer = Mailer::new(&settings.mail)?;
        let (reads, reads_rx) = unbounded();
        let (creds_writes, creds_rx) = unbounded();
        let (passcode_writes, passcodes_rx) = unbounded();
        let (passwords, passwords_rx) = unbounded();
        let (mail, mail_rx) = unbounded();
        let io = ServeError::os("cannot start a worker");
        let open = || store.attach().ok();
        let open_writer = || store.for_writer().ok();
        let mut threads = Vec::new();
        let (workers, on) = (&settings.workers, &on_result);
        threads.extend(
            spawn("store-read", workers.store, READ_GROUP, &reads_rx, on, open, |s: &mut StoreConn, lookups| match s {
                Some(store) => snapshots(store.read_many(lookups)),
                None => unavailable(lookups.len()),
            })
            .map_err(io)?,
        );
        threads.extend(
            spawn(
                "store-write-creds",
                1,
                WRITE_GROUP,
                &creds_rx,
                on,
                open_writer,
                writer(&stats, Store::write_creds_group),
            )
            .map_err(io)?,
        );
        threads.extend(
            spawn(
                "store-write-passcodes",
                1,
                WRITE_GROUP,
                &passcodes_rx,
                on,
                open_writer,
                writer(&stats, Store::write_passcodes_group),
            )
            .map_err(io)?,
        );
        // The first store's connections go on to fill the cache.
        if stats.cache.is_some() {
            threads
                .push(std::thread::Builder::new().name("store-warm".into()).spawn(move || warm(&store)).map_err(io)?);
        }
        threads.extend(
            spawn(
                "hash",
                workers.hash,
                1,
                &passwords_rx,
                on,
                || hasher.clone(),
                |h: &mut PasswordHasher, jobs| {
                    jobs.iter()
                        .map(|job| match job {
                            PasswordJob::Verify { hash: stored, candidate } => verify(h, stored, candidate),
                            PasswordJob::Hash { password } => hash(h, password),
                        })
                        .collect()
                },
            )
            .map_err(io)?,
        );
        threads.extend(
            spawn("mail", workers.mail, 1, &mail_rx, on, || mailer.clone(), {
                let stats = Arc::clone(&stats);
                move |m: &mut Mailer, mails| {
                    mails
                        .iter()
                        .map(|mail| {
                            let result = send(m, mail);
                            stats.mail(&result);
                            result
                        })
                        .collect()
                }
            })
            .map_err(io)?,
        );
        Ok(EffectPool { reads, creds_writes, passcode_writes, passwords, mail, threads, listener, loop_store, stats })
    }

    /// Queues an effect on the workers that carry out its kind.
    pub fn submit(&self, id: EffectId, effect: Effect) {
        // The workers live as long as the pool; a send can only fail after
        // a worker panicked, and then the effect is lost with it.
        let sent = match effect {
            Effect::Read(lookup) => self.reads.send((id, lookup)).is_ok(),
            Effect::Write(WriteBatch::Creds(batch)) => self.creds_writes.send((id, batch)).is_ok(),
            Effect::Write(WriteBatch::Passcodes(batch)) => self.passcode_writes.send((id, batch)).is_ok(),
            Effect::VerifyPassword { hash, candidate } => {
                self.passwords.send((id, PasswordJob::Verify { hash, candidate })).is_ok()
            }
            Effect::HashPassword { password } => self.passwords.send((id, PasswordJob::Hash { password })).is_ok(),
            Effect::SendMail(mail) => self.mail.send((id, mail)).is_ok(),
        };
        if !sent {
            tracing::error!(?id, "effect worker gone");
        }
    }

    /// Token checks for an event loop to answer from the session cache on
    /// its own thread (see `loop_reads`); `None` without a cache, or if the
    /// store gave no handle (then every read goes to the readers).
    pub fn loop_reads(&self) -> Option<LoopReads> {
        let template = self.loop_store.as_ref()?.lock().ok()?;
        match template.for_event_loop() {
            Ok(store) => Some(LoopReads::new(store)),
            Err(e) => {
                tracing::warn!(error = %e, "token checks go to the store readers: no handle for the event loop");
                None
            }
        }
    }

    /// What the workers count, to read at any time from any thread.
    pub fn stats(&self) -> Arc<PoolStats> {
        Arc::clone(&self.stats)
    }

    /// Lets the queued effects finish, then stops the workers.
    pub fn shutdown(self) {
        let EffectPool { reads, creds_writes, passcode_writes, passwords, mail, threads, listener, .. } = self;
        drop((reads, creds_writes, passcode_writes, passwords, mail));
        for thread in threads {
            let _ = thread.join();
        }
        if let Some(listener) = listener {
            listener.stop();
        }
    }
}
