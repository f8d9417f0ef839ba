//! Network interface facts from the kernel: index and MAC address.

use std::ffi::CString;

#[derive(Debug, thiserror::Error)]
pub enum NetdevError {
    #[error("unknown interface {0:?}: check the name with `ip link`")]
    Unknown(String),
    #[error("invalid interface name {0:?}")]
    BadName(String),
}

pub fn ifindex(name: &str) -> Result<u32, NetdevError> {
    let c = CString::new(name).map_err(|_| NetdevError::BadName(name.to_owned()))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(NetdevError::Unknown(name.to_owned()));
    }
    Ok(idx)
}
