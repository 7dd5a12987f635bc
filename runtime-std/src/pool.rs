//! Worker threads that carry out effects, so that no runtime thread that
//! serves sockets ever waits on a disk, a hash or a relay.
//!
//! Three pools, by what an effect waits on: the store (SQLite, each worker
//! with its own connections), the hasher (argon2id, CPU bound) and the mail
//! relay (network). Separate pools keep a flood of logins, whose hashing
//! saturates the CPU, from queueing the token checks' store reads behind
//! it. Results go to a callback, in whatever order they finish.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, unbounded};
use tokenizer_auth_engine::{Effect, EffectId, EffectResult};

use crate::executor::{run_hash, run_mail, run_store};
use crate::mail::Mailer;
use crate::password::Hasher;
use crate::settings::Settings;
use crate::store::{SqliteStore, StoreError};

/// Called with each effect's result, on a worker thread.
pub type Done = Arc<dyn Fn(EffectId, EffectResult) + Send + Sync>;

type Job = (EffectId, Effect);

/// The effect workers.
pub struct EffectPool {
    store: Sender<Job>,
    hash: Sender<Job>,
    mail: Sender<Job>,
    threads: Vec<JoinHandle<()>>,
}

fn spawn<S: Send + 'static>(
    name: &str,
    count: usize,
    jobs: &Receiver<Job>,
    done: &Done,
    make: impl Fn() -> S,
    run: impl Fn(&mut S, &Effect) -> EffectResult + Send + Clone + 'static,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..count.max(1))
        .map(|i| {
            let (jobs, done, run, mut state) = (jobs.clone(), done.clone(), run.clone(), make());
            std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || {
                for (id, effect) in jobs {
                    done(id, run(&mut state, &effect));
                }
            })
        })
        .collect()
}

impl EffectPool {
    /// Starts the workers. Each store worker opens its own connections to
    /// the files (opened once here first, so a bad data folder fails now).
    pub fn start(settings: &Settings, hasher: &Hasher, done: Done) -> Result<EffectPool, StoreError> {
        SqliteStore::open(&settings.data_dir)?;
        let mailer = Mailer::new(&settings.mail).map_err(|e| StoreError::new(e.to_string()))?;
        let (store_tx, store_rx) = unbounded();
        let (hash_tx, hash_rx) = unbounded();
        let (mail_tx, mail_rx) = unbounded();
        let dir = settings.data_dir.clone();
        let io = |e: std::io::Error| StoreError::new(format!("cannot start a worker: {e}"));
        let mut threads = spawn(
            "store",
            settings.workers.store,
            &store_rx,
            &done,
            || SqliteStore::open(&dir).ok(),
            |store: &mut Option<SqliteStore>, effect: &Effect| {
                store.as_mut().map_or(EffectResult::Failed, |store| run_store(store, effect))
            },
        )
        .map_err(io)?;
        threads.extend(
            spawn(
                "hash",
                settings.workers.hash,
                &hash_rx,
                &done,
                || hasher.clone(),
                |h: &mut Hasher, e: &Effect| run_hash(h, e),
            )
            .map_err(io)?,
        );
        threads.extend(
            spawn(
                "mail",
                settings.workers.mail,
                &mail_rx,
                &done,
                || mailer.clone(),
                |m: &mut Mailer, e: &Effect| run_mail(m, e),
            )
            .map_err(io)?,
        );
        Ok(EffectPool { store: store_tx, hash: hash_tx, mail: mail_tx, threads })
    }

    /// Queues an effect on the pool that carries out its kind.
    pub fn submit(&self, id: EffectId, effect: Effect) {
        let queue = match effect {
            Effect::Read(_) | Effect::Write(_) => &self.store,
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
        let EffectPool { store, hash, mail, threads } = self;
        drop((store, hash, mail));
        for thread in threads {
            let _ = thread.join();
        }
    }
}
