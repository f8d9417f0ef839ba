//! The daemon's listeners: the control socket (one request per connection, answered by the
//! main loop) and the optional metrics endpoint (`metrics.rs`), bound early in start-up so
//! probes see `/ready` answer 503 until the maps are written.

use std::{
    net::SocketAddr,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use tokio::{
    net::UnixListener,
    sync::{mpsc, oneshot},
};

use super::ApiCall;
use crate::{
    api::{self, Response},
    config::Config,
    metrics,
};

/// Refuses to start twice on one control socket; called before touching the kernel.
pub(super) async fn refuse_second_daemon(socket: &Path) -> Result<()> {
    if tokio::net::UnixStream::connect(socket).await.is_ok() {
        bail!(
            "another foobar-lb daemon answers on {}: stop it first",
            socket.display()
        );
    }
    Ok(())
}

/// Starts the control socket listener; its requests go to `api`, answered by the main loop.
pub(super) async fn serve(config: &Config, api: mpsc::Sender<ApiCall>) -> Result<()> {
    let listener = bind_socket(&config.control_socket)?;
    tokio::spawn(accept_loop(listener, api));
    Ok(())
}

/// Starts the metrics endpoint (unless disabled): `/ready` answers 503 until `readiness` says
/// otherwise, and `/metrics` and `/live` ask the main loop over `api`.
pub(super) async fn serve_metrics(
    config: &Config,
    api: mpsc::Sender<ApiCall>,
    readiness: metrics::Readiness,
) -> Result<()> {
    if config.metrics_address.is_empty() {
        return Ok(());
    }
    let addr: SocketAddr = config.metrics_address.parse().expect("validated");
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    println!("foobar-lb: stats page on http://{addr}/, metrics on http://{addr}/metrics (and /ready, /live)");
    tokio::spawn(metrics::serve(
        listener,
        api,
        readiness,
        config.admin_token.clone(),
    ));
    Ok(())
}

/// Creates the control socket mode 0600 with no moment at which anyone else could connect:
/// it is bound and restricted inside a fresh directory only root can enter (mode 0700, next
/// to `path` so both are on one filesystem), then renamed into place, which also replaces a
/// socket file left by a daemon that died (`refuse_second_daemon` found nobody on it).
/// No process-wide umask change: other threads may be creating files.
fn bind_socket(path: &Path) -> Result<UnixListener> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let private = dir.join(format!(".foobar-lb-bind-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("cannot create {}", private.display()))?;
    let staged = private.join("s");
    let result = (|| {
        let listener = UnixListener::bind(&staged)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)
            .with_context(|| format!("cannot move the control socket to {}", path.display()))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

async fn accept_loop(listener: UnixListener, api: mpsc::Sender<ApiCall>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, api.clone()));
            }
            Err(e) => {
                // Out of descriptors, typically: retrying at once would spin.
                log::warn!("control socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request, has the main loop handle it and writes the response. A client that
/// sends nothing, or does not take its answer, is dropped after [`api::DAEMON_IO_TIMEOUT`].
async fn answer(stream: tokio::net::UnixStream, api: mpsc::Sender<ApiCall>) {
    let (req, write) =
        match tokio::time::timeout(api::DAEMON_IO_TIMEOUT, api::read_request(stream)).await {
            Ok(Ok(got)) => got,
            Ok(Err(e)) => {
                log::debug!("control connection: {e}");
                return;
            }
            Err(_) => {
                log::debug!(
                    "control connection: no request within {:?}, closed",
                    api::DAEMON_IO_TIMEOUT
                );
                return;
            }
        };
    let resp = match req {
        Ok(req) => {
            let (tx, rx) = oneshot::channel();
            if api.send((req, tx)).await.is_err() {
                return;
            }
            rx.await
                .unwrap_or_else(|_| Response::error("daemon is stopping"))
        }
        Err(resp) => resp,
    };
    match tokio::time::timeout(api::DAEMON_IO_TIMEOUT, api::write_response(write, &resp)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::debug!("control connection: {e}"),
        Err(_) => log::debug!("control connection: answer not taken, closed"),
    }
}
