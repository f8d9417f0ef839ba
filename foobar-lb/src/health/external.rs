//! The `external` check (HAProxy's `external-check`): a command run per check, no shell, in a
//! process group of its own. Exit status 0 is a success; any other, a signal or outliving
//! `timeout_ms` is a failure. On a timeout the whole group is killed (SIGKILL) and the command
//! reaped, so a check leaves nothing running behind it.

use std::{
    os::unix::process::ExitStatusExt,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncReadExt};

use super::{classify, one_line, CheckError};
use crate::config::{BackendConfig, ServiceConfig};

/// Output kept of each of stdout and stderr (the rest is read and dropped, so a chatty command
/// never blocks on a full pipe).
pub const OUTPUT_MAX: usize = 4096;
/// How long output is still read after the command exited (a process it left in the
/// background may hold the pipes open: it is not waited for).
const OUTPUT_GRACE: Duration = Duration::from_millis(100);
/// PATH when the daemon has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The environment of `b`'s check command (besides PATH): what the command checks.
pub fn env(svc: &ServiceConfig, b: &BackendConfig, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("FOOBAR_LB_SERVICE", svc.name.clone()),
        ("FOOBAR_LB_VIP", svc.vip.to_string()),
        ("FOOBAR_LB_VIP_PORT", svc.port.to_string()),
        // Backends have no name of their own: the address names them.
        ("FOOBAR_LB_BACKEND", b.address.to_string()),
        ("FOOBAR_LB_BACKEND_ADDR", b.address.to_string()),
        ("FOOBAR_LB_BACKEND_PORT", port.to_string()),
    ]
}

/// Kills the process group when dropped while armed: on a timeout, and when the check itself
/// is dropped (its backend removed, its settings changed). Armed only while the group's
/// leader is not reaped, so its id cannot belong to another process.
struct Group(Option<i32>);

impl Group {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: plain syscall; the group's leader is our unreaped child.
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs one check: `command` with `env`, bounded by `timeout`.
pub async fn run(
    command: &[String],
    env: &[(&'static str, String)],
    timeout: Duration,
) -> Result<(), CheckError> {
    let Some((program, args)) = command.split_first() else {
        return Err(CheckError::Spawn {
            program: String::new(),
            error: std::io::Error::other("no command configured"),
        });
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        classify("spawn", e, |error| CheckError::Spawn {
            program: program.clone(),
            error,
        })
    })?;
    let mut group = Group(child.id().map(|id| id as i32));
    let stdout = tokio::spawn(read_bounded(child.stdout.take()));
    let stderr = tokio::spawn(read_bounded(child.stderr.take()));
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => {
            group.disarm();
            status
        }
        Ok(Err(error)) => {
            group.kill();
            let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
            return Err(CheckError::Local {
                during: "wait for the check command",
                error,
            });
        }
        Err(_) => {
            // Killed before it is reaped: the group id is still the child's own.
            group.kill();
            // SIGKILL cannot be caught; the wait is bounded all the same (a process stuck in
            // the kernel), and tokio reaps it later if it outlasts this.
            let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
            stdout.abort();
            stderr.abort();
            return Err(CheckError::CommandTimeout(timeout));
        }
    };
    if status.success() {
        stdout.abort();
        stderr.abort();
        return Ok(());
    }
    let collect = |h: tokio::task::JoinHandle<Vec<u8>>| async move {
        match tokio::time::timeout(OUTPUT_GRACE, h).await {
            Ok(Ok(v)) => v,
            Ok(Err(_)) => Vec::new(),
            Err(_) => Vec::new(),
        }
    };
    let (err, out) = (collect(stderr).await, collect(stdout).await);
    let output = [first_line(&err), first_line(&out)]
        .into_iter()
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    Err(CheckError::Command {
        status: describe(status),
        output,
    })
}

/// Reads `r` to its end, keeping the first [`OUTPUT_MAX`] bytes.
async fn read_bounded<R: AsyncRead + Unpin>(r: Option<R>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut r) = r else {
        return kept;
    };
    let mut buf = [0u8; 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = OUTPUT_MAX - kept.len();
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// The first non-blank line, as one bounded log line.
fn first_line(bytes: &[u8]) -> String {
    bytes
        .split(|&b| b == b'\n')
        .map(|l| one_line(l, 200))
        .find(|l| !l.is_empty())
        .unwrap_or_default()
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => format!("ended: {status}"),
    }
}
