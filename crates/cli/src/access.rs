//! The access and team commands: `airlock access …` asks for, decides and ends time-boxed
//! production access under admin-defined profiles; `airlock team …` manages the teams whose
//! quotas environments count against. Also the parsers of their arguments (durations such as
//! `2h`, `--secret` specs).

use airlock_api as api;
use anyhow::Result;
use clap::Subcommand;
use reqwest::Method;

use crate::Connection;
use crate::client::{Client, path_segment};
use crate::output::{
    print_access_request, print_access_requests, print_json, print_profile, print_profiles,
    print_teams,
};

/// The states an access request can be in, as `--state` accepts them.
const ACCESS_STATES: [&str; 6] = [
    "pending", "approved", "denied", "lapsed", "expired", "revoked",
];

#[derive(Subcommand)]
pub enum AccessCommand {
    /// Ask for access under a profile; an approver must approve it before it is usable.
    Request {
        /// The access profile's name.
        profile: String,
        /// Why you need access (kept in the record and the audit trail).
        #[arg(long)]
        reason: String,
        /// How long the grant should last from approval: 30m, 2h, 1d, 900s or plain seconds
        /// (capped at the profile's maximum).
        #[arg(long, value_parser = parse_duration)]
        duration: u64,
    },
    /// List access requests, oldest first: your own, or everyone's with --all.
    #[command(alias = "ls")]
    List {
        /// Everyone's requests (approvers, auditors, admins).
        #[arg(long)]
        all: bool,
        /// Only requests in this state.
        #[arg(long, value_parser = ACCESS_STATES)]
        state: Option<String>,
    },
    /// Show one access request: who asked, why, who approved, when it ends.
    Get { id: String },
    /// Approve a pending request (never your own).
    Approve { id: String },
    /// Deny a pending request.
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// End an active grant now; environments opened under it are destroyed.
    Revoke {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Define what a grant gives (admin) and look at the profiles.
    #[command(subcommand)]
    Profile(ProfileCommand),
}

#[derive(Subcommand)]
pub enum ProfileCommand {
    /// Create an access profile (admin).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// The longest grant, counted from approval: 30m, 2h, 1d, 900s or plain seconds.
        #[arg(long, value_parser = parse_duration)]
        max_duration: u64,
        /// Distinct approvers needed (never the requester).
        #[arg(long, default_value_t = 1)]
        approvals: u32,
        /// A secret given to environments opened under a grant, e.g.
        /// `env=DB_PASSWORD,from-file=/etc/airlock/db` or `file=/run/secrets/db,from-env=VAR`
        /// (where it appears: env and/or file; where the server reads it: from-file or
        /// from-env); repeatable.
        #[arg(long = "secret", value_name = "SPEC", value_parser = parse_secret)]
        secrets: Vec<api::ProfileSecret>,
        /// The network of environments opened under a grant: `none` (default) or `egress`.
        #[arg(long)]
        network: Option<String>,
        /// Who may request: role:<role>, team:<name> or user:<id>; repeatable
        /// [default: role:developer].
        #[arg(long = "requester", value_name = "PARTY")]
        requesters: Vec<String>,
        /// Who may approve, same forms; repeatable [default: role:approver].
        #[arg(long = "approver", value_name = "PARTY")]
        approvers: Vec<String>,
    },
    /// List access profiles.
    #[command(alias = "ls")]
    List,
    /// Show one access profile.
    Get { name: String },
}

#[derive(Subcommand)]
pub enum TeamCommand {
    /// Create a team (admin); a limit left out is unlimited.
    Create {
        name: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// List teams and their quotas.
    #[command(alias = "ls")]
    List,
    /// Replace a team's quota (admin): a limit left out becomes unlimited.
    Quota {
        name: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
}

#[derive(clap::Args)]
pub struct QuotaArgs {
    /// Live environments at once.
    #[arg(long)]
    max_environments: Option<u64>,
    /// Memory of the live environments together, in MiB.
    #[arg(long = "max-memory", value_name = "MIB")]
    max_memory_mib: Option<u64>,
    /// CPUs of the live environments together, e.g. 4 or 2.5.
    #[arg(long)]
    max_cpus: Option<f64>,
}

impl QuotaArgs {
    fn into_quota(self) -> api::Quota {
        api::Quota {
            max_environments: self.max_environments,
            max_memory_mib: self.max_memory_mib,
            max_cpus: self.max_cpus,
        }
    }
}

pub async fn access(connection: &Connection, command: AccessCommand) -> Result<i32> {
    let client = Client::new(connection)?;
    match command {
        AccessCommand::Request {
            profile,
            reason,
            duration,
        } => {
            let request = api::CreateAccessRequest {
                profile,
                reason,
                duration_seconds: duration,
            };
            let created: api::AccessRequest = client
                .send(Method::POST, "/v1/access-requests", Some(&request), &[])
                .await?;
            show_decision(connection, &created);
        }
        AccessCommand::List { all, state } => {
            let mut path = format!("/v1/access-requests?limit=200&all={all}");
            if let Some(state) = &state {
                path.push_str(&format!("&state={state}"));
            }
            let items = client
                .all_pages(&path, |page: api::AccessRequestList| {
                    (page.items, page.next_cursor)
                })
                .await?;
            if connection.json {
                print_json(&items);
            } else {
                print_access_requests(&items);
            }
        }
        AccessCommand::Get { id } => {
            let request: api::AccessRequest = client
                .send(Method::GET, &request_path(&id, ""), None::<&()>, &[])
                .await?;
            if connection.json {
                print_json(&request);
            } else {
                print_access_request(&request);
            }
        }
        AccessCommand::Approve { id } => {
            let request: api::AccessRequest = client
                .send(
                    Method::POST,
                    &request_path(&id, "/approve"),
                    None::<&()>,
                    &[],
                )
                .await?;
            show_decision(connection, &request);
        }
        AccessCommand::Deny { id, reason } => {
            let request = end_access(&client, &request_path(&id, "/deny"), reason).await?;
            show_decision(connection, &request);
        }
        AccessCommand::Revoke { id, reason } => {
            let request = end_access(&client, &request_path(&id, "/revoke"), reason).await?;
            show_decision(connection, &request);
        }
        AccessCommand::Profile(command) => return profile(connection, &client, command).await,
    }
    Ok(0)
}

async fn profile(connection: &Connection, client: &Client, command: ProfileCommand) -> Result<i32> {
    match command {
        ProfileCommand::Create {
            name,
            description,
            max_duration,
            approvals,
            secrets,
            network,
            requesters,
            approvers,
        } => {
            let request = api::CreateAccessProfile {
                name,
                description,
                max_duration_seconds: max_duration,
                approvals_required: approvals,
                secrets,
                network,
                requesters: (!requesters.is_empty()).then_some(requesters),
                approvers: (!approvers.is_empty()).then_some(approvers),
            };
            let created: api::AccessProfile = client
                .send(Method::POST, "/v1/access-profiles", Some(&request), &[])
                .await?;
            if connection.json {
                print_json(&created);
            } else {
                print_profile(&created);
            }
        }
        ProfileCommand::List => {
            let list: api::AccessProfileList = client
                .send(Method::GET, "/v1/access-profiles", None::<&()>, &[])
                .await?;
            if connection.json {
                print_json(&list.items);
            } else {
                print_profiles(&list.items);
            }
        }
        ProfileCommand::Get { name } => {
            let found: api::AccessProfile = client
                .send(
                    Method::GET,
                    &format!("/v1/access-profiles/{}", path_segment(&name)),
                    None::<&()>,
                    &[],
                )
                .await?;
            if connection.json {
                print_json(&found);
            } else {
                print_profile(&found);
            }
        }
    }
    Ok(0)
}

pub async fn team(connection: &Connection, command: TeamCommand) -> Result<i32> {
    let client = Client::new(connection)?;
    let team: api::Team = match command {
        TeamCommand::Create { name, quota } => {
            let request = api::CreateTeam {
                name,
                quota: Some(quota.into_quota()),
            };
            client
                .send(Method::POST, "/v1/teams", Some(&request), &[])
                .await?
        }
        TeamCommand::List => {
            let list: api::TeamList = client
                .send(Method::GET, "/v1/teams", None::<&()>, &[])
                .await?;
            if connection.json {
                print_json(&list.items);
            } else {
                print_teams(&list.items);
            }
            return Ok(0);
        }
        TeamCommand::Quota { name, quota } => {
            client
                .send(
                    Method::PUT,
                    &format!("/v1/teams/{}/quota", path_segment(&name)),
                    Some(&quota.into_quota()),
                    &[],
                )
                .await?
        }
    };
    if connection.json {
        print_json(&team);
    } else {
        print_teams(std::slice::from_ref(&team));
    }
    Ok(0)
}

/// `POST` to a deny or revoke route, with a body only when there is a reason.
async fn end_access(
    client: &Client,
    path: &str,
    reason: Option<String>,
) -> Result<api::AccessRequest> {
    match reason {
        Some(reason) => {
            let body = api::EndAccess {
                reason: Some(reason),
            };
            client.send(Method::POST, path, Some(&body), &[]).await
        }
        None => client.send(Method::POST, path, None::<&()>, &[]).await,
    }
}

/// After a request or a decision: one line saying where the request stands.
fn show_decision(connection: &Connection, request: &api::AccessRequest) {
    if connection.json {
        print_json(request);
        return;
    }
    let time = crate::output::time;
    let detail = match (request.state.as_str(), request.expires_at) {
        ("pending", _) => format!(
            "{} of {} approvals; decide by {}",
            request.approvals.len(),
            request.approvals_required,
            time(request.decide_by)
        ),
        ("approved", Some(expires_at)) => format!("until {}", time(expires_at)),
        _ => request.end_reason.clone().unwrap_or_default(),
    };
    if detail.is_empty() {
        println!("{}  {}", request.id, request.state);
    } else {
        println!("{}  {}  ({detail})", request.id, request.state);
    }
}

fn request_path(id: &str, action: &str) -> String {
    format!("/v1/access-requests/{}{action}", path_segment(id))
}

/// A length of time in seconds: `900s`, `30m`, `2h`, `1d`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "{text:?} is not a duration: use a number of seconds, or a number followed by s, m, h or d (e.g. 30m, 2h)"
        )
    };
    let text = text.trim();
    let (number, unit_seconds) = match text.char_indices().last() {
        Some((at, 's')) => (&text[..at], 1),
        Some((at, 'm')) => (&text[..at], 60),
        Some((at, 'h')) => (&text[..at], 3600),
        Some((at, 'd')) => (&text[..at], 86_400),
        _ => (text, 1),
    };
    if number.is_empty() || !number.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(bad());
    }
    let seconds = number
        .parse::<u64>()
        .ok()
        .and_then(|number| number.checked_mul(unit_seconds))
        .ok_or_else(|| format!("{text:?} is too long"))?;
    if seconds == 0 {
        return Err(format!("{text:?} is no time at all"));
    }
    Ok(seconds)
}

/// A `--secret` spec: comma-separated `key=value` pairs, keys `env`, `file`, `from-file`,
/// `from-env`. Which combinations make sense is the server's to say.
pub fn parse_secret(text: &str) -> Result<api::ProfileSecret, String> {
    let mut secret = api::ProfileSecret::default();
    for pair in text.split(',') {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!(
                "{pair:?} is not key=value (keys: env, file, from-file, from-env)"
            ));
        };
        let slot = match key.trim() {
            "env" => &mut secret.env,
            "file" => &mut secret.file,
            "from-file" | "from_file" => &mut secret.from_file,
            "from-env" | "from_env" => &mut secret.from_env,
            other => {
                return Err(format!(
                    "unknown key {other:?} (keys: env, file, from-file, from-env)"
                ));
            }
        };
        if slot.replace(value.trim().to_owned()).is_some() {
            return Err(format!("{:?} is given twice", key.trim()));
        }
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<u64, &str>) {
        match (parse_duration(input), expected) {
            (Ok(seconds), Ok(expected)) => assert_eq!(seconds, expected, "{input:?}"),
            (Err(error), Err(fragment)) => {
                assert!(error.contains(fragment), "{input:?}: {error}")
            }
            (got, expected) => panic!("{input:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn durations_take_a_unit_or_plain_seconds() {
        check("900", Ok(900));
        check("900s", Ok(900));
        check("30m", Ok(1800));
        check("2h", Ok(7200));
        check("1d", Ok(86_400));
        check(" 45m ", Ok(2700));
    }

    #[test]
    fn bad_durations_say_what_is_accepted() {
        for input in ["", "h", "1.5h", "-5m", "2w", "1h30m", "abc", "+3s", "1 h"] {
            check(input, Err("is not a duration"));
        }
        check("0", Err("no time at all"));
        check("0m", Err("no time at all"));
        check("99999999999999999999", Err("too long"));
        check("999999999999999999d", Err("too long"));
    }

    #[test]
    fn secret_specs_name_where_it_appears_and_where_it_comes_from() {
        assert_eq!(
            parse_secret("env=DB_PASSWORD,from-file=/etc/x"),
            Ok(api::ProfileSecret {
                env: Some("DB_PASSWORD".into()),
                from_file: Some("/etc/x".into()),
                ..Default::default()
            })
        );
        assert_eq!(
            parse_secret("file=/run/secrets/db,from-env=VAR"),
            Ok(api::ProfileSecret {
                file: Some("/run/secrets/db".into()),
                from_env: Some("VAR".into()),
                ..Default::default()
            })
        );
        assert!(parse_secret("env").unwrap_err().contains("key=value"));
        assert!(parse_secret("path=/x").unwrap_err().contains("unknown key"));
        assert!(parse_secret("env=A,env=B").unwrap_err().contains("twice"));
    }
}
