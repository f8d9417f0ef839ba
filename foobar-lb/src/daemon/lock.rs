//! One daemon per pin directory. Two daemons adopting the same pinned maps would each write
//! their own view into them; the control socket cannot tell (two configs may name different
//! sockets), so the pin directory itself is locked: an `flock` on a file in [`LOCK_DIR`]
//! (bpffs holds no regular files) named after the directory, held for the daemon's life and
//! released by the kernel however the process ends.

use std::{
    fs::File,
    io::{Read, Seek, Write},
    os::fd::AsRawFd,
    path::{Component, Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// Where the lock files live.
pub const LOCK_DIR: &str = "/run/foobar-lb";

/// Held while the daemon runs; dropping it (or the process ending) releases the pin directory.
pub(super) struct PinDirLock {
    _file: File,
}

/// The pin directory as an absolute path without `.`, repeated or trailing `/`, so the
/// spellings of one directory share a lock (symbolic links are not resolved: the directory
/// may not exist yet).
fn normalize(dir: &Path) -> PathBuf {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    abs.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// The lock file of a pin directory: a hash of its normalized path (FNV-1a, stable across
/// builds, unlike std's hasher).
pub fn lock_path(pin_dir: &Path) -> PathBuf {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in normalize(pin_dir).as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    Path::new(LOCK_DIR).join(format!("pin-{h:016x}.lock"))
}

/// Takes the pin directory's lock, or says which process holds it. Called before the data
/// plane is touched.
pub(super) fn lock_pin_dir(pin_dir: &Path) -> Result<PinDirLock> {
    let path = lock_path(pin_dir);
    std::fs::create_dir_all(LOCK_DIR).with_context(|| format!("cannot create {LOCK_DIR}"))?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    // SAFETY: a valid open descriptor; LOCK_NB makes it return at once.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::WouldBlock {
            return Err(err).with_context(|| format!("cannot lock {}", path.display()));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let pid = holder
            .lines()
            .find_map(|l| l.strip_prefix("pid "))
            .unwrap_or("unknown");
        bail!(
            "pin_dir {} is in use by another foobar-lb daemon (pid {pid}; lock {}): stop that \
             daemon first, or give this one another pin_dir",
            pin_dir.display(),
            path.display()
        );
    }
    // Ours now: record who holds it, for the next daemon's message.
    let record = format!(
        "pid {}\npin_dir {}\n",
        std::process::id(),
        normalize(pin_dir).display()
    );
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(record.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(PinDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_directory_share_a_lock_and_others_do_not() {
        let a = lock_path(Path::new("/sys/fs/bpf/foobar-lb"));
        for same in [
            "/sys/fs/bpf/foobar-lb/",
            "/sys/fs/bpf//foobar-lb",
            "/sys/fs/bpf/./foobar-lb",
        ] {
            assert_eq!(lock_path(Path::new(same)), a, "{same}");
        }
        assert_ne!(lock_path(Path::new("/sys/fs/bpf/foobar-lb2")), a);
        assert_ne!(lock_path(Path::new("/sys/fs/bpf")), a);
        assert!(a.starts_with(LOCK_DIR));
    }
}
