//! The `airlock` binary: `airlock server` runs the control plane; every other command is a
//! client of its HTTP API. `airlock __runtime` is the internal runtime helper (see
//! `airlock_runtime::helper`), selected before anything else starts.

mod access;
mod audit;
mod client;
mod commands;
mod output;
mod sessions;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "airlock",
    version,
    about = "Isolated development environments and time-boxed production access"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    connection: Connection,
}

/// Where the server is and who we are; flags beat environment variables beat the config file.
#[derive(Args, Clone, Debug)]
pub struct Connection {
    /// The server's URL [default: from the config file, else http://127.0.0.1:7700].
    #[arg(long, env = "AIRLOCK_URL", global = true)]
    url: Option<String>,
    /// The API token [default: from the config file, else the local server's admin-token file].
    #[arg(long, env = "AIRLOCK_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the airlock server.
    Server(Box<ServerArgs>),
    /// Create, list, inspect, stop, start, delete environments and run commands in them.
    #[command(subcommand, alias = "envs")]
    Env(commands::EnvCommand),
    /// Manage users (admin).
    #[command(subcommand)]
    User(commands::UserCommand),
    /// Issue, list and revoke API tokens.
    #[command(subcommand)]
    Token(commands::TokenCommand),
    /// Create teams and set their quotas (admin); list them.
    #[command(subcommand)]
    Team(access::TeamCommand),
    /// Ask for, approve, deny and revoke time-boxed access; manage access profiles.
    #[command(subcommand)]
    Access(access::AccessCommand),
    /// Open a terminal in an environment, like ssh: a login shell, or the command given
    /// after `--`; exits with its exit code. The session is recorded.
    Shell {
        environment: String,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Copy a file into or out of a running environment: `cp ./f ENV:/path` or
    /// `cp ENV:/path ./f` (`-` for standard input or output).
    Cp { source: String, target: String },
    /// Reach a TCP port inside an environment at a local port: `port-forward ENV 8080` or
    /// `port-forward ENV 9000:8080`.
    PortForward {
        environment: String,
        #[arg(value_name = "[LOCAL:]REMOTE")]
        ports: String,
        /// The local address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        address: String,
    },
    /// List sessions, show one, replay a terminal session's recording.
    #[command(subcommand)]
    Session(sessions::SessionCommand),
    /// Verify the audit trail's hash chain offline; export or list its events.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Show who the current token belongs to.
    Whoami,
    /// Destroy every environment's sandbox in a data directory (the server must be stopped).
    Purge {
        #[arg(long, env = "AIRLOCK_DATA_DIR", default_value_os_t = default_data_dir())]
        data_dir: PathBuf,
    },
    /// Save the server URL and a token to the config file.
    Login {
        #[arg(long)]
        url: String,
        #[arg(long)]
        token: String,
    },
}

#[derive(Args, Debug)]
struct ServerArgs {
    /// Where airlock keeps its database, sandboxes and admin token.
    #[arg(long, env = "AIRLOCK_DATA_DIR", default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    /// Keep state in this PostgreSQL database (postgres://user:password@host/database) instead
    /// of SQLite in the data directory, e.g. for several servers.
    #[arg(long, env = "AIRLOCK_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "AIRLOCK_LISTEN", default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Seconds between reconciliations of records with sandboxes.
    #[arg(long, env = "AIRLOCK_RECONCILE_SECONDS", default_value_t = 30)]
    reconcile_seconds: u64,
    /// Do not offer the `egress` network mode (no firewall rules, no IPv4 forwarding).
    #[arg(long, env = "AIRLOCK_NO_EGRESS")]
    no_egress: bool,
    /// A destination (CIDR) egress environments may reach although it is private or
    /// link-local, e.g. an internal package mirror; repeatable.
    #[arg(
        long = "egress-allow",
        value_name = "CIDR",
        env = "AIRLOCK_EGRESS_ALLOW",
        value_delimiter = ',',
        value_parser = parse_ipv4_cidr
    )]
    egress_allow: Vec<String>,
    /// A Cedar policy file, added to the built-in role policies (see docs/POLICY.md).
    #[arg(long = "policy", value_name = "FILE", env = "AIRLOCK_POLICY")]
    policy_file: Option<PathBuf>,
    /// Use only the policy file's policies, not the built-in ones.
    #[arg(
        long,
        env = "AIRLOCK_REPLACE_DEFAULT_POLICIES",
        requires = "policy_file"
    )]
    replace_default_policies: bool,
    /// Seconds a pending access request waits for a decision before it lapses.
    #[arg(long, env = "AIRLOCK_ACCESS_REQUEST_TTL", default_value_t = 3600)]
    access_request_ttl: u64,
    /// Accept bearer JWTs from this OIDC issuer (its `iss`).
    #[arg(long, env = "AIRLOCK_OIDC_ISSUER", requires = "oidc_audience")]
    oidc_issuer: Option<String>,
    /// The audience (`aud`) the tokens must be for.
    #[arg(long, env = "AIRLOCK_OIDC_AUDIENCE")]
    oidc_audience: Option<String>,
    /// The issuer's JWKS URL [default: discovered from the issuer].
    #[arg(long, env = "AIRLOCK_OIDC_JWKS_URL")]
    oidc_jwks_url: Option<String>,
    /// The claim listing the user's groups.
    #[arg(long, env = "AIRLOCK_OIDC_GROUPS_CLAIM", default_value = "groups")]
    oidc_groups_claim: String,
    /// GROUP=ROLE: members of GROUP get ROLE; repeatable. Without any, a group named like a
    /// role (admin, approver, developer, auditor, viewer, ci) gives that role.
    #[arg(
        long = "oidc-role-map",
        value_name = "GROUP=ROLE",
        env = "AIRLOCK_OIDC_ROLE_MAP",
        value_delimiter = ',',
        value_parser = parse_role_mapping
    )]
    oidc_role_map: Vec<(String, airlock_core::model::Role)>,
    /// Warm sandboxes of the default shape (default image and resources, network none) kept
    /// ready: a create of that shape takes one at once; they are made again in the background.
    #[arg(long, env = "AIRLOCK_WARM_POOL", default_value_t = 0)]
    warm_pool: u32,
    /// A warm pool of another shape, `SIZE:key=value,…` (repeatable), keys `memory_mib`,
    /// `cpus`, `pids`, `disk_mib`, `network` (none or egress); keys left out take the default
    /// shape's values. E.g. `20:memory_mib=2048,cpus=2,network=egress`.
    #[arg(
        long = "warm-pool-shape",
        value_name = "SIZE:SHAPE",
        env = "AIRLOCK_WARM_POOL_SHAPES",
        value_delimiter = ';'
    )]
    warm_pool_shapes: Vec<String>,
    /// Live environments the host may hold; beyond, creates get 503 with Retry-After.
    #[arg(long, env = "AIRLOCK_CAPACITY_ENVIRONMENTS", default_value_t = 2000)]
    capacity_environments: u64,
    /// Memory limits of all live environments added up may not pass this (MiB)
    /// [default: no such limit; the reserve below still applies].
    #[arg(long, env = "AIRLOCK_CAPACITY_MEMORY_MIB")]
    capacity_memory_mib: Option<u64>,
    /// CPU limits of all live environments added up may not pass this [default: none].
    #[arg(long, env = "AIRLOCK_CAPACITY_CPUS")]
    capacity_cpus: Option<f64>,
    /// Creates are refused while the host has less memory available than this (MiB).
    #[arg(long, env = "AIRLOCK_MEMORY_RESERVE_MIB", default_value_t = 512)]
    memory_reserve_mib: u64,
    /// The shortest TTL or idle timeout a create may ask for, in seconds.
    #[arg(long, env = "AIRLOCK_MIN_LIFETIME", default_value_t = 60)]
    min_lifetime: u64,
    /// Stop environments after this many seconds without activity unless their create says
    /// otherwise; 0: never.
    #[arg(long, env = "AIRLOCK_DEFAULT_IDLE_TIMEOUT", default_value_t = 0)]
    default_idle_timeout: u64,
    /// Seconds requests in flight may take to finish after SIGTERM before they are cancelled
    /// (environments keep running either way).
    #[arg(long, env = "AIRLOCK_SHUTDOWN_GRACE", default_value_t = 30)]
    shutdown_grace: u64,
    /// The largest file copied in or out of an environment (MiB).
    #[arg(long, env = "AIRLOCK_COPY_LIMIT_MIB", default_value_t = 1024)]
    copy_limit_mib: u64,
    /// The largest recording of one terminal session (MiB); output past it is not recorded
    /// (the recording says so).
    #[arg(long, env = "AIRLOCK_RECORDING_LIMIT_MIB", default_value_t = 64)]
    recording_limit_mib: u64,
    /// Sessions (shells, streamed commands, port forwards) one user may have open at once;
    /// beyond, 429 with Retry-After.
    #[arg(long, env = "AIRLOCK_MAX_SESSIONS_PER_USER", default_value_t = 32)]
    max_sessions_per_user: usize,
    /// Sessions the server relays at once in all; beyond, 503 with Retry-After.
    #[arg(long, env = "AIRLOCK_MAX_SESSIONS", default_value_t = 1024)]
    max_sessions: usize,
    /// Environments created at once; more wait in a fair queue [default: 8].
    #[arg(long, env = "AIRLOCK_MAX_CONCURRENT_CREATES", default_value_t = 8)]
    max_concurrent_creates: usize,
    /// Creates that may wait for a turn; beyond, 503 with Retry-After.
    #[arg(long, env = "AIRLOCK_CREATE_QUEUE_SIZE", default_value_t = 1000)]
    create_queue_size: usize,
    /// Seconds a create may wait for a turn before it is refused with 503 and Retry-After.
    #[arg(long, env = "AIRLOCK_CREATE_QUEUE_WAIT", default_value_t = 10)]
    create_queue_wait: u64,
    /// Requests per principal: N/s, N/m or N/h, with an optional :BURST. Over it: 429 with
    /// Retry-After. Revocations are never limited.
    #[arg(long, env = "AIRLOCK_RATE_LIMIT", default_value = "50/s:200", value_parser = parse_rate)]
    rate_limit: airlock_core::rate_limit::Rate,
    /// ROLE=RATE: the rate of principals with ROLE (the most generous of a principal's roles
    /// applies); repeatable.
    #[arg(
        long = "role-rate-limit",
        value_name = "ROLE=RATE",
        env = "AIRLOCK_ROLE_RATE_LIMITS",
        value_delimiter = ',',
        value_parser = parse_role_rate
    )]
    role_rate_limits: Vec<(airlock_core::model::Role, airlock_core::rate_limit::Rate)>,
    /// Also serve GET /metrics on this address without a credential, for a Prometheus that
    /// holds no token (keep it private). On the API address, /metrics always needs a token
    /// whose user may `metrics.read` (auditors, admins).
    #[arg(long, env = "AIRLOCK_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// POST alerts (JSON) to this URL; repeatable. Delivered in the background with retries.
    #[arg(
        long = "webhook",
        value_name = "URL",
        env = "AIRLOCK_WEBHOOKS",
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = parse_webhook_url
    )]
    webhooks: Vec<String>,
    /// Sign each delivery with HMAC-SHA256 under the key in this file (X-Airlock-Signature).
    #[arg(long, env = "AIRLOCK_WEBHOOK_SECRET_FILE", value_name = "FILE")]
    webhook_secret_file: Option<PathBuf>,
    /// Attempts per alert and webhook, the first included (exponential backoff between).
    #[arg(long, env = "AIRLOCK_WEBHOOK_ATTEMPTS", default_value_t = 5)]
    webhook_attempts: u32,
    /// Seconds one delivery attempt may take.
    #[arg(long, env = "AIRLOCK_WEBHOOK_TIMEOUT", default_value_t = 5)]
    webhook_timeout: u64,
    /// Seconds of the windows in which bursts are counted.
    #[arg(long, env = "AIRLOCK_ALERT_WINDOW", default_value_t = 60)]
    alert_window: u64,
    /// Failed authentications from one source address within a window that raise an alert.
    #[arg(long, env = "AIRLOCK_ALERT_AUTH_FAILURES", default_value_t = 10)]
    alert_auth_failures: u32,
    /// Refusals of one principal for limits (rate, quota, capacity) within a window that
    /// raise an alert.
    #[arg(long, env = "AIRLOCK_ALERT_LIMIT_REFUSALS", default_value_t = 20)]
    alert_limit_refusals: u32,
}

/// An http:// or https:// URL.
fn parse_webhook_url(text: &str) -> Result<String, String> {
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
            Ok(text.to_owned())
        }
        _ => Err("a webhook must be an http:// or https:// URL".into()),
    }
}

fn parse_rate(text: &str) -> Result<airlock_core::rate_limit::Rate, String> {
    airlock_core::rate_limit::Rate::parse(text).map_err(|error| error.to_string())
}

/// `role=rate`.
fn parse_role_rate(
    text: &str,
) -> Result<(airlock_core::model::Role, airlock_core::rate_limit::Rate), String> {
    let (role, rate) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not ROLE=RATE"))?;
    let role = airlock_core::model::Role::parse(role).map_err(|error| error.to_string())?;
    Ok((role, parse_rate(rate)?))
}

/// The warm pools: `--warm-pool N` of the default shape, then each `--warm-pool-shape`.
fn warm_pools(
    default_size: u32,
    shapes: &[String],
) -> anyhow::Result<Vec<airlock_core::policy::WarmPool>> {
    use airlock_core::policy::{Limits, WarmPool};
    let defaults = Limits::default().default_resources;
    let mut pools = Vec::new();
    if default_size > 0 {
        pools.push(WarmPool {
            resources: defaults,
            network: airlock_core::model::NetworkMode::None,
            size: default_size,
        });
    }
    for text in shapes {
        let pool = WarmPool::parse(text, defaults)
            .map_err(|error| anyhow::anyhow!("--warm-pool-shape {text:?}: {error}"))?;
        if pools
            .iter()
            .any(|other: &WarmPool| other.holds(&pool.resources, pool.network))
        {
            anyhow::bail!("--warm-pool-shape {text:?}: that shape already has a pool");
        }
        pools.push(pool);
    }
    Ok(pools)
}

/// `group=role`.
fn parse_role_mapping(text: &str) -> Result<(String, airlock_core::model::Role), String> {
    let (group, role) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not GROUP=ROLE"))?;
    let role = airlock_core::model::Role::parse(role).map_err(|error| error.to_string())?;
    Ok((group.to_owned(), role))
}

/// airlock's own messages at info; libcgroups reports every controller this kernel lacks on
/// each delete, at info and warn, so only its errors are kept.
const DEFAULT_LOG_FILTER: &str = "info,libcgroups=error,libcontainer=warn";

/// `a.b.c.d/n` (or a bare address, meaning /32).
fn parse_ipv4_cidr(text: &str) -> Result<String, String> {
    let (address, prefix) = text.split_once('/').unwrap_or((text, "32"));
    let address: std::net::Ipv4Addr = address
        .parse()
        .map_err(|_| format!("{text:?} is not an IPv4 address or CIDR"))?;
    match prefix.parse::<u8>() {
        Ok(prefix) if prefix <= 32 => Ok(format!("{address}/{prefix}")),
        _ => Err(format!("{text:?} has a bad prefix length")),
    }
}

pub fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/airlock")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(airlock_runtime::helper::HELPER_ARG) {
        let request = args.get(2).map(String::as_str).unwrap_or("");
        if let Ok(filter) = std::env::var("AIRLOCK_HELPER_LOG") {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .init();
        }
        return ExitCode::from(airlock_runtime::helper::main(request) as u8);
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => run_server(*args).await.map(|()| 0),
            Command::Env(command) => commands::env(&cli.connection, command).await,
            Command::User(command) => commands::user(&cli.connection, command).await,
            Command::Token(command) => commands::token(&cli.connection, command).await,
            Command::Team(command) => access::team(&cli.connection, command).await,
            Command::Access(command) => access::access(&cli.connection, command).await,
            Command::Audit(command) => audit::audit(&cli.connection, command).await,
            Command::Whoami => commands::whoami(&cli.connection).await,
            Command::Shell {
                environment,
                command,
            } => {
                let client = client::Client::new(&cli.connection)?;
                let options = sessions::Stream {
                    argv: command,
                    tty: true,
                    env: Vec::new(),
                    cwd: None,
                    stdin: true,
                };
                sessions::stream(&client, &environment, options).await
            }
            Command::Cp { source, target } => {
                sessions::copy(&cli.connection, &source, &target).await
            }
            Command::PortForward {
                environment,
                ports,
                address,
            } => sessions::port_forward(&cli.connection, &environment, &ports, &address).await,
            Command::Session(command) => sessions::session(&cli.connection, command).await,
            Command::Login { url, token } => commands::login(&url, &token).map(|()| 0),
            Command::Purge { data_dir } => {
                let count = airlock_server::purge(&data_dir, std::env::current_exe()?).await?;
                println!("destroyed {count} sandboxes");
                Ok(0)
            }
        }
    });
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("AIRLOCK_LOG")
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    if std::env::var("AIRLOCK_LOG_FORMAT").as_deref() == Ok("json") {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let helper = std::env::current_exe()?;
    let webhook_secret = match &args.webhook_secret_file {
        Some(path) => {
            use std::os::unix::fs::PermissionsExt;
            let contents = std::fs::read(path).map_err(|error| {
                anyhow::anyhow!("reading the webhook secret {}: {error}", path.display())
            })?;
            if std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o077 != 0) {
                tracing::warn!(file = %path.display(), "the webhook secret file is readable by others than its owner");
            }
            Some(
                airlock_server::WebhookSecret::from_file_contents(&contents).ok_or_else(|| {
                    anyhow::anyhow!("the webhook secret file {} is empty", path.display())
                })?,
            )
        }
        None => None,
    };
    let warm_pools = warm_pools(args.warm_pool, &args.warm_pool_shapes)?;
    let config = airlock_server::ServerConfig {
        data_dir: args.data_dir,
        database_url: args.database_url,
        listen: args.listen,
        helper,
        limits: airlock_core::policy::Limits {
            access_request_ttl: std::time::Duration::from_secs(args.access_request_ttl.max(1)),
            min_ttl: std::time::Duration::from_secs(args.min_lifetime.max(1)),
            default_idle_timeout: (args.default_idle_timeout > 0)
                .then(|| std::time::Duration::from_secs(args.default_idle_timeout)),
            rate_limits: airlock_core::rate_limit::RateLimits {
                default: args.rate_limit,
                by_role: args.role_rate_limits,
            },
            host_capacity: airlock_core::model::Quota {
                max_environments: Some(args.capacity_environments),
                max_memory_mib: args.capacity_memory_mib,
                max_millicpus: args
                    .capacity_cpus
                    .map(|cpus| (cpus.max(0.0) * 1000.0).round() as u64),
            },
            memory_reserve_mib: args.memory_reserve_mib,
            copy_limit: args.copy_limit_mib.saturating_mul(1 << 20),
            warm_pools,
            admission: airlock_core::admission::AdmissionConfig {
                concurrency: args.max_concurrent_creates.max(1),
                max_queue: args.create_queue_size,
                max_wait: std::time::Duration::from_secs(args.create_queue_wait),
            },
            ..Default::default()
        },
        reconcile_every: std::time::Duration::from_secs(args.reconcile_seconds.max(1)),
        shutdown_grace: std::time::Duration::from_secs(args.shutdown_grace),
        session_limits: airlock_server::SessionLimits {
            recording: args.recording_limit_mib.saturating_mul(1 << 20),
            per_user: args.max_sessions_per_user.max(1),
            total: args.max_sessions.max(1),
        },
        metrics_listen: args.metrics_listen,
        alerts: airlock_server::AlertConfig {
            webhooks: args.webhooks,
            secret: webhook_secret,
            thresholds: airlock_server::Thresholds {
                window: std::time::Duration::from_secs(args.alert_window.max(1)),
                auth_failures: args.alert_auth_failures.max(1),
                limit_refusals: args.alert_limit_refusals.max(1),
            },
            attempts: args.webhook_attempts.max(1),
            attempt_timeout: std::time::Duration::from_secs(args.webhook_timeout.max(1)),
            ..Default::default()
        },
        egress: !args.no_egress,
        egress_allow: args.egress_allow,
        policy_file: args.policy_file,
        replace_default_policies: args.replace_default_policies,
        oidc: args.oidc_issuer.map(|issuer| airlock_server::OidcSettings {
            issuer,
            audience: args.oidc_audience.unwrap_or_default(),
            jwks_url: args.oidc_jwks_url,
            groups_claim: args.oidc_groups_claim,
            role_map: args.oidc_role_map,
            leeway: std::time::Duration::from_secs(60),
        }),
    };
    let reconcile_every = config.reconcile_every;
    let started = airlock_server::start(config).await?;
    if let Some(token) = &started.admin_token {
        println!(
            "admin token (shown once; also in {}):",
            started.admin_token_path.display()
        );
        println!("  {token}");
    }
    if let Some(address) = started.metrics_address {
        println!("metrics on http://{address}/metrics");
    }
    println!("airlock listening on http://{}", started.address);
    airlock_server::run(started, reconcile_every).await
}
