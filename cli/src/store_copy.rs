//! `store copy --from DIR --to URL`: a data folder's records into a
//! PostgreSQL database (docs/STORES.md, "Moving to PostgreSQL";
//! `effects::store::copy`), with a report a second run checks.

use std::io::Write;
use std::path::Path;

use tokenizer_auth_effects::store::{PgStore, SqliteStore, redact};

use super::Failure;
use super::admin::{Change, record};
use super::config::Configuration;

pub(super) fn run(config: &Configuration, from: &Path, to: &str) -> Result<(), Failure> {
    if !(to.starts_with("postgres://") || to.starts_with("postgresql://")) {
        return Err(Failure::Usage(format!("--to {}: expected a postgres:// URL", redact(to))));
    }
    if !from.join("op_creds.db").is_file() {
        return Err(Failure::Usage(format!("--from {}: no op_creds.db there", from.display())));
    }
    // The key the passcode digests are keyed by: `server_key`, or the
    // folder's own; the database must have (or take) the same. A folder
    // copied without its key is refused rather than given a new one: its
    // passcodes and rotation records are keyed by the key it lost, and a
    // new key written into the source would hide that.
    let mut settings = config.settings();
    settings.data_dir = from.to_owned();
    let key_file = tokenizer_auth_effects::server_key::key_path(from);
    if settings.server_key.is_none() && !key_file.is_file() {
        return Err(Failure::Usage(format!(
            "--from {}: no {} there and no server_key given; copy the folder's key with it (or set server_key \
             to the key its servers ran with)",
            from.display(),
            key_file.display()
        )));
    }
    let key = settings.resolve_server_key().map_err(|e| Failure::Other(e.to_string()))?;
    let mut source = SqliteStore::open(from).map_err(|e| Failure::Other(format!("{}: {e}", from.display())))?;
    source.key_passcodes(&key)?;
    let records = source.export(chrono::Utc::now())?;
    let mut target = PgStore::open_with(to, settings.store_ca.as_deref(), 1)
        .map_err(|e| Failure::Other(format!("{}: {e}", redact(to))))?;
    target.claim_key(&key)?;
    let copied = target.import(&records)?;

    let mut out = std::io::stdout().lock();
    for (what, (new, there)) in [
        ("accounts", copied.users),
        ("sessions", copied.sessions),
        ("rotation records", copied.rotations),
        ("live passcodes", copied.passcodes),
        ("counters", copied.counters),
    ] {
        writeln!(out, "{what}: {new} copied, {there} already there")?;
    }
    let detail = Some(format!("{} to {}", from.display(), redact(to)));
    record(config, Change { event: "store_copied", email: None, ip: None, mac: None, detail })?;
    if copied.differing > 0 {
        return Err(Failure::Other(format!(
            "{} records in the database differ from the folder's (changed since an earlier copy?)",
            copied.differing
        )));
    }
    writeln!(out, "the database holds every record of {} as it is there", from.display())?;
    Ok(())
}
