//! The firewall end to end: a blocked client cannot connect while another can, drops are
//! counted, and rules changed through the CLI while traffic runs leave allowed flows alone.

use std::time::Duration;

use foobar_lb_tests::{
    daemon::Daemon,
    netns::{Netns, Topology, VIP4},
    root_object_and_binary, traffic,
};

fn try_get(client: &Netns) -> Result<String, String> {
    traffic::try_get(client, &format!("http://{VIP4}/"))
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn blocked_client_is_dropped_and_cli_changes_leave_allowed_flows_alone() {
    if !root_object_and_binary() {
        return;
    }
    let mut topo = Topology::new("fw", 2).unwrap();
    topo.start_web(1).unwrap();
    topo.start_web(2).unwrap();
    let c2 = topo.add_client(3).unwrap();
    let blocked_file = topo.dir.join("blocked.txt");
    std::fs::write(&blocked_file, "# the second client\n10.111.0.3\n").unwrap();
    let socket = topo.dir.join("control.sock");
    let config = topo.write_config("generic", &socket).unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replacen(
        "\n[[service]]",
        &format!(
            "\n[firewall]\nblocklists = [\"{}\"]\n\n[[service]]",
            blocked_file.display()
        ),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let d = Daemon::start(&topo.lb, &config, &socket).unwrap();
    let (c1, c2) = (&topo.client, &topo.extra[c2]);

    assert!(try_get(c1).is_ok(), "allowed client served");
    assert!(try_get(c2).is_err(), "blocked client must not connect");
    assert!(
        d.stats().verdict("drop_blocklist") >= 1,
        "drops are counted"
    );

    // A bad block list is refused, naming the line, and the live list stays.
    let bad = topo.dir.join("bad.txt");
    std::fs::write(&bad, "10.111.0.3\n10.111.0.300\n").unwrap();
    let out = d.cli(&["fw", "load", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = d.cli(&["fw", "add", "--action", "drop", "--source", "10.0.0.0/33"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an IP prefix"));
    assert!(try_get(c2).is_err(), "still blocked after refused changes");

    // An allowed keep-alive connection runs while the rules change under it.
    let ka = traffic::keepalive_client(c1, 20);
    std::thread::sleep(Duration::from_millis(300));
    ok(d.cli(&[
        "fw",
        "add",
        "--action",
        "drop",
        "--source",
        "10.111.0.3",
        "--protocol",
        "tcp",
        "--port",
        "80",
    ]));
    let empty = topo.dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    ok(d.cli(&["fw", "load", empty.to_str().unwrap()]));
    ok(d.cli(&[
        "fw",
        "add",
        "--action",
        "drop",
        "--source",
        "10.111.0.1",
        "--protocol",
        "tcp",
        "--port",
        "8080",
        "--position",
        "1",
    ]));
    assert!(
        try_get(c2).is_err(),
        "now blocked by the rule instead of the list"
    );
    let list = ok(d.cli(&["fw", "list"]));
    assert!(
        list.contains("drop from 10.111.0.3 to any proto tcp port 80"),
        "{list}"
    );
    let st = d.stats();
    assert!(
        st.firewall.rules[1].packets >= 1,
        "rule counted its drops: {:?}",
        st.firewall.rules
    );
    assert_eq!(st.firewall.blocklist_prefixes, 0);

    let (bodies, connects) = traffic::keepalive_result(ka);
    assert_eq!(bodies.len(), 20, "{bodies:?}");
    assert_eq!(connects, 1, "one connection throughout");

    // Removing the rule lets the second client in.
    ok(d.cli(&["fw", "remove", "2"]));
    assert!(try_get(c2).is_ok(), "unblocked");
    assert!(d.stats().verdict("drop_fw_rule") >= 1);
}
