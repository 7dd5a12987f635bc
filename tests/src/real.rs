//! Worlds whose effects run against the real executors: SQLite files, an
//! argon2id hasher, an outbox folder.

use std::path::{Path, PathBuf};

use tokenizer_auth_effects::mail::{MailConfig, Mailer};
use tokenizer_auth_effects::password::PasswordHasher;
use tokenizer_auth_effects::runner::EffectRunner;
use tokenizer_auth_effects::store::SqliteStore;
use tokenizer_auth_engine::Config;
use tokenizer_auth_engine::testkit::World;

/// A world (seeded with `seed`) whose effects run against the real store,
/// `hasher`, and an outbox, all in `dir`.
pub fn world(dir: &Path, hasher: &PasswordHasher, config: Config, seed: u64) -> World {
    world_with_mail(dir, hasher, config, seed, &MailConfig::Outbox { dir: dir.join("outbox") })
}

/// [`world`], with mail sent as `mail` says (an SMTP relay, say).
pub fn world_with_mail(dir: &Path, hasher: &PasswordHasher, config: Config, seed: u64, mail: &MailConfig) -> World {
    let store = SqliteStore::open(dir).expect("open the store");
    let mailer = Mailer::new(mail).expect("set up the mailer");
    let mut runner = EffectRunner { store, hasher: hasher.clone(), mailer };
    let config = Config { dummy_password: hasher.dummy().clone(), ..config };
    let mut world = World::new(config, seed);
    world.set_runner(move |effect| runner.run(effect));
    world
}

/// The passcode in the newest outbox message to `email`.
pub fn outbox_passcode(dir: &Path, email: &str) -> Option<String> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir.join("outbox")).ok()?.filter_map(|e| Some(e.ok()?.path())).collect();
    files.sort();
    files.iter().rev().find_map(|f| {
        let text = std::fs::read_to_string(f).ok()?;
        text.contains(email).then(|| tokenizer_auth_engine::mail::find_passcode(&text).map(str::to_owned))?
    })
}
