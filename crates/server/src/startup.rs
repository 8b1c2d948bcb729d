//! Start-up and shutdown: the data directory, the store, the runtime, the first admin token,
//! reconciliation before the first request, the periodic reconciler, and the listener.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use airlock_core::Engine;
use airlock_core::authz::Authorizer;
use airlock_core::policy::Limits;
use airlock_core::ports::{Runtime, Store, SystemClock};
use airlock_runtime::{LocalConfig, LocalRuntime};
use airlock_store::{PostgresStore, SqliteStore};
use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};
use tokio::net::TcpListener;

use crate::alerts::{AlertConfig, Alerts};
use crate::checkpoints::Checkpointer;
use crate::metrics::Metrics;
use crate::oidc_auth::{OidcAuthenticator, OidcSettings};
use crate::secrets::HostSecrets;
use crate::sessions::{SessionLimits, Sessions};
use crate::{AppState, build_app, build_metrics_app, serve};

/// How often grants, expiries and idle timeouts are checked: "within a few seconds".
const ACCESS_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How often the warm pool is checked when no create takes from it.
const POOL_CHECK_EVERY: Duration = Duration::from_secs(5);

/// How often the audit chain is checkpointed when it moved (and once more at shutdown).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

/// Everything the server needs to start, validated by the caller (the CLI).
/// Not `Debug`: the database URL may hold a password.
#[derive(Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// Keep state in this PostgreSQL database (`postgres://…`, it may hold a password) instead
    /// of the SQLite file in `data_dir`.
    pub database_url: Option<String>,
    pub listen: SocketAddr,
    /// The airlock executable, run as the runtime helper.
    pub helper: PathBuf,
    pub limits: Limits,
    pub reconcile_every: Duration,
    /// Offer the `egress` network mode.
    pub egress: bool,
    /// CIDRs egress environments may reach although private.
    pub egress_allow: Vec<String>,
    /// A Cedar policy file added to (or, with `replace_default_policies`, replacing) the
    /// built-in role policies.
    pub policy_file: Option<PathBuf>,
    pub replace_default_policies: bool,
    /// Accept bearer JWTs from this OIDC issuer.
    pub oidc: Option<OidcSettings>,
    /// How long requests in flight may finish after SIGTERM before they are cancelled.
    pub shutdown_grace: Duration,
    /// Recordings' size, sessions per user and in all.
    pub session_limits: SessionLimits,
    /// Also serve `/metrics` here, without a credential (a private address, for Prometheus).
    pub metrics_listen: Option<SocketAddr>,
    /// Webhooks and the thresholds of alerts.
    pub alerts: AlertConfig,
}

/// A started server: where it listens, and the admin secret if this start created it.
pub struct Started {
    pub address: SocketAddr,
    pub admin_token: Option<String>,
    pub admin_token_path: PathBuf,
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    /// Where the unauthenticated metrics listener is, when there is one.
    pub metrics_address: Option<SocketAddr>,
    metrics_listener: Option<TcpListener>,
    checkpointer: Arc<Checkpointer>,
    oidc: Option<Arc<OidcAuthenticator>>,
    shutdown_grace: Duration,
    sessions: Arc<Sessions>,
    listener: TcpListener,
    _lock: Flock<fs::File>,
}

/// Opens everything and reconciles, but does not serve yet.
pub async fn start(config: ServerConfig) -> Result<Started> {
    // The policies first: a file that does not parse stops the server before it touches
    // anything.
    let authorizer = load_policies(&config)?;
    fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    fs::set_permissions(&config.data_dir, fs::Permissions::from_mode(0o700))
        .context("securing the data directory")?;
    let lock = lock_data_dir(&config.data_dir)?;

    let store: Arc<dyn Store> = match &config.database_url {
        Some(url) => Arc::new(
            PostgresStore::connect(url)
                .await
                .context("opening the PostgreSQL database")?,
        ),
        None => Arc::new(
            SqliteStore::open(&config.data_dir.join("airlock.db"))
                .await
                .context("opening the database")?,
        ),
    };
    let runtime = LocalRuntime::open(LocalConfig {
        root: config.data_dir.join("runtime"),
        helper: config.helper.clone(),
        egress: config.egress,
        egress_allow: config.egress_allow.clone(),
    })
    .context(
        "preparing the local isolation backend (it needs root, namespaces, cgroups and overlayfs)",
    )?;
    let runtime: Arc<dyn Runtime> = Arc::new(runtime);
    // Observers first: the sweep and the reconciliation below already raise alerts (queued
    // until the webhooks answer).
    let metrics = Metrics::new();
    let alerts = Alerts::start(config.alerts.clone(), metrics.clone())
        .context("configuring alert webhooks")?;
    let engine = Arc::new(
        Engine::new(store, runtime, Arc::new(SystemClock), config.limits.clone())
            .with_authorizer(authorizer)
            .with_secrets(Arc::new(HostSecrets))
            .with_observer(metrics.clone())
            .with_observer(alerts),
    );
    let oidc = config
        .oidc
        .clone()
        .map(OidcAuthenticator::new)
        .transpose()
        .context("configuring OIDC")?;

    // Before anything is audited: events an older airlock wrote get their place in the
    // chain, and the checkpoint key is ready.
    engine
        .prepare_audit()
        .await
        .context("preparing the audit chain")?;
    let checkpointer =
        Arc::new(Checkpointer::open(&config.data_dir).context("opening the audit checkpoints")?);

    // Before the first request: a clock set back while the server was down cannot extend a
    // grant, and a grant that ended while it was down is revoked now.
    engine.restore_time().await.context("reading the time")?;
    let swept = engine
        .sweep_access()
        .await
        .context("ending access grants that ran out")?;
    if swept != Default::default() {
        tracing::warn!(?swept, "ended access grants at start");
    }

    let orphaned = engine
        .end_orphaned_sessions()
        .await
        .context("ending the sessions of an earlier server")?;
    if orphaned > 0 {
        tracing::warn!(orphaned, "ended sessions an earlier server left open");
    }

    let report = engine
        .reconcile()
        .await
        .context("reconciling records with sandboxes")?;
    if report != Default::default() {
        tracing::warn!(?report, "reconciled at start");
    }

    let admin_token_path = config.data_dir.join("admin-token");
    let admin_token = match engine
        .bootstrap_admin()
        .await
        .context("creating the first admin")?
    {
        Some((_, secret)) => {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&admin_token_path)
                .context("writing the admin token file")?;
            writeln!(file, "{}", secret.expose()).context("writing the admin token file")?;
            Some(secret.expose().to_owned())
        }
        None => None,
    };

    // After the first admin: the pool's owner is a user too.
    engine
        .prepare_pool()
        .await
        .context("preparing the warm pool")?;

    // Everything start-up did is signed before the first request.
    checkpoint(&engine, &checkpointer)
        .await
        .context("writing an audit checkpoint")?;

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let address = listener.local_addr()?;
    let metrics_listener = match config.metrics_listen {
        Some(listen) => Some(
            TcpListener::bind(listen)
                .await
                .with_context(|| format!("listening for metrics on {listen}"))?,
        ),
        None => None,
    };
    let metrics_address = metrics_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    if let Some(address) = metrics_address
        && address.ip().is_unspecified()
    {
        tracing::warn!(%address, "/metrics is served without a credential on every interface");
    }
    Ok(Started {
        address,
        admin_token,
        admin_token_path,
        engine,
        metrics,
        metrics_address,
        metrics_listener,
        checkpointer,
        oidc: oidc.map(Arc::new),
        shutdown_grace: config.shutdown_grace,
        sessions: Arc::new(Sessions::new(
            config.data_dir.join("recordings"),
            config.session_limits,
        )),
        listener,
        _lock: lock,
    })
}

fn load_policies(config: &ServerConfig) -> Result<Authorizer> {
    let Some(path) = &config.policy_file else {
        return Ok(Authorizer::new(None, false)?);
    };
    let text = fs::read_to_string(path)
        .with_context(|| format!("reading the policy file {}", path.display()))?;
    Authorizer::new(Some(&text), config.replace_default_policies)
        .with_context(|| format!("loading the policies of {}", path.display()))
}

/// Serves a started server until SIGINT or SIGTERM, reconciling periodically. Sandboxes keep
/// running after the server stops.
pub async fn run(started: Started, reconcile_every: Duration) -> Result<()> {
    let engine = started.engine.clone();
    let reconciler = tokio::spawn(async move {
        let mut interval = tokio::time::interval(reconcile_every);
        interval.tick().await;
        loop {
            interval.tick().await;
            match engine.reconcile().await {
                Ok(report) if report != Default::default() => tracing::warn!(?report, "reconciled"),
                Ok(_) => {}
                Err(error) => tracing::error!(%error, "reconciliation failed"),
            }
        }
    });
    let engine = started.engine.clone();
    let sweeper = tokio::spawn(async move {
        let mut interval = tokio::time::interval(ACCESS_SWEEP_EVERY);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            match engine.sweep_access().await {
                Ok(report) if report != Default::default() => {
                    tracing::info!(?report, "access sweep")
                }
                Ok(_) => {}
                Err(error) => tracing::error!(%error, "access sweep failed"),
            }
            match engine.reap().await {
                Ok(report) if report != Default::default() => tracing::info!(?report, "reaped"),
                Ok(_) => {}
                Err(error) => tracing::error!(%error, "reaping failed"),
            }
        }
    });
    let engine = started.engine.clone();
    let refiller = tokio::spawn(async move {
        loop {
            match engine.refill_pool().await {
                Ok(report) if report != Default::default() => {
                    tracing::info!(?report, "warm pool refilled")
                }
                Ok(_) => {}
                Err(error) => tracing::error!(%error, "refilling the warm pool failed"),
            }
            // Again as soon as a create takes a warm sandbox, and every few seconds anyway.
            engine.pool_drained(POOL_CHECK_EVERY).await;
        }
    });
    let metrics_server = started.metrics_listener.map(|listener| {
        let app = build_metrics_app(started.engine.clone(), started.metrics.clone());
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "the metrics listener failed");
            }
        })
    });
    let engine = started.engine.clone();
    let checkpointer = started.checkpointer.clone();
    let checkpoints = tokio::spawn(async move {
        let mut interval = tokio::time::interval(CHECKPOINT_EVERY);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if let Err(error) = checkpoint(&engine, &checkpointer).await {
                tracing::error!(error = format!("{error:#}"), "audit checkpoint failed");
            }
        }
    });
    let app = build_app(AppState {
        engine: started.engine.clone(),
        oidc: started.oidc.clone(),
        sessions: started.sessions.clone(),
        metrics: started.metrics.clone(),
    });
    // On SIGTERM or SIGINT: stop accepting, let requests in flight finish for the grace
    // period, then cancel the rest (a cancelled create is reconciled at the next start).
    // Environments keep running either way.
    let (signalled, mut on_signal) = tokio::sync::watch::channel(false);
    let mut server = tokio::spawn(serve(started.listener, app, async move {
        shutdown_signal().await;
        let _ = signalled.send(true);
    }));
    let served = tokio::select! {
        served = &mut server => served,
        _ = on_signal.wait_for(|signalled| *signalled) => {
            // Sessions are not requests in flight: each ends now and records its end.
            started.sessions.close_all(started.shutdown_grace).await;
            match tokio::time::timeout(started.shutdown_grace, &mut server).await {
                Ok(served) => served,
                Err(_) => {
                    tracing::warn!(
                        grace = ?started.shutdown_grace,
                        "cancelling the requests still in flight"
                    );
                    server.abort();
                    Ok(Ok(()))
                }
            }
        }
    };
    // Whichever branch won above: every session ends, and records its end, before the
    // background work stops and the last checkpoint is signed.
    started.sessions.close_all(started.shutdown_grace).await;
    reconciler.abort();
    sweeper.abort();
    refiller.abort();
    if let Some(metrics_server) = metrics_server {
        metrics_server.abort();
    }
    checkpoints.abort();
    // The last word: everything recorded until now is signed.
    if let Err(error) = checkpoint(&started.engine, &started.checkpointer).await {
        tracing::error!(
            error = format!("{error:#}"),
            "the final audit checkpoint failed"
        );
    }
    served
        .context("the server task failed")?
        .context("serving")?;
    tracing::info!("stopped; environments keep running");
    Ok(())
}

/// Signs the audit chain's head, if it moved since the last checkpoint.
async fn checkpoint(engine: &Engine, checkpointer: &Arc<Checkpointer>) -> Result<()> {
    let head = engine
        .audit_head()
        .await
        .context("reading the chain's head")?;
    let time = engine.now();
    let checkpointer = checkpointer.clone();
    tokio::task::spawn_blocking(move || checkpointer.checkpoint(head, time))
        .await
        .context("the checkpoint task failed")??;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}

/// Destroys every sandbox of a data directory (for uninstalling, or after tests). The server
/// must be stopped: this takes the same lock.
pub async fn purge(data_dir: &std::path::Path, helper: PathBuf) -> Result<usize> {
    let _lock = lock_data_dir(data_dir)?;
    let runtime = LocalRuntime::open(LocalConfig {
        root: data_dir.join("runtime"),
        helper,
        egress: false,
        egress_allow: Vec::new(),
    })?;
    let sandboxes = runtime.list().await?;
    for id in &sandboxes {
        runtime
            .destroy(id)
            .await
            .with_context(|| format!("destroying {id}"))?;
    }
    // Safe here, unlike while serving: no create can be making a cgroup under the parent.
    runtime.release_host_resources();
    Ok(sandboxes.len())
}

/// One server per data directory: a second would reconcile away the first one's sandboxes.
/// The lock lasts as long as the returned guard.
fn lock_data_dir(data_dir: &std::path::Path) -> Result<Flock<fs::File>> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(data_dir.join("airlock.lock"))
        .context("opening the lock file")?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            bail!("another airlock server is using {}", data_dir.display())
        }
        Err((_, error)) => Err(error).context("locking the data directory"),
    }
}
