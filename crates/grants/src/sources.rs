//! Where trusted grant keys come from: a JWKS file (read at start and at each reload) or a
//! JWKS URL (fetched at start, every `refresh`, and when a grant names a key it does not have —
//! so that a key rotation is picked up at once — at most once per [`REFETCH_MIN`], so that
//! made-up `kid`s cannot turn into a fetch storm).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sidekey_config::TrustedKeys;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::keys::KeySet;

const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const REFETCH_MIN: Duration = Duration::from_secs(30);
const MAX_JWKS: usize = 256 << 10;

pub(crate) enum Source {
    File { keys: Arc<KeySet> },
    Url(Arc<UrlSource>),
}

impl Source {
    /// Builds a source; a URL source equal to one in `previous` is kept (keys, schedule).
    pub fn build(config: &TrustedKeys, previous: &[Source]) -> Result<Source, String> {
        match config {
            TrustedKeys::JwksFile(path) => Ok(Source::File {
                keys: Arc::new(read_file(path)?),
            }),
            TrustedKeys::JwksUrl {
                url,
                ca_file,
                refresh,
            } => {
                let same = previous.iter().find_map(|s| match s {
                    Source::Url(u)
                        if u.url == url.url && u.ca_file == *ca_file && u.refresh == *refresh =>
                    {
                        Some(Arc::clone(u))
                    }
                    _ => None,
                });
                if let Some(same) = same {
                    return Ok(Source::Url(same));
                }
                Ok(Source::Url(UrlSource::start(
                    url.url.clone(),
                    ca_file.clone(),
                    *refresh,
                )?))
            }
        }
    }

    /// The keys to try for a token naming `kid`: a URL source that lacks it fetches again
    /// first (rate-limited).
    pub async fn keys_for(&self, kid: Option<&str>) -> Arc<KeySet> {
        match self {
            Source::File { keys } => Arc::clone(keys),
            Source::Url(url) => {
                // The first grant after start waits for the first fetch (bounded).
                let mut attempted = url.attempted.subscribe();
                let _ = tokio::time::timeout(FETCH_TIMEOUT, attempted.wait_for(|done| *done)).await;
                let keys = url.keys.load_full();
                match kid {
                    Some(kid) if !keys.has_kid(kid) && url.may_refetch() => {
                        url.fetch().await;
                        url.keys.load_full()
                    }
                    _ => keys,
                }
            }
        }
    }
}

fn read_file(path: &Path) -> Result<KeySet, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read the grant keys {}: {e}", path.display()))?;
    KeySet::from_jwks(&bytes).map_err(|e| format!("grant keys {}: {e}", path.display()))
}

pub(crate) struct UrlSource {
    url: String,
    ca_file: Option<PathBuf>,
    refresh: Duration,
    client: reqwest::Client,
    keys: ArcSwap<KeySet>,
    /// When a grant naming an unknown key last made it fetch out of schedule.
    last_forced: Mutex<Option<Instant>>,
    /// Becomes true once the first fetch has been tried.
    attempted: watch::Sender<bool>,
    /// Stops the refresh task when the last config using this source is gone.
    _stop: DropGuard,
}

impl UrlSource {
    /// Starts fetching the keys (at once, then every `refresh`; a failure is logged and the
    /// old keys stay: grants from this source are refused until a fetch succeeds).
    fn start(
        url: String,
        ca_file: Option<PathBuf>,
        refresh: Duration,
    ) -> Result<Arc<UrlSource>, String> {
        let extra: Vec<&Path> = ca_file.iter().map(PathBuf::as_path).collect();
        let tls = sidekey_tls::upstream_client_config(&extra).map_err(|e| e.to_string())?;
        let mut builder = reqwest::Client::builder();
        if url.starts_with("http://") {
            builder = builder.no_proxy();
        }
        let client = builder
            .tls_backend_preconfigured(tls)
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sidekey/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client for {url}: {e}"))?;
        let stop = CancellationToken::new();
        let source = Arc::new(UrlSource {
            url,
            ca_file,
            refresh,
            client,
            keys: ArcSwap::from_pointee(KeySet::default()),
            last_forced: Mutex::new(None),
            attempted: watch::Sender::new(false),
            _stop: stop.clone().drop_guard(),
        });
        let weak = Arc::downgrade(&source);
        tokio::spawn(async move {
            let mut first = true;
            loop {
                if !first {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(refresh) => {}
                    }
                }
                let Some(source) = weak.upgrade() else { return };
                source.fetch().await;
                if first {
                    source.attempted.send_replace(true);
                    first = false;
                }
            }
        });
        Ok(source)
    }

    fn may_refetch(&self) -> bool {
        let mut last = self
            .last_forced
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match *last {
            Some(at) if at.elapsed() < REFETCH_MIN => false,
            _ => {
                *last = Some(Instant::now());
                true
            }
        }
    }

    /// One fetch; on success the keys are replaced, on failure the old ones stay.
    async fn fetch(&self) {
        match self.try_fetch().await {
            Ok(keys) => {
                tracing::debug!(url = %self.url, keys = keys.keys.len(), "grant keys fetched");
                self.keys.store(Arc::new(keys));
            }
            Err(e) => tracing::warn!(url = %self.url, error = %e, "cannot fetch grant keys"),
        }
    }

    async fn try_fetch(&self) -> Result<KeySet, String> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_JWKS as u64)
        {
            return Err("the JWKS is too large".into());
        }
        let bytes = response.bytes().await.map_err(|e| e.to_string())?;
        if bytes.len() > MAX_JWKS {
            return Err("the JWKS is too large".into());
        }
        KeySet::from_jwks(&bytes)
    }
}
