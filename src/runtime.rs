//! The running pieces built from a config — issuers, credential store, interception CA,
//! upstream client, proxy state — and their replacement when the config is reloaded.
//!
//! A reload is all or nothing. The new file is parsed and validated in full, every piece that
//! can fail is built, and only then is anything swapped in; a file that fails, or that changes
//! something only a restart can change (listen addresses, the audit sink), is rejected with
//! every reason and the running config stays. What is unchanged is kept: credentials and what
//! they hold, issuers (and their sessions), the upstream connection pools, the interception CA
//! certificate.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sidekey_admin::AdminState;
use sidekey_audit::{AuditLog, ConfigChanges, ConfigEvent, ConfigEventKind};
use sidekey_config::{Config, ConfigErrors, RouteConfig};
use sidekey_credentials::{CredentialStore, Issuer, Jwk};
use sidekey_grants::Grants;
use sidekey_metrics::Metrics;
use sidekey_policy::CedarGate;
use sidekey_proxy::{ConnectionLimit, ProxyState, SharedState, Upstream};
use sidekey_tls::{CertificateAuthority, InterceptScope, LeafLimits};
use sidekey_traces::{Settings, Spans};
use tokio_util::sync::CancellationToken;

use crate::bundle;

/// Where the config came from.
pub enum Source {
    File(PathBuf),
    /// The built-in quickstart (`sidekey run` with no `--config`): nothing to reload.
    BuiltIn,
}

impl Source {
    pub fn origin(&self) -> String {
        match self {
            Source::File(path) => path.display().to_string(),
            Source::BuiltIn => "<built-in quickstart>".to_string(),
        }
    }
}

/// Why a reload was refused. The running config is unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(ConfigErrors),
    #[error("{}", .0.join("\n"))]
    NeedsRestart(Vec<String>),
    #[error("{0:#}")]
    Build(anyhow::Error),
}

impl ReloadError {
    /// One line per reason, for the audit record.
    fn reasons(&self) -> Vec<String> {
        match self {
            ReloadError::Invalid(errors) => errors
                .errors
                .iter()
                .map(|e| {
                    format!(
                        "{}:{}:{}: error: {}",
                        errors.origin, e.line, e.column, e.message
                    )
                })
                .collect(),
            ReloadError::NeedsRestart(reasons) => reasons.clone(),
            other => vec![other.to_string()],
        }
    }
}

/// Everything built from the current config.
pub struct Runtime {
    source: Source,
    /// The bytes of the file last read, applied or rejected: polling reloads when they change.
    last_read: Vec<u8>,
    /// The running generation, as a reload's build reads it.
    running: Running,
    pub shared: Arc<SharedState>,
    pub connections: ConnectionLimit,
    pub admin: Arc<AdminState>,
    shutdown: CancellationToken,
    /// Stops the eager-fetch loop of the current credential store generation.
    eager: CancellationToken,
}

impl Runtime {
    /// Builds everything from `config` (already validated from `text`), records the load in
    /// the audit trail, and starts fetching the eager credentials in the background. `metrics`
    /// is the process's registry (the audit writer's observer already, so it counts the load).
    pub fn start(
        source: Source,
        text: &str,
        config: Config,
        audit: AuditLog,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Runtime> {
        let issuers = build_issuers(&config, &HashMap::new(), None)?;
        let credentials = Arc::new(CredentialStore::new(
            &config.credentials,
            &issuers,
            audit.clone(),
        )?);
        // Interception CA: key in memory, public certificate out for agents, name-constrained
        // to the intercepted routes' hosts.
        let ca = Arc::new(CertificateAuthority::generate(
            InterceptScope::from_policy(&config.policy()),
            leaf_limits(&config),
        )?);
        write_ca_files(&config, &ca)?;
        let upstream_cas = read_upstream_cas(&config)?;
        let upstream = build_upstream(&config)?;
        let grants = match &config.grants {
            Some(g) => Some(Grants::new(g).map_err(|e| anyhow::anyhow!("grants: {e}"))?),
            None => None,
        };
        let spans = match &config.traces {
            Some(t) => Some(Arc::new(Spans::start(&Settings {
                endpoint: &t.otlp_endpoint,
                ca_file: t.ca_file.as_deref(),
                service_name: t.service_name.as_deref(),
                timeout: t.timeout,
            })?)),
            None => None,
        };
        let cedar = load_cedar(&config)?;
        let state = ProxyState::new(
            &config,
            Arc::clone(&credentials),
            Arc::clone(&ca),
            upstream.clone(),
            audit.clone(),
            grants.clone(),
            Arc::clone(&metrics),
        )
        .with_spans(spans.clone())
        .with_cedar(cedar);
        let admin = Arc::new(AdminState::new(
            Arc::clone(&credentials),
            &local_keys(&issuers),
            grants.clone(),
        ));
        admin.set_scopes(crate::scope::credential_scopes(&config));
        admin.set_metrics(Arc::clone(&metrics));
        let runtime = Runtime {
            connections: ConnectionLimit::new(config.limits.max_connections),
            last_read: text.as_bytes().to_vec(),
            eager: shutdown.child_token(),
            source,
            running: Running {
                config,
                issuers,
                credentials,
                ca,
                upstream,
                upstream_cas,
                audit,
                grants,
                metrics,
                spans,
            },
            shared: Arc::new(SharedState::new(state)),
            admin,
            shutdown,
        };
        runtime.record(
            ConfigEventKind::Loaded,
            Some(text.as_bytes()),
            None,
            Vec::new(),
        );
        runtime.fetch_eager();
        Ok(runtime)
    }

    pub fn config(&self) -> &Config {
        &self.running.config
    }

    /// The current credential store generation (for shutdown).
    pub fn credentials(&self) -> &Arc<CredentialStore> {
        &self.running.credentials
    }

    /// Sends the spans still queued (at shutdown, once no request runs any more).
    pub async fn flush_spans(&self) {
        if let Some(spans) = self.running.spans.clone() {
            // The processor blocks while the exporter's requests run on this runtime.
            let _ = tokio::task::spawn_blocking(move || spans.shutdown()).await;
        }
    }

    /// SIGHUP: reads the file and reloads it, changed or not.
    pub async fn reload_now(&mut self) {
        let Source::File(path) = &self.source else {
            tracing::warn!(
                "SIGHUP: running the built-in quickstart config; there is no file to reload"
            );
            return;
        };
        let path = path.clone();
        match std::fs::read(&path) {
            Ok(bytes) => self.reload(bytes).await,
            Err(source) => self.rejected(
                None,
                ReloadError::Read {
                    path: path.display().to_string(),
                    source,
                },
            ),
        }
    }

    /// Polling: reloads when the file's bytes differ from the last ones read. A file that
    /// cannot be read (being replaced) is tried again at the next poll.
    pub async fn reload_if_changed(&mut self) {
        let Source::File(path) = &self.source else {
            return;
        };
        match std::fs::read(path) {
            Ok(bytes) if bytes != self.last_read => self.reload(bytes).await,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "config poll: cannot read the file")
            }
        }
    }

    async fn reload(&mut self, bytes: Vec<u8>) {
        self.last_read.clone_from(&bytes);
        // Parsing, validating and building take a while for a large file (about 30 ms for 1,000
        // routes in a release build, 200 ms for the parse alone in a debug one): on a blocking
        // thread, from a snapshot of the running generation, so that requests go on meanwhile
        // on either kind of runtime. Only the swap runs here.
        let origin = self.source.origin();
        let running = self.running.clone();
        let built = tokio::task::spawn_blocking(move || {
            let built = parse_reloaded(&bytes, origin).and_then(|config| build(&running, config));
            (built, bytes)
        })
        .await;
        let (built, bytes) = match built {
            Ok(done) => done,
            Err(e) => {
                let bytes = self.last_read.clone();
                let error = anyhow::anyhow!("the build did not finish: {e}");
                return self.rejected(Some(&bytes), ReloadError::Build(error));
            }
        };
        let applied = built.map(|next| self.swap(next));
        match applied {
            Ok(changes) => {
                tracing::info!(
                    file = %self.source.origin(),
                    sha256 = %sha256_hex(&bytes),
                    "config reloaded: {}",
                    summary(&changes)
                );
                self.record(
                    ConfigEventKind::Reloaded,
                    Some(&bytes),
                    Some(changes),
                    Vec::new(),
                );
            }
            Err(e) => self.rejected(Some(&bytes), e),
        }
    }

    fn rejected(&self, bytes: Option<&[u8]>, error: ReloadError) {
        tracing::error!(
            file = %self.source.origin(),
            "config reload failed; keeping the running config:\n{error}"
        );
        self.record(ConfigEventKind::Rejected, bytes, None, error.reasons());
    }

    /// Swaps in a generation [`build`] made: new requests see it from here on.
    fn swap(&mut self, next: Next) -> ConfigChanges {
        let grants = match next.grants {
            NextGrants::Keep(grants, prepared) => {
                grants.install(prepared);
                Some(grants)
            }
            NextGrants::New(grants) => Some(grants),
            NextGrants::None => None,
        };
        let old_state = self.shared.replace(next.state);
        self.admin.update(
            Arc::clone(&next.credentials),
            &local_keys(&next.issuers),
            grants.clone(),
        );
        self.admin.set_scopes(next.scopes);
        let routes: HashSet<&str> = next.config.routes.iter().map(|r| r.name.as_str()).collect();
        self.running.metrics.retain_routes(&routes);
        self.running.grants = grants;
        self.connections.resize(next.config.limits.max_connections);
        next.retired.retire();

        // The old generation is dropped on a blocking thread, not this one, which serves
        // requests meanwhile: with many routes, freeing a policy and a config takes
        // milliseconds. (What requests in flight still hold is freed when they end.)
        let old = (
            old_state,
            std::mem::replace(&mut self.running.config, next.config),
            std::mem::replace(&mut self.running.issuers, next.issuers),
            std::mem::replace(&mut self.running.credentials, next.credentials),
            std::mem::replace(&mut self.running.ca, next.ca),
            std::mem::replace(&mut self.running.upstream, next.upstream),
            std::mem::replace(&mut self.running.upstream_cas, next.upstream_cas),
        );
        tokio::task::spawn_blocking(move || drop(old));
        self.eager.cancel();
        self.eager = self.shutdown.child_token();
        self.fetch_eager();
        next.changes
    }

    /// Fetches the eager credentials of the current generation in the background, retrying
    /// with backoff; readiness waits for them.
    fn fetch_eager(&self) {
        let credentials = Arc::clone(&self.running.credentials);
        let stop = self.eager.clone();
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
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        });
    }

    fn record(
        &self,
        event: ConfigEventKind,
        bytes: Option<&[u8]>,
        changes: Option<ConfigChanges>,
        errors: Vec<String>,
    ) {
        self.running.audit.config(&ConfigEvent {
            event,
            file: self.source.origin(),
            sha256: bytes.map(sha256_hex),
            changes,
            errors,
        });
    }
}

/// The issuers for `config`: those whose config is unchanged from `previous` are kept (with
/// their keys, sessions and tokens), the others built.
fn build_issuers(
    config: &Config,
    running: &HashMap<String, Arc<Issuer>>,
    previous: Option<&Config>,
) -> anyhow::Result<HashMap<String, Arc<Issuer>>> {
    let mut out: HashMap<String, Arc<Issuer>> = HashMap::new();
    for issuer in Issuer::build_order(&config.issuers) {
        let unchanged = previous
            .and_then(|p| p.issuers.iter().find(|i| i.name == issuer.name))
            .is_some_and(|old| old == issuer);
        // An issuer that uses another (github-app: its key's vault issuer) is kept only with it.
        let kept = running.get(&issuer.name).filter(|kept| {
            kept.uses()
                .is_none_or(|used| out.values().any(|i| Arc::ptr_eq(i, used)))
        });
        let built = match kept {
            Some(kept) if unchanged => Arc::clone(kept),
            _ => Arc::new(
                Issuer::build(issuer, &out).with_context(|| format!("issuer `{}`", issuer.name))?,
            ),
        };
        out.insert(issuer.name.clone(), built);
    }
    Ok(out)
}

/// The public keys of the local issuers, for the admin JWKS.
fn local_keys(issuers: &HashMap<String, Arc<Issuer>>) -> Vec<Jwk> {
    let mut keys: Vec<(&String, Jwk)> = issuers
        .iter()
        .filter_map(|(name, issuer)| match issuer.as_ref() {
            Issuer::Local(local) => Some((name, local.jwk().clone())),
            _ => None,
        })
        .collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    keys.into_iter().map(|(_, key)| key).collect()
}

fn leaf_limits(config: &Config) -> LeafLimits {
    LeafLimits {
        cache_size: config.ca.leaf_cache_size,
        mint_rate: config.ca.leaf_mint_rate,
        mint_burst: config.ca.leaf_mint_burst,
    }
}

/// The Cedar gate of `cedar:`: its policy file (and schema) read and checked, or None.
pub fn load_cedar(config: &Config) -> anyhow::Result<Option<Arc<CedarGate>>> {
    let Some(cedar) = &config.cedar else {
        return Ok(None);
    };
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cedar: cannot read {}: {e}", path.display()))
    };
    let policies = read(&cedar.policies)?;
    let schema = match &cedar.schema {
        Some(path) => Some((path.display().to_string(), read(path)?)),
        None => None,
    };
    let gate = CedarGate::load(
        &cedar.policies.display().to_string(),
        &policies,
        schema
            .as_ref()
            .map(|(name, text)| (name.as_str(), text.as_str())),
    )
    .map_err(|e| anyhow::anyhow!("cedar: {e}"))?
    .with_headers(cedar.headers.clone());
    Ok(Some(Arc::new(gate)))
}

fn build_upstream(config: &Config) -> anyhow::Result<Upstream> {
    let tls = sidekey_tls::upstream_client_config(&config.upstream.extra_ca_files)?;
    Ok(Upstream::new(&config.upstream, tls))
}

/// What the upstream client trusts besides the webpki roots: a reload that changes the files'
/// contents (a rotated CA) rebuilds it.
fn read_upstream_cas(config: &Config) -> anyhow::Result<Vec<Vec<u8>>> {
    config
        .upstream
        .extra_ca_files
        .iter()
        .map(|path| std::fs::read(path).with_context(|| format!("cannot read {}", path.display())))
        .collect()
}

/// Writes `ca.cert_out` and `ca.bundle_out` (each atomically).
fn write_ca_files(config: &Config, ca: &CertificateAuthority) -> anyhow::Result<()> {
    if let Some(path) = &config.ca.cert_out {
        ca.write_cert(path)?;
        tracing::info!(path = %path.display(), "wrote the interception CA certificate");
    }
    if let Some(path) = &config.ca.bundle_out {
        bundle::write(ca.cert_pem(), path)?;
    }
    Ok(())
}

/// The environment variable that sets `listen.metrics` over the file's (the Kubernetes injector
/// sets it, so that every agent's own config need not).
pub const METRICS_LISTEN_ENV: &str = "SIDEKEY_METRICS_LISTEN";

/// Applies what the environment sets over the file: `SIDEKEY_METRICS_LISTEN` (an address, or
/// `off`). At start and at each reload, so that a reload sees the same listeners.
pub fn apply_env(config: &mut Config) -> Result<(), String> {
    let Ok(value) = std::env::var(METRICS_LISTEN_ENV) else {
        return Ok(());
    };
    let value = value.trim();
    config.listen.metrics = match value {
        "" => return Ok(()),
        "off" => None,
        addr => Some(addr.parse().map_err(|e| {
            format!("{METRICS_LISTEN_ENV}={addr:?} is not an address like 0.0.0.0:15091: {e}")
        })?),
    };
    Ok(())
}

/// The running generation: what a reload's build reads (a clone is cheap: the pieces are
/// shared), and what its swap replaces.
#[derive(Clone)]
struct Running {
    config: Config,
    issuers: HashMap<String, Arc<Issuer>>,
    credentials: Arc<CredentialStore>,
    ca: Arc<CertificateAuthority>,
    upstream: Upstream,
    /// Contents of `upstream.extra_ca_files` when the upstream client was built.
    upstream_cas: Vec<Vec<u8>>,
    audit: AuditLog,
    /// Task grants, when configured: lives across reloads (sidekey's grant key, revocations).
    grants: Option<Arc<Grants>>,
    /// The process's metrics: one registry across reloads.
    metrics: Arc<Metrics>,
    /// The span exporter (`traces:`, which needs a restart to change): one per process.
    spans: Option<Arc<Spans>>,
}

/// The grants of the next generation: the running ones with new settings (installed at the
/// swap), new ones, or none.
enum NextGrants {
    Keep(Arc<Grants>, sidekey_grants::Prepared),
    New(Arc<Grants>),
    None,
}

/// A generation built for a reloaded config, not yet swapped in ([`Runtime::swap`]), with what
/// it changes and the admin page's credential scopes (computed here, off the runtime).
struct Next {
    config: Config,
    issuers: HashMap<String, Arc<Issuer>>,
    credentials: Arc<CredentialStore>,
    retired: sidekey_credentials::Retired,
    upstream: Upstream,
    upstream_cas: Vec<Vec<u8>>,
    ca: Arc<CertificateAuthority>,
    grants: NextGrants,
    state: ProxyState,
    changes: ConfigChanges,
    scopes: HashMap<String, serde_json::Value>,
}

/// Builds everything for `config` (parsed and validated by [`parse_reloaded`]) beside the
/// `running` generation, which it only reads, and what it changes (the reload record's
/// `changes`): on error, nothing has changed (except, rarely, a CA file that could not be
/// written back: see [`write_ca_files`]). Runs on a blocking thread.
fn build(running: &Running, config: Config) -> Result<Next, ReloadError> {
    let restart = needs_restart(&running.config, &config);
    if !restart.is_empty() {
        return Err(ReloadError::NeedsRestart(restart));
    }

    // Build every new piece; any failure leaves the running config as it is.
    let issuers = build_issuers(&config, &running.issuers, Some(&running.config))
        .map_err(ReloadError::Build)?;
    let (credentials, retired, credential_changes) = running
        .credentials
        .successor(&config.credentials, &issuers)
        .map_err(|e| ReloadError::Build(e.into()))?;
    let upstream_cas = read_upstream_cas(&config).map_err(ReloadError::Build)?;
    let upstream =
        if config.upstream == running.config.upstream && upstream_cas == running.upstream_cas {
            running.upstream.clone()
        } else {
            build_upstream(&config).map_err(ReloadError::Build)?
        };
    let scope = InterceptScope::from_policy(&config.policy());
    let limits = leaf_limits(&config);
    let ca = if scope == *running.ca.scope() && limits == running.ca.limits() {
        Arc::clone(&running.ca)
    } else {
        Arc::new(
            running
                .ca
                .reconfigured(scope, limits)
                .map_err(|e| ReloadError::Build(e.into()))?,
        )
    };
    // Cedar: the policy and schema files read and checked again (a broken set keeps the
    // running one).
    let cedar = load_cedar(&config).map_err(ReloadError::Build)?;
    // Grants: settings read now (JWKS files), installed at the swap.
    let next_grants = match (&config.grants, &running.grants) {
        (Some(g), Some(current)) => NextGrants::Keep(
            Arc::clone(current),
            current
                .prepare(g)
                .map_err(|e| ReloadError::Build(anyhow::anyhow!("grants: {e}")))?,
        ),
        (Some(g), None) => NextGrants::New(
            Grants::new(g).map_err(|e| ReloadError::Build(anyhow::anyhow!("grants: {e}")))?,
        ),
        (None, _) => NextGrants::None,
    };
    let ca_reissued = ca.cert_der() != running.ca.cert_der();
    if ca_reissued
        || config.ca.cert_out != running.config.ca.cert_out
        || config.ca.bundle_out != running.config.ca.bundle_out
    {
        if let Err(e) = write_ca_files(&config, &ca) {
            // Put back what agents had, as far as possible.
            let _ = write_ca_files(&running.config, &running.ca);
            return Err(ReloadError::Build(e));
        }
    }

    let credentials = Arc::new(credentials);
    // The grants' new settings are installed at the swap; the state only holds them.
    let grants = match &next_grants {
        NextGrants::Keep(grants, _) | NextGrants::New(grants) => Some(Arc::clone(grants)),
        NextGrants::None => None,
    };
    let state = ProxyState::new(
        &config,
        Arc::clone(&credentials),
        Arc::clone(&ca),
        upstream.clone(),
        running.audit.clone(),
        grants,
        Arc::clone(&running.metrics),
    )
    .with_spans(running.spans.clone())
    .with_cedar(cedar);
    let mut changes = ConfigChanges {
        credentials_added: credential_changes.added,
        credentials_removed: credential_changes.removed,
        credentials_changed: credential_changes.changed,
        ca: if ca_reissued { "reissued" } else { "kept" },
        ..ConfigChanges::default()
    };
    (
        changes.routes_added,
        changes.routes_removed,
        changes.routes_changed,
    ) = diff(
        &running.config.routes,
        &config.routes,
        |r| &r.name,
        RouteConfig::same_rule,
    );
    (
        changes.issuers_added,
        changes.issuers_removed,
        changes.issuers_changed,
    ) = diff(
        &running.config.issuers,
        &config.issuers,
        |i| &i.name,
        PartialEq::eq,
    );
    let scopes = crate::scope::credential_scopes(&config);
    Ok(Next {
        config,
        issuers,
        credentials,
        retired,
        upstream,
        upstream_cas,
        ca,
        grants: next_grants,
        state,
        changes,
        scopes,
    })
}

/// A reloaded file's `bytes`, parsed and validated, with the environment's overrides applied.
fn parse_reloaded(bytes: &[u8], origin: String) -> Result<Config, ReloadError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ReloadError::Invalid(ConfigErrors {
            origin: origin.clone(),
            errors: vec![sidekey_config::ConfigError {
                line: 1,
                column: 1,
                message: format!("the file is not UTF-8 text: {e}"),
                hint: None,
            }],
        })
    })?;
    let mut config = sidekey_config::parse(text, &origin).map_err(ReloadError::Invalid)?;
    apply_env(&mut config).map_err(|e| ReloadError::Build(anyhow::anyhow!(e)))?;
    Ok(config)
}

/// What differs between `old` and `new` that a running sidekey cannot change: the listeners
/// (agents and probes were pointed at them), the audit sink and the span exporter.
fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let show = |a: Option<std::net::SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
    for (key, a, b) in [
        ("listen.forward", old.listen.forward, new.listen.forward),
        ("listen.routes", old.listen.routes, new.listen.routes),
        ("listen.admin", old.listen.admin, new.listen.admin),
        ("listen.metrics", old.listen.metrics, new.listen.metrics),
    ] {
        if a != b {
            out.push(format!(
                "{key} changed ({} -> {}): this needs a restart",
                show(a),
                show(b)
            ));
        }
    }
    if old.audit != new.audit {
        out.push("audit changed: the audit sink needs a restart".to_string());
    }
    if old.traces != new.traces {
        out.push("traces changed: the span exporter needs a restart".to_string());
    }
    out
}

/// Names added, removed and changed between two lists of named entries, each sorted.
fn diff<T>(
    old: &[T],
    new: &[T],
    name: impl Fn(&T) -> &String,
    same: impl Fn(&T, &T) -> bool,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let old_names: BTreeSet<&String> = old.iter().map(&name).collect();
    let new_names: BTreeSet<&String> = new.iter().map(&name).collect();
    let added = new_names
        .difference(&old_names)
        .map(|n| (*n).clone())
        .collect();
    let removed = old_names
        .difference(&new_names)
        .map(|n| (*n).clone())
        .collect();
    let mut changed: Vec<String> = new
        .iter()
        .filter(|n| old.iter().any(|o| name(o) == name(n) && !same(o, n)))
        .map(|n| name(n).clone())
        .collect();
    changed.sort();
    (added, removed, changed)
}

/// `routes +a -b ~c; credentials …; CA kept`, for the log line.
fn summary(changes: &ConfigChanges) -> String {
    let mut out = String::new();
    for (what, added, removed, changed) in [
        (
            "routes",
            &changes.routes_added,
            &changes.routes_removed,
            &changes.routes_changed,
        ),
        (
            "credentials",
            &changes.credentials_added,
            &changes.credentials_removed,
            &changes.credentials_changed,
        ),
        (
            "issuers",
            &changes.issuers_added,
            &changes.issuers_removed,
            &changes.issuers_changed,
        ),
    ] {
        let _ = write!(out, "{what}");
        if added.is_empty() && removed.is_empty() && changed.is_empty() {
            out.push_str(" unchanged");
        }
        for (sign, names) in [("+", added), ("-", removed), ("~", changed)] {
            for n in names {
                let _ = write!(out, " {sign}{n}");
            }
        }
        out.push_str("; ");
    }
    let _ = write!(out, "CA {}", changes.ca);
    out
}

/// Hex SHA-256 of the config file, for the audit record.
fn sha256_hex(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = String::with_capacity(64);
    for b in digest.as_ref() {
        let _ = write!(out, "{b:02x}");
    }
    out
}
