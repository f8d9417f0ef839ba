//! The foobar-lb binary under test, started inside a namespace; stopped on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;

/// The controller binary: `FOOBAR_LB_BIN` (set by `cargo xtask test`) or the debug build.
pub fn bin() -> PathBuf {
    std::env::var_os("FOOBAR_LB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/foobar-lb"))
}

/// Runs `foobar-lb ARGS` to completion (outside any namespace).
pub fn cli(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run foobar-lb")
}

/// Runs `BIN --socket SOCKET ARGS` to completion (a daemon of the given binary and socket).
pub fn cli_at(bin: &Path, socket: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run foobar-lb")
}

/// Runs `foobar-lb ARGS` to completion in directory `dir` (relative paths resolve there).
pub fn cli_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run foobar-lb")
}

pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `foobar-lb run --config CONFIG --detach-on-exit` in `ns` and waits until its
    /// control socket answers.
    pub fn start(ns: &Netns, config: &Path, socket: &Path) -> Result<Daemon> {
        Daemon::start_with(ns, config, socket, &["--detach-on-exit"])
    }

    /// Starts `foobar-lb run --config CONFIG EXTRA...` (appending to the same log).
    pub fn start_with(ns: &Netns, config: &Path, socket: &Path, extra: &[&str]) -> Result<Daemon> {
        let log = config.with_extension("log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = ns
            .cmd(bin().to_str().unwrap())
            .args(["run", "--config"])
            .arg(config)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("start foobar-lb")?;
        let mut d = Daemon {
            child,
            socket: socket.to_owned(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = d.child.try_wait()? {
                bail!("foobar-lb exited early ({status}):\n{}", d.log_text());
            }
            if cli(&["stats", "--socket", socket.to_str().unwrap()])
                .status
                .success()
            {
                return Ok(d);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("foobar-lb did not answer within 20 s:\n{}", d.log_text())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The data plane's verdict counters that are not zero, as `name=count ...` (drops, and
    /// what each verdict counted): for messages and logs.
    pub fn verdicts_text(&self) -> String {
        self.stats()
            .verdicts
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `foobar-lb stats --json` of this daemon.
    pub fn stats(&self) -> foobar_lb::api::StatsSnapshot {
        let out = cli(&["stats", "--json", "--socket", self.socket.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "stats failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("stats JSON")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL and reaps the process: no cleanup runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `foobar-lb ARGS --socket SOCKET`.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut v = args.to_vec();
        v.extend(["--socket", self.socket.to_str().unwrap()]);
        cli(&v)
    }

    /// Stops with SIGTERM (bounded wait, then SIGKILL); returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}
