//! www.foobar.com, whole (README "The site"): the journey `cargo xtask run --check` walks, on
//! the same site: HTTPS through the VIP, replication, the firewall, monitoring, a web server
//! stopped, a database switchover and the active balancer killed.

use foobar_lb_tests::site::{journey, Options, Site};

#[test]
fn the_whole_site_keeps_its_promises_along_a_users_journey() {
    if !foobar_lb_tests::root_object_and_binary() {
        return;
    }
    let say = |line: &str| eprintln!("site: {line}");
    let opts = Options {
        bin: foobar_lb_tests::daemon::bin(),
        xdp_mode: "generic".into(),
    };
    let mut site = Site::start(&opts, &say).expect("the site comes up");
    if let Err(e) = journey::run(&mut site, &say) {
        for node in &site.nodes {
            eprintln!(
                "--- node {} log\n{}",
                node.name,
                std::fs::read_to_string(&node.log).unwrap_or_default()
            );
        }
        panic!("{e:#}");
    }
}
