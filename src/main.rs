//! The `sidekey` binary: reads the config, builds the runtime pieces from it, and runs the
//! listeners until SIGTERM/SIGINT. `sidekey check` validates a config and prints its policy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sidekey_admin::AdminState;
use sidekey_audit::AuditWriter;
use sidekey_config::{AuditConfig, Config};
use sidekey_credentials::{CredentialStore, Issuer, Jwk};
use sidekey_proxy::ProxyState;
use sidekey_tls::{CertificateAuthority, InterceptScope, LeafLimits};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod bundle;
mod probe;

/// The config `sidekey run` uses when given none: the quickstart, built in.
const QUICKSTART: &str = include_str!("../examples/quickstart.yaml");

/// How long in-flight requests and tunnels get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "sidekey",
    version,
    about = "Per-pod egress proxy for AI agents: allowlist, short-lived credentials, audit."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Config file. Without one, the built-in quickstart config is used.
        #[arg(long, short, env = "SIDEKEY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print the effective policy (routes in match order).
    Check {
        /// Config file.
        file: PathBuf,
    },
    /// Ask a running sidekey's admin listener whether it is ready (`/readyz`) or alive
    /// (`/healthz`); exit 0 if so, 1 if not. For exec probes: the admin listener stays on
    /// loopback, where kubelet's HTTP probes cannot reach it.
    Probe {
        /// `ready` or `live`.
        #[arg(value_enum, default_value_t = ProbeKind::Ready)]
        kind: ProbeKind,
        /// Admin address. Default: `listen.admin` of the config, else 127.0.0.1:15090.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// The running sidekey's config, to find its admin address.
        #[arg(long, short, env = "SIDEKEY_CONFIG")]
        config: Option<PathBuf>,
        /// Timeout of one attempt.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Keep asking (every 200 ms) until the answer is yes or this much time has passed.
        #[arg(long, value_parser = humantime::parse_duration)]
        wait: Option<Duration>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProbeKind {
    /// GET /readyz: listeners serving and eager credentials held.
    Ready,
    /// GET /healthz: the process serves.
    Live,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { file } => check(&file),
        Command::Probe {
            kind,
            admin,
            config,
            timeout,
            wait,
        } => probe::run(kind, admin, config.as_deref(), timeout, wait),
        Command::Run { config } => {
            init_logging();
            let (source, origin) = match load(config.as_deref()) {
                Ok(loaded) => loaded,
                Err(e) => {
                    eprintln!("sidekey: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let config = match sidekey_config::parse(&source, &origin) {
                Ok(config) => config,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(2);
                }
            };
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.enable_all();
            // Default: one worker per core. SIDEKEY_WORKER_THREADS caps it, e.g. to match the
            // CPU quota of a sidecar, or to compare with peers on one core in the benchmarks.
            if let Some(n) = worker_threads() {
                builder.worker_threads(n);
            }
            let runtime = match builder.build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("sidekey: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("sidekey: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `SIDEKEY_WORKER_THREADS`: a positive number of runtime worker threads; anything else is
/// ignored (with a warning) and the default, one per core, is used.
fn worker_threads() -> Option<usize> {
    let raw = std::env::var("SIDEKEY_WORKER_THREADS").ok()?;
    match raw.trim().parse::<usize>() {
        Ok(n) if n > 0 => Some(n),
        _ => {
            eprintln!("sidekey: ignoring SIDEKEY_WORKER_THREADS={raw:?}: not a positive number");
            None
        }
    }
}

fn check(file: &Path) -> ExitCode {
    let origin = file.display().to_string();
    let source = match std::fs::read_to_string(file) {
        Ok(source) => source,
        Err(e) => {
            eprintln!("sidekey: cannot read {origin}: {e}");
            return ExitCode::from(2);
        }
    };
    match sidekey_config::parse(&source, &origin) {
        Ok(config) => {
            println!("{origin}: ok\n");
            println!("{}", config.describe());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: Option<&Path>) -> anyhow::Result<(String, String)> {
    match path {
        Some(path) => {
            let source = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Ok((source, path.display().to_string()))
        }
        None => Ok((QUICKSTART.to_string(), "<built-in quickstart>".to_string())),
    }
}

/// Diagnostics go to stderr; stdout is reserved for the audit trail.
/// No core dumps: a crash must not write the credentials, the CA key or the issuer tokens held
/// in memory to disk. RLIMIT_CORE 0 stops the kernel writing one; PR_SET_DUMPABLE 0 also stops
/// core_pattern pipes (systemd-coredump, apport) and same-user ptrace / /proc/<pid>/mem reads.
/// Failing to harden (a sandbox refusing the calls) is logged, not fatal. Secret pages are not
/// mlock'ed: an unprivileged pod's RLIMIT_MEMLOCK is small, and swap is usually off on
/// Kubernetes nodes (see docs/threat-model.md).
fn harden_process() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{
            set_dumpable_behavior, setrlimit, DumpableBehavior, Resource, Rlimit,
        };
        let no_core = Rlimit {
            current: Some(0),
            maximum: Some(0),
        };
        if let Err(e) = setrlimit(Resource::Core, no_core) {
            tracing::warn!(error = %e, "cannot disable core dumps (RLIMIT_CORE)");
        }
        if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
            tracing::warn!(error = %e, "cannot mark the process non-dumpable (PR_SET_DUMPABLE)");
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIDEKEY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .init();
}

async fn run(config: Config) -> anyhow::Result<()> {
    harden_process();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let audit_writer = match &config.audit {
        AuditConfig::Stdout => AuditWriter::stdout(),
        AuditConfig::File(path) => AuditWriter::file(path),
    }
    .context("cannot open the audit sink")?;
    let audit = audit_writer.log();

    // Issuers and credentials: keys generated or loaded, clients built; nothing fetched yet.
    let mut issuers = HashMap::new();
    let mut jwks: Vec<Jwk> = Vec::new();
    for issuer in &config.issuers {
        let built = Issuer::build(issuer).with_context(|| format!("issuer `{}`", issuer.name))?;
        if let Issuer::Local(local) = &built {
            jwks.push(local.jwk().clone());
        }
        issuers.insert(issuer.name.clone(), Arc::new(built));
    }
    let credentials = Arc::new(CredentialStore::new(
        &config.credentials,
        &issuers,
        audit.clone(),
    )?);

    // Interception CA: key in memory, public certificate out for agents, name-constrained to
    // the intercepted routes' hosts. (A reload that changes those hosts must build a new CA
    // from the new scope and rewrite cert_out.)
    let ca = Arc::new(CertificateAuthority::generate(
        InterceptScope::from_policy(&config.policy()),
        LeafLimits {
            cache_size: config.ca.leaf_cache_size,
            mint_rate: config.ca.leaf_mint_rate,
            mint_burst: config.ca.leaf_mint_burst,
        },
    )?);
    if let Some(path) = &config.ca.cert_out {
        ca.write_cert(path)?;
        tracing::info!(path = %path.display(), "wrote the interception CA certificate");
    }
    if let Some(path) = &config.ca.bundle_out {
        bundle::write(ca.cert_pem(), path)?;
    }
    let upstream_tls = sidekey_tls::upstream_client_config(&config.upstream.extra_ca_files)?;
    let state = Arc::new(ProxyState::new(
        &config,
        Arc::clone(&credentials),
        ca,
        upstream_tls,
        audit.clone(),
    ));

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let admin = Arc::new(AdminState::new(Arc::clone(&credentials), &jwks));

    if let Some(addr) = config.listen.forward {
        let listener = bind("forward", addr).await?;
        let (state, token, conns) = (Arc::clone(&state), shutdown.clone(), tracker.clone());
        tracker.spawn(sidekey_proxy::accept_loop(
            "forward",
            listener,
            Arc::clone(&state.limits.connections),
            shutdown.clone(),
            tracker.clone(),
            move |stream| {
                sidekey_proxy::forward::serve_connection(
                    Arc::clone(&state),
                    stream,
                    token.clone(),
                    conns.clone(),
                )
            },
        ));
    }
    if let Some(addr) = config.listen.routes {
        let listener = bind("routes", addr).await?;
        let (state, token) = (Arc::clone(&state), shutdown.clone());
        tracker.spawn(sidekey_proxy::accept_loop(
            "routes",
            listener,
            Arc::clone(&state.limits.connections),
            shutdown.clone(),
            tracker.clone(),
            move |stream| {
                sidekey_proxy::routes::serve_connection(Arc::clone(&state), stream, token.clone())
            },
        ));
    }
    if let Some(addr) = config.listen.admin {
        let listener = bind("admin", addr).await?;
        tokio::spawn(sidekey_admin::serve(
            listener,
            Arc::clone(&admin),
            shutdown.clone(),
        ));
    }
    admin.serving.store(true, Ordering::Release);

    // Eager credentials: readiness waits for them; a failure is retried with backoff.
    {
        let credentials = Arc::clone(&credentials);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(500);
            loop {
                match credentials.fetch_eager().await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?delay, "eager credential fetch failed")
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        });
    }

    wait_for_signal().await;
    tracing::info!("shutting down: draining connections");
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?DRAIN_TIMEOUT, "connections still open after the drain timeout; closing them");
    }
    // Leases and issuer tokens are revoked once no request can use them any more.
    credentials.shutdown().await;
    audit_writer.shutdown();
    Ok(())
}

async fn bind(name: &'static str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({name})"))?;
    let local = listener.local_addr()?;
    tracing::info!("listening listener={name} addr={local}");
    Ok(listener)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
