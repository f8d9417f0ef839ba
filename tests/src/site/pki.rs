//! The demo's certificate authority and www.foobar.com's certificate (openssl, ECDSA P-256).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use crate::netns::run;

pub const SITE_NAME: &str = "www.foobar.com";

/// The files a client (the CA) and the web servers (certificate and key) need.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Creates a CA in `dir` and a certificate for [`SITE_NAME`] (and `vip`, so a client may also
/// name the address) signed by it. Valid 30 days: a demo's, not a deployment's.
pub fn create(dir: &Path, vip: &str) -> Result<Pki> {
    fs::create_dir_all(dir)?;
    let p = |name: &str| dir.join(name);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(Command::new("openssl")
        .args(["req", "-x509"])
        .args(ec)
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem"))
        .args(["-days", "30", "-subj", "/CN=foobar.com demo CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]))?;
    run(Command::new("openssl")
        .arg("req")
        .args(ec)
        .arg("-keyout")
        .arg(p("www.key"))
        .arg("-out")
        .arg(p("www.csr"))
        .args(["-subj", &format!("/CN={SITE_NAME}")]))?;
    fs::write(
        p("www.ext"),
        format!(
            "subjectAltName=DNS:{SITE_NAME},IP:{vip}\nextendedKeyUsage=serverAuth\n\
             basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        ),
    )?;
    run(Command::new("openssl")
        .args(["x509", "-req", "-in"])
        .arg(p("www.csr"))
        .arg("-CA")
        .arg(p("ca.pem"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .args(["-set_serial", "1", "-days", "30", "-extfile"])
        .arg(p("www.ext"))
        .arg("-out")
        .arg(p("www.pem")))?;
    Ok(Pki {
        ca: p("ca.pem"),
        cert: p("www.pem"),
        key: p("www.key"),
    })
}
