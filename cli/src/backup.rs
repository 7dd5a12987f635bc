//! `backup FILE`: the data folder's two databases, each copied online as
//! one committed instant saw it (`effects::store::snapshot`), and its
//! server key, in one tar archive (docs/OPERATIONS.md, "Backup and
//! restore").
//!
//! The archive is written beside FILE under a temporary name, synced, and
//! only then given its name, which it never takes from an existing file: a
//! backup is whole or absent. It holds what the data folder holds (password
//! hashes, sessions, the key), so it is made mode 0600, its members carry
//! the owner of the files they copy, and taking it is in the audit trail.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use tokenizer_auth_effects::server_key::key_path;
use tokenizer_auth_effects::store::snapshot;

use super::Failure;
use super::admin::{Change, record};
use super::config::Configuration;

/// The mode of every file in the archive.
const MODE: u32 = 0o600;

pub(super) fn run(config: &Configuration, file: &Path) -> Result<(), Failure> {
    if file.exists() {
        return Err(Failure::Usage(format!("{} exists: a backup never replaces a file", file.display())));
    }
    let data_dir = config.data_dir();
    let folder = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let scratch = tempfile::Builder::new().prefix(".tokenizer-auth-backup").tempdir_in(folder)?;
    let mut members = snapshot(data_dir, scratch.path())
        .map_err(|e| Failure::Other(format!("data folder {}: {e}", data_dir.display())))?;
    let key = key_path(data_dir);
    if key.exists() {
        members.push(key);
    }

    let mut archive = tempfile::Builder::new().prefix(".tokenizer-auth-backup").tempfile_in(folder)?;
    let mut tar = tar::Builder::new(archive.as_file_mut());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut names = Vec::new();
    for path in &members {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let mut source = File::open(path)?;
        let mut header = tar::Header::new_gnu();
        header.set_size(source.metadata()?.len());
        header.set_mode(MODE);
        // The owner of the file it copies (the copy is this command's): a
        // restore by root gives the files back to the service's user.
        #[cfg(unix)]
        if let Ok(original) = std::fs::metadata(data_dir.join(&name)) {
            use std::os::unix::fs::MetadataExt;
            header.set_uid(u64::from(original.uid()));
            header.set_gid(u64::from(original.gid()));
        }
        header.set_mtime(now);
        header.set_cksum();
        tar.append_data(&mut header, &name, &mut source)?;
        names.push(name);
    }
    tar.finish()?;
    drop(tar);
    archive.as_file().sync_all()?;
    let size = archive.as_file().metadata()?.len();
    archive.persist_noclobber(file).map_err(|e| Failure::Other(format!("{}: {}", file.display(), e.error)))?;
    if let Ok(dir) = File::open(folder) {
        // The new name is on the disk too.
        let _ = dir.sync_all();
    }
    // It holds every password hash and the key: the trail says who took it.
    let detail = Some(format!("{} ({size} bytes)", file.display()));
    record(config, Change { event: "backup_taken", email: None, ip: None, mac: None, detail })?;
    writeln!(std::io::stdout().lock(), "backed up {} into {} ({size} bytes)", names.join(", "), file.display())?;
    Ok(())
}
