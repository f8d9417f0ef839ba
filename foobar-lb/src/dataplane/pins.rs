//! Pinning on bpffs: layout checks before adopting pinned maps, teardown, mounting bpffs.

use std::path::{Path, PathBuf};

use foobar_lb_common::{
    registry::{pinned_maps, MapKind, MapSpec},
    LAYOUT_VERSION, MAP_FLOWS,
};

use super::{map_err, DataplaneError};

/// Removes a pinned data plane: unpinning the links detaches the program, unpinning the maps
/// frees them once no program uses them. Returns what was removed.
pub fn teardown(pin_dir: &Path) -> Result<Vec<PathBuf>, DataplaneError> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(source) => {
            return Err(DataplaneError::PinIo {
                what: "read",
                path: pin_dir.to_owned(),
                source,
            })
        }
    };
    // Links first, so the program stops before its maps go.
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort_by_key(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link-"))
    });
    for path in paths {
        std::fs::remove_file(&path).map_err(|source| DataplaneError::PinIo {
            what: "remove",
            path: path.clone(),
            source,
        })?;
        removed.push(path);
    }
    let _ = std::fs::remove_dir(pin_dir);
    Ok(removed)
}

/// The fix named in every refusal to adopt.
fn teardown_fix(dir: &Path) -> String {
    format!(
        "run `foobar-lb teardown --pin-dir {}` (this interrupts traffic) and start again",
        dir.display()
    )
}

/// What a pinned map must match: the registry entry, with the flow table at its configured
/// size. aya reuses a pinned map without comparing it to the object's definition, so the daemon
/// compares first.
fn expected(spec: &MapSpec, flow_table_size: u32) -> [(&'static str, u32); 5] {
    let max_entries = if spec.name == MAP_FLOWS {
        flow_table_size
    } else {
        spec.max_entries
    };
    [
        ("type", spec.kind.kernel_type()),
        ("key size", spec.key_size),
        ("value size", spec.value_size),
        ("max_entries", max_entries),
        ("flags", spec.flags),
    ]
}

/// Refuses to adopt pinned maps that this build does not share in every registry field (an
/// older or newer foobar-lb), or a flow table of another size: reusing them would misread their
/// contents. The layout version is checked after loading, from [`foobar_lb_common::MAP_META`].
pub(super) fn check_pinned_layouts(dir: &Path, flow_table_size: u32) -> Result<(), DataplaneError> {
    for spec in pinned_maps() {
        let path = dir.join(spec.name);
        if !path.exists() {
            return Err(DataplaneError::PartialPins {
                dir: dir.to_owned(),
                missing: spec.name,
                fix: teardown_fix(dir),
            });
        }
        let info = aya::maps::MapInfo::from_pin(&path).map_err(map_err(spec.name))?;
        let found = [
            info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
            info.key_size(),
            info.value_size(),
            info.max_entries(),
            info.map_flags(),
        ];
        for ((field, want), got) in expected(spec, flow_table_size).into_iter().zip(found) {
            if want == got {
                continue;
            }
            if spec.name == MAP_FLOWS && field == "max_entries" {
                return Err(DataplaneError::FlowTableSize {
                    pinned: got,
                    configured: flow_table_size,
                    fix: teardown_fix(dir),
                });
            }
            let show = |v: u32| match field {
                "type" => MapKind::from_kernel_type(v)
                    .map(|k| format!("{k:?}"))
                    .unwrap_or_else(|| format!("type {v}")),
                _ => v.to_string(),
            };
            return Err(DataplaneError::LayoutMismatch {
                path,
                field,
                pinned: show(got),
                expected: show(want),
                fix: teardown_fix(dir),
            });
        }
    }
    Ok(())
}

/// Refuses a pinned data plane written by a daemon of another layout version (0: the daemon
/// that created it died before writing it, or predates versioning).
pub(super) fn check_layout_version(dir: &Path, pinned: u32) -> Result<(), DataplaneError> {
    if pinned == LAYOUT_VERSION {
        return Ok(());
    }
    Err(DataplaneError::LayoutVersion {
        pinned,
        expected: LAYOUT_VERSION,
        fix: teardown_fix(dir),
    })
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Makes sure `dir` exists on a bpffs, mounting one at /sys/fs/bpf if that is where it goes and
/// none is mounted (it is not by default on these machines).
pub(super) fn ensure_bpffs(dir: &Path) -> Result<(), DataplaneError> {
    let sys = Path::new("/sys/fs/bpf");
    if dir.starts_with(sys) && !is_bpffs(sys) {
        let _ = std::fs::create_dir_all(sys);
        let ok = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        } == 0;
        if !ok {
            return Err(DataplaneError::MountBpffs(std::io::Error::last_os_error()));
        }
        log::info!("mounted bpffs at /sys/fs/bpf");
    }
    std::fs::create_dir_all(dir).map_err(|source| DataplaneError::PinIo {
        what: "create",
        path: dir.to_owned(),
        source,
    })?;
    if !is_bpffs(dir) {
        return Err(DataplaneError::NotBpffs(dir.to_owned()));
    }
    Ok(())
}
