//! `airlock audit …`: verify a data directory's audit chain offline (no server needed), and
//! read the trail through the API: a table, or every matching event as JSON lines.

use std::io::Write;
use std::path::PathBuf;

use airlock_api as api;
use anyhow::{Context, Result};
use clap::Subcommand;
use reqwest::Method;

use crate::Connection;
use crate::client::{Client, path_segment};
use crate::output::{print_audit_events, print_json};

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check a data directory's audit chain against its signed checkpoints, reading the
    /// database directly (the server may be running or not). Exits 0 if every event is in
    /// place; otherwise 1, naming the first bad index.
    Verify {
        #[arg(long, env = "AIRLOCK_DATA_DIR", default_value_os_t = crate::default_data_dir())]
        data_dir: PathBuf,
        /// The server's PostgreSQL database, if it keeps its state there.
        #[arg(long, env = "AIRLOCK_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// The checkpoint key's public half, from a copy kept elsewhere [default: the data
        /// directory's audit/checkpoint.pub].
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
    },
    /// Print every matching event as one JSON object per line, oldest first (auditors and
    /// admins).
    Export {
        #[command(flatten)]
        filters: Filters,
    },
    /// List matching events as a table, oldest first (auditors and admins).
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        filters: Filters,
    },
}

#[derive(clap::Args)]
pub struct Filters {
    /// Only this actor's events (a user id, `anonymous` or `system`).
    #[arg(long)]
    actor: Option<String>,
    /// Only this action's, e.g. access.approve.
    #[arg(long)]
    action: Option<String>,
    /// Only events about this target (an environment, access request, user or token id).
    #[arg(long)]
    target: Option<String>,
    /// Only events at or after this time (RFC 3339, e.g. 2030-01-31T09:00:00Z).
    #[arg(long)]
    since: Option<String>,
    /// Only events before this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
}

impl Filters {
    fn query(&self) -> String {
        let mut query = String::from("/v1/audit?limit=200");
        for (name, value) in [
            ("actor", &self.actor),
            ("action", &self.action),
            ("target", &self.target),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if let Some(value) = value {
                query.push_str(&format!("&{name}={}", path_segment(value)));
            }
        }
        query
    }
}

pub async fn audit(connection: &Connection, command: AuditCommand) -> Result<i32> {
    match command {
        AuditCommand::Verify {
            data_dir,
            database_url,
            public_key,
        } => verify(connection, data_dir, database_url, public_key).await,
        AuditCommand::Export { filters } => {
            let client = Client::new(connection)?;
            let base = filters.query();
            let mut cursor: Option<String> = None;
            let stdout = std::io::stdout();
            loop {
                let mut path = base.clone();
                if let Some(cursor) = &cursor {
                    path.push_str(&format!("&cursor={}", path_segment(cursor)));
                }
                let page: api::AuditEventList =
                    client.send(Method::GET, &path, None::<&()>, &[]).await?;
                // Each page out as it comes: an export of millions never sits in memory.
                let mut out = stdout.lock();
                for event in &page.items {
                    serde_json::to_writer(&mut out, event)?;
                    out.write_all(b"\n")?;
                }
                out.flush().context("writing the export")?;
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => return Ok(0),
                }
            }
        }
        AuditCommand::List { filters } => {
            let client = Client::new(connection)?;
            let items = client
                .all_pages(&filters.query(), |page: api::AuditEventList| {
                    (page.items, page.next_cursor)
                })
                .await?;
            if connection.json {
                print_json(&items);
            } else {
                print_audit_events(&items);
            }
            Ok(0)
        }
    }
}

async fn verify(
    connection: &Connection,
    data_dir: PathBuf,
    database_url: Option<String>,
    public_key: Option<PathBuf>,
) -> Result<i32> {
    let report = airlock_server::checkpoints::verify(
        &data_dir,
        database_url.as_deref(),
        public_key.as_deref(),
    )
    .await
    .with_context(|| format!("verifying the audit chain of {}", data_dir.display()))?;
    if report.torn_line {
        eprintln!("note: ignored a checkpoint line a crash left unfinished");
    }
    match &report.outcome {
        Ok(verified) => {
            if connection.json {
                print_json(&serde_json::json!({
                    "verified": true,
                    "events": verified.head.index,
                    "head_hash": airlock_core::audit::to_hex(&verified.head.hash),
                    "checkpoints": verified.checkpoints,
                    "last_checkpoint_index": verified.last_checkpoint.as_ref().map(|last| last.index),
                    "uncovered_events": verified.uncovered(),
                    "public_key": report.public_key,
                    "seconds": report.took.as_secs_f64(),
                }));
            } else {
                println!(
                    "audit chain verified: {} events, {} checkpoint(s) signed by {}",
                    verified.head.index, verified.checkpoints, report.public_key
                );
                if let Some(last) = &verified.last_checkpoint {
                    println!(
                        "the last checkpoint, signed {}, covers events 1 to {}",
                        last.time.to_rfc3339(),
                        last.index
                    );
                }
                if verified.uncovered() > 0 {
                    println!(
                        "{} events after it are consistent but not yet signed (the server signs every 2 s and at shutdown)",
                        verified.uncovered()
                    );
                }
                println!("checked in {:.3} s", report.took.as_secs_f64());
            }
            Ok(0)
        }
        Err(failure) => {
            if connection.json {
                print_json(&serde_json::json!({
                    "verified": false,
                    "first_bad_index": failure.index,
                    "reason": failure.reason,
                }));
            } else {
                println!("audit chain FAILED verification: {failure}");
            }
            Ok(1)
        }
    }
}
