//! MariaDB on each server (tests/src/mariadb.rs starts it): the primary on server 1, a replica
//! of it on server 2 (GTID replication, read-only), binary logs on both so the replica can be
//! promoted.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::{mariadb::MariaDb, netns::Netns};

/// The application's account (SELECT, INSERT on `foobar`), as app.py has it.
pub const APP_USER: &str = "app";
/// The health checks' account: no password, no privileges (a login and `@@read_only`).
pub const CHECK_USER: &str = "check";
const REPL_USER: &str = "repl";
const REPL_PASSWORD: &str = "repl-secret";

/// One server of the pair; stopped on drop.
pub struct Db {
    pub server_id: u32,
    pub server: MariaDb,
}

impl Db {
    /// Starts server `server_id` in `ns` on `bind:3306`; 1 is the primary, others start
    /// read-only.
    pub fn start(ns: &Netns, dir: &Path, server_id: u32, bind: &str) -> Result<Db> {
        let id = format!("--server-id={server_id}");
        let binlog = format!("--log-bin={}", dir.join("binlog").display());
        let relay = format!("--relay-log={}", dir.join("relay").display());
        let mut extra = vec![
            id.as_str(),
            binlog.as_str(),
            relay.as_str(),
            "--binlog-format=ROW",
            "--log-slave-updates",
            "--max-connections=200",
        ];
        if server_id != 1 {
            extra.push("--read-only");
        }
        Ok(Db {
            server_id,
            server: MariaDb::start(ns, dir, bind, 3306, &extra, &[])?,
        })
    }

    /// Runs `sql` as root over the server's socket: the rows, tab-separated.
    pub fn sql(&self, sql: &str) -> Result<String> {
        self.server.sql(sql)
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

    /// Stops the server (a clean shutdown).
    pub fn stop(&mut self) {
        self.server.stop();
    }
}
