//! A MariaDB server (Debian's `mariadb-server`) in a test's network namespace, with its own
//! data directory, socket and pid file under the test's directory; stopped on drop (on
//! success, failure and panic alike). For tests and the demo.
//!
//! No systemd runs here: the server is started by hand, as root (shared/TESTING-NETNS.md):
//! ```text
//! mariadb-install-db --no-defaults --datadir=DIR/data --user=root \
//!     --auth-root-authentication-method=normal --skip-test-db
//! nsenter --net=/run/netns/NS unshare --mount -- sh -c \
//!     'mount --bind DIR/hosts /etc/hosts && exec mariadbd --no-defaults --user=root \
//!      --datadir=DIR/data --socket=DIR/mysqld.sock --pid-file=DIR/mysqld.pid \
//!      --log-error=DIR/error.log --bind-address=ADDR --port=3306 EXTRA...'
//! ```
//! The server gets a private `/etc/hosts` naming the namespace's addresses (`hosts`), bound
//! over the real one in a mount namespace of its own: MariaDB keeps per-host connection error
//! counts (`max_connect_errors`, "Host ... is blocked") only for clients whose address
//! resolves, and the test namespaces reach no DNS server. With the file the server behaves as
//! on a network with working reverse DNS. The host's own `/etc/hosts` is not touched.
//!
//! `sql` runs statements as root over the Unix socket (which is a file, reachable from outside
//! the namespace); `client` connects over TCP from another namespace, as an application does.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::netns::{run, Netns};

pub struct MariaDb {
    /// Files of this server: `data/`, `mysqld.sock`, `mysqld.pid`, `error.log`, `hosts`.
    pub dir: PathBuf,
    pub address: String,
    pub port: u16,
    pub socket: PathBuf,
    child: Option<Child>,
}

impl MariaDb {
    /// Creates a data directory in `dir` and starts `mariadbd` in `ns` listening on
    /// `address:port`, with `extra` server options (e.g. `--max-connect-errors=5`,
    /// `--server-id=1`, `--log-bin=...`) and `hosts` (address, name) as its `/etc/hosts`.
    /// Returns once the server answers on its socket (30 s at most).
    pub fn start(
        ns: &Netns,
        dir: &Path,
        address: &str,
        port: u16,
        extra: &[&str],
        hosts: &[(&str, &str)],
    ) -> Result<MariaDb> {
        fs::create_dir_all(dir)?;
        let data = dir.join("data");
        run(Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ]))
        .context(
            "mariadb-install-db (is mariadb-server installed? `cargo xtask test` installs it)",
        )?;
        let mut etc_hosts = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (addr, name) in hosts {
            etc_hosts += &format!("{addr} {name}\n");
        }
        fs::write(dir.join("hosts"), etc_hosts)?;
        let socket = dir.join("mysqld.sock");
        let mut server = vec![
            "exec mariadbd --no-defaults --user=root".to_owned(),
            format!("--datadir={}", data.display()),
            format!("--socket={}", socket.display()),
            format!("--pid-file={}", dir.join("mysqld.pid").display()),
            format!("--log-error={}", dir.join("error.log").display()),
            format!("--bind-address={address}"),
            format!("--port={port}"),
            // Small and quick to start: a test database holds a few rows.
            "--innodb-buffer-pool-size=16M".to_owned(),
        ];
        server.extend(extra.iter().map(|s| s.to_string()));
        let script = format!(
            "mount --bind {} /etc/hosts && {}",
            dir.join("hosts").display(),
            server.join(" ")
        );
        let child = ns
            .cmd("unshare")
            .args(["--mount", "--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("start.log"))?)
            .spawn()
            .context("start mariadbd")?;
        let mut db = MariaDb {
            dir: dir.to_owned(),
            address: address.to_owned(),
            port,
            socket,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = db.child.as_mut().unwrap().try_wait()? {
                db.child = None;
                bail!("mariadbd exited at start ({status}):\n{}", db.log_tail());
            }
            if db.sql("SELECT 1").is_ok() {
                return Ok(db);
            }
            if Instant::now() > deadline {
                bail!("mariadbd did not answer within 30 s:\n{}", db.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The end of the server's error log and of what its start printed.
    pub fn log_tail(&self) -> String {
        let tail = |name: &str| {
            let text = fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        format!("{}\n{}", tail("start.log"), tail("error.log"))
    }

    /// Runs `sql` as root over the socket; the result rows, tab-separated, without headers.
    pub fn sql(&self, sql: &str) -> Result<String> {
        let out = run(Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["--protocol=socket", "-u", "root", "-N", "-B", "-e", sql]))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Runs `sql` as `user` (no password) over TCP from namespace `from`; the whole output,
    /// so a refused connection's error can be read.
    pub fn client(&self, from: &Netns, user: &str, sql: &str) -> Output {
        from.cmd("mariadb")
            .args(["--no-defaults", "--skip-ssl", "--connect-timeout=5"])
            .args(["-h", &self.address, "-P", &self.port.to_string()])
            .args(["-u", user, "-N", "-B", "-e", sql])
            .output()
            .expect("run mariadb")
    }

    /// A global status counter (e.g. `Aborted_connects`).
    pub fn status(&self, name: &str) -> Result<u64> {
        let out = self.sql(&format!("SHOW GLOBAL STATUS LIKE '{name}'"))?;
        out.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no status {name}: {out:?}"))
    }

    /// Whether the server still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops the server: SIGTERM (a clean shutdown), SIGKILL after 20 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.stop();
    }
}
