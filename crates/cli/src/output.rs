//! How the CLI prints: aligned tables for people, JSON on request, and a spinner on a
//! terminal while waiting.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use airlock_api as api;
use chrono::{DateTime, Utc};
use serde::Serialize;

pub fn print_json(value: &impl Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("serializable")
    );
}

fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|title| title.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|title| title.to_string()).collect());
    for row in rows {
        line(row);
    }
}

pub fn print_environments(environments: &[api::Environment]) {
    let rows = environments
        .iter()
        .map(|environment| {
            vec![
                environment.id.clone(),
                environment.name.clone(),
                environment.state.clone(),
                environment.image.clone(),
                format!(
                    "{} MiB / {} CPU / {} pids / {} MiB disk",
                    environment.resources.memory_mib,
                    environment.resources.cpus,
                    environment.resources.pids,
                    environment.resources.disk_mib
                ),
                environment.network.clone(),
                time(environment.expires_at),
            ]
        })
        .collect();
    print_table(
        &[
            "ID", "NAME", "STATE", "IMAGE", "LIMITS", "NETWORK", "EXPIRES",
        ],
        rows,
    );
}

pub fn print_tokens(tokens: &[api::Token]) {
    let rows = tokens
        .iter()
        .map(|token| {
            vec![
                token.id.clone(),
                token.user_id.clone(),
                token.scopes.join(","),
                token.last_used_at.map_or_else(|| "never".into(), time),
                token.expires_at.map_or_else(|| "never".into(), time),
                token.revoked_at.map_or_else(|| "-".into(), time),
                token.rate_limit.clone().unwrap_or_else(|| "-".into()),
                token.description.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "USER",
            "SCOPES",
            "LAST USED",
            "EXPIRES",
            "REVOKED",
            "RATE LIMIT",
            "DESCRIPTION",
        ],
        rows,
    );
}

pub fn print_users(users: &[api::User]) {
    let rows = users
        .iter()
        .map(|user| {
            vec![
                user.id.clone(),
                user.name.clone(),
                user.roles.join(","),
                list_or_dash(&user.teams),
                time(user.created_at),
            ]
        })
        .collect();
    print_table(&["ID", "NAME", "ROLES", "TEAMS", "CREATED"], rows);
}

pub fn print_teams(teams: &[api::Team]) {
    let unlimited = |limit: Option<String>| limit.unwrap_or_else(|| "unlimited".into());
    let rows = teams
        .iter()
        .map(|team| {
            vec![
                team.name.clone(),
                unlimited(team.quota.max_environments.map(|n| n.to_string())),
                unlimited(team.quota.max_memory_mib.map(|mib| format!("{mib} MiB"))),
                unlimited(team.quota.max_cpus.map(|cpus| cpus.to_string())),
                time(team.created_at),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "MAX ENVIRONMENTS",
            "MAX MEMORY",
            "MAX CPUS",
            "CREATED",
        ],
        rows,
    );
}

pub fn print_profiles(profiles: &[api::AccessProfile]) {
    let rows = profiles
        .iter()
        .map(|profile| {
            vec![
                profile.name.clone(),
                seconds(profile.max_duration_seconds),
                profile.approvals_required.to_string(),
                profile.network.clone(),
                list_or_dash(&profile.secrets),
                profile.requesters.join(","),
                profile.approvers.join(","),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "MAX DURATION",
            "APPROVALS",
            "NETWORK",
            "SECRETS",
            "REQUESTERS",
            "APPROVERS",
        ],
        rows,
    );
}

pub fn print_profile(profile: &api::AccessProfile) {
    let mut fields = vec![("name", profile.name.clone())];
    if let Some(description) = &profile.description {
        fields.push(("description", description.clone()));
    }
    fields.extend([
        ("max duration", seconds(profile.max_duration_seconds)),
        ("approvals", profile.approvals_required.to_string()),
        ("network", profile.network.clone()),
        ("secrets", list_or_dash(&profile.secrets)),
        ("requesters", profile.requesters.join(", ")),
        ("approvers", profile.approvers.join(", ")),
        ("created", time(profile.created_at)),
    ]);
    print_fields(&fields);
}

/// The longest reason shown in a list; `access get` shows all of it.
const REASON_WIDTH: usize = 40;

pub fn print_access_requests(requests: &[api::AccessRequest]) {
    let rows = requests
        .iter()
        .map(|request| {
            vec![
                request.id.clone(),
                request.profile.clone(),
                request.requester.clone(),
                request.state.clone(),
                deadline(request),
                truncate(&request.reason, REASON_WIDTH),
            ]
        })
        .collect();
    print_table(
        &["ID", "PROFILE", "REQUESTER", "STATE", "UNTIL", "REASON"],
        rows,
    );
}

pub fn print_access_request(request: &api::AccessRequest) {
    let approvals = request
        .approvals
        .iter()
        .map(|approval| format!("{} at {}", approval.approver, time(approval.at)))
        .collect::<Vec<_>>();
    let mut fields = vec![
        ("id", request.id.clone()),
        ("profile", request.profile.clone()),
        ("requester", request.requester.clone()),
        ("reason", request.reason.clone()),
        ("state", request.state.clone()),
        ("duration", seconds(request.duration_seconds)),
        (
            "approvals",
            format!(
                "{} of {}{}",
                request.approvals.len(),
                request.approvals_required,
                if approvals.is_empty() {
                    String::new()
                } else {
                    format!(": {}", approvals.join(", "))
                }
            ),
        ),
        ("requested", time(request.created_at)),
    ];
    if request.state == "pending" {
        fields.push(("decide by", time(request.decide_by)));
    }
    if let Some(granted_at) = request.granted_at {
        fields.push(("granted", time(granted_at)));
    }
    if let Some(expires_at) = request.expires_at {
        fields.push(("expires", time(expires_at)));
    }
    if let Some(ended_at) = request.ended_at {
        let by = request
            .ended_by
            .as_ref()
            .map(|by| format!(" by {by}"))
            .unwrap_or_default();
        fields.push(("ended", format!("{}{by}", time(ended_at))));
    }
    if let Some(reason) = &request.end_reason {
        fields.push(("end reason", reason.clone()));
    }
    print_fields(&fields);
}

/// What the next moment that matters is for a request, by its state.
fn deadline(request: &api::AccessRequest) -> String {
    match (request.state.as_str(), request.expires_at, request.ended_at) {
        ("pending", _, _) => format!("decide by {}", time(request.decide_by)),
        (_, _, Some(ended_at)) => format!("ended {}", time(ended_at)),
        (_, Some(expires_at), None) => format!("expires {}", time(expires_at)),
        _ => "-".into(),
    }
}

/// `name  value` lines with the values aligned, for one thing shown in full.
fn print_fields(fields: &[(&str, String)]) {
    let width = fields.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    for (name, value) in fields {
        println!("{name:<width$}  {value}");
    }
}

/// How every time is shown: UTC to the second.
pub fn print_audit_events(events: &[api::AuditEvent]) {
    let rows = events
        .iter()
        .map(|event| {
            vec![
                event.index.to_string(),
                time(event.time),
                event.actor.clone(),
                event.action.clone(),
                event.target.clone().unwrap_or_else(|| "-".into()),
                event.outcome.clone(),
                event.source.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print_table(
        &[
            "INDEX", "TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME", "SOURCE",
        ],
        rows,
    );
}

pub fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// A number of seconds as people say it: `90s`, `30m`, `2h`, `1d`, `1h30m`.
pub fn seconds(total: u64) -> String {
    if total == 0 {
        return "0s".into();
    }
    let units = [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)];
    let mut left = total;
    let mut text = String::new();
    for (unit, size) in units {
        if left >= size {
            text.push_str(&format!("{}{unit}", left / size));
            left %= size;
        }
    }
    text
}

fn truncate(text: &str, width: usize) -> String {
    let one_line = text.replace(['\n', '\r', '\t'], " ");
    if one_line.chars().count() <= width {
        one_line
    } else {
        let kept: String = one_line.chars().take(width - 1).collect();
        format!("{kept}…")
    }
}

fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

/// A spinner on standard error while a request is in flight; silent when stderr is not a
/// terminal.
pub struct Spinner {
    running: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    pub fn start(message: &'static str) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let thread = std::io::stderr().is_terminal().then(|| {
            let running = running.clone();
            std::thread::spawn(move || {
                let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
                let mut index = 0;
                while running.load(Ordering::Relaxed) {
                    eprint!("\r{} {message}…", frames[index % frames.len()]);
                    let _ = std::io::stderr().flush();
                    index += 1;
                    std::thread::sleep(Duration::from_millis(80));
                }
                eprint!("\r\x1b[2K");
                let _ = std::io::stderr().flush();
            })
        });
        Self { running, thread }
    }

    pub fn stop(mut self) {
        self.running.store(false, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_read_as_people_say_them() {
        for (input, expected) in [
            (0, "0s"),
            (45, "45s"),
            (1800, "30m"),
            (3600, "1h"),
            (5400, "1h30m"),
            (86_400 + 61, "1d1m1s"),
        ] {
            assert_eq!(seconds(input), expected, "{input}");
        }
    }

    #[test]
    fn long_reasons_are_cut_to_one_line() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("a\nb", 10), "a b");
        assert_eq!(truncate("0123456789abc", 10), "012345678…");
    }
}
