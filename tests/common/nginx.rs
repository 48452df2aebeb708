//! `Nginx`: a real nginx (Debian's `nginx-light`, installed by `scripts/install-test-deps`) as
//! an upstream that requires TLS client certificates: HTTPS on a free 127.0.0.1 port, its server
//! certificate from a [`TestCa`], `ssl_verify_client on` against the client CA it is given.
//!
//! nginx answers a request without a valid client certificate with 400 itself. Every other
//! request gets 200 and what nginx verified, as JSON: `verify` (`SUCCESS`), `serial` (hex, upper
//! case, no colons), `subject` (RFC 2253), `reused` (`r` when the TLS session was resumed),
//! `uri`. nginx runs in the foreground as a child of the test and is killed on drop; its error
//! log is printed if the test is panicking.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ca::TestCa;
use super::clients::closed_port_addr;

pub struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

/// nginx's binary: on PATH, else Debian's.
fn nginx_bin() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
        .expect("nginx is not installed: run scripts/install-test-deps")
}

impl Nginx {
    /// nginx serving `names` (certificate from `ca`) and requiring a client certificate that
    /// `client_ca_pem` signed. With `websocket`, `/ws/…` is proxied to that plain WebSocket
    /// server, the serial nginx verified sent along as `Authorization: serial=<hex>`.
    pub fn mtls(
        ca: &TestCa,
        names: &[&str],
        client_ca_pem: &str,
        websocket: Option<&str>,
    ) -> Nginx {
        let dir = tempfile::Builder::new()
            .prefix("sidekey-nginx-")
            .tempdir()
            .expect("tempdir");
        let run = dir.path();
        let server = ca.issue(names);
        std::fs::write(run.join("server.pem"), &server.cert_pem).expect("write cert");
        std::fs::write(run.join("server-key.pem"), &server.key_pem).expect("write key");
        std::fs::write(run.join("client-ca.pem"), client_ca_pem).expect("write client CA");
        std::fs::create_dir_all(run.join("tmp")).expect("tmp dir");
        let mut last = String::new();
        // The probed port may be taken before nginx binds it: try again then.
        for _ in 0..4 {
            let addr = closed_port_addr();
            let ws = websocket.map_or(String::new(), |backend| WEBSOCKET.replace("@WS@", backend));
            let conf = CONF
                .replace("@WEBSOCKET@", &ws)
                .replace("@RUN@", &run.display().to_string())
                .replace("@ADDR@", &addr.to_string());
            std::fs::write(run.join("nginx.conf"), conf).expect("write nginx.conf");
            let mut child = Command::new(nginx_bin())
                .arg("-p")
                .arg(run)
                .arg("-c")
                .arg(run.join("nginx.conf"))
                .arg("-e")
                .arg(run.join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nginx");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Nginx { child, dir, addr };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            last = std::fs::read_to_string(run.join("error.log")).unwrap_or_default();
        }
        panic!("nginx did not start:\n{last}");
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// One line per request: URI, status, what was verified, `reused=r` for a resumed TLS
    /// session, the TLS version (printed with the error log when a test fails).
    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- nginx access log ---\n{}--- nginx error log ---\n{}",
                self.access_log(),
                self.error_log()
            );
        }
    }
}

const CONF: &str = r#"worker_processes 1;
daemon off;
master_process off;
pid @RUN@/nginx.pid;
error_log @RUN@/error.log info;
events { worker_connections 256; }
http {
  log_format mtls '$request_uri $status verify=$ssl_client_verify serial=$ssl_client_serial reused=$ssl_session_reused $ssl_protocol';
  access_log @RUN@/access.log mtls;
  client_body_temp_path @RUN@/tmp/body;
  proxy_temp_path @RUN@/tmp/proxy;
  fastcgi_temp_path @RUN@/tmp/fastcgi;
  uwsgi_temp_path @RUN@/tmp/uwsgi;
  scgi_temp_path @RUN@/tmp/scgi;
  server {
    listen @ADDR@ ssl;
    ssl_certificate @RUN@/server.pem;
    ssl_certificate_key @RUN@/server-key.pem;
    ssl_client_certificate @RUN@/client-ca.pem;
    ssl_verify_client on;
    ssl_verify_depth 3;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:tls:1m;
    ssl_session_tickets on;
    default_type application/json;
    @WEBSOCKET@
    location / {
      return 200 '{"verify":"$ssl_client_verify","serial":"$ssl_client_serial","subject":"$ssl_client_s_dn","reused":"$ssl_session_reused","uri":"$request_uri"}\n';
    }
  }
}
"#;

const WEBSOCKET: &str = r#"location /ws/ {
      proxy_pass http://@WS@;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_set_header Authorization "serial=$ssl_client_serial";
    }"#;
