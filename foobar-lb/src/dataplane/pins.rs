//! Pinning on bpffs: layout checks before adopting pinned maps, teardown, mounting bpffs.

use std::path::{Path, PathBuf};

use foobar_lb_common::{
    Backend, BackendSet, BlockKey4, BlockKey6, Counters, PrefixLens, RuleSet, ServiceInfo,
    ServiceKey, VipFilter, VipKey, MAP_BACKENDS, MAP_BACKEND_SETS, MAP_BACKEND_STATS,
    MAP_BLOCKLIST4, MAP_BLOCKLIST6, MAP_BLOCK_LENS, MAP_FLOWS, MAP_FW_FLAGS, MAP_FW_RULES,
    MAP_RATE_BUCKETS, MAP_RR_CURSORS, MAP_RULE_STATS, MAP_SERVICES, MAP_SERVICE_STATS,
    MAP_VERDICT_STATS, MAP_VIPS, MAP_VIP_FILTER, MAP_VIP_POLICY,
};

use super::{map_err, DataplaneError};

/// Removes a pinned data plane: unpinning the links detaches the program, unpinning the maps
/// frees them once no program uses them. Returns what was removed.
pub fn teardown(pin_dir: &Path) -> Result<Vec<PathBuf>, DataplaneError> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => {
            return Err(DataplaneError::Bpffs(format!(
                "cannot read {}: {e}",
                pin_dir.display()
            )))
        }
    };
    // Links first, so the program stops before its maps go.
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort_by_key(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link-"))
    });
    for path in paths {
        std::fs::remove_file(&path)
            .map_err(|e| DataplaneError::Bpffs(format!("cannot remove {}: {e}", path.display())))?;
        removed.push(path);
    }
    let _ = std::fs::remove_dir(pin_dir);
    Ok(removed)
}

/// (map, key size, value size) of every pinned map, from the shared types. aya reuses a
/// pinned map without comparing it to the object's definition, so the daemon compares first.
pub(super) fn expected_layouts() -> [(&'static str, usize, usize); 18] {
    use foobar_lb_common::{Bucket, FlowKey, FlowValue, FwWords, RateKey};
    use std::mem::size_of;
    [
        (
            MAP_SERVICES,
            size_of::<ServiceKey>(),
            size_of::<ServiceInfo>(),
        ),
        (MAP_VIPS, size_of::<VipKey>(), 4),
        (MAP_BACKEND_SETS, 4, size_of::<BackendSet>()),
        (MAP_BACKENDS, 4, size_of::<Backend>()),
        (MAP_RR_CURSORS, 4, 8),
        (MAP_FLOWS, size_of::<FlowKey>(), size_of::<FlowValue>()),
        (MAP_VERDICT_STATS, 4, 8),
        (MAP_SERVICE_STATS, 4, size_of::<Counters>()),
        (MAP_BACKEND_STATS, 4, size_of::<Counters>()),
        (MAP_FW_FLAGS, 4, size_of::<FwWords>()),
        (MAP_FW_RULES, 4, size_of::<RuleSet>()),
        (MAP_RULE_STATS, 4, size_of::<Counters>()),
        (MAP_BLOCKLIST4, size_of::<BlockKey4>(), 4),
        (MAP_BLOCKLIST6, size_of::<BlockKey6>(), 4),
        (MAP_BLOCK_LENS, 4, size_of::<PrefixLens>()),
        (MAP_VIP_FILTER, 4, size_of::<VipFilter>()),
        (MAP_VIP_POLICY, 4, 4),
        (MAP_RATE_BUCKETS, size_of::<RateKey>(), size_of::<Bucket>()),
    ]
}

/// Refuses to adopt pinned maps whose layout this build does not share (an older or newer
/// foobar-lb), or a flow table of another size: reusing them would misread their contents.
pub(super) fn check_pinned_layouts(dir: &Path, flow_table_size: u32) -> Result<(), DataplaneError> {
    let fix = format!(
        "run `foobar-lb teardown --pin-dir {}` (this interrupts traffic) and start again",
        dir.display()
    );
    for (name, key, value) in expected_layouts() {
        let path = dir.join(name);
        if !path.exists() {
            return Err(DataplaneError::Bpffs(format!(
                "{} holds a partial data plane (no {name}): {fix}",
                dir.display()
            )));
        }
        let info = aya::maps::MapInfo::from_pin(&path).map_err(map_err(name))?;
        if info.key_size() as usize != key || info.value_size() as usize != value {
            return Err(DataplaneError::Bpffs(format!(
                "pinned map {} has key/value sizes {}/{}, this build expects {key}/{value} (made \
                 by another foobar-lb version): {fix}",
                path.display(),
                info.key_size(),
                info.value_size()
            )));
        }
        if name == MAP_FLOWS && info.max_entries() != flow_table_size {
            return Err(DataplaneError::Bpffs(format!(
                "the pinned flow table holds {} flows but flow_table_size is {flow_table_size}: \
                 set it back, or {fix}",
                info.max_entries()
            )));
        }
    }
    Ok(())
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
            return Err(DataplaneError::Bpffs(format!(
                "cannot mount bpffs at /sys/fs/bpf: {} (mount it: `mount -t bpf bpf /sys/fs/bpf`)",
                std::io::Error::last_os_error()
            )));
        }
        log::info!("mounted bpffs at /sys/fs/bpf");
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| DataplaneError::Bpffs(format!("cannot create {}: {e}", dir.display())))?;
    if !is_bpffs(dir) {
        return Err(DataplaneError::Bpffs(format!(
            "pin_dir {} is not on a bpffs: choose a directory under /sys/fs/bpf or mount one \
             (`mount -t bpf bpf DIR`)",
            dir.display()
        )));
    }
    Ok(())
}
