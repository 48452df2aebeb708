//! `sidekey grant`: make a key to sign root grants with (`keygen`), sign a root grant with it
//! (`sign`, for development and scripts; in production the orchestrator that starts tasks signs
//! them), derive a child grant for a sub-agent from a running sidekey (`derive`), and revoke a
//! grant (`revoke`). See docs/grants.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use sidekey_grants::{GrantClaims, RouteClaim, SigningKey};

use crate::probe;

#[derive(Subcommand)]
pub enum GrantCommand {
    /// Make an Ed25519 key pair to sign root grants: DIR/grant-key.pem (private, mode 0600;
    /// keep it away from agents) and DIR/grant-jwks.json (public: `grants.trusted[].jwks_file`).
    Keygen {
        /// Where to write the two files (not overwritten if they exist).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Sign a root grant with a key from `keygen` and print it.
    Sign {
        /// The private key (grant-key.pem).
        #[arg(long)]
        key: PathBuf,
        /// The sidekey it is for (`grants.audience` there).
        #[arg(long)]
        audience: String,
        /// The agent it is for.
        #[arg(long)]
        sub: String,
        /// The task.
        #[arg(long)]
        task: String,
        /// The end user the task acts for.
        #[arg(long)]
        user: Option<String>,
        /// A route it allows, repeatable: `NAME`, `NAME:METHODS` or `NAME:METHODS:PATHS`, with
        /// METHODS and PATHS comma-separated (`*` for the route's own). None: every route.
        #[arg(long = "route")]
        routes: Vec<String>,
        /// How long it lives.
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Print a proxy URL for HTTPS_PROXY (`http://task:<grant>@ADDR`) instead of the grant.
        #[arg(long, value_name = "ADDR")]
        proxy: Option<String>,
    },
    /// Ask a running sidekey for a child grant of yours, for a sub-agent: a subset of your
    /// routes, methods and paths, expiring no later than yours. Prints the child grant.
    Derive {
        /// Your own grant.
        #[arg(long, env = "SIDEKEY_GRANT", hide_env_values = true)]
        grant: String,
        /// The sub-agent's id.
        #[arg(long)]
        sub: String,
        /// As for `sign`; none: your routes, unchanged.
        #[arg(long = "route")]
        routes: Vec<String>,
        /// How long the child lives (at most as long as yours).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Admin address. Default: `listen.admin` of the config, else 127.0.0.1:15090.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// The running sidekey's config, to find its admin address.
        #[arg(long, short, env = "SIDEKEY_CONFIG")]
        config: Option<PathBuf>,
        /// Print the proxy URL for the sub-agent's HTTPS_PROXY instead of the grant.
        #[arg(long)]
        proxy_url: bool,
    },
    /// Revoke your grant (ending the task early) or one derived from it, with its descendants:
    /// they stop working at once and their per-task credentials are revoked.
    Revoke {
        /// Your own grant.
        #[arg(long, env = "SIDEKEY_GRANT", hide_env_values = true)]
        grant: String,
        /// The grant ID (`jti`) to revoke. Default: your own grant's.
        grant_id: Option<String>,
        #[arg(long)]
        admin: Option<SocketAddr>,
        #[arg(long, short, env = "SIDEKEY_CONFIG")]
        config: Option<PathBuf>,
    },
}

pub fn run(command: GrantCommand) -> ExitCode {
    let result = match command {
        GrantCommand::Keygen { dir } => keygen(&dir),
        GrantCommand::Sign {
            key,
            audience,
            sub,
            task,
            user,
            routes,
            ttl,
            proxy,
        } => sign(&key, audience, sub, task, user, &routes, ttl).map(|token| match proxy {
            Some(addr) => println!("http://task:{token}@{addr}"),
            None => println!("{token}"),
        }),
        GrantCommand::Derive {
            grant,
            sub,
            routes,
            ttl,
            admin,
            config,
            proxy_url,
        } => derive(
            &grant,
            sub,
            &routes,
            ttl,
            admin,
            config.as_deref(),
            proxy_url,
        ),
        GrantCommand::Revoke {
            grant,
            grant_id,
            admin,
            config,
        } => revoke(&grant, grant_id, admin, config.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidekey grant: {e}");
            ExitCode::FAILURE
        }
    }
}

fn keygen(dir: &Path) -> Result<(), String> {
    let key_path = dir.join("grant-key.pem");
    let jwks_path = dir.join("grant-jwks.json");
    for path in [&key_path, &jwks_path] {
        if path.exists() {
            return Err(format!("{} exists; not overwritten", path.display()));
        }
    }
    let pem = SigningKey::generate_pem()?;
    write_private(&key_path, pem.as_bytes())?;
    let key = SigningKey::from_pem_file(&key_path)?;
    std::fs::write(&jwks_path, key.jwks() + "\n")
        .map_err(|e| format!("cannot write {}: {e}", jwks_path.display()))?;
    println!(
        "private key: {} (sign grants with it; keep it away from agents)",
        key_path.display()
    );
    println!("public keys: {}", jwks_path.display());
    println!("trust it in sidekey's config:\n  grants:\n    audience: <this sidekey's name>\n    trusted:\n      - jwks_file: {}", jwks_path.display());
    Ok(())
}

/// Creates the file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(bytes)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn sign(
    key: &Path,
    audience: String,
    sub: String,
    task: String,
    user: Option<String>,
    routes: &[String],
    ttl: Duration,
) -> Result<String, String> {
    let key = SigningKey::from_pem_file(key)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the clock is before 1970".to_string())?
        .as_secs();
    let claims = GrantClaims {
        iss: Some("sidekey-cli".into()),
        sub,
        task_id: task,
        aud: serde_json::Value::String(audience),
        iat: now,
        exp: now + ttl.as_secs().max(1),
        nbf: None,
        jti: uuid::Uuid::new_v4().to_string(),
        routes: route_claims(routes)?,
        on_behalf_of: user,
        act: None,
        parent: None,
    };
    sidekey_grants::sign(&key, &claims)
}

/// `NAME[:METHODS[:PATHS]]` → a route claim; none → None (every route).
fn route_claims(specs: &[String]) -> Result<Option<Vec<RouteClaim>>, String> {
    if specs.is_empty() {
        return Ok(None);
    }
    let list = |s: &str| -> Option<Vec<String>> {
        (s != "*" && !s.is_empty()).then(|| s.split(',').map(str::to_string).collect())
    };
    specs
        .iter()
        .map(|spec| {
            let mut parts = spec.splitn(3, ':');
            let route = parts.next().unwrap_or_default().to_string();
            if route.is_empty() {
                return Err(format!("--route {spec:?}: no route name"));
            }
            let methods = parts.next().and_then(list);
            let paths = parts.next().and_then(list);
            Ok(if methods.is_none() && paths.is_none() {
                RouteClaim::Name(route)
            } else {
                RouteClaim::Narrowed {
                    route,
                    methods,
                    paths,
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

fn derive(
    grant: &str,
    sub: String,
    routes: &[String],
    ttl: Option<Duration>,
    admin: Option<SocketAddr>,
    config: Option<&Path>,
    proxy_url: bool,
) -> Result<(), String> {
    let addr = probe::admin_addr(admin, config)?;
    let body = serde_json::json!({
        "sub": sub,
        "routes": route_claims(routes)?,
        "ttl_seconds": ttl.map(|t| t.as_secs()),
    });
    let answer = call(
        addr,
        "POST",
        "/grants",
        grant,
        body.to_string().as_bytes(),
        201,
    )?;
    let field = if proxy_url { "proxy_url" } else { "grant" };
    let value = answer[field]
        .as_str()
        .ok_or_else(|| format!("the answer has no `{field}` (is the forward listener off?)"))?;
    println!("{value}");
    Ok(())
}

fn revoke(
    grant: &str,
    grant_id: Option<String>,
    admin: Option<SocketAddr>,
    config: Option<&Path>,
) -> Result<(), String> {
    let addr = probe::admin_addr(admin, config)?;
    let jti = match grant_id {
        Some(jti) => jti,
        None => own_jti(grant)?,
    };
    let answer = call(addr, "DELETE", &format!("/grants/{jti}"), grant, b"", 200)?;
    for id in answer["revoked"].as_array().into_iter().flatten() {
        println!("revoked {}", id.as_str().unwrap_or_default());
    }
    Ok(())
}

/// The `jti` of a grant, read without verifying it (the server verifies).
fn own_jti(grant: &str) -> Result<String, String> {
    use base64::Engine;
    let payload = grant
        .split('.')
        .nth(1)
        .ok_or_else(|| "--grant is not a JWT".to_string())?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| "--grant is not a JWT".to_string())?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| "--grant is not a JWT".to_string())?;
    claims["jti"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "--grant has no jti".to_string())
}

fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    grant: &str,
    body: &[u8],
    want: u16,
) -> Result<serde_json::Value, String> {
    let authorization = format!("Bearer {}", grant.trim());
    let (status, text) = probe::request(
        addr,
        method,
        path,
        &[
            ("Authorization", &authorization),
            ("Content-Type", "application/json"),
        ],
        body,
        ADMIN_TIMEOUT,
    )
    .map_err(|e| format!("{addr}{path}: {e}"))?;
    let answer: serde_json::Value = serde_json::from_str(text.trim())
        .map_err(|_| format!("{addr}{path} answered {status}: {}", text.trim()))?;
    if status != want {
        return Err(format!(
            "{addr}{path} answered {status}: {} ({})",
            answer["message"].as_str().unwrap_or_default(),
            answer["error"].as_str().unwrap_or_default()
        ));
    }
    Ok(answer)
}
