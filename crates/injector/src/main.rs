//! The `sidekey-injector` binary: flags (the Helm chart's values) → [`Settings`], the serving
//! certificate, and the HTTPS server until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use k8s_openapi::api::core::v1::ResourceRequirements;
use sidekey_injector::tls::ReloadingCert;
use sidekey_injector::{Settings, SidecarMode};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "sidekey-injector",
    version,
    about = "Kubernetes admission webhook that adds sidekey to agent pods."
)]
struct Cli {
    /// HTTPS address.
    #[arg(long, env = "SIDEKEY_INJECTOR_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Serving certificate (PEM chain), reloaded when it changes.
    #[arg(
        long,
        env = "SIDEKEY_INJECTOR_TLS_CERT",
        default_value = "/etc/sidekey-injector/tls/tls.crt"
    )]
    tls_cert: PathBuf,
    /// Serving key (PEM).
    #[arg(
        long,
        env = "SIDEKEY_INJECTOR_TLS_KEY",
        default_value = "/etc/sidekey-injector/tls/tls.key"
    )]
    tls_key: PathBuf,
    /// How often the certificate files are checked for changes.
    #[arg(long, default_value = "10s", value_parser = humantime_secs)]
    tls_reload_every: Duration,
    /// The sidekey image injected.
    #[arg(long, env = "SIDEKEY_INJECTOR_IMAGE")]
    image: String,
    #[arg(long, default_value = "IfNotPresent")]
    image_pull_policy: String,
    /// ConfigMap (key `sidekey.yaml`) of pods that name none in `sidekey.dev/config`.
    #[arg(long, default_value = "sidekey")]
    config_map: String,
    /// Audience of the projected token given to sidekey.
    #[arg(long, default_value = "sidekey")]
    token_audience: String,
    /// Lifetime of that token, in seconds (at least 600).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(i64).range(600..=86400))]
    token_expiration_seconds: i64,
    /// `native` (init container with restartPolicy: Always, Kubernetes >= 1.29) or `legacy`.
    #[arg(long, default_value = "native", value_parser = parse_mode)]
    sidecar_mode: SidecarMode,
    /// Extra NO_PROXY entries for every agent (comma-separated), e.g. the pod/service CIDRs.
    #[arg(long, default_value = "")]
    no_proxy: String,
    /// The sidecar's resources, as JSON (`{"requests":{...},"limits":{...}}`).
    #[arg(long)]
    resources: Option<String>,
    /// The sidecar's SIDEKEY_LOG.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// UID/GID of the sidecar.
    #[arg(long, default_value_t = 65532)]
    run_as_user: i64,
    /// Serve sidekey's `/metrics` (alone) on this port of the pod's IP, for Prometheus.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=65535))]
    metrics_port: Option<i32>,
}

fn parse_mode(s: &str) -> Result<SidecarMode, String> {
    SidecarMode::parse(s).ok_or_else(|| format!("{s:?} is neither native nor legacy"))
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let digits = s.strip_suffix('s').unwrap_or(s);
    digits
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{s:?} is not a number of seconds (e.g. 10s)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn settings(cli: &Cli) -> anyhow::Result<Settings> {
    let mut settings = Settings {
        image: cli.image.clone(),
        image_pull_policy: cli.image_pull_policy.clone(),
        config_map: cli.config_map.clone(),
        token_audience: cli.token_audience.clone(),
        token_expiration_seconds: cli.token_expiration_seconds,
        sidecar_mode: cli.sidecar_mode,
        no_proxy: cli
            .no_proxy
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        log_level: cli.log_level.clone(),
        run_as_user: cli.run_as_user,
        metrics_port: cli.metrics_port,
        ..Settings::default()
    };
    if let Some(json) = &cli.resources {
        settings.resources = serde_json::from_str::<ResourceRequirements>(json)
            .context("--resources is not a resources object")?;
    }
    Ok(settings)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Arc::new(settings(&cli)?);
    let cert = ReloadingCert::load(&cli.tls_cert, &cli.tls_key)?;
    let tls = Arc::new(cert.server_config()?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cli.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cli.listen))?;
        tracing::info!(
            addr = %listener.local_addr()?,
            image = %settings.image,
            mode = settings.sidecar_mode.as_str(),
            "listening"
        );
        let shutdown = CancellationToken::new();
        tokio::spawn(Arc::clone(&cert).watch(cli.tls_reload_every, shutdown.clone()));
        let server = tokio::spawn(sidekey_injector::server::serve(
            listener,
            tls,
            settings,
            shutdown.clone(),
        ));
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
        let _ = server.await;
        Ok(())
    })
}

/// Diagnostics to stderr, one line per review.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIDEKEY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(false)
        .init();
}

async fn wait_for_signal() {
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
