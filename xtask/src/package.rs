//! `cargo xtask package`: a Debian package of the release binary with the systemd unit, a
//! default configuration (a conffile), the man page and shell completions. Built with
//! dpkg-deb from a staging tree (no extra tool to install); the result goes to
//! `target/debian/foobar-lb_<version>_<arch>.deb`.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::build::workspace_root;

/// Builds the package of the release binary; returns its path.
pub fn run() -> Result<PathBuf> {
    let bin = crate::build::release()?;
    build(&bin, &crate::build::target_dir().join("debian"))
}

/// Builds the package of `bin` in `out` (the tests package the debug binary they test).
pub fn build(bin: &std::path::Path, out: &std::path::Path) -> Result<PathBuf> {
    let root = workspace_root();
    let version = env!("CARGO_PKG_VERSION");
    let arch = text(Command::new("dpkg").arg("--print-architecture"))?;
    let stage = out.join(format!("foobar-lb_{version}_{arch}"));
    let _ = std::fs::remove_dir_all(&stage);
    println!("package: staging in {}", stage.display());
    let put = |rel: &str, data: &[u8], mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = stage.join(rel);
        std::fs::create_dir_all(path.parent().expect("a parent"))?;
        std::fs::write(&path, data).with_context(|| format!("write {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put("usr/bin/foobar-lb", &std::fs::read(bin)?, 0o755)?;
    put(
        "lib/systemd/system/foobar-lb.service",
        &std::fs::read(root.join("deploy/systemd/foobar-lb.service"))?,
        0o644,
    )?;
    put(
        "etc/foobar-lb/foobar-lb.toml",
        &std::fs::read(root.join("deploy/debian/foobar-lb.toml"))?,
        0o644,
    )?;
    let man = output(Command::new(bin).arg("manpage"))?;
    put("usr/share/man/man1/foobar-lb.1.gz", &gzip(&man)?, 0o644)?;
    for (shell, rel) in [
        ("bash", "usr/share/bash-completion/completions/foobar-lb"),
        ("zsh", "usr/share/zsh/vendor-completions/_foobar-lb"),
        ("fish", "usr/share/fish/vendor_completions.d/foobar-lb.fish"),
    ] {
        put(
            rel,
            &output(Command::new(bin).args(["completions", shell]))?,
            0o644,
        )?;
    }
    for doc in ["README.md", "DEVELOPING.md"] {
        put(
            &format!("usr/share/doc/foobar-lb/{doc}"),
            &std::fs::read(root.join(doc))?,
            0o644,
        )?;
    }
    for dir in ["deploy/prometheus", "deploy/grafana"] {
        for e in std::fs::read_dir(root.join(dir))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            put(
                &format!(
                    "usr/share/foobar-lb/{}/{name}",
                    dir.trim_start_matches("deploy/")
                ),
                &std::fs::read(e.path())?,
                0o644,
            )?;
        }
    }
    let size_kb = dir_size(&stage)? / 1024;
    put(
        "DEBIAN/control",
        format!(
            "Package: foobar-lb\nVersion: {version}\nArchitecture: {arch}\n\
             Maintainer: foobar-lb developers <foobar-lb@localhost>\n\
             Installed-Size: {size_kb}\nDepends: libc6, iproute2\nSection: net\nPriority: optional\n\
             Description: XDP layer-4 load balancer with health checks and a firewall\n \
             foobar-lb balances TCP and UDP services in the kernel's XDP hook (direct server\n \
             return, round robin or Maglev), health-checks the backends, enforces firewall\n \
             rules and block lists, and serves metrics and a live stats page.\n"
        )
        .as_bytes(),
        0o644,
    )?;
    put(
        "DEBIAN/conffiles",
        b"/etc/foobar-lb/foobar-lb.toml\n",
        0o644,
    )?;
    // Not started on install: the configuration has to name the interface and services first.
    let systemd = "if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n";
    put(
        "DEBIAN/postinst",
        format!("#!/bin/sh\nset -e\n{systemd}").as_bytes(),
        0o755,
    )?;
    put(
        "DEBIAN/prerm",
        b"#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl stop foobar-lb.service || true; fi\n",
        0o755,
    )?;
    put(
        "DEBIAN/postrm",
        format!(
            "#!/bin/sh\nset -e\n{systemd}if [ \"$1\" = purge ]; then rm -rf /etc/foobar-lb /var/lib/foobar-lb; fi\n"
        )
        .as_bytes(),
        0o755,
    )?;
    let deb = out.join(format!("foobar-lb_{version}_{arch}.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&stage)
        .arg(&deb)
        .status()
        .context("run dpkg-deb (package dpkg)")?;
    if !status.success() {
        bail!("dpkg-deb failed ({status})");
    }
    println!("package: {}", deb.display());
    Ok(deb)
}

fn output(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

fn text(cmd: &mut Command) -> Result<String> {
    Ok(String::from_utf8(output(cmd)?)?.trim().to_string())
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-9n"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("run gzip")?;
    child.stdin.take().expect("piped").write_all(data)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("gzip failed");
    }
    Ok(out.stdout)
}

fn dir_size(dir: &std::path::Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() {
            dir_size(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(total)
}
