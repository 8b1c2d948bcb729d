//! Hand-written conversions between wire types (`airlock-api`) and the core's domain types.
//! Parsing happens here: a wire value that does not parse never reaches the engine.

use airlock_api as api;
use airlock_core::Invalid;
use airlock_core::access::{AccessProfile, AccessRequest, SecretMount};
use airlock_core::action::{
    Command, NewAccessRequest, NewEnvironment, NewProfile, NewToken, NewUser,
};
use airlock_core::ids::{AccessRequestId, Name, UserId};
use airlock_core::model::{
    Environment, ExecOutput, NetworkMode, Party, Quota, Role, Scope, Team, TokenRecord, Usage, User,
};
use airlock_core::rate_limit::Rate;

pub fn new_environment(request: api::CreateEnvironment) -> Result<NewEnvironment, Invalid> {
    let resources = request.resources.unwrap_or_default();
    Ok(NewEnvironment {
        name: request
            .name
            .as_deref()
            .map(|name| Name::parse("name", name))
            .transpose()?,
        image: request
            .image
            .as_deref()
            .map(|image| Name::parse("image", image))
            .transpose()?,
        memory_mib: resources.memory_mib,
        cpus: resources.cpus,
        pids: resources.pids,
        disk_mib: resources.disk_mib,
        network: request
            .network
            .as_deref()
            .map(NetworkMode::parse)
            .transpose()?,
        ttl_seconds: request.ttl_seconds,
        idle_timeout_seconds: request.idle_timeout_seconds,
        team: request
            .team
            .as_deref()
            .map(|team| Name::parse("team", team))
            .transpose()?,
        access_request: request
            .access_request
            .as_deref()
            .map(|id| {
                AccessRequestId::parse(id)
                    .map_err(|_| Invalid::new("access_request", "is not an access request id"))
            })
            .transpose()?,
    })
}

pub fn environment(environment: Environment, usage: Option<Usage>) -> api::Environment {
    api::Environment {
        id: environment.id.to_string(),
        name: environment.name.to_string(),
        state: environment.state.as_str().into(),
        owner: environment.owner.to_string(),
        image: environment.image.to_string(),
        resources: api::Resources {
            memory_mib: environment.resources.memory_mib,
            cpus: environment.resources.millicpus as f64 / 1000.0,
            pids: environment.resources.pids,
            disk_mib: environment.resources.disk_mib,
        },
        network: environment.network.as_str().into(),
        team: environment.team.map(String::from),
        access_request: environment.access_request.map(String::from),
        created_at: environment.created_at,
        updated_at: environment.updated_at,
        expires_at: environment.expires_at,
        last_activity_at: environment.last_activity_at,
        idle_timeout_seconds: environment.idle_timeout.map(|timeout| timeout.as_secs()),
        failure: environment.failure,
        usage: usage.map(|usage| api::Usage {
            memory_bytes: usage.memory_bytes,
            pids: usage.pids,
            oom_kills: usage.oom_kills,
            cpu_seconds: usage.cpu_nanoseconds as f64 / 1e9,
            disk_bytes: usage.disk_bytes,
        }),
    }
}

pub fn command(request: api::ExecRequest) -> Command {
    Command {
        argv: request.command,
        env: request.env.unwrap_or_default(),
        cwd: request.cwd,
        stdin: request.stdin.unwrap_or_default().into_bytes(),
        timeout_seconds: request.timeout_seconds,
    }
}

pub fn exec_result(output: ExecOutput) -> api::ExecResult {
    api::ExecResult {
        exit_code: output.exit_code,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        truncated: output.truncated,
        timed_out: output.timed_out,
        oom_killed: output.oom_killed,
        duration_ms: output.duration.as_millis() as u64,
    }
}

pub fn new_user(request: api::CreateUser) -> Result<NewUser, Invalid> {
    Ok(NewUser {
        name: Name::parse("name", &request.name)?,
        roles: roles(request.roles.unwrap_or_default())?,
        teams: team_names(request.teams.unwrap_or_default())?,
    })
}

pub fn roles(words: Vec<String>) -> Result<Vec<Role>, Invalid> {
    words.iter().map(|role| Role::parse(role)).collect()
}

pub fn team_names(words: Vec<String>) -> Result<Vec<Name>, Invalid> {
    words
        .iter()
        .map(|team| Name::parse("teams", team))
        .collect()
}

pub fn user(user: User) -> api::User {
    api::User {
        id: user.id.to_string(),
        name: user.name.to_string(),
        roles: user
            .roles
            .iter()
            .map(|role| role.as_str().to_owned())
            .collect(),
        teams: user.teams.into_iter().map(String::from).collect(),
        external: user.external_id.is_some(),
        created_at: user.created_at,
    }
}

pub fn quota(quota: Option<api::Quota>) -> Result<Quota, Invalid> {
    let quota = quota.unwrap_or_default();
    let max_millicpus = match quota.max_cpus {
        None => None,
        Some(cpus) if cpus.is_finite() && cpus > 0.0 && cpus < 1e9 => {
            Some((cpus * 1000.0).round() as u64)
        }
        Some(_) => return Err(Invalid::new("quota.max_cpus", "must be a positive number")),
    };
    Ok(Quota {
        max_environments: quota.max_environments,
        max_memory_mib: quota.max_memory_mib,
        max_millicpus,
    })
}

pub fn team(team: Team) -> api::Team {
    api::Team {
        name: team.name.to_string(),
        quota: api::Quota {
            max_environments: team.quota.max_environments,
            max_memory_mib: team.quota.max_memory_mib,
            max_cpus: team
                .quota
                .max_millicpus
                .map(|millicpus| millicpus as f64 / 1000.0),
        },
        created_at: team.created_at,
    }
}

fn parties(field: &'static str, words: Option<Vec<String>>) -> Result<Option<Vec<Party>>, Invalid> {
    words
        .map(|words| words.iter().map(|word| Party::parse(field, word)).collect())
        .transpose()
}

pub fn new_profile(request: api::CreateAccessProfile) -> Result<NewProfile, Invalid> {
    Ok(NewProfile {
        name: Name::parse("name", &request.name)?,
        description: request.description,
        max_duration_seconds: request.max_duration_seconds,
        approvals_required: request.approvals_required,
        secrets: request
            .secrets
            .into_iter()
            .map(|secret| {
                SecretMount::parse(secret.env, secret.file, secret.from_file, secret.from_env)
            })
            .collect::<Result<_, _>>()?,
        network: request
            .network
            .as_deref()
            .map(NetworkMode::parse)
            .transpose()?,
        requesters: parties("requesters", request.requesters)?,
        approvers: parties("approvers", request.approvers)?,
    })
}

pub fn profile(profile: AccessProfile) -> api::AccessProfile {
    api::AccessProfile {
        name: profile.name.to_string(),
        description: profile.description,
        max_duration_seconds: profile.max_duration.as_secs(),
        approvals_required: profile.approvals_required,
        secrets: profile
            .secrets
            .iter()
            .flat_map(|secret| {
                let env = secret.env.as_ref().map(|name| format!("env:{name}"));
                let file = secret.file.as_ref().map(|path| format!("file:{path}"));
                env.into_iter().chain(file)
            })
            .collect(),
        network: profile.network.as_str().into(),
        requesters: profile.requesters.iter().map(ToString::to_string).collect(),
        approvers: profile.approvers.iter().map(ToString::to_string).collect(),
        created_at: profile.created_at,
    }
}

pub fn new_access_request(request: api::CreateAccessRequest) -> Result<NewAccessRequest, Invalid> {
    Ok(NewAccessRequest {
        profile: Name::parse("profile", &request.profile)?,
        reason: request.reason,
        duration_seconds: request.duration_seconds,
    })
}

pub fn access_request(request: AccessRequest) -> api::AccessRequest {
    api::AccessRequest {
        id: request.id.to_string(),
        profile: request.profile.to_string(),
        requester: request.requester.to_string(),
        reason: request.reason,
        state: request.state.as_str().into(),
        duration_seconds: request.duration.as_secs(),
        approvals_required: request.approvals_required,
        approvals: request
            .approvals
            .into_iter()
            .map(|approval| api::Approval {
                approver: approval.approver.to_string(),
                at: approval.at,
            })
            .collect(),
        created_at: request.created_at,
        decide_by: request.decide_by,
        granted_at: request.granted_at,
        expires_at: request.expires_at,
        ended_at: request.ended_at,
        ended_by: request.ended_by,
        end_reason: request.end_reason,
    }
}

pub fn new_token(request: api::CreateToken) -> Result<NewToken, Invalid> {
    Ok(NewToken {
        user: request
            .user_id
            .as_deref()
            .map(UserId::parse)
            .transpose()
            .map_err(|_| Invalid::new("user_id", "is not a user id"))?,
        scopes: request
            .scopes
            .map(|scopes| scopes.iter().map(|scope| Scope::parse(scope)).collect())
            .transpose()?,
        expires_in_seconds: request.expires_in_seconds,
        description: request.description,
        rate_limit: request
            .rate_limit
            .as_deref()
            .map(|text| {
                Rate::parse(text).map_err(|_| {
                    Invalid::new(
                        "rate_limit",
                        format!("{text:?} is not N/s, N/m or N/h[:burst]"),
                    )
                })
            })
            .transpose()?,
    })
}

pub fn token(record: TokenRecord) -> api::Token {
    api::Token {
        id: record.id.to_string(),
        user_id: record.user_id.to_string(),
        scopes: record
            .scopes
            .iter()
            .map(|scope| scope.as_str().to_owned())
            .collect(),
        created_at: record.created_at,
        expires_at: record.expires_at,
        description: record.description,
        revoked_at: record.revoked_at,
        last_used_at: record.last_used_at,
        rate_limit: record.rate_limit.map(|rate| rate.to_string()),
    }
}

pub fn session(session: airlock_core::session::Session) -> api::Session {
    api::Session {
        id: session.id.into(),
        environment_id: session.environment.into(),
        user_id: session.user.into(),
        kind: session.kind.as_str().into(),
        argv: session.argv,
        started_at: session.started_at,
        ended_at: session.ended_at,
        exit_code: session.exit_code,
        bytes_in: session.bytes_in,
        bytes_out: session.bytes_out,
        recorded: session.recorded,
    }
}

pub fn audit_event(stored: airlock_core::audit::ChainedEvent) -> api::AuditEvent {
    let event = stored.event;
    api::AuditEvent {
        index: stored.index,
        time: event.time,
        request_id: event.request_id,
        actor: event.actor,
        action: event.action,
        target: event.target,
        outcome: event.outcome,
        source: event.source,
        detail: event.detail,
        hash: airlock_core::audit::to_hex(&stored.hash),
    }
}
