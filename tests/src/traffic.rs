//! Client traffic for end-to-end tests: single requests and long keep-alive connections.

use std::process::{Child, Stdio};

use crate::netns::{Netns, VIP4};

/// One GET on a new connection (1 s limit); the body or the failure.
pub fn try_get(client: &Netns, url: &str) -> Result<String, String> {
    try_get_within(client, url, 1)
}

/// One GET on a new connection within `secs` seconds (3 leaves room for one SYN retransmit on
/// a loaded machine); the body or the failure.
pub fn try_get_within(client: &Netns, url: &str, secs: u32) -> Result<String, String> {
    let out = client
        .cmd("curl")
        .args(["-sS", "-g", "--max-time", &secs.to_string(), url])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// A keep-alive client: `n` requests on one connection at 10/s, printing bodies and the number
/// of new connections per request.
pub fn keepalive_client(client: &Netns, n: usize) -> Child {
    let mut cmd = client.cmd("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "--rate",
        "10/s",
        "-w",
        " %{num_connects}\n",
    ]);
    for _ in 0..n {
        cmd.arg(format!("http://{VIP4}/"));
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// (answers, total new connections) of a finished keep-alive client.
pub fn keepalive_result(child: Child) -> (Vec<String>, u32) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "keep-alive client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    // Each transfer prints its body ("webN\n") then " <num_connects>\n".
    let tokens: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(tokens.len() % 2, 0, "{text}");
    let bodies = tokens.chunks(2).map(|p| p[0].to_owned()).collect();
    let connects = tokens.chunks(2).map(|p| p[1].parse::<u32>().unwrap()).sum();
    (bodies, connects)
}
