//! Pinning on bpffs: layout checks before adopting pinned maps, teardown, mounting bpffs.

use std::path::{Path, PathBuf};

use foobar_lb_common::{
    registry::{pinned_maps, MapKind, MapSpec},
    LAYOUT_VERSION, MAP_FLOWS, MAP_META,
};

use super::{map_err, DataplaneError};

/// What [`teardown`] did.
#[derive(Debug, Default)]
pub struct Teardown {
    /// The foobar-lb pins removed, links first.
    pub removed: Vec<PathBuf>,
    /// Entries of the directory that foobar-lb did not pin, left in place.
    pub kept: Vec<PathBuf>,
}

/// Whether foobar-lb pins an entry of this name: a registry map or an XDP link.
fn is_ours(name: &str) -> bool {
    name.starts_with(LINK_PREFIX) || pinned_maps().any(|spec| spec.name == name)
}

/// Pinned XDP links are named `link-<interface>`.
pub(super) const LINK_PREFIX: &str = "link-";

/// Removes a pinned data plane: unpinning the links detaches the program, unpinning the maps
/// frees them once no program uses them.
///
/// Only what foobar-lb pins is removed: registry maps and `link-*` entries, in a directory
/// recognised as foobar-lb's by its [`MAP_META`] pin. A directory with entries but no `META`
/// (another tool's, or `/sys/fs/bpf` itself) is refused and left untouched; other entries next
/// to a foobar-lb data plane are kept and reported.
pub fn teardown(pin_dir: &Path) -> Result<Teardown, DataplaneError> {
    let mut done = Teardown::default();
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(source) => {
            return Err(DataplaneError::PinIo {
                what: "read",
                path: pin_dir.to_owned(),
                source,
            })
        }
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if !names.is_empty() && !names.iter().any(|n| n == MAP_META) {
        return Err(DataplaneError::NotOurPinDir {
            dir: pin_dir.to_owned(),
            found: names.into_iter().take(5).collect::<Vec<_>>().join(", "),
        });
    }
    let (mut ours, kept): (Vec<String>, Vec<String>) = names.into_iter().partition(|n| is_ours(n));
    // Links first, so the program stops before its maps go; META last, so an interrupted
    // teardown can be run again.
    ours.sort_by_key(|n| (!n.starts_with(LINK_PREFIX), n == MAP_META));
    for name in ours {
        let path = pin_dir.join(name);
        std::fs::remove_file(&path).map_err(|source| DataplaneError::PinIo {
            what: "remove",
            path: path.clone(),
            source,
        })?;
        done.removed.push(path);
    }
    done.kept = kept.into_iter().map(|n| pin_dir.join(n)).collect();
    if done.kept.is_empty() {
        let _ = std::fs::remove_dir(pin_dir);
    }
    Ok(done)
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
fn expected(spec: &MapSpec, flow_entries: u32, nat_entries: u32) -> [(&'static str, u32); 5] {
    let max_entries = if spec.name == MAP_FLOWS {
        flow_entries
    } else if is_nat_table(spec.name) {
        nat_entries
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
fn is_nat_table(name: &str) -> bool {
    name == foobar_lb_common::MAP_NAT_FWD || name == foobar_lb_common::MAP_NAT_REV
}

pub(super) fn check_pinned_layouts(
    dir: &Path,
    flow_table_size: u32,
    flow_entries: u32,
    nat_table_size: u32,
) -> Result<(), DataplaneError> {
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
        let want = expected(spec, flow_entries, nat_table_size);
        for ((field, want), got) in want.into_iter().zip(found) {
            if want == got {
                continue;
            }
            if spec.name == MAP_FLOWS && field == "max_entries" {
                return Err(DataplaneError::FlowTableSize {
                    pinned: got.saturating_sub(flow_entries - flow_table_size),
                    configured: flow_table_size,
                    fix: teardown_fix(dir),
                });
            }
            if is_nat_table(spec.name) && field == "max_entries" {
                return Err(DataplaneError::NatTableSize {
                    pinned: got,
                    configured: nat_table_size,
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

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|st| st.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

/// Makes sure `dir` exists on a bpffs, mounting one at /sys/fs/bpf if that is where it goes and
/// none is mounted (it is not by default on these machines).
pub(super) fn ensure_bpffs(dir: &Path) -> Result<(), DataplaneError> {
    let sys = Path::new("/sys/fs/bpf");
    if dir.starts_with(sys) && !is_bpffs(sys) {
        let _ = std::fs::create_dir_all(sys);
        nix::mount::mount(
            Some("bpf"),
            sys,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| DataplaneError::MountBpffs(e.into()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A plain directory stands in for bpffs: teardown only lists and unlinks entries.
    fn dir_with(names: &[&str]) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "foobar-lb-pins-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        for n in names {
            std::fs::write(d.join(n), b"").unwrap();
        }
        TempDir(d)
    }

    fn left(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_directory_without_meta_is_refused_and_untouched() {
        // What /sys/fs/bpf looks like with other tools' pins (a foobar-lb-named one among them).
        let d = dir_with(&["cilium_calls", "FLOWS", "link-eth0"]);
        let err = teardown(d.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("not a foobar-lb pin directory") && msg.contains("cilium_calls"),
            "{msg}"
        );
        assert_eq!(left(d.path()), ["FLOWS", "cilium_calls", "link-eth0"]);
    }

    #[test]
    fn only_foobar_lb_pins_are_removed_and_foreign_ones_kept() {
        let ours: Vec<&str> = pinned_maps().map(|m| m.name).collect();
        let mut names = ours.clone();
        names.extend(["link-eth0", "link-eth1", "other_tool_map", "prog_x"]);
        let d = dir_with(&names);
        let done = teardown(d.path()).unwrap();
        assert_eq!(done.removed.len(), ours.len() + 2);
        assert!(done.removed[0].ends_with("link-eth0") && done.removed[1].ends_with("link-eth1"));
        assert!(done.removed.last().unwrap().ends_with(MAP_META));
        assert_eq!(left(d.path()), ["other_tool_map", "prog_x"]);
        assert_eq!(done.kept.len(), 2);
    }

    #[test]
    fn an_empty_or_missing_directory_is_nothing_to_do() {
        let d = dir_with(&[]);
        assert!(teardown(d.path()).unwrap().removed.is_empty());
        assert!(!d.path().exists(), "the empty pin directory is removed");
        assert!(teardown(&d.path().join("nope")).unwrap().removed.is_empty());
    }
}
