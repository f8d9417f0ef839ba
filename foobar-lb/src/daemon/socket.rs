//! The daemon's listeners: the control socket (one request per connection, answered by the
//! main loop) and the optional metrics endpoint (`metrics.rs`), bound early in start-up so
//! probes see `/ready` answer 503 until the maps are written.

use std::{net::SocketAddr, os::unix::fs::PermissionsExt, path::Path};

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
    println!("foobar-lb: metrics on http://{addr}/metrics (and /ready, /live)");
    tokio::spawn(metrics::serve(listener, api, readiness));
    Ok(())
}

fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // A socket file left by a daemon that died: `refuse_second_daemon` found nobody on it.
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn accept_loop(listener: UnixListener, api: mpsc::Sender<ApiCall>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(answer(stream, api.clone()));
    }
}

/// Reads one request, has the main loop handle it and writes the response.
async fn answer(stream: tokio::net::UnixStream, api: mpsc::Sender<ApiCall>) {
    let Ok((req, write)) = api::read_request(stream).await else {
        return;
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
    if let Err(e) = api::write_response(write, &resp).await {
        log::debug!("control connection: {e}");
    }
}
