//! The load generator: one wrk run from the client, and its output parsed.

use anyhow::{Context, Result};
use foobar_lb_tests::netns::{run, Netns};
use serde::{Serialize, Serializer};

pub struct Settings {
    pub seconds: u32,
    pub connections: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnMode {
    NewConnectionPerRequest,
    KeepAlive,
}

impl ConnMode {
    /// In the order the bench runs them.
    pub const ALL: [ConnMode; 2] = [ConnMode::NewConnectionPerRequest, ConnMode::KeepAlive];

    pub fn label(self) -> &'static str {
        match self {
            ConnMode::NewConnectionPerRequest => "new connection per request",
            ConnMode::KeepAlive => "keep-alive",
        }
    }
}

// The report's JSON keeps the label, as before the enum.
impl Serialize for ConnMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.label())
    }
}

/// Runs wrk against `url`: (requests/s, p50 ms, p99 ms, errors).
pub fn wrk(
    client: &Netns,
    url: &str,
    mode: ConnMode,
    s: &Settings,
) -> Result<(f64, f64, f64, u64)> {
    let mut cmd = client.cmd("wrk");
    cmd.args([
        "-t1",
        &format!("-c{}", s.connections),
        &format!("-d{}s", s.seconds),
        "--latency",
        "--timeout",
        "2s",
    ]);
    if mode == ConnMode::NewConnectionPerRequest {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(url);
    let out = run(&mut cmd)?;
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// Parses wrk's `--latency` output: (requests/s, p50 ms, p99 ms, errors).
pub fn parse_wrk(out: &str) -> Result<(f64, f64, f64, u64)> {
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{out}"))?;
    let pct = |p: &str| -> f64 {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(p).map(str::trim))
            .map(to_ms)
            .unwrap_or(f64::NAN)
    };
    let mut errors = 0;
    for l in out.lines() {
        let l = l.trim();
        if let Some(rest) = l.strip_prefix("Socket errors:") {
            errors += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
        if let Some(rest) = l.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
    }
    Ok((rps, pct("50%"), pct("99%"), errors))
}

fn to_ms(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_wrk_output() {
        let out = "Running 5s test @ http://10.111.0.100/\n  1 threads and 32 connections\n  Latency Distribution\n     50%  1.21ms\n     75%    2.00ms\n     99%  850.00us\n  12345 requests in 5.00s, 1.00MB read\n  Socket errors: connect 0, read 3, write 0, timeout 2\n  Non-2xx or 3xx responses: 1\nRequests/sec:   2469.00\nTransfer/sec:    200.00KB\n";
        let (rps, p50, p99, err) = super::parse_wrk(out).unwrap();
        assert_eq!(rps, 2469.0);
        assert_eq!(p50, 1.21);
        assert_eq!(p99, 0.85);
        assert_eq!(err, 6);
    }
}
