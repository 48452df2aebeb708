//! `Postgres`: a throw-away PostgreSQL 15 cluster (Debian's `postgresql`, installed by
//! `scripts/peers/openbao`) in a temp dir, on a free 127.0.0.1 port, for OpenBao's `database`
//! secrets engine. `initdb` + `pg_ctl start` as a non-root user (`runuser -u postgres --` when
//! the tests run as root, since PostgreSQL refuses root); stopped with `pg_ctl stop -m
//! immediate` on drop.
//!
//! Authentication (`pg_hba.conf`): the superuser `postgres` is trusted (OpenBao and [`psql`]
//! connect as it), every other role needs its password (SCRAM), so [`Postgres::can_login`]
//! tells whether a dynamic credential really works.
//!
//! [`psql`]: Postgres::psql

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::clients::output_with_timeout;

/// Where Debian's `postgresql-15` puts `initdb`, `pg_ctl` and `postgres`.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The non-root user PostgreSQL runs as when the tests run as root.
pub const PG_OS_USER: &str = "postgres";

const PG_HBA: &str = "\
# written by tests/common/postgres.rs
local all postgres             trust
host  all postgres 127.0.0.1/32 trust
local all all                  scram-sha-256
host  all all      127.0.0.1/32 scram-sha-256
";

/// A running PostgreSQL cluster; stopped and deleted on drop.
pub struct Postgres {
    dir: tempfile::TempDir,
    data: PathBuf,
    port: u16,
    /// `Some("postgres")` when the server runs as another user than the tests.
    run_as: Option<&'static str>,
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn pg_tool(name: &str) -> PathBuf {
    let path = Path::new(PG_BIN).join(name);
    assert!(
        path.exists(),
        "{} not found: install the test peers with scripts/install-test-deps \
         (or scripts/peers/openbao)",
        path.display()
    );
    path
}

impl Postgres {
    /// initdb + start on a free port; panics (with the server log) if it does not come up.
    pub fn start() -> Postgres {
        let run_as = running_as_root().then_some(PG_OS_USER);
        let dir = tempfile::Builder::new()
            .prefix("sidekey-pg-")
            .tempdir()
            .expect("tempdir");
        if let Some(user) = run_as {
            let out = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(dir.path())
                .output()
                .expect("run chown");
            assert!(
                out.status.success(),
                "chown {user} {}: {}",
                dir.path().display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let data = dir.path().join("data");
        let mut pg = Postgres {
            dir,
            data,
            port: 0,
            run_as,
        };
        let init = pg.run_tool(
            "initdb",
            &[
                "-D",
                &pg.data.display().to_string(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        assert!(init.0, "initdb failed:\n{}", init.1);
        // Written as the tests' user: the server only needs to read it.
        let hba = pg.data.join("pg_hba.conf");
        std::fs::write(&hba, PG_HBA).expect("write pg_hba.conf");
        let _ = Command::new("chmod").arg("644").arg(&hba).status();

        // A free port can be taken between the probe and the bind: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            pg.port = super::clients::closed_port_addr().port();
            let opts = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off",
                pg.port,
                pg.dir.path().display()
            );
            let (ok, out) = pg.run_tool(
                "pg_ctl",
                &[
                    "-D",
                    &pg.data.display().to_string(),
                    "-l",
                    &pg.log_path().display().to_string(),
                    "-o",
                    &opts,
                    "-w",
                    "-t",
                    "30",
                    "start",
                ],
            );
            if ok {
                return pg;
            }
            last = format!("{out}\n--- server log ---\n{}", pg.log());
            if !last.contains("already in use") {
                break;
            }
        }
        panic!("PostgreSQL did not start:\n{last}");
    }

    /// Runs a PostgreSQL tool as the server's user; (success, stdout + stderr).
    fn run_tool(&self, tool: &str, args: &[&str]) -> (bool, String) {
        let bin = pg_tool(tool);
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.args(args).current_dir(self.dir.path());
        let out = output_with_timeout(cmd, Duration::from_secs(60));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// A connection URL template for OpenBao's `postgresql-database-plugin`.
    pub fn vault_connection_url(&self) -> String {
        format!(
            "postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn psql_cmd(&self, user: &str, password: Option<&str>, sql: &str) -> Command {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", user, "-d", "postgres", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE");
        if let Some(p) = password {
            cmd.env("PGPASSWORD", p);
        } else {
            cmd.arg("-w");
        }
        cmd
    }

    /// Runs `sql` as the superuser; returns psql's unaligned, tuples-only output (trimmed).
    /// Panics if psql fails.
    pub fn psql(&self, sql: &str) -> String {
        let out = output_with_timeout(
            self.psql_cmd("postgres", None, sql),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Whether a role (user) named `name` exists.
    pub fn role_exists(&self, name: &str) -> bool {
        let n = self.psql(&format!(
            "SELECT count(*) FROM pg_roles WHERE rolname = '{}'",
            name.replace('\'', "''")
        ));
        n == "1"
    }

    /// Roles whose name starts with `prefix` (OpenBao's dynamic users start with `v-`).
    pub fn roles_with_prefix(&self, prefix: &str) -> Vec<String> {
        let pattern = prefix
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
            .replace('\'', "''");
        let out = self.psql(&format!(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE '{pattern}%' ORDER BY rolname"
        ));
        out.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Whether `user` can log in with `password` right now (a real SCRAM login).
    pub fn can_login(&self, user: &str, password: &str) -> bool {
        let out = output_with_timeout(
            self.psql_cmd(user, Some(password), "SELECT 1"),
            Duration::from_secs(30),
        );
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "1"
    }

    /// The dynamic (`v-…`) user that `password` logs in as, if any.
    pub fn user_for_password(&self, password: &str) -> Option<String> {
        self.roles_with_prefix("v-")
            .into_iter()
            .find(|u| self.can_login(u, password))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let (ok, out) = self.run_tool(
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-m",
                "immediate",
                "-w",
                "-t",
                "20",
                "stop",
            ],
        );
        if std::thread::panicking() {
            eprintln!(
                "--- postgres log ({}) ---\n{}\n--- end postgres ---",
                self.dir.path().display(),
                self.log()
            );
        }
        if !ok && !out.contains("not running") && !out.contains("does not exist") {
            eprintln!("pg_ctl stop failed: {out}");
        }
    }
}
