//! The `mysql` check (HAProxy's `option mysql-check`): the server's greeting, and with a user,
//! a login with an empty password followed by `COM_QUIT`.
//!
//! Wire format (MySQL client/server protocol): every packet is a 3-byte little-endian payload
//! length, a sequence id, then the payload. The server speaks first: a protocol-10 handshake
//! (`0x0a`, the server version NUL-terminated, ...) or an error packet (`0xff`, a 2-byte
//! code, the message) when it refuses the connection outright (1129: host blocked after
//! `max_connect_errors`, 1040: too many connections). Every read is bounded in size here and
//! in time by the probe's timeout; nothing the server sends can make the check panic.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{classify, one_line, CheckError};

/// Largest packet accepted: a greeting or an answer to a login is about 100 bytes.
pub const MAX_PACKET: usize = 16 * 1024;

const CLIENT_LONG_PASSWORD: u32 = 0x1;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;
/// utf8_general_ci.
const CHARSET: u8 = 33;
const NATIVE_PASSWORD: &str = "mysql_native_password";

/// What the server said first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Greeting {
    /// A protocol-10 handshake: the server's version and capability flags.
    Handshake { version: String, capabilities: u32 },
    /// An error packet: the server refuses this connection.
    Error { code: u16, message: String },
}

fn protocol(what: impl Into<String>) -> CheckError {
    CheckError::MysqlProtocol(what.into())
}

/// Parses the greeting's payload.
pub fn parse_greeting(payload: &[u8]) -> Result<Greeting, CheckError> {
    match payload.first() {
        None => Err(protocol("empty greeting")),
        Some(0xff) => {
            let (code, message) = parse_error(payload)?;
            Ok(Greeting::Error { code, message })
        }
        Some(0x0a) => {
            let rest = &payload[1..];
            let nul = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| protocol("greeting without the end of the server version"))?;
            let raw = &rest[..nul];
            // MariaDB prefixes its version with "5.5.5-" for old replication clients.
            let raw = raw.strip_prefix(b"5.5.5-").unwrap_or(raw);
            let version = one_line(raw, 64);
            // Connection id (4), scramble part 1 (8), filler (1), capabilities, low 2 bytes.
            let fixed = &rest[nul + 1..];
            let low = fixed
                .get(13..15)
                .ok_or_else(|| protocol("greeting too short for its capability flags"))?;
            let mut capabilities = u32::from(u16::from_le_bytes([low[0], low[1]]));
            // Then character set (1), status (2), capabilities, high 2 bytes (optional).
            if let Some(high) = fixed.get(18..20) {
                capabilities |= u32::from(u16::from_le_bytes([high[0], high[1]])) << 16;
            }
            Ok(Greeting::Handshake {
                version,
                capabilities,
            })
        }
        Some(&b) => Err(protocol(format!(
            "not a MySQL server greeting (first byte 0x{b:02x}, protocol 10 expected)"
        ))),
    }
}

/// An error packet's code and message (the SQL state, `#` and 5 characters, skipped).
pub fn parse_error(payload: &[u8]) -> Result<(u16, String), CheckError> {
    let code = payload
        .get(1..3)
        .ok_or_else(|| protocol("error packet without an error code"))?;
    let code = u16::from_le_bytes([code[0], code[1]]);
    let mut message = &payload[3..];
    if message.first() == Some(&b'#') && message.len() >= 6 {
        message = &message[6..];
    }
    Ok((code, one_line(message, 200)))
}

/// The HandshakeResponse41 of `user` with an empty password, for a server with
/// `capabilities`.
pub fn login(user: &str, capabilities: u32) -> Vec<u8> {
    let flags = CLIENT_PROTOCOL_41
        | (capabilities & (CLIENT_LONG_PASSWORD | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH));
    let mut p = Vec::with_capacity(64 + user.len());
    p.extend_from_slice(&flags.to_le_bytes());
    p.extend_from_slice(&(1u32 << 24).to_le_bytes()); // max packet size
    p.push(CHARSET);
    p.extend_from_slice(&[0; 23]);
    p.extend_from_slice(user.as_bytes());
    p.push(0);
    // The empty password: a zero length (secure connection) or an empty NUL-terminated
    // string (older servers) are the same byte.
    p.push(0);
    if flags & CLIENT_PLUGIN_AUTH != 0 {
        p.extend_from_slice(NATIVE_PASSWORD.as_bytes());
        p.push(0);
    }
    p
}

/// Reads one packet: (sequence id, payload).
pub async fn read_packet<S: AsyncRead + Unpin>(s: &mut S) -> Result<(u8, Vec<u8>), CheckError> {
    let mut head = [0u8; 4];
    read_exact(s, &mut head, "a packet header").await?;
    let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
    if len > MAX_PACKET {
        return Err(protocol(format!(
            "packet of {len} bytes, more than the {MAX_PACKET} a check reads"
        )));
    }
    let mut payload = vec![0u8; len];
    read_exact(s, &mut payload, "a packet").await?;
    Ok((head[3], payload))
}

async fn read_exact<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut [u8],
    what: &str,
) -> Result<(), CheckError> {
    match s.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(protocol(format!(
            "connection closed in the middle of {what}"
        ))),
        Err(e) => Err(classify("read", e, CheckError::Read)),
    }
}

async fn write_packet<S: AsyncWrite + Unpin>(
    s: &mut S,
    seq: u8,
    payload: &[u8],
) -> Result<(), CheckError> {
    let len = payload.len() as u32;
    let mut p = Vec::with_capacity(4 + payload.len());
    p.extend_from_slice(&len.to_le_bytes()[..3]);
    p.push(seq);
    p.extend_from_slice(payload);
    s.write_all(&p)
        .await
        .map_err(|e| classify("send", e, CheckError::Send))?;
    s.flush()
        .await
        .map_err(|e| classify("send", e, CheckError::Send))
}

/// The answer to a login (or to an authentication switch): OK, or why not.
fn login_result(payload: &[u8]) -> Result<(), CheckError> {
    match payload.first() {
        Some(0x00) => Ok(()),
        Some(0xff) => {
            let (code, message) = parse_error(payload)?;
            Err(CheckError::Mysql { code, message })
        }
        Some(&b) => Err(protocol(format!(
            "unexpected answer to the login (0x{b:02x})"
        ))),
        None => Err(protocol("empty answer to the login")),
    }
}

/// The check on a connected stream: the greeting, then, with `user`, the login and
/// `COM_QUIT`.
pub async fn check<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    user: Option<&str>,
) -> Result<(), CheckError> {
    let (seq, greeting) = read_packet(s).await?;
    let capabilities = match parse_greeting(&greeting)? {
        Greeting::Error { code, message } => return Err(CheckError::Mysql { code, message }),
        Greeting::Handshake { capabilities, .. } => capabilities,
    };
    let Some(user) = user else {
        return Ok(());
    };
    if capabilities & CLIENT_PROTOCOL_41 == 0 {
        return Err(protocol(
            "the server does not speak protocol 4.1 (MySQL 4.1 or later is needed for a login)",
        ));
    }
    write_packet(s, seq.wrapping_add(1), &login(user, capabilities)).await?;
    let (seq, answer) = read_packet(s).await?;
    let result = if answer.first() == Some(&0xfe) {
        // An authentication switch request: the plugin's name, NUL-terminated, then its data.
        let name = &answer[1..];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if name == NATIVE_PASSWORD.as_bytes() {
            // The empty password's answer is empty.
            write_packet(s, seq.wrapping_add(1), &[]).await?;
            let (_, answer) = read_packet(s).await?;
            login_result(&answer)
        } else {
            Err(protocol(format!(
                "the server asks for authentication plugin {:?} for user {user:?}; create the \
                 check user with no password (CREATE USER '{user}'@'...' IDENTIFIED VIA \
                 mysql_native_password USING '')",
                one_line(name, 64)
            )))
        }
    } else {
        login_result(&answer)
    };
    if result.is_ok() {
        // COM_QUIT, so the server counts a clean disconnect rather than an aborted one. Its
        // own failure says nothing the login did not.
        let _ = write_packet(s, 0, &[0x01]).await;
        let _ = s.shutdown().await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A MariaDB 10.11 greeting, as captured (its scramble replaced).
    pub const MARIADB_GREETING: &[u8] = b"\x0a5.5.5-10.11.19-MariaDB-0+deb12u1\x00\x05\x00\x00\x00\
        abcdefgh\x00\xfe\xf7\x08\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00\
        ijklmnopqrst\x00mysql_native_password\x00";

    #[test]
    fn greetings_errors_and_garbage() {
        match parse_greeting(MARIADB_GREETING).unwrap() {
            Greeting::Handshake {
                version,
                capabilities,
            } => {
                assert_eq!(version, "10.11.19-MariaDB-0+deb12u1");
                assert_eq!(capabilities, 0x81ff_f7fe);
                assert_ne!(capabilities & CLIENT_PROTOCOL_41, 0);
                assert_ne!(capabilities & CLIENT_PLUGIN_AUTH, 0);
            }
            other => panic!("{other:?}"),
        }
        let blocked = b"\xff\x69\x04Host '10.0.0.2' is blocked because of many connection errors";
        assert_eq!(
            parse_greeting(blocked).unwrap(),
            Greeting::Error {
                code: 1129,
                message: "Host '10.0.0.2' is blocked because of many connection errors".into()
            }
        );
        // With a SQL state (answers after the handshake carry one).
        assert_eq!(
            parse_error(b"\xff\x15\x04#28000Access denied for user").unwrap(),
            (1045, "Access denied for user".into())
        );
        for (bad, msg) in [
            (&b""[..], "empty greeting"),
            (b"\xff\x10", "without an error code"),
            (b"\x0a5.5", "without the end of the server version"),
            (b"\x0a5.5\x00\x01\x02", "too short for its capability flags"),
            (b"HTTP/1.1 400", "first byte 0x48"),
            (b"SSH-2.0", "first byte 0x53"),
        ] {
            let e = parse_greeting(bad).unwrap_err().to_string();
            assert!(e.contains(msg), "{bad:?}: {e}");
        }
        // Hostile bytes in text fields come out as one printable line.
        match parse_greeting(b"\xff\x10\x04line\r\nX-Injected: \x1b[31m").unwrap() {
            Greeting::Error { message, .. } => assert_eq!(message, "line  X-Injected:  [31m"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parsing_never_panics_on_any_prefix_or_byte_flip() {
        for n in 0..=MARIADB_GREETING.len() {
            let _ = parse_greeting(&MARIADB_GREETING[..n]);
            let _ = parse_error(&MARIADB_GREETING[..n]);
            let _ = login_result(&MARIADB_GREETING[..n]);
        }
        let mut g = MARIADB_GREETING.to_vec();
        for i in 0..g.len() {
            for v in [0x00, 0xff, 0x0a, 0xfe] {
                let old = g[i];
                g[i] = v;
                let _ = parse_greeting(&g);
                g[i] = old;
            }
        }
    }

    #[test]
    fn the_login_names_the_user_with_an_empty_password() {
        let p = login("haproxy_check", 0x81ff_f7fe);
        let flags = u32::from_le_bytes(p[..4].try_into().unwrap());
        assert_eq!(
            flags,
            CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH
        );
        assert_eq!(p[8], CHARSET);
        assert!(p[9..32].iter().all(|&b| b == 0));
        assert_eq!(&p[32..], b"haproxy_check\x00\x00mysql_native_password\x00");
        // A server without plugin authentication gets no plugin name.
        let p = login("u", CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION);
        assert_eq!(&p[32..], b"u\x00\x00");
    }
}
