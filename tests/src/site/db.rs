//! MariaDB on each server (Debian's `mariadb-server`): the primary on server 1, a replica of it
//! on server 2 (GTID replication), each with its own data directory under the site's files.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::netns::{run, Netns};

/// The application's account (SELECT, INSERT on `foobar`), as app.py has it.
pub const APP_USER: &str = "app";
/// The health checks' account: no password, no privileges (a login and `@@read_only`).
pub const CHECK_USER: &str = "check";
const REPL_USER: &str = "repl";
const REPL_PASSWORD: &str = "repl-secret";

/// One running MariaDB server; killed on drop.
pub struct Db {
    pub server_id: u32,
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
}

impl Db {
    /// Initialises `dir` and starts mariadbd in `ns` on `bind:3306`. `server_id` 1 is the
    /// primary; others start read-only. Waits until it answers (bounded).
    pub fn start(ns: &Netns, dir: &Path, server_id: u32, bind: &str) -> Result<Db> {
        fs::create_dir_all(dir)?;
        let data = dir.join("data");
        run(Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=root", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .stdout(Stdio::null()))
        .context("mariadb-install-db failed (Debian package mariadb-server)")?;
        let socket = dir.join("mysqld.sock");
        let log = fs::File::create(dir.join("mysqld.log"))?;
        let mut cmd = ns.cmd("mariadbd");
        cmd.args(["--no-defaults", "--user=root", "--port=3306"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--bind-address={bind}"))
            .arg(format!("--server-id={server_id}"))
            .arg(format!("--log-bin={}", dir.join("binlog").display()))
            .arg(format!("--relay-log={}", dir.join("relay").display()))
            .args([
                "--binlog-format=ROW",
                "--log-slave-updates",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=16M",
                "--max-connections=200",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if server_id != 1 {
            cmd.arg("--read-only");
        }
        let child = cmd.spawn().context("cannot start mariadbd")?;
        let mut db = Db {
            server_id,
            dir: dir.to_owned(),
            socket,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while db.sql("SELECT 1").is_err() {
            if let Some(status) = db.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "mariadbd (server {server_id}) exited ({status}): see {}",
                    dir.join("mysqld.log").display()
                );
            }
            if Instant::now() > deadline {
                bail!("mariadbd (server {server_id}) does not answer after 60 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(db)
    }

    /// Runs `sql` as root over the server's socket: the rows, tab-separated.
    pub fn sql(&self, sql: &str) -> Result<String> {
        let out = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-u", "root", "-N", "-B", "-e", sql])
            .output()
            .context("cannot run the mariadb client (Debian package mariadb-client)")?;
        if !out.status.success() {
            bail!(
                "server {}: {sql}: {}",
                self.server_id,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Primary: the replication account, then the schema and accounts, which replicate.
    pub fn init_primary(&self) -> Result<()> {
        self.sql(&format!(
            "CREATE USER '{REPL_USER}'@'%' IDENTIFIED BY '{REPL_PASSWORD}';\
             GRANT REPLICATION SLAVE ON *.* TO '{REPL_USER}'@'%';\
             CREATE DATABASE foobar;\
             CREATE TABLE foobar.entries (id INT AUTO_INCREMENT PRIMARY KEY,\
               text VARCHAR(200) NOT NULL, web VARCHAR(16) NOT NULL,\
               created TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);\
             CREATE USER '{APP_USER}'@'%' IDENTIFIED BY 'app-secret';\
             GRANT SELECT, INSERT ON foobar.* TO '{APP_USER}'@'%';\
             CREATE USER '{CHECK_USER}'@'%';\
             INSERT INTO foobar.entries (text, web) VALUES ('Welcome to www.foobar.com', 'setup');"
        ))?;
        Ok(())
    }

    /// Replica: replicate from `primary` (its address) from the beginning of its binary log.
    pub fn replicate_from(&self, primary: &str) -> Result<()> {
        self.sql(&format!(
            "CHANGE MASTER TO MASTER_HOST='{primary}', MASTER_PORT=3306,\
             MASTER_USER='{REPL_USER}', MASTER_PASSWORD='{REPL_PASSWORD}',\
             MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1; START SLAVE;"
        ))?;
        Ok(())
    }

    /// Waits (bounded) until `sql` answers `want`.
    pub fn wait_for(&self, sql: &str, want: &str, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.sql(sql).unwrap_or_default();
            if got == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "server {}: `{sql}` answers {got:?}, not {want:?}, after {within:?}",
                    self.server_id
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The replica becomes a primary: replication stopped and forgotten, writes allowed.
    pub fn promote(&self) -> Result<()> {
        self.sql("STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0;")?;
        Ok(())
    }

    /// Stops the server (SIGKILL, as a crash; InnoDB recovers on a next start).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.kill();
    }
}
