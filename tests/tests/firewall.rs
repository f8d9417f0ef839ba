//! Firewall packet tests through BPF_PROG_TEST_RUN: every match field and action, IPv4 and IPv6,
//! rule order, the VIP default policy, a 100,000-prefix block list, the new-flow rate limit.

use foobar_lb::firewall::{Action, RuleConfig, RuleProtocol};
use foobar_lb_common::verdict;
use foobar_lb_tests::{
    harness::{Expect, Harness},
    packet::{Pkt, L4, TCP_ACK, TCP_SYN},
};

const CONFIG: &str = r#"
interfaces = ["lo"]

[[service]]
name = "www"
vip = "10.0.0.100"
port = 80
[[service.backend]]
address = "10.0.0.11"

[[service]]
name = "dns"
vip = "10.0.0.100"
port = 53
protocol = "udp"
[[service.backend]]
address = "10.0.0.11"

[[service]]
name = "www6"
vip = "fd00::100"
port = 80
[[service.backend]]
address = "fd00::11"

[[service]]
name = "limited"
vip = "10.0.0.102"
port = 80
rate_limit = { per_source = 1, burst = 5 }
[[service.backend]]
address = "10.0.0.11"

[[service]]
name = "limited6"
vip = "fd00::102"
port = 80
rate_limit = { per_source = 1, burst = 2 }
[[service.backend]]
address = "fd00::11"
"#;

const B1: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const VIP: &str = "10.0.0.100";

fn harness() -> Harness {
    Harness::new(CONFIG, &[("10.0.0.11", B1), ("fd00::11", B1)])
}

fn rule(
    action: Action,
    source: &str,
    protocol: RuleProtocol,
    port: &str,
    destination: &str,
) -> RuleConfig {
    RuleConfig {
        action,
        source: source.into(),
        protocol,
        port: port.into(),
        destination: destination.into(),
    }
}

const DROP: Expect = Expect::Drop(verdict::DROP_FW_RULE);

#[test]
fn each_match_field_v4() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let mut h = harness();
    h.fw_rules(&[
        rule(Action::Drop, "10.9.0.0/16", RuleProtocol::Tcp, "80", "any"),
        rule(Action::Drop, "any", RuleProtocol::Tcp, "8000-8100", "any"),
        rule(Action::Drop, "any", RuleProtocol::Udp, "any", "10.0.0.100"),
    ]);
    let syn = |src: &str, dport: u16| Pkt::tcp(src, 1000, VIP, dport, TCP_SYN).build();
    h.check("source in prefix, tcp/80", &syn("10.9.1.1", 80), &DROP);
    h.check(
        "source outside prefix",
        &syn("10.8.1.1", 80),
        &Expect::Tx(B1),
    );
    h.check("port range start", &syn("10.8.1.1", 8000), &DROP);
    h.check("port range end", &syn("10.8.1.1", 8100), &DROP);
    h.check(
        "past the range: host stack",
        &syn("10.8.1.1", 8101),
        &Expect::Pass,
    );
    h.check(
        "rules apply to non-service traffic too",
        &Pkt::tcp("10.8.1.1", 1, "10.0.0.9", 8050, TCP_SYN).build(),
        &DROP,
    );
    h.check(
        "udp to the VIP",
        &Pkt::udp("10.8.1.1", 1000, VIP, 53).build(),
        &DROP,
    );
    h.check(
        "udp elsewhere",
        &Pkt::udp("10.8.1.1", 1000, "10.0.0.9", 53).build(),
        &Expect::Pass,
    );
    assert_eq!(h.rule_counters(3), vec![1, 3, 1]);
}

#[test]
fn ipv6_rules_and_icmp() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let mut h = harness();
    h.fw_rules(&[
        rule(
            Action::Drop,
            "fd00:bad::/32",
            RuleProtocol::Any,
            "any",
            "any",
        ),
        rule(Action::Drop, "any", RuleProtocol::Icmp, "any", "any"),
    ]);
    let v6 = |src: &str| Pkt::tcp(src, 1000, "fd00::100", 80, TCP_SYN).build();
    h.check("v6 source in prefix", &v6("fd00:bad::1"), &DROP);
    h.check("v6 source outside", &v6("fd00:1::1"), &Expect::Tx(B1));
    h.check(
        "v4 is not matched by a v6 prefix",
        &Pkt::tcp("10.1.1.1", 1, VIP, 80, TCP_SYN).build(),
        &Expect::Tx(B1),
    );
    h.check(
        "ICMP dropped",
        &Pkt::new("10.1.1.1", VIP, L4::Other { proto: 1 }).build(),
        &DROP,
    );
    h.check(
        "ICMPv6 dropped",
        &Pkt::new("fd00:1::1", "fd00::100", L4::Other { proto: 58 }).build(),
        &DROP,
    );
    h.check(
        "other protocols pass",
        &Pkt::new("10.1.1.1", VIP, L4::Other { proto: 47 }).build(),
        &Expect::Pass,
    );
}

#[test]
fn first_match_wins_and_allow_overrides_the_block_list() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let mut h = harness();
    h.fw_rules(&[
        rule(
            Action::Allow,
            "10.9.9.0/24",
            RuleProtocol::Any,
            "any",
            "any",
        ),
        rule(Action::Drop, "10.9.0.0/16", RuleProtocol::Any, "any", "any"),
    ]);
    h.blocklist("10.9.9.0/24\n10.7.0.0/16\n");
    let syn = |src: &str| Pkt::tcp(src, 1000, VIP, 80, TCP_SYN).build();
    h.check(
        "allowed before the drop rule",
        &syn("10.9.9.1"),
        &Expect::Tx(B1),
    );
    h.check("dropped by rule 2", &syn("10.9.8.1"), &DROP);
    h.check(
        "block list",
        &syn("10.7.1.1"),
        &Expect::Drop(verdict::DROP_BLOCKLIST),
    );
    h.check("nothing matches", &syn("10.6.1.1"), &Expect::Tx(B1));
    assert_eq!(h.rule_counters(2), vec![1, 1]);
    // Rules replaced as a whole: the drop rule is gone at once.
    h.fw_rules(&[]);
    h.check("no rules", &syn("10.9.8.1"), &Expect::Tx(B1));
}

#[test]
fn vip_default_policy_drops_scans_of_the_vip() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let mut h = harness();
    let scan = Pkt::tcp("10.1.1.1", 1000, VIP, 22, TCP_SYN).build();
    h.check("allow by default", &scan, &Expect::Pass);
    h.vip_policy_drop(true);
    h.check(
        "port scan of the VIP",
        &scan,
        &Expect::Drop(verdict::DROP_VIP_POLICY),
    );
    h.check(
        "ICMP to the VIP",
        &Pkt::new("10.1.1.1", VIP, L4::Other { proto: 1 }).build(),
        &Expect::Drop(verdict::DROP_VIP_POLICY),
    );
    // Neighbour discovery for the VIP is never the policy's to drop (IPv6's ARP); other ICMPv6
    // to the VIP is.
    let icmp6 = |kind: u8| {
        let mut p = Pkt::new("fd00::1", "fd00::100", L4::Other { proto: 58 });
        p.payload = vec![kind, 0, 0, 0, 0, 0, 0, 0];
        p.build()
    };
    h.check(
        "neighbour solicitation to the VIP",
        &icmp6(135),
        &Expect::Pass,
    );
    h.check(
        "neighbour advertisement to the VIP",
        &icmp6(136),
        &Expect::Pass,
    );
    h.check(
        "echo request to the VIP",
        &icmp6(128),
        &Expect::Drop(verdict::DROP_VIP_POLICY),
    );
    h.check(
        "service still served",
        &Pkt::tcp("10.1.1.1", 1000, VIP, 80, TCP_SYN).build(),
        &Expect::Tx(B1),
    );
    h.check(
        "other hosts unaffected",
        &Pkt::tcp("10.1.1.1", 1000, "10.0.0.9", 22, TCP_SYN).build(),
        &Expect::Pass,
    );
}

#[test]
fn block_list_of_100000_prefixes() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let mut h = harness();
    let took = h.blocklist(&foobar_lb_tests::harness::big_blocklist());
    println!("loaded 100,000 prefixes in {took:?}");
    let syn = |src: &str| Pkt::tcp(src, 1000, VIP, 80, TCP_SYN).build();
    let v6 = |src: &str| Pkt::tcp(src, 1000, "fd00::100", 80, TCP_SYN).build();
    let blocked = Expect::Drop(verdict::DROP_BLOCKLIST);
    h.check("blocked v4", &syn("20.0.2.1"), &blocked);
    h.check(
        "neighbouring /24 unblocked",
        &syn("20.0.3.1"),
        &Expect::Tx(B1),
    );
    h.check("last v4 prefix", &syn("22.112.254.9"), &blocked);
    h.check("blocked v6", &v6("fd00:bad:7::1"), &blocked);
    h.check("v6 past the list", &v6("fd00:bad:8000::1"), &Expect::Tx(B1));
    // A new list replaces the old one whole.
    h.blocklist("20.0.3.0/24\n");
    h.check("old entry gone", &syn("20.0.2.1"), &Expect::Tx(B1));
    h.check("new entry live", &syn("20.0.3.1"), &blocked);
    h.blocklist("");
    h.check("empty list", &syn("20.0.3.1"), &Expect::Tx(B1));
}

#[test]
fn new_flow_rate_limit_per_source() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let syn = |src: &str, port: u16| Pkt::tcp(src, port, "10.0.0.102", 80, TCP_SYN).build();
    for port in 0..5 {
        h.check(
            "within the burst",
            &syn("10.5.5.5", 2000 + port),
            &Expect::Tx(B1),
        );
    }
    h.check(
        "6th new flow in the window",
        &syn("10.5.5.5", 2005),
        &Expect::Drop(verdict::DROP_RATE_LIMIT),
    );
    h.check("another source", &syn("10.5.5.6", 2005), &Expect::Tx(B1));
    let ack = Pkt::tcp("10.5.5.5", 2000, "10.0.0.102", 80, TCP_ACK).build();
    h.check("established flows are not limited", &ack, &Expect::Tx(B1));
    h.check(
        "unlimited service",
        &Pkt::tcp("10.5.5.5", 2005, VIP, 80, TCP_SYN).build(),
        &Expect::Tx(B1),
    );
}

/// IPv6 sources share a bucket per /64 (one host usually holds the whole prefix): a host
/// rotating its addresses within its /64 is limited like one address.
#[test]
fn ipv6_sources_are_rate_limited_per_64() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let syn = |src: &str, port: u16| Pkt::tcp(src, port, "fd00::102", 80, TCP_SYN).build();
    h.check("first", &syn("fd00:5::1", 3000), &Expect::Tx(B1));
    h.check(
        "second, another address",
        &syn("fd00:5::2", 3001),
        &Expect::Tx(B1),
    );
    h.check(
        "third from the same /64",
        &syn("fd00:5::3:4", 3002),
        &Expect::Drop(verdict::DROP_RATE_LIMIT),
    );
    h.check("another /64", &syn("fd00:6::1", 3003), &Expect::Tx(B1));
}

#[test]
fn established_flows_meet_a_new_block_list_on_their_next_packet() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let mut h = harness();
    let ack = Pkt::tcp("10.3.3.3", 1000, VIP, 80, TCP_ACK).build();
    h.check("flow admitted", &ack, &Expect::Tx(B1));
    h.check("established", &ack, &Expect::Tx(B1));
    h.blocklist("10.3.0.0/16\n");
    h.check(
        "blocked after the list changed",
        &ack,
        &Expect::Drop(verdict::DROP_BLOCKLIST),
    );
    h.blocklist("");
    h.check("admitted again", &ack, &Expect::Tx(B1));
    h.fw_rules(&[rule(
        Action::Drop,
        "10.3.3.3",
        RuleProtocol::Tcp,
        "80",
        "any",
    )]);
    h.check("a new rule also reaches established flows", &ack, &DROP);
}

#[test]
fn block_list_with_many_prefix_lengths() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let mut h = harness();
    // Eight distinct IPv4 lengths, nested: the longest match decides nothing here, any hit drops.
    h.blocklist("10.0.0.0/8\n172.16.0.0/12\n192.168.0.0/16\n100.64.0.0/10\n198.18.0.0/15\n203.0.113.0/24\n192.0.2.128/25\n198.51.100.7/32\n");
    let syn = |src: &str| Pkt::tcp(src, 1000, VIP, 80, TCP_SYN).build();
    let blocked = Expect::Drop(verdict::DROP_BLOCKLIST);
    for src in [
        "10.200.1.1",
        "172.31.0.1",
        "192.168.9.9",
        "100.127.0.1",
        "198.19.1.1",
        "203.0.113.9",
        "192.0.2.200",
        "198.51.100.7",
    ] {
        h.check(src, &syn(src), &blocked);
    }
    for src in [
        "11.0.0.1",
        "172.32.0.1",
        "192.0.2.1",
        "198.51.100.8",
        "100.128.0.1",
    ] {
        h.check(src, &syn(src), &Expect::Tx(B1));
    }
}

#[test]
fn too_many_prefix_lengths_are_refused_and_change_nothing() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let mut h = harness();
    h.blocklist("10.3.0.0/16\n");
    let list: String = (16..=24).map(|l| format!("10.{l}.0.0/{l}\n")).collect();
    let nets = foobar_lb::firewall::parse_blocklist(&list).unwrap();
    let err = h.dp.load_blocklist(&nets).unwrap_err().to_string();
    assert!(err.contains("9 distinct IPv4 prefix lengths"), "{err}");
    let syn = Pkt::tcp("10.3.1.1", 1000, VIP, 80, TCP_SYN).build();
    h.check(
        "old list still live",
        &syn,
        &Expect::Drop(verdict::DROP_BLOCKLIST),
    );
}

/// Only a firewall change bumps the generation: the daemon writes the rules again on every
/// configuration change, and established flows must not all meet the firewall again for a drain.
#[test]
fn only_firewall_changes_bump_the_generation() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let mut h = harness();
    let rules = [rule(
        Action::Allow,
        "10.3.3.3",
        RuleProtocol::Any,
        "any",
        "any",
    )];
    h.fw_rules(&rules);
    let gen = h.dp.fw_generation().unwrap();
    let ack = Pkt::tcp("10.3.3.3", 1000, VIP, 80, TCP_ACK).build();
    h.check("flow admitted", &ack, &Expect::Tx(B1));
    h.check("established: not evaluated again", &ack, &Expect::Tx(B1));
    assert_eq!(h.rule_counters(1), vec![1]);
    // What the daemon does for a drain: apply the services, write the same rules again.
    h.set_state(
        "www",
        "10.0.0.11",
        foobar_lb::desired::BackendState::Draining,
    );
    h.fw_rules(&rules);
    h.vip_policy_drop(false);
    assert_eq!(h.dp.fw_generation().unwrap(), gen, "no firewall change");
    h.check("still established", &ack, &Expect::Tx(B1));
    assert_eq!(
        h.rule_counters(1),
        vec![1],
        "the flow was not checked again"
    );
    // A real change bumps it, once, and the flow meets the rules again.
    let rules2 = [rule(
        Action::Allow,
        "10.3.0.0/16",
        RuleProtocol::Any,
        "any",
        "any",
    )];
    h.fw_rules(&rules2);
    assert_eq!(h.dp.fw_generation().unwrap(), gen.wrapping_add(1));
    h.check("checked under the new rules", &ack, &Expect::Tx(B1));
    assert_eq!(h.rule_counters(1), vec![2]);
    h.fw_rules(&[]);
    h.fw_rules(&[]);
    assert_eq!(h.dp.fw_generation().unwrap(), gen.wrapping_add(2));
}

/// A host address on the balancer's segment (not a VIP): rules are all that guard it.
const HOST: &str = "10.0.0.9";
const HOST6: &str = "fd00::9";

/// An IPv4 frame cut to `len` bytes with its total length and header checksum fixed.
fn cut_v4(f: &[u8], len: usize) -> Vec<u8> {
    let mut g = f[..len].to_vec();
    g[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    g[24..26].copy_from_slice(&[0, 0]);
    let sum = foobar_lb_tests::packet::checksum(&g[14..34], 0);
    g[24..26].copy_from_slice(&sum.to_be_bytes());
    g
}

/// Fragments cannot slip past a port rule: a first fragment with its whole L4 header is judged
/// on its ports; a later fragment (no ports) or a first fragment too short to hold its L4
/// header is dropped by any rule that needs ports, unless an earlier allow rule matches it on
/// its addresses alone.
#[test]
fn ipv4_fragments_to_a_host_address_meet_port_rules() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let mut h = harness();
    h.fw_rules(&[rule(Action::Drop, "any", RuleProtocol::Tcp, "22", "any")]);
    h.dp.reset_rule_counters().unwrap();
    let ssh = Pkt::tcp("10.8.1.1", 1000, HOST, 22, TCP_SYN);
    let web = Pkt::tcp("10.8.1.1", 1000, HOST, 80, TCP_SYN);
    h.check(
        "first fragment to port 22",
        &ssh.clone().frag(0x2000).build(),
        &DROP,
    );
    h.check(
        "first fragment to port 80",
        &web.clone().frag(0x2000).build(),
        &Expect::Pass,
    );
    // A later fragment's payload is data, whatever it looks like: here a TCP header to 80.
    let later = web.clone().frag(0x0010).build();
    h.check("later TCP fragment", &later, &DROP);
    h.check(
        "last TCP fragment",
        &web.clone().frag(0x2010).build(),
        &DROP,
    );
    h.check(
        "later UDP fragment: the rule is for TCP",
        &Pkt::udp("10.8.1.1", 1000, HOST, 53).frag(0x0010).build(),
        &Expect::Pass,
    );
    h.check(
        "tiny first fragment (8 bytes of TCP header)",
        &cut_v4(&web.clone().frag(0x2000).build(), 14 + 20 + 8),
        &DROP,
    );
    h.check("not fragmented, port 80", &web.build(), &Expect::Pass);
    assert_eq!(h.rule_counters(1), vec![4]);

    // An allow rule on addresses alone admits later fragments; one on ports cannot.
    h.fw_rules(&[
        rule(
            Action::Allow,
            "10.8.0.0/16",
            RuleProtocol::Any,
            "any",
            "any",
        ),
        rule(Action::Allow, "any", RuleProtocol::Tcp, "80", "any"),
        rule(Action::Drop, "any", RuleProtocol::Tcp, "22", "any"),
    ]);
    h.dp.reset_rule_counters().unwrap();
    h.check("allowed source", &later, &Expect::Pass);
    let other = Pkt::tcp("10.7.1.1", 1000, HOST, 80, TCP_SYN)
        .frag(0x0010)
        .build();
    h.check(
        "port allow rule cannot vouch for a later fragment",
        &other,
        &DROP,
    );
    h.check(
        "first fragment to 80 from elsewhere: the port rule allows it",
        &Pkt::tcp("10.7.1.1", 1000, HOST, 80, TCP_SYN)
            .frag(0x2000)
            .build(),
        &Expect::Pass,
    );
    assert_eq!(h.rule_counters(3), vec![1, 1, 1]);
    // A rule on the protocol alone judges later fragments of that protocol exactly.
    h.fw_rules(&[rule(Action::Drop, "any", RuleProtocol::Udp, "any", "any")]);
    h.dp.reset_rule_counters().unwrap();
    h.check("later TCP fragment, UDP rule", &later, &Expect::Pass);
    h.check(
        "later UDP fragment, UDP rule",
        &Pkt::udp("10.8.1.1", 1000, HOST, 53).frag(0x0010).build(),
        &DROP,
    );
}

/// IPv6 fragments: a later fragment's next-header field is not what reassembly uses, so it is
/// judged with neither protocol nor ports.
#[test]
fn ipv6_fragments_to_a_host_address_meet_port_rules() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let mut h = harness();
    h.fw_rules(&[rule(Action::Drop, "any", RuleProtocol::Tcp, "22", "any")]);
    h.dp.reset_rule_counters().unwrap();
    let ssh = Pkt::tcp("fd00:8::1", 1000, HOST6, 22, TCP_SYN);
    let web = Pkt::tcp("fd00:8::1", 1000, HOST6, 80, TCP_SYN);
    h.check(
        "first fragment to port 22",
        &ssh.clone().v6_frag(1).build(),
        &DROP,
    );
    h.check(
        "first fragment to port 80",
        &web.clone().v6_frag(1).build(),
        &Expect::Pass,
    );
    h.check(
        "options, then a first fragment to port 22",
        &ssh.clone().v6_opts(0).v6_frag(1).build(),
        &DROP,
    );
    let later = Pkt::udp("fd00:8::1", 1000, HOST6, 53).v6_frag(0x0010);
    h.check("later fragment claiming UDP", &later.build(), &DROP);
    h.check(
        "atomic fragment (offset 0, no more) to port 80",
        &web.clone().v6_frag(0).build(),
        &Expect::Pass,
    );
    h.fw_rules(&[
        rule(
            Action::Allow,
            "fd00:8::/32",
            RuleProtocol::Any,
            "any",
            "any",
        ),
        rule(Action::Drop, "any", RuleProtocol::Tcp, "22", "any"),
    ]);
    h.dp.reset_rule_counters().unwrap();
    h.check("allowed source", &later.build(), &Expect::Pass);
    let mut elsewhere = later.clone();
    elsewhere.src = "fd00:7::1".parse().unwrap();
    h.check("other source", &elsewhere.build(), &DROP);
    assert_eq!(h.rule_counters(2), vec![1, 1]);
}

/// An IPv6 chain longer than the parser walks hides the L4 header: rules that need ports or a
/// protocol drop it (allow rules need to match on addresses alone), and to a VIP it is dropped
/// as unbalanceable.
#[test]
fn long_ipv6_extension_chains_meet_port_rules() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let mut h = harness();
    h.fw_rules(&[
        rule(Action::Allow, "any", RuleProtocol::Tcp, "80", "any"),
        rule(Action::Drop, "any", RuleProtocol::Tcp, "22", "any"),
    ]);
    h.dp.reset_rule_counters().unwrap();
    let chain = |p: Pkt, n: usize| (0..n).fold(p.v6_opts(0), |p, _| p.v6_opts(60));
    let ssh = Pkt::tcp("fd00:8::1", 1000, HOST6, 22, TCP_SYN);
    h.check(
        "3 headers: walked, port 22",
        &chain(ssh.clone(), 2).build(),
        &DROP,
    );
    h.check(
        "3 headers: walked, port 80",
        &chain(Pkt::tcp("fd00:8::1", 1000, HOST6, 80, TCP_SYN), 2).build(),
        &Expect::Pass,
    );
    h.check(
        "8 headers before port 22",
        &chain(ssh.clone(), 7).build(),
        &DROP,
    );
    h.check(
        "8 headers before port 80: the port allow rule cannot see it",
        &chain(Pkt::tcp("fd00:8::1", 1000, HOST6, 80, TCP_SYN), 7).build(),
        &DROP,
    );
    h.check(
        "8 headers and a fragment header",
        &chain(ssh.clone(), 7).v6_frag(1).build(),
        &DROP,
    );
    assert_eq!(h.rule_counters(2), vec![1, 4]);
    h.fw_rules(&[
        rule(
            Action::Allow,
            "fd00:8::/32",
            RuleProtocol::Any,
            "any",
            "any",
        ),
        rule(Action::Drop, "any", RuleProtocol::Tcp, "22", "any"),
    ]);
    h.dp.reset_rule_counters().unwrap();
    h.check(
        "allowed on its source",
        &chain(ssh.clone(), 7).build(),
        &Expect::Pass,
    );
    h.fw_rules(&[]);
    h.dp.reset_rule_counters().unwrap();
    h.check("no rules", &chain(ssh.clone(), 7).build(), &Expect::Pass);
}

/// A VIP packet in a frame for another MAC goes to the kernel: fragments and hidden L4 headers
/// meet the rules and the block list there like anything else.
#[test]
fn fragments_to_a_vip_in_another_hosts_frame_meet_the_firewall() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let mut h = harness();
    h.fw_rules(&[rule(Action::Drop, "any", RuleProtocol::Tcp, "22", "any")]);
    h.dp.reset_rule_counters().unwrap();
    h.blocklist("10.7.0.0/16\n");
    let flooded = |p: Pkt| {
        Pkt {
            eth_dst: [0x02, 0, 0, 0, 0, 0x77],
            ..p
        }
        .build()
    };
    h.check(
        "later fragment",
        &flooded(Pkt::tcp("10.8.1.1", 1000, VIP, 80, TCP_ACK).frag(0x0010)),
        &DROP,
    );
    h.check(
        "later UDP fragment from a blocked source",
        &flooded(Pkt::udp("10.7.1.1", 1000, VIP, 53).frag(0x0010)),
        &Expect::Drop(verdict::DROP_BLOCKLIST),
    );
    h.check(
        "later UDP fragment",
        &flooded(Pkt::udp("10.8.1.1", 1000, VIP, 53).frag(0x0010)),
        &Expect::PassAs(verdict::PASS_OTHER_HOST),
    );
    h.check(
        "IPv6 later fragment",
        &flooded(Pkt::udp("fd00:8::1", 1000, "fd00::100", 53).v6_frag(0x0010)),
        &DROP,
    );
}

/// Tagged frames meet the firewall like any other, whether the interface balances their VLAN
/// (the firewall harness configures none) or not, with one tag or two.
#[test]
fn tagged_and_double_tagged_frames_meet_the_firewall() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let mut h = harness();
    h.fw_rules(&[rule(Action::Drop, "any", RuleProtocol::Tcp, "22", "any")]);
    h.blocklist("10.7.0.0/16\n");
    let ssh = |dst: &str| Pkt::tcp("10.8.1.1", 1000, dst, 22, TCP_SYN);
    h.check(
        "double-tagged to a host address, port 22",
        &ssh(HOST).qinq(100, 42).build(),
        &DROP,
    );
    h.check(
        "double-tagged to the VIP, port 22",
        &ssh(VIP).qinq(100, 42).build(),
        &DROP,
    );
    h.check(
        "double-tagged later fragment to a host address",
        &ssh(HOST).qinq(100, 42).frag(0x0010).build(),
        &DROP,
    );
    h.check(
        "double-tagged IPv6 to port 22",
        &Pkt::tcp("fd00:8::1", 1000, HOST6, 22, TCP_SYN)
            .qinq(100, 42)
            .build(),
        &DROP,
    );
    h.check(
        "double-tagged from a blocked source to the VIP",
        &Pkt::tcp("10.7.1.1", 1000, VIP, 80, TCP_SYN)
            .qinq(100, 42)
            .build(),
        &Expect::Drop(verdict::DROP_BLOCKLIST),
    );
    h.check(
        "one tag, a VLAN not balanced here, port 22",
        &ssh(VIP).vlan(42).build(),
        &DROP,
    );
    h.check(
        "double-tagged to the VIP, port 80: the kernel's",
        &Pkt::tcp("10.8.1.1", 1000, VIP, 80, TCP_SYN)
            .qinq(100, 42)
            .build(),
        &Expect::PassAs(verdict::PASS_OTHER_VLAN),
    );
    assert_eq!(h.rule_counters(1), vec![5]);
}
