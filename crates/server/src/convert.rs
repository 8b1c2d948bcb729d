//! Hand-written conversions between wire types (`airlock-api`) and the core's domain types.
//! Parsing happens here: a wire value that does not parse never reaches the engine.

use airlock_api as api;
use airlock_core::Invalid;
use airlock_core::action::{Command, NewEnvironment, NewToken, NewUser};
use airlock_core::ids::{Name, UserId};
use airlock_core::model::{
    Environment, ExecOutput, NetworkMode, Role, Scope, TokenRecord, Usage, User,
};

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
        created_at: environment.created_at,
        updated_at: environment.updated_at,
        expires_at: environment.expires_at,
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
        roles: request
            .roles
            .unwrap_or_default()
            .iter()
            .map(|role| Role::parse(role))
            .collect::<Result<_, _>>()?,
    })
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
        created_at: user.created_at,
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
    }
}
