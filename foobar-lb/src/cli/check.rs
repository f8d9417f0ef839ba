use std::path::Path;

use foobar_lb::{config::Config, health_replies::ReplyView};

pub fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    config.check_host()?;
    for w in foobar_lb::health_replies::conflicts(&config, &ReplyView::of_host()) {
        eprintln!("warning: {w}");
    }
    let backends: usize = config.services.iter().map(|s| s.backends.len()).sum();
    println!(
        "{}: OK ({} service(s), {} backend(s))",
        path.display(),
        config.services.len(),
        backends
    );
    Ok(())
}
