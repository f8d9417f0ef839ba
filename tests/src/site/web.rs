//! Each server's web tier: nginx (HTTP redirects to HTTPS; HTTPS with the demo CA's certificate)
//! in front of the guest-book application (app.py on 127.0.0.1:8000).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::pki::{Pki, SITE_NAME};
use crate::netns::{run, Netns};

const APP: &str = include_str!("app.py");
const APP_PORT: u16 = 8000;

/// One server's nginx and application; the application is killed on drop (nginx goes with
/// the namespace, or with [`Web::stop_nginx`]).
pub struct Web {
    pub name: String,
    dir: PathBuf,
    app: Option<Child>,
}

impl Web {
    /// Starts server `name`'s application (talking to the database VIPs) and nginx in `ns`,
    /// with files under `dir`; waits until HTTPS answers locally.
    pub fn start(
        ns: &Netns,
        dir: &Path,
        name: &str,
        pki: &Pki,
        write_vip: &str,
        read_vip: &str,
    ) -> Result<Web> {
        fs::create_dir_all(dir)?;
        let app_py = dir.join("app.py");
        fs::write(&app_py, APP)?;
        let log = fs::File::create(dir.join("app.log"))?;
        // Debian's python3 (where python3-pymysql is), whatever python3 comes first on PATH.
        let app = ns
            .cmd("/usr/bin/python3")
            .arg(&app_py)
            .args([name, &APP_PORT.to_string(), write_vip, read_vip])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start the application (Debian packages python3, python3-pymysql)")?;
        let mut web = Web {
            name: name.to_owned(),
            dir: dir.to_owned(),
            app: Some(app),
        };
        web.start_nginx(ns, pki)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = ns
                .cmd("curl")
                .args(["-sf", "-o", "/dev/null", "--max-time", "2", "--cacert"])
                .arg(&pki.ca)
                .args([
                    "--resolve",
                    &format!("{SITE_NAME}:443:127.0.0.1"),
                    &format!("https://{SITE_NAME}/healthz"),
                ])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(web);
            }
            if let Some(status) = web.app.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "{name}'s application exited ({status}): see {}",
                    dir.join("app.log").display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{name}'s HTTPS does not answer after 20 s: see {}",
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts (or restarts) this server's nginx.
    pub fn start_nginx(&self, ns: &Netns, pki: &Pki) -> Result<()> {
        let d = self.dir.display();
        let name = &self.name;
        let conf = self.dir.join("nginx.conf");
        fs::write(
            &conf,
            format!(
                "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  access_log {d}/access.log;\n  keepalive_requests 1000;\n\
                 \x20 server {{\n    listen 80; listen [::]:80;\n\
                 \x20   location / {{ return 301 https://$host$request_uri; }}\n  }}\n\
                 \x20 server {{\n    listen 443 ssl; listen [::]:443 ssl;\n    server_name {SITE_NAME};\n\
                 \x20   ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
                 \x20   add_header X-Served-By {name} always;\n\
                 \x20   location / {{ proxy_pass http://127.0.0.1:{APP_PORT}; proxy_set_header Host $host;\n\
                 \x20     proxy_set_header X-Forwarded-Proto https; }}\n  }}\n}}\n",
                cert = pki.cert.display(),
                key = pki.key.display(),
            ),
        )?;
        run(ns.cmd("nginx").arg("-c").arg(&conf)).context("cannot start nginx")?;
        Ok(())
    }

    /// Stops nginx (SIGTERM: it stops at once, as when it crashes or is stopped by hand).
    pub fn stop_nginx(&self) -> Result<()> {
        let pid = fs::read_to_string(self.dir.join("nginx.pid"))
            .with_context(|| format!("{}'s nginx is not running", self.name))?;
        run(Command::new("kill").arg(pid.trim()))?;
        // nginx removes its pid file on exit: it is gone once the port is closed.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.dir.join("nginx.pid").exists() {
            if Instant::now() > deadline {
                bail!("{}'s nginx did not stop within 10 s", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        if let Some(mut c) = self.app.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(pid) = fs::read_to_string(self.dir.join("nginx.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}
