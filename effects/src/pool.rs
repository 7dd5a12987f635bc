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
//! one group with one `fsync` (see [`SqliteStore::write_group`]). One
//! writer per file is what makes groups form: batches queue while the
//! previous group syncs, and the next group takes them all.
//!
//! The store workers share one [`SessionCache`] (unless
//! `Settings::session_cache` is 0), so most token checks read no file; a
//! thread fills it from the file at start, while the server already serves.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, unbounded};
use tokenizer_auth_engine::{Effect, EffectId, EffectResult, WriteBatch};

use crate::mail::Mailer;
use crate::password::PasswordHasher;
use crate::runner::{run_hash, run_mail, run_store_group};
use crate::serve::ServeError;
use crate::settings::Settings;
use crate::store::{SessionCache, SqliteStore};

/// Called with each effect's result, on a worker thread.
pub type OnResult = Arc<dyn Fn(EffectId, EffectResult) + Send + Sync>;

type Job = (EffectId, Effect);

/// The most lookups a reader answers from one read transaction.
const READ_GROUP: usize = 64;
/// The most batches a writer commits in one transaction.
const WRITE_GROUP: usize = 256;

/// Fills the session cache from the file, while the server already serves.
fn warm(store: &SqliteStore) {
    let started = std::time::Instant::now();
    match store.warm_cache() {
        Ok(sessions) => {
            tracing::info!(sessions, millis = started.elapsed().as_millis() as u64, "session cache filled");
        }
        // Nothing is lost: every session is still read from the file.
        Err(e) => tracing::warn!(error = %e, "session cache not filled"),
    }
}

/// A worker's `run` that takes its effects one at a time.
fn one_by_one<S>(run: fn(&S, &Effect) -> EffectResult) -> impl Fn(&mut S, &[&Effect]) -> Vec<EffectResult> + Clone {
    move |state: &mut S, effects: &[&Effect]| effects.iter().map(|e| run(state, e)).collect()
}

/// The effect workers.
pub struct EffectPool {
    reads: Sender<Job>,
    creds_writes: Sender<Job>,
    passcode_writes: Sender<Job>,
    hash: Sender<Job>,
    mail: Sender<Job>,
    threads: Vec<JoinHandle<()>>,
}

/// Starts `count` threads that each take up to `group` queued jobs at a
/// time and hand them to `run`, which returns one result per job.
fn spawn<S: Send + 'static>(
    name: &str,
    count: usize,
    group: usize,
    jobs: &Receiver<Job>,
    done: &OnResult,
    make: impl Fn() -> S,
    run: impl Fn(&mut S, &[&Effect]) -> Vec<EffectResult> + Send + Clone + 'static,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..count.max(1))
        .map(|i| {
            let (jobs, done, run, mut state) = (jobs.clone(), done.clone(), run.clone(), make());
            std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || {
                let mut taken: Vec<Job> = Vec::with_capacity(group);
                while let Ok(first) = jobs.recv() {
                    taken.push(first);
                    taken.extend(jobs.try_iter().take(group - 1));
                    let effects: Vec<&Effect> = taken.iter().map(|(_, e)| e).collect();
                    let mut results = run(&mut state, &effects).into_iter();
                    for (id, _) in taken.drain(..) {
                        done(id, results.next().unwrap_or(EffectResult::Failed));
                    }
                }
            })
        })
        .collect()
}

impl EffectPool {
    /// Starts the workers. Each store worker has its own connections to
    /// the files, which are opened and migrated once here first (so a bad
    /// data folder fails now).
    pub fn start(settings: &Settings, hasher: &PasswordHasher, done: OnResult) -> Result<EffectPool, ServeError> {
        // One cache for every store connection of this process; its rules
        // are in `store::cache`.
        let mut store = SqliteStore::open(&settings.data_dir)?;
        store.key_passcodes(&settings.engine.server_key)?;
        let store = match settings.session_cache {
            0 => store,
            bound => store.with_cache(Arc::new(SessionCache::new(bound))),
        };
        let mailer = Mailer::new(&settings.mail)?;
        let (reads, reads_rx) = unbounded();
        let (creds_writes, creds_rx) = unbounded();
        let (passcode_writes, passcodes_rx) = unbounded();
        let (hash, hash_rx) = unbounded();
        let (mail, mail_rx) = unbounded();
        let io = ServeError::os("cannot start a worker");
        let open = || store.attach().ok();
        let run_store = |store: &mut Option<SqliteStore>, effects: &[&Effect]| match store {
            Some(store) => run_store_group(store, effects),
            None => vec![EffectResult::Failed; effects.len()],
        };
        let mut threads = Vec::new();
        for (name, count, group, jobs) in [
            ("store-read", settings.workers.store, READ_GROUP, &reads_rx),
            ("store-write-creds", 1, WRITE_GROUP, &creds_rx),
            ("store-write-passcodes", 1, WRITE_GROUP, &passcodes_rx),
        ] {
            threads.extend(spawn(name, count, group, jobs, &done, open, run_store).map_err(io)?);
        }
        // The first store's connections go on to fill the cache.
        if settings.session_cache > 0 {
            threads
                .push(std::thread::Builder::new().name("store-warm".into()).spawn(move || warm(&store)).map_err(io)?);
        }
        threads.extend(
            spawn("hash", settings.workers.hash, 1, &hash_rx, &done, || hasher.clone(), one_by_one(run_hash))
                .map_err(io)?,
        );
        threads.extend(
            spawn("mail", settings.workers.mail, 1, &mail_rx, &done, || mailer.clone(), one_by_one(run_mail))
                .map_err(io)?,
        );
        Ok(EffectPool { reads, creds_writes, passcode_writes, hash, mail, threads })
    }

    /// Queues an effect on the pool that carries out its kind.
    pub fn submit(&self, id: EffectId, effect: Effect) {
        let queue = match &effect {
            Effect::Read(_) => &self.reads,
            Effect::Write(WriteBatch::Creds(_)) => &self.creds_writes,
            Effect::Write(WriteBatch::Passcodes(_)) => &self.passcode_writes,
            Effect::VerifyPassword { .. } | Effect::HashPassword { .. } => &self.hash,
            Effect::SendMail(_) => &self.mail,
        };
        // The workers live as long as the pool; a send can only fail after
        // a worker panicked, and then the effect is lost with it.
        if queue.send((id, effect)).is_err() {
            tracing::error!(?id, "effect worker gone");
        }
    }

    /// Lets the queued effects finish, then stops the workers.
    pub fn shutdown(self) {
        let EffectPool { reads, creds_writes, passcode_writes, hash, mail, threads } = self;
        drop((reads, creds_writes, passcode_writes, hash, mail));
        for thread in threads {
            let _ = thread.join();
        }
    }
}
