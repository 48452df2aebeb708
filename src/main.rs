//! The `sidekey` binary: reads the config, builds the runtime pieces from it, and runs the
//! listeners until SIGTERM/SIGINT. `sidekey check` validates a config and prints its policy;
//! `sidekey audit trace` shows an audit file as a tree of who did what for whom.

use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sidekey::runtime::{Runtime, Source};
use sidekey_admin::Surface;
use sidekey_audit::trace::{self, Filter};
use sidekey_audit::AuditWriter;
use sidekey_config::{AuditConfig, Config};
use sidekey_metrics::Metrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod explain;
mod grant_cli;
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
        /// How often the config file is checked for changes (a reload when its bytes differ,
        /// e.g. a Kubernetes ConfigMap update); 0s: never. SIGHUP reloads at any time.
        #[arg(long, env = "SIDEKEY_CONFIG_POLL", default_value = "5s", value_parser = humantime::parse_duration)]
        config_poll: Duration,
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
    /// Task grants: make a signing key, sign a grant, derive a sub-agent's grant, revoke one.
    Grant {
        #[command(subcommand)]
        command: grant_cli::GrantCommand,
    },
    /// Say what sidekey would do with one request, and why, without sending anything.
    ///
    /// Which listener rule, route, credential and injection the request would get, or the
    /// refusal (code, HTTP status and message, exactly as the proxy answers) and the check that
    /// made it. Only the pure decisions run: no network, no issuer call, no credential fetched.
    /// `https://…` on the forward listener is decided as the proxy does, the CONNECT first, then
    /// the request inside the tunnel (SNI: the URL's host); `http://…` in absolute form. With
    /// `--listener routes`, URL is `http://<routes listener>/r/<route>/<path>` or just
    /// `/r/<route>/<path>`. Checks only the running proxy can make (the upstream's address after
    /// DNS, `_method` in a streamed body, the leaf mint budget, revocations) are said in notes.
    ///
    /// Exit 0: allowed (or tunnelled); 1: refused; 2: usage or config error (an invalid config
    /// is reported as `sidekey check` reports it).
    Explain {
        /// Config file. Without one, the built-in quickstart config is used.
        #[arg(long, short, env = "SIDEKEY_CONFIG")]
        config: Option<PathBuf>,
        /// The listener the request is sent to.
        #[arg(long, value_enum, default_value_t = explain::Listener::Forward)]
        listener: explain::Listener,
        /// A task grant presented with the request (else one in `-H 'Proxy-Authorization: …'`,
        /// or `-H 'x-sidekey-grant: …'` on the route listener): verified against the config's
        /// `grants.trusted` JWKS files (a `jwks_url` is not fetched: the scope is then applied
        /// unverified, and labelled so).
        #[arg(long, env = "SIDEKEY_GRANT", hide_env_values = true)]
        grant: Option<String>,
        /// A request header, `Name: value` (repeatable), e.g. `-H 'Host: other.example'`,
        /// `-H 'X-HTTP-Method-Override: DELETE'`, `-H 'Content-Type: application/x-www-form-urlencoded'`.
        #[arg(short = 'H', long = "header", value_name = "HEADER")]
        headers: Vec<String>,
        /// The body's declared length in bytes (Content-Length); default: none, an empty body.
        #[arg(long, value_name = "N")]
        body_length: Option<u64>,
        /// The TLS server name sent inside the tunnel of an `https://` URL (`""`: none).
        /// Default: the URL's host, as clients send it (none for an IP address).
        #[arg(long, value_name = "NAME")]
        sni: Option<String>,
        /// `text`, or `json`: one JSON document.
        #[arg(long, value_enum, default_value_t = TraceFormat::Text)]
        format: TraceFormat,
        /// The method, e.g. GET.
        method: String,
        /// The URL, e.g. https://api.github.com/repos/o/r.
        url: String,
    },
    /// Read an audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Show an audit file as a tree of who did what, for whom.
    ///
    /// End user (`on_behalf_of`) → task → agents by grant (a sub-agent under the grant it was
    /// derived from) → the credentials each used → its requests, in the order they first
    /// appear. Lines that are not requests or credential events are counted on stderr.
    /// Exit 0, or 2 when FILE cannot be read.
    Trace {
        /// Audit file (JSON lines, as `audit:` writes them); `-` reads standard input.
        file: PathBuf,
        /// Only this task (`task_id`).
        #[arg(long)]
        task: Option<String>,
        /// Only tasks run on behalf of this end user (`on_behalf_of`).
        #[arg(long)]
        user: Option<String>,
        /// `text`: an indented tree; `json`: the same tree as one JSON document.
        #[arg(long, value_enum, default_value_t = TraceFormat::Text)]
        format: TraceFormat,
    },
    /// Print an audit file's request records as OCSF 1.1 HTTP Activity events (class 4002), one
    /// JSON line each, for a SIEM. Other records are skipped and counted on stderr. Exit 0, or 2
    /// when FILE cannot be read.
    Ocsf {
        /// Audit file (JSON lines); `-` reads standard input.
        file: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TraceFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProbeKind {
    /// GET /readyz: listeners serving and eager credentials held.
    Ready,
    /// GET /healthz: the process serves.
    Live,
}

/// `--features dhat-heap`: every allocation is counted (benches/allocs.py); the totals are
/// printed to stderr and `dhat-heap.json` written to the working directory at exit.
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// `--features mimalloc` or `jemalloc`: another global allocator, for memory measurements
/// (benches/memory.py).
#[cfg(all(feature = "mimalloc", not(feature = "dhat-heap")))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(all(
    feature = "jemalloc",
    not(feature = "dhat-heap"),
    not(feature = "mimalloc")
))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::new_heap();
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
        Command::Grant { command } => grant_cli::run(command),
        Command::Explain {
            config,
            listener,
            grant,
            headers,
            body_length,
            sni,
            format,
            method,
            url,
        } => explain_request(
            config.as_deref(),
            grant.as_deref(),
            format,
            &explain::Ask {
                listener,
                method,
                url,
                headers,
                body_length,
                sni,
            },
        ),
        Command::Audit {
            command:
                AuditCommand::Trace {
                    file,
                    task,
                    user,
                    format,
                },
        } => audit_trace(&file, Filter { task, user }, format),
        Command::Audit {
            command: AuditCommand::Ocsf { file },
        } => audit_ocsf(&file),
        Command::Run {
            config,
            config_poll,
        } => {
            init_logging();
            let (text, source, mut config) = match load_parsed(config.as_deref(), "sidekey") {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            if let Err(e) = sidekey::runtime::apply_env(&mut config) {
                eprintln!("sidekey: {e}");
                return ExitCode::from(2);
            }
            // Default: one worker per core (as the CPU quota allows). SIDEKEY_WORKER_THREADS
            // caps it, e.g. to match the CPU quota of a sidecar, or to compare with peers on one
            // core in the benchmarks. One worker runs tokio's current-thread scheduler, as
            // linkerd2-proxy does on one core: the work-stealing one has nothing to steal
            // between one worker and itself, and costs ~2 % more instructions per request and
            // 5-11 % of the requests per second (benches/NOTES.md).
            let workers = worker_threads().unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
            });
            let mut builder = if workers == 1 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                builder.worker_threads(workers);
                builder
            };
            builder.enable_all();
            let runtime = match builder.build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("sidekey: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let scheduler = if workers == 1 {
                "current-thread"
            } else {
                "multi-thread"
            };
            tracing::info!("runtime workers={workers} scheduler={scheduler}");
            match runtime.block_on(run(source, text, config, config_poll)) {
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
            // The files the config names that are checked as a whole: Cedar policies.
            if let Err(e) = sidekey::runtime::load_cedar(&config) {
                eprintln!("{origin}: {e:#}");
                return ExitCode::FAILURE;
            }
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

/// The config `run` and `explain` use (the file, or the built-in quickstart), read and validated;
/// a failure is reported on stderr, prefixed with `name`, and exits 2.
fn load_parsed(config: Option<&Path>, name: &str) -> Result<(String, Source, Config), ExitCode> {
    let (text, source) = load(config).map_err(|e| {
        eprintln!("{name}: {e:#}");
        ExitCode::from(2)
    })?;
    let config = sidekey_config::parse(&text, &source.origin()).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(2)
    })?;
    Ok((text, source, config))
}

/// `sidekey explain`: 0 allowed or tunnelled, 1 refused, 2 usage or config error.
fn explain_request(
    config: Option<&Path>,
    grant: Option<&str>,
    format: TraceFormat,
    ask: &explain::Ask,
) -> ExitCode {
    const NAME: &str = "sidekey explain";
    let config = match load_parsed(config, NAME) {
        Ok((_, _, config)) => config,
        Err(code) => return code,
    };
    let grant = explain::grant_of(&config, ask, grant);
    let explanation = match explain::explain(&config, ask, &grant) {
        Ok(explanation) => explanation,
        Err(explain::Usage(message)) => {
            eprintln!("{NAME}: {message}");
            return ExitCode::from(2);
        }
    };
    match format {
        TraceFormat::Text => print!("{}", explanation.text()),
        TraceFormat::Json => println!("{}", explanation.json()),
    }
    ExitCode::from(explanation.verdict.exit_code())
}

/// `sidekey audit trace`: exit 0 with the tree on stdout (empty when nothing matches), 2 when
/// the file cannot be read. What was skipped is said on stderr, after the tree, so that stdout
/// stays the tree alone (or one JSON document).
/// `sidekey audit ocsf FILE`.
fn audit_ocsf(file: &Path) -> ExitCode {
    use std::io::BufRead;
    const NAME: &str = "sidekey audit ocsf";
    let origin = file.display().to_string();
    let reader: Box<dyn BufRead> = if file == Path::new("-") {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        match std::fs::File::open(file) {
            Ok(f) => Box::new(BufReader::new(f)),
            Err(e) => {
                eprintln!("{NAME}: cannot read {origin}: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let mut stdout = std::io::stdout().lock();
    let (mut written, mut skipped) = (0u64, 0u64);
    for line in reader.split(b'\n') {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                eprintln!("{NAME}: cannot read {origin}: {e}");
                return ExitCode::from(2);
            }
        };
        let event = serde_json::from_slice::<serde_json::Value>(&line)
            .ok()
            .and_then(|record| sidekey_audit::ocsf::http_activity(&record));
        let Some(event) = event else {
            skipped += u64::from(!line.is_empty());
            continue;
        };
        if let Err(e) = writeln!(stdout, "{event}") {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return ExitCode::SUCCESS;
            }
            eprintln!("{NAME}: cannot write: {e}");
            return ExitCode::FAILURE;
        }
        written += 1;
    }
    if skipped > 0 {
        eprintln!(
            "{NAME}: {origin}: {written} request records written, {skipped} other lines skipped"
        );
    }
    ExitCode::SUCCESS
}

fn audit_trace(file: &Path, filter: Filter, format: TraceFormat) -> ExitCode {
    const NAME: &str = "sidekey audit trace";
    let origin = file.display().to_string();
    let wanted = describe_filter(&filter);
    let read = if file == Path::new("-") {
        trace::read(std::io::stdin().lock(), filter)
    } else {
        std::fs::File::open(file).and_then(|f| trace::read(BufReader::new(f), filter))
    };
    let trace = match read {
        Ok(trace) => trace,
        Err(e) => {
            eprintln!("{NAME}: cannot read {origin}: {e}");
            return ExitCode::from(2);
        }
    };
    let out = match format {
        TraceFormat::Text => trace::render_text(&trace),
        TraceFormat::Json => match trace::render_json(&trace) {
            Ok(json) => json,
            Err(e) => {
                eprintln!("{NAME}: cannot write the trace as JSON: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        // A reader that stopped early (`| head`) is not a failure.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("{NAME}: cannot write the trace: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(summary) = trace.skipped.summary() {
        eprintln!("{NAME}: {origin}: {summary}");
    }
    if let (true, Some(wanted)) = (trace.users.is_empty(), wanted) {
        eprintln!("{NAME}: {origin}: no task matches {wanted}");
    }
    ExitCode::SUCCESS
}

/// The filter as given on the command line, `None` when there is none.
fn describe_filter(filter: &Filter) -> Option<String> {
    let task = filter.task.as_ref().map(|t| format!("--task {t}"));
    let user = filter.user.as_ref().map(|u| format!("--user {u}"));
    match (task, user) {
        (Some(t), Some(u)) => Some(format!("{t} {u}")),
        (t, u) => t.or(u),
    }
}

fn load(path: Option<&Path>) -> anyhow::Result<(String, Source)> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Ok((text, Source::File(path.to_path_buf())))
        }
        None => Ok((QUICKSTART.to_string(), Source::BuiltIn)),
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

async fn run(source: Source, text: String, config: Config, poll: Duration) -> anyhow::Result<()> {
    let builtin = matches!(source, Source::BuiltIn);
    let signals = Signals::install();
    harden_process();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let audit_writer = match &config.audit {
        AuditConfig::Stdout => AuditWriter::stdout(),
        AuditConfig::File(path) => AuditWriter::file(path),
    }
    .context("cannot open the audit sink")?;
    // One registry for the process: it outlives reloads. It counts what the audit trail takes,
    // from the first record on (the config's `loaded`).
    let metrics = Arc::new(Metrics::new());
    audit_writer.observe(Arc::clone(&metrics) as Arc<dyn sidekey_audit::Observer>);

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut runtime = Runtime::start(
        source,
        &text,
        config,
        audit_writer.log(),
        Arc::clone(&metrics),
        shutdown.clone(),
    )?;
    let listen = runtime.config().listen.clone();

    if let Some(addr) = listen.forward {
        let listener = bind("forward", addr).await?;
        if let Ok(local) = listener.local_addr() {
            runtime.admin.set_forward(local);
        }
        let (shared, token, conns) = (
            Arc::clone(&runtime.shared),
            shutdown.clone(),
            tracker.clone(),
        );
        tracker.spawn(sidekey_proxy::accept_loop(
            "forward",
            listener,
            runtime.connections.permits(),
            Arc::clone(&metrics),
            shutdown.clone(),
            tracker.clone(),
            move |stream| {
                sidekey_proxy::forward::serve_connection(
                    Arc::clone(&shared),
                    stream,
                    token.clone(),
                    conns.clone(),
                )
            },
        ));
    }
    if let Some(addr) = listen.routes {
        let listener = bind("routes", addr).await?;
        let (shared, token) = (Arc::clone(&runtime.shared), shutdown.clone());
        let conns = tracker.clone();
        tracker.spawn(sidekey_proxy::accept_loop(
            "routes",
            listener,
            runtime.connections.permits(),
            Arc::clone(&metrics),
            shutdown.clone(),
            tracker.clone(),
            move |stream| {
                sidekey_proxy::routes::serve_connection(
                    Arc::clone(&shared),
                    stream,
                    token.clone(),
                    conns.clone(),
                )
            },
        ));
    }
    if let Some(addr) = listen.admin {
        let listener = bind("admin", addr).await?;
        tokio::spawn(sidekey_admin::serve(
            listener,
            Arc::clone(&runtime.admin),
            Surface::Admin,
            shutdown.clone(),
        ));
    }
    if let Some(addr) = listen.metrics {
        let listener = bind("metrics", addr).await?;
        tokio::spawn(sidekey_admin::serve(
            listener,
            Arc::clone(&runtime.admin),
            Surface::MetricsOnly,
            shutdown.clone(),
        ));
    }
    if builtin {
        // The quickstart's demo API (a service that verifies the local issuer's tokens), so that
        // an allowed request works without internet. Never with a config file.
        let addr = sidekey_admin::demo::DEMO_ADDR;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (the quickstart's demo API)"))?;
        tracing::info!("listening listener=demo-api addr={addr}");
        tokio::spawn(sidekey_admin::serve(
            listener,
            Arc::clone(&runtime.admin),
            Surface::DemoApi,
            shutdown.clone(),
        ));
    }
    runtime.admin.serving.store(true, Ordering::Release);

    serve_until_stopped(&mut runtime, poll, signals).await;
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
    runtime.credentials().shutdown().await;
    runtime.flush_spans().await;
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

/// SIGTERM and SIGHUP, listened for from the start of `run`: SIGHUP's default action ends the
/// process, so one sent while sidekey starts (an operator, a config tool) must already be ours.
struct Signals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let unix = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) {
                (Ok(term), Ok(hup)) => Some((term, hup)),
                _ => {
                    tracing::warn!("cannot listen for SIGTERM/SIGHUP; stopping on Ctrl-C only, no reload on SIGHUP");
                    None
                }
            };
            Signals { unix }
        }
        #[cfg(not(unix))]
        Signals {}
    }
}

/// Runs until SIGTERM or SIGINT, reloading the config on SIGHUP and, every `poll` (unless
/// zero), when the file's bytes changed.
async fn serve_until_stopped(runtime: &mut Runtime, poll: Duration, signals: Signals) {
    let mut ticks = (!poll.is_zero()).then(|| {
        let mut ticks = tokio::time::interval(poll);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    #[cfg(unix)]
    let Some((mut term, mut hup)) = signals.unix
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    #[cfg(not(unix))]
    let _ = signals;
    loop {
        let tick = async {
            match ticks.as_mut() {
                Some(t) => t.tick().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => return,
            _ = tokio::signal::ctrl_c() => return,
            _ = hup.recv() => runtime.reload_now().await,
            _ = tick => runtime.reload_if_changed().await,
        }
        #[cfg(not(unix))]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = tick => runtime.reload_if_changed().await,
        }
    }
}
