use std::path::Path;

use foobar_lb::config::Config;

pub fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    config.check_host()?;
    let backends: usize = config.services.iter().map(|s| s.backends.len()).sum();
    println!(
        "{}: OK ({} service(s), {} backend(s))",
        path.display(),
        config.services.len(),
        backends
    );
    Ok(())
}
