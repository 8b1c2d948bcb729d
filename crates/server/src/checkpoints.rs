//! The audit chain's signed checkpoints, kept outside the database in the data directory
//! (`audit/`): the Ed25519 key made at first start (`checkpoint.key`, mode 0600, and
//! `checkpoint.pub` beside it), and `checkpoints.jsonl`, one signed checkpoint per line,
//! appended and synced to disk. Also the offline verification of a data directory's chain
//! against them (`airlock audit verify`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use airlock_core::audit::{
    ChainHead, ChainVerifier, Checkpoint, Failure, Verified, from_hex, generate_key,
    parse_checkpoints, to_hex,
};
use airlock_core::ports::{AuditQuery, Store};
use airlock_store::{PostgresStore, SqliteStore};
use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use ed25519_dalek::{SigningKey, VerifyingKey};

pub const AUDIT_DIR: &str = "audit";
pub const KEY_FILE: &str = "checkpoint.key";
pub const PUBLIC_KEY_FILE: &str = "checkpoint.pub";
pub const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";

/// Events read per query while verifying.
const VERIFY_PAGE: u32 = 5000;

/// Signs checkpoints of the chain and appends them to the checkpoint file.
pub struct Checkpointer {
    key: SigningKey,
    path: PathBuf,
    /// The head of the last checkpoint written.
    last: Mutex<Option<ChainHead>>,
}

impl Checkpointer {
    /// Opens `data_dir/audit`, making the key at first start, and cuts a line a crash left
    /// half-written from the end of the checkpoint file.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let dir = data_dir.join(AUDIT_DIR);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("securing {}", dir.display()))?;
        let key = load_or_make_key(&dir)?;
        let path = dir.join(CHECKPOINTS_FILE);
        let last = cut_torn_line(&path)?;
        Ok(Self {
            key,
            path,
            last: Mutex::new(last),
        })
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Writes a checkpoint of `head` unless the last one was of it already; whether it wrote.
    pub fn checkpoint(&self, head: ChainHead, time: DateTime<Utc>) -> Result<bool> {
        let mut last = self.last.lock().expect("checkpoint lock");
        if *last == Some(head) {
            return Ok(false);
        }
        if let Some(previous) = *last
            && previous.index > head.index
        {
            tracing::error!(
                checkpointed = previous.index,
                chain = head.index,
                "the audit chain ends before its last checkpoint: events were removed from the \
                 database (or it was restored from a backup); `airlock audit verify` will fail"
            );
        }
        let line = Checkpoint::sign(&self.key, head, time).to_line() + "\n";
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        file.write_all(line.as_bytes())
            .and_then(|()| file.sync_data())
            .with_context(|| format!("writing {}", self.path.display()))?;
        *last = Some(head);
        Ok(true)
    }
}

/// The signing key in `dir`, or a new one (and its public half beside it).
fn load_or_make_key(dir: &Path) -> Result<SigningKey> {
    let path = dir.join(KEY_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let bytes = from_hex::<32>(text.trim())
                .with_context(|| format!("{} is not a checkpoint key", path.display()))?;
            Ok(SigningKey::from_bytes(&bytes))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let key = generate_key();
            write_synced(&path, &to_hex(key.as_bytes()), 0o600)?;
            write_synced(
                &dir.join(PUBLIC_KEY_FILE),
                &to_hex(key.verifying_key().as_bytes()),
                0o644,
            )?;
            fs::File::open(dir)
                .and_then(|dir| dir.sync_all())
                .with_context(|| format!("syncing {}", dir.display()))?;
            tracing::info!(
                public_key = %to_hex(key.verifying_key().as_bytes()),
                "made the audit checkpoint key; keep a copy of its public half elsewhere"
            );
            Ok(key)
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_synced(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{text}")
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Cuts an unfinished last line (a crash in mid-write) so the next line starts clean; the
/// head of the last complete checkpoint.
fn cut_torn_line(path: &Path) -> Result<Option<ChainHead>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let complete = text.rfind('\n').map_or(0, |end| end + 1);
    if complete < text.len() {
        tracing::warn!(path = %path.display(), "cutting a checkpoint line a crash left unfinished");
        let file = fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.set_len(complete as u64)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cutting {}", path.display()))?;
    }
    let last = text[..complete]
        .lines()
        .last()
        .and_then(|line| Checkpoint::parse_line(line).ok())
        .map(|checkpoint| ChainHead {
            index: checkpoint.index,
            hash: checkpoint.hash,
        });
    Ok(last)
}

/// What `airlock audit verify` found.
#[derive(Debug)]
pub struct VerifyReport {
    /// The chain and checkpoints agree; or the first bad index and why.
    pub outcome: Result<Verified, Failure>,
    /// A half-written last checkpoint line (a crash) was ignored.
    pub torn_line: bool,
    pub public_key: String,
    pub took: Duration,
}

/// Verifies the audit chain of a data directory (its SQLite database, or the PostgreSQL one
/// at `database_url`) against the checkpoints there, reading only. The public key is
/// `audit/checkpoint.pub` unless given (a copy kept elsewhere is stronger: whoever can
/// replace the files can replace that one too). An error means it could not be checked.
pub async fn verify(
    data_dir: &Path,
    database_url: Option<&str>,
    public_key: Option<&Path>,
) -> Result<VerifyReport> {
    let started = Instant::now();
    let dir = data_dir.join(AUDIT_DIR);
    let key_path = public_key
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join(PUBLIC_KEY_FILE));
    let key_text = fs::read_to_string(&key_path)
        .with_context(|| format!("reading the public key {}", key_path.display()))?;
    let key = from_hex::<32>(key_text.trim())
        .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok())
        .with_context(|| format!("{} is not an Ed25519 public key", key_path.display()))?;
    let checkpoints_path = dir.join(CHECKPOINTS_FILE);
    let text = match fs::read_to_string(&checkpoints_path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => {
            return Err(error).with_context(|| format!("reading {}", checkpoints_path.display()));
        }
    };
    let store: Box<dyn Store> = match database_url {
        Some(url) => Box::new(
            PostgresStore::connect_read_only(url)
                .await
                .context("opening the PostgreSQL database")?,
        ),
        None => {
            let path = data_dir.join("airlock.db");
            if !path.exists() {
                bail!("there is no database at {}", path.display());
            }
            Box::new(
                SqliteStore::open_read_only(&path)
                    .await
                    .with_context(|| format!("opening {}", path.display()))?,
            )
        }
    };
    let mut torn_line = false;
    let outcome = async {
        let (checkpoints, torn) = parse_checkpoints(&text)?;
        torn_line = torn;
        let mut verifier = ChainVerifier::new(key, checkpoints)?;
        let mut after = 0;
        loop {
            let page = store
                .query_audit(&AuditQuery {
                    after,
                    limit: VERIFY_PAGE,
                    ..Default::default()
                })
                .await
                .map_err(|error| Failure {
                    index: after + 1,
                    reason: format!("reading the events after {after}: {error}"),
                })?;
            let Some(last) = page.last() else { break };
            after = last.index;
            for stored in &page {
                verifier.push(stored)?;
            }
        }
        let verified = verifier.finish()?;
        let unchained = store
            .count_unchained_audit()
            .await
            .map_err(|error| Failure {
                index: verified.head.index + 1,
                reason: format!("counting events outside the chain: {error}"),
            })?;
        if unchained > 0 {
            return Err(Failure {
                index: verified.head.index + 1,
                reason: format!(
                    "{unchained} events are stored outside the chain (without an index): \
                     inserted by hand, or written by an older airlock and not yet chained by a \
                     server start"
                ),
            });
        }
        Ok(verified)
    }
    .await;
    Ok(VerifyReport {
        outcome,
        torn_line,
        public_key: to_hex(key.as_bytes()),
        took: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_and_a_torn_line_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let first = Checkpointer::open(dir.path()).unwrap();
        let key_path = dir.path().join(AUDIT_DIR).join(KEY_FILE);
        let mode = fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let head = ChainHead::genesis().next(&airlock_core::model::AuditEvent {
            time: Utc::now(),
            request_id: String::new(),
            actor: "system".into(),
            action: "user.bootstrap".into(),
            target: None,
            outcome: "ok".into(),
            source: None,
            detail: None,
        });
        assert!(first.checkpoint(head, Utc::now()).unwrap());
        // Not again while the chain stays where it is.
        assert!(!first.checkpoint(head, Utc::now()).unwrap());
        let path = dir.path().join(AUDIT_DIR).join(CHECKPOINTS_FILE);
        let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"index\":2,\"ha").unwrap();
        drop(file);
        let again = Checkpointer::open(dir.path()).unwrap();
        assert_eq!(again.public_key(), first.public_key());
        assert_eq!(*again.last.lock().unwrap(), Some(head));
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n') && text.lines().count() == 1, "{text}");
    }
}
