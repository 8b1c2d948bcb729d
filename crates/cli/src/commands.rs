//! The client commands for environments, users and tokens: each builds one API request and
//! prints the answer. Access requests, profiles and teams are in `access.rs`.

use std::io::{Read, Write};

use airlock_api as api;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use reqwest::Method;

use crate::Connection;
use crate::client::path_segment;
use crate::client::{Client, ConfigFile, config_path};
use crate::output::{Spinner, print_environments, print_json, print_tokens, print_users};

#[derive(Subcommand)]
pub enum EnvCommand {
    /// Create and start an environment.
    Create {
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        image: Option<String>,
        /// Memory limit in MiB.
        #[arg(long)]
        memory: Option<u64>,
        /// CPUs, e.g. 0.5.
        #[arg(long)]
        cpus: Option<f64>,
        /// Maximum number of processes.
        #[arg(long)]
        pids: Option<u64>,
        /// Size of the writable layer in MiB.
        #[arg(long)]
        disk: Option<u64>,
        /// `none` (loopback only, the default) or `egress` (outbound through NAT).
        #[arg(long)]
        network: Option<String>,
        /// Lifetime in seconds; at its end the environment is deleted.
        #[arg(long)]
        ttl: Option<u64>,
        /// Stop it (keeping its files) after this many seconds without activity; 0: never.
        #[arg(long)]
        idle_timeout: Option<u64>,
        /// The team whose quota it counts against [default: your only team].
        #[arg(long)]
        team: Option<String>,
        /// Open it under this approved access request of yours: it gets the profile's
        /// secrets and network, and is destroyed when the grant ends.
        #[arg(long, alias = "grant", value_name = "ID")]
        access_request: Option<String>,
        /// Makes retries safe: the same key returns the same environment.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// List your environments.
    #[command(alias = "ls")]
    List {
        /// Every owner's environments (admin).
        #[arg(long)]
        all: bool,
    },
    /// Show one environment (by id or name).
    Get { environment: String },
    /// Stop an environment, keeping its files.
    Stop { environment: String },
    /// Start a stopped environment.
    Start { environment: String },
    /// Push an environment's expiry to now + TTL seconds (within the server's maximum).
    Extend {
        environment: String,
        #[arg(long)]
        ttl: u64,
    },
    /// Renew an agent's lease: counts as activity, so the idle timeout starts again.
    Lease { environment: String },
    /// Delete environments.
    #[command(alias = "delete")]
    Rm {
        #[arg(required = true)]
        environments: Vec<String>,
    },
    /// Run a command in an environment; exits with the command's exit code.
    Exec {
        environment: String,
        /// Seconds before the command's process tree is killed.
        #[arg(long)]
        timeout: Option<u64>,
        /// Extra environment variables, KEY=VALUE.
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        /// Working directory inside the environment.
        #[arg(long)]
        cwd: Option<String>,
        /// Send this process's standard input to the command.
        #[arg(long, short = 'i')]
        stdin: bool,
        /// Run it on a terminal (as `airlock shell` does), streamed and recorded.
        #[arg(long, short = 't')]
        tty: bool,
        /// Stream its output as it comes (and with -i, standard input as it comes), over a
        /// WebSocket session, instead of waiting for it to end. Signals (^C) go to it.
        #[arg(long)]
        stream: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user.
    Create {
        name: String,
        /// admin, approver, developer (default), auditor, viewer or ci; repeatable.
        #[arg(long = "role", value_delimiter = ',')]
        roles: Vec<String>,
        /// A team the user belongs to (it must exist); repeatable.
        #[arg(long = "team", value_delimiter = ',')]
        teams: Vec<String>,
    },
    /// List every user (admins and auditors).
    #[command(alias = "ls")]
    List,
    /// Replace a user's roles and/or teams; what is not given stays.
    Update {
        id: String,
        /// The user's roles from now on; repeatable.
        #[arg(long = "role", value_delimiter = ',')]
        roles: Vec<String>,
        /// The user's teams from now on; repeatable.
        #[arg(long = "team", value_delimiter = ',', conflicts_with = "no_teams")]
        teams: Vec<String>,
        /// Take the user out of every team.
        #[arg(long)]
        no_teams: bool,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Issue a token (for yourself, or, as an admin, for --user).
    Create {
        #[arg(long)]
        user: Option<String>,
        /// read, write, access:request, access:approve, admin (repeatable or
        /// comma-separated; default read and write).
        #[arg(long = "scope", alias = "scopes", value_delimiter = ',')]
        scopes: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long)]
        expires_in: Option<u64>,
        #[arg(long)]
        description: Option<String>,
        /// A rate limit of the token's own on top of its user's, e.g. `2/s:10` (N/s, N/m
        /// or N/h, optional :BURST).
        #[arg(long)]
        rate_limit: Option<String>,
    },
    /// Revoke a token at once.
    Revoke { id: String },
    /// List tokens (never their secrets): yours, or, as an admin, --user's.
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        user: Option<String>,
    },
}

/// Turns a name into an id (ids pass through).
pub(crate) async fn resolve(client: &Client, reference: &str) -> Result<String> {
    if reference.starts_with("env_") {
        return Ok(reference.to_owned());
    }
    let list: api::EnvironmentList = client
        .send(
            Method::GET,
            &format!("/v1/environments?name={reference}"),
            None::<&()>,
            &[],
        )
        .await?;
    match list.items.into_iter().next() {
        Some(environment) => Ok(environment.id),
        None => bail!("you have no environment named {reference:?}"),
    }
}

pub async fn env(connection: &Connection, command: EnvCommand) -> Result<i32> {
    let client = Client::new(connection)?;
    match command {
        EnvCommand::Create {
            name,
            image,
            memory,
            cpus,
            pids,
            disk,
            network,
            ttl,
            idle_timeout,
            team,
            access_request,
            idempotency_key,
        } => {
            let asked = memory.is_some() || cpus.is_some() || pids.is_some() || disk.is_some();
            let resources = asked.then_some(api::ResourcesRequest {
                memory_mib: memory,
                cpus,
                pids,
                disk_mib: disk,
            });
            let request = api::CreateEnvironment {
                name,
                image,
                resources,
                ttl_seconds: ttl,
                idle_timeout_seconds: idle_timeout,
                network,
                team,
                access_request,
            };
            let headers: Vec<(&str, String)> = idempotency_key
                .map(|key| ("idempotency-key", key))
                .into_iter()
                .collect();
            let spinner = Spinner::start("creating environment");
            let environment: Result<api::Environment> = client
                .send(Method::POST, "/v1/environments", Some(&request), &headers)
                .await;
            spinner.stop();
            print_environment(connection, &environment?);
        }
        EnvCommand::List { all } => {
            let items = client
                .all_pages(
                    &format!("/v1/environments?limit=200&all={all}"),
                    |page: api::EnvironmentList| (page.items, page.next_cursor),
                )
                .await?;
            if connection.json {
                print_json(&items)
            } else {
                print_environments(&items)
            }
        }
        EnvCommand::Get { environment } => {
            let id = resolve(&client, &environment).await?;
            let environment: api::Environment = client
                .send(
                    Method::GET,
                    &format!("/v1/environments/{id}"),
                    None::<&()>,
                    &[],
                )
                .await?;
            print_environment(connection, &environment);
        }
        EnvCommand::Stop { environment } => {
            let id = resolve(&client, &environment).await?;
            let spinner = Spinner::start("stopping");
            let result: Result<api::Environment> = client
                .send(
                    Method::POST,
                    &format!("/v1/environments/{id}/stop"),
                    None::<&()>,
                    &[],
                )
                .await;
            spinner.stop();
            print_environment(connection, &result?);
        }
        EnvCommand::Start { environment } => {
            let id = resolve(&client, &environment).await?;
            let spinner = Spinner::start("starting");
            let result: Result<api::Environment> = client
                .send(
                    Method::POST,
                    &format!("/v1/environments/{id}/start"),
                    None::<&()>,
                    &[],
                )
                .await;
            spinner.stop();
            print_environment(connection, &result?);
        }
        EnvCommand::Extend { environment, ttl } => {
            let id = resolve(&client, &environment).await?;
            let result: api::Environment = client
                .send(
                    Method::POST,
                    &format!("/v1/environments/{id}/extend"),
                    Some(&api::ExtendEnvironment { ttl_seconds: ttl }),
                    &[],
                )
                .await?;
            print_environment(connection, &result);
        }
        EnvCommand::Lease { environment } => {
            let id = resolve(&client, &environment).await?;
            let result: api::Environment = client
                .send(
                    Method::POST,
                    &format!("/v1/environments/{id}/lease"),
                    None::<&()>,
                    &[],
                )
                .await?;
            print_environment(connection, &result);
        }
        EnvCommand::Rm { environments } => {
            for environment in environments {
                let id = resolve(&client, &environment).await?;
                client
                    .send_empty(Method::DELETE, &format!("/v1/environments/{id}"))
                    .await?;
                if !connection.json {
                    println!("deleted {id}");
                }
            }
        }
        EnvCommand::Exec {
            environment,
            timeout,
            env,
            cwd,
            stdin,
            tty,
            stream,
            command,
        } => {
            let pairs: Vec<(String, String)> = env
                .iter()
                .map(|pair| {
                    pair.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .context("--env takes KEY=VALUE")
                })
                .collect::<Result<_>>()?;
            if tty || stream {
                let options = crate::sessions::Stream {
                    argv: command,
                    tty,
                    env: pairs,
                    cwd,
                    stdin,
                };
                return crate::sessions::stream(&client, &environment, options).await;
            }
            let id = resolve(&client, &environment).await?;
            let env = pairs.into_iter().collect();
            let stdin = if stdin {
                let mut input = String::new();
                std::io::stdin()
                    .read_to_string(&mut input)
                    .context("reading standard input")?;
                Some(input)
            } else {
                None
            };
            let request = api::ExecRequest {
                command,
                env: Some(env),
                cwd,
                stdin,
                timeout_seconds: timeout,
            };
            let result: api::ExecResult = client
                .send(
                    Method::POST,
                    &format!("/v1/environments/{id}/exec"),
                    Some(&request),
                    &[],
                )
                .await?;
            if connection.json {
                print_json(&result);
                return Ok(0);
            }
            std::io::stdout().write_all(result.stdout.as_bytes())?;
            std::io::stderr().write_all(result.stderr.as_bytes())?;
            if result.truncated {
                eprintln!("airlock: output was truncated");
            }
            if result.timed_out {
                eprintln!("airlock: the command timed out and was killed");
            }
            return Ok(result.exit_code);
        }
    }
    Ok(0)
}

fn print_environment(connection: &Connection, environment: &api::Environment) {
    if connection.json {
        print_json(environment)
    } else {
        print_environments(std::slice::from_ref(environment))
    }
}

pub async fn user(connection: &Connection, command: UserCommand) -> Result<i32> {
    let client = Client::new(connection)?;
    match command {
        UserCommand::Create { name, roles, teams } => {
            let request = api::CreateUser {
                name,
                roles: (!roles.is_empty()).then_some(roles),
                teams: (!teams.is_empty()).then_some(teams),
            };
            let user: api::User = client
                .send(Method::POST, "/v1/users", Some(&request), &[])
                .await?;
            print_user(connection, &user);
        }
        UserCommand::List => {
            let list: api::UserList = client
                .send(Method::GET, "/v1/users", None::<&()>, &[])
                .await?;
            if connection.json {
                print_json(&list.items);
            } else {
                print_users(&list.items);
            }
        }
        UserCommand::Update {
            id,
            roles,
            teams,
            no_teams,
        } => {
            let request = api::UpdateUser {
                roles: (!roles.is_empty()).then_some(roles),
                teams: (no_teams || !teams.is_empty()).then_some(teams),
            };
            if request.roles.is_none() && request.teams.is_none() {
                bail!("nothing to change: give --role, --team or --no-teams");
            }
            let user: api::User = client
                .send(
                    Method::PATCH,
                    &format!("/v1/users/{}", path_segment(&id)),
                    Some(&request),
                    &[],
                )
                .await?;
            print_user(connection, &user);
        }
    }
    Ok(0)
}

fn print_user(connection: &Connection, user: &api::User) {
    if connection.json {
        print_json(user);
    } else {
        print_users(std::slice::from_ref(user));
    }
}

pub async fn token(connection: &Connection, command: TokenCommand) -> Result<i32> {
    let client = Client::new(connection)?;
    match command {
        TokenCommand::Create {
            user,
            scopes,
            expires_in,
            description,
            rate_limit,
        } => {
            let request = api::CreateToken {
                user_id: user,
                scopes: (!scopes.is_empty()).then_some(scopes),
                expires_in_seconds: expires_in,
                description,
                rate_limit,
            };
            let issued: api::IssuedToken = client
                .send(Method::POST, "/v1/tokens", Some(&request), &[])
                .await?;
            if connection.json {
                print_json(&issued);
            } else {
                print_tokens(std::slice::from_ref(&issued.info));
                println!("\ntoken (shown once): {}", issued.token);
            }
        }
        TokenCommand::Revoke { id } => {
            client
                .send_empty(Method::DELETE, &format!("/v1/tokens/{id}"))
                .await?;
            if !connection.json {
                println!("revoked {id}");
            }
        }
        TokenCommand::List { user } => {
            let path = match user {
                Some(user) => format!("/v1/tokens?user_id={}", path_segment(&user)),
                None => "/v1/tokens".to_owned(),
            };
            let list: api::TokenList = client.send(Method::GET, &path, None::<&()>, &[]).await?;
            if connection.json {
                print_json(&list.items);
            } else {
                print_tokens(&list.items);
            }
        }
    }
    Ok(0)
}

pub async fn whoami(connection: &Connection) -> Result<i32> {
    let client = Client::new(connection)?;
    let me: api::WhoAmI = client
        .send(Method::GET, "/v1/whoami", None::<&()>, &[])
        .await?;
    if connection.json {
        print_json(&me);
    } else {
        println!(
            "{} ({}), roles: {}, credential {} scopes: {}",
            me.user.name,
            me.user.id,
            me.user.roles.join(","),
            me.credential,
            me.scopes.join(",")
        );
    }
    Ok(0)
}

pub fn login(url: &str, token: &str) -> Result<()> {
    let path = config_path();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let config = ConfigFile {
        url: Some(url.to_owned()),
        token: Some(token.to_owned()),
    };
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(&serde_json::to_vec_pretty(&config)?)?;
    println!("saved to {}", path.display());
    Ok(())
}
