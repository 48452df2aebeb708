//! The benchmarks' upstream: a small, fast origin so that what is measured is the proxy, not
//! the server behind it. One thread (it shares a core with the load generator).
//!
//! - `http://ADDR` (HTTP/1.1) and `https://TLS_ADDR` (HTTP/1.1 or HTTP/2 by ALPN) serve
//!   `GET /…` with a small fixed body, `GET /headers` with the Authorization it received, and `GET /sse` with a Server-Sent Events stream whose
//!   first event is written at once and the rest at intervals: a proxy that buffers the stream
//!   shows a time to first byte of the whole stream instead of the first event.
//! - The TLS certificate names `api.bench.test`, `tunnel.bench.test` and `localhost`, signed by
//!   a CA generated at start and written (public part only) to `--ca-out`, which the proxies
//!   trust for their upstream side. The same CA also signs the certificate that peers acting as
//!   TLS-terminating reverse proxies present (`--peer-cert-out`, `--peer-key-out`).
//!
//! Usage: `bench-upstream --http 127.0.0.1:18080 --https 127.0.0.1:18443 --ca-out ca.pem
//!   [--peer-cert-out p.pem --peer-key-out p.key]`

mod args;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// About the size of a small JSON API answer.
const BODY: &[u8] = br#"{"ok":true,"service":"sidekey-bench-upstream","items":[1,2,3,4,5,6,7,8,9,10],"note":"a small fixed body so that the proxy, not the origin, is what is measured"}"#;
const SSE_EVENTS: usize = 5;
const SSE_INTERVAL: Duration = Duration::from_millis(100);

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = args::Args::from_env();
    let arg = |name: &str| cli.value(name);
    let http_addr = arg("--http").unwrap_or_else(|| "127.0.0.1:18080".into());
    let https_addr = arg("--https").unwrap_or_else(|| "127.0.0.1:18443".into());
    let ca_out = arg("--ca-out").ok_or("--ca-out is required")?;

    let (ca_pem, issuer) = make_ca()?;
    std::fs::write(&ca_out, &ca_pem)?;
    let (leaf, leaf_key) = make_leaf(&issuer)?;
    if let (Some(cert_out), Some(key_out)) = (arg("--peer-cert-out"), arg("--peer-key-out")) {
        // Leaf then CA: what a server sends as its chain.
        std::fs::write(cert_out, format!("{}{}", leaf.pem(), ca_pem))?;
        std::fs::write(key_out, leaf_key.serialize_pem())?;
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let plain = TcpListener::bind(&http_addr).await?;
        let secure = TcpListener::bind(&https_addr).await?;
        eprintln!("bench-upstream: http on {http_addr}, https on {https_addr}");
        loop {
            tokio::select! {
                Ok((stream, _)) = plain.accept() => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve(TokioIo::new(stream)));
                }
                Ok((stream, _)) = secure.accept() => {
                    let _ = stream.set_nodelay(true);
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        if let Ok(tls) = acceptor.accept(stream).await {
                            serve(TokioIo::new(tls)).await;
                        }
                    });
                }
            }
        }
        #[allow(unreachable_code)]
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

async fn serve<I>(io: TokioIo<I>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, service_fn(answer))
        .await;
}

async fn answer(request: Request<Incoming>) -> Result<Response<BoxBody>, Infallible> {
    // `/headers` echoes the Authorization header the origin received: the harness checks with
    // it that every proxy did the same work (the agent's dummy key replaced by the token).
    if request.uri().path() == "/headers" {
        let seen = request
            .headers()
            .get_all("authorization")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join("\n");
        return Ok(Response::new(Full::new(Bytes::from(seen)).boxed()));
    }
    // Read (and drop) whatever was uploaded, so keep-alive stays usable.
    let sse = request.uri().path() == "/sse";
    let _ = request.into_body().collect().await;
    if sse {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        tokio::spawn(async move {
            for i in 0..SSE_EVENTS {
                if i > 0 {
                    tokio::time::sleep(SSE_INTERVAL).await;
                }
                let event = Bytes::from(format!("id: {i}\ndata: {{\"n\":{i}}}\n\n"));
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        let body = Events(rx).boxed();
        return Ok(Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(body)
            .unwrap_or_default());
    }
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(BODY)).boxed())
        .unwrap_or_default())
}

/// The SSE body: each event is sent as its own frame as soon as it is produced.
struct Events(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|event| event.map(|bytes| Ok(Frame::data(bytes))))
    }
}

fn make_ca() -> Result<(String, rcgen::Issuer<'static, rcgen::KeyPair>), rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sidekey bench upstream CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), rcgen::Issuer::new(params, key)))
}

fn make_leaf(
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
) -> Result<(rcgen::Certificate, rcgen::KeyPair), Box<dyn std::error::Error>> {
    let mut params = rcgen::CertificateParams::new(vec![
        "api.bench.test".to_string(),
        "tunnel.bench.test".to_string(),
        "localhost".to_string(),
    ])?;
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse()?));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "api.bench.test");
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert, key))
}
