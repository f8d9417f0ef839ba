//! The control API: newline-delimited JSON over a root-only Unix socket.
//!
//! One request per connection: the client writes one JSON object and a newline, the daemon
//! answers with one JSON object and a newline, then closes.
//!
//! Requests: `{"cmd":"stats"}`.
//! Responses: `{"ok":true,"stats":{...}}` or `{"ok":false,"error":"..."}`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Stats,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsSnapshot>,
}

impl Response {
    pub fn error(msg: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(msg.into()),
            stats: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CounterView {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl From<foobar_lb_common::Counters> for CounterView {
    fn from(c: foobar_lb_common::Counters) -> Self {
        CounterView {
            packets: c.packets,
            bytes: c.bytes,
            new_flows: c.new_flows,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendStats {
    pub address: String,
    pub mac: Option<String>,
    pub state: String,
    pub counters: CounterView,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStats {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub protocol: String,
    pub counters: CounterView,
    pub backends: Vec<BackendStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// (verdict name, packets), in the data plane's verdict order.
    pub verdicts: Vec<(String, u64)>,
    pub flows: usize,
    pub services: Vec<ServiceStats>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the foobar-lb daemon at {path}: {source} (is it running? start it with \
         `foobar-lb run --config FILE`, or pass --socket)"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon sent an unreadable answer: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("the daemon refused: {0}")]
    Refused(String),
}

/// Sends one request and waits for the answer.
pub async fn call(socket: &Path, req: &Request) -> Result<Response, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.to_owned(),
            source,
        })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    let resp: Response = serde_json::from_str(&answer)?;
    if !resp.ok {
        return Err(ClientError::Refused(resp.error.unwrap_or_default()));
    }
    Ok(resp)
}

/// Reads one request from a connection, answers it with `handle`, closes.
pub async fn serve_one<F>(stream: UnixStream, handle: F) -> std::io::Result<()>
where
    F: FnOnce(Request) -> Response,
{
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    // Bounded: a request is one short line.
    let mut reader = BufReader::new(read).take(64 * 1024);
    reader.read_line(&mut line).await?;
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => handle(req),
        Err(e) => Response::error(format!("bad request: {e}")),
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    write.write_all(&out).await
}

use tokio::io::AsyncReadExt as _;
