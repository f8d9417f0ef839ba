//! Packet tests through BPF_PROG_TEST_RUN: the real XDP program, provisioned by the controller's
//! own reconciler and map writer. Katran-style fixtures: input built field by field, expected
//! verdict, expected output frame, expected counters.

use foobar_lb::desired::BackendState;
use foobar_lb_common::{verdict, FlowEvent, FlowKey};
use foobar_lb_tests::{
    harness::{backend_mac_of, Expect, Harness},
    packet::{Pkt, L4, LB_MAC, TCP_ACK, TCP_SYN},
};

const CONFIG: &str = r#"
interfaces = ["lo"]
vlans = { lo = [42, 5] }

[[service]]
name = "www"
vip = "10.0.0.100"
port = 80

[[service.backend]]
address = "10.0.0.11"

[[service.backend]]
address = "10.0.0.12"

[[service]]
name = "dns"
vip = "10.0.0.100"
port = 53
protocol = "udp"

[[service.backend]]
address = "10.0.0.11"

[[service.backend]]
address = "10.0.0.12"

[[service]]
name = "www6"
vip = "fd00::100"
port = 80

[[service.backend]]
address = "fd00::11"

[[service.backend]]
address = "fd00::12"

[[service]]
name = "empty"
vip = "10.0.0.101"
port = 80
"#;

const B1: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const B2: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];

const MACS: &[(&str, [u8; 6])] = &[
    ("10.0.0.11", B1),
    ("10.0.0.12", B2),
    ("fd00::11", B1),
    ("fd00::12", B2),
];

fn harness() -> Harness {
    Harness::new(CONFIG, MACS)
}

const CLIENT: &str = "10.0.0.1";
const VIP: &str = "10.0.0.100";

#[test]
fn new_flows_go_round_robin_and_later_packets_stick() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let syn1 = Pkt::tcp(CLIENT, 40000, VIP, 80, TCP_SYN);
    let syn2 = Pkt::tcp(CLIENT, 40001, VIP, 80, TCP_SYN);
    // The whole output frame, stated: DSR changes the MACs and nothing else.
    let out1 = Pkt {
        eth_dst: B1,
        eth_src: LB_MAC,
        ..syn1.clone()
    };
    let out2 = Pkt {
        eth_dst: B2,
        eth_src: LB_MAC,
        ..syn2.clone()
    };
    h.check(
        "first SYN -> first backend",
        &syn1.build(),
        &Expect::Frame(out1.build()),
    );
    h.check(
        "second SYN -> second backend",
        &syn2.build(),
        &Expect::Frame(out2.build()),
    );
    let syn1 = syn1.build();
    for _ in 0..3 {
        let ack1 = Pkt::tcp(CLIENT, 40000, VIP, 80, TCP_ACK).build();
        h.check("flow 1 stays on B1", &ack1, &Expect::Tx(B1));
        let ack2 = Pkt::tcp(CLIENT, 40001, VIP, 80, TCP_ACK).build();
        h.check("flow 2 stays on B2", &ack2, &Expect::Tx(B2));
    }
    let svc = h.service_counters("www");
    assert_eq!((svc.packets, svc.new_flows), (8, 2));
    assert_eq!(svc.bytes, 8 * syn1.len() as u64);
    let b1 = h.backend_counters("www", "10.0.0.11");
    assert_eq!((b1.packets, b1.new_flows), (4, 1));
    assert_eq!(h.dp.flow_count().unwrap(), 2);
}

#[test]
fn m_new_flows_split_evenly_over_n_backends() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let m = 1001;
    for port in 0..m {
        let f = Pkt::tcp(CLIENT, 10000 + port, VIP, 80, TCP_SYN).build();
        let o = h.run(&f);
        assert_eq!(o.action, foobar_lb_tests::harness::XDP_TX);
    }
    let a = h.backend_counters("www", "10.0.0.11").new_flows;
    let b = h.backend_counters("www", "10.0.0.12").new_flows;
    assert_eq!(a + b, m as u64);
    assert!(
        a.abs_diff(m as u64 / 2) <= 1 && b.abs_diff(m as u64 / 2) <= 1,
        "{a} / {b}"
    );
}

#[test]
fn udp_is_balanced_per_flow_not_per_packet() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let first = h.check(
        "udp flow A",
        &Pkt::udp(CLIENT, 5000, VIP, 53).build(),
        &Expect::Tx(B1),
    );
    let mac_a = backend_mac_of(&first.out);
    for _ in 0..3 {
        h.check(
            "udp flow A again",
            &Pkt::udp(CLIENT, 5000, VIP, 53).build(),
            &Expect::Tx(mac_a),
        );
    }
    h.check(
        "udp flow B",
        &Pkt::udp(CLIENT, 5001, VIP, 53).build(),
        &Expect::Tx(B2),
    );
    assert_eq!(h.service_counters("dns").new_flows, 2);
    // Services are independent: TCP www has its own cursor.
    h.check(
        "tcp www first flow",
        &Pkt::tcp(CLIENT, 5000, VIP, 80, TCP_SYN).build(),
        &Expect::Tx(B1),
    );
}

#[test]
fn ipv6_is_balanced() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let c = "fd00::1";
    let syn = Pkt::tcp(c, 1000, "fd00::100", 80, TCP_SYN);
    let out = Pkt {
        eth_dst: B1,
        eth_src: LB_MAC,
        ..syn.clone()
    };
    h.check("v6 SYN 1", &syn.build(), &Expect::Frame(out.build()));
    h.check(
        "v6 SYN 2",
        &Pkt::tcp(c, 1001, "fd00::100", 80, TCP_SYN).build(),
        &Expect::Tx(B2),
    );
    h.check(
        "v6 ACK 1",
        &Pkt::tcp(c, 1000, "fd00::100", 80, TCP_ACK).build(),
        &Expect::Tx(B1),
    );
    // IPv6 with a destination-options extension header before TCP.
    let mut f = Pkt::tcp(c, 1000, "fd00::100", 80, TCP_ACK).build();
    let ext = [6u8, 0, 1, 4, 0, 0, 0, 0]; // next=TCP, len 8 bytes, PadN
    f[14 + 6] = 60;
    let plen = u16::from_be_bytes([f[18], f[19]]) + 8;
    f[18..20].copy_from_slice(&plen.to_be_bytes());
    f.splice(54..54, ext);
    let o = h.run(&f);
    assert_eq!(o.action, foobar_lb_tests::harness::XDP_TX);
    assert_eq!(
        backend_mac_of(&o.out),
        B1,
        "extension header skipped, same flow"
    );
    h.check(
        "v6 to an unknown port passes",
        &Pkt::tcp(c, 1000, "fd00::100", 22, TCP_SYN).build(),
        &Expect::Pass,
    );
}

#[test]
fn vlan_tagged_frames_keep_their_tag() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let f = Pkt::tcp(CLIENT, 1000, VIP, 80, TCP_SYN).vlan(42);
    let out = Pkt {
        eth_dst: B1,
        eth_src: LB_MAC,
        ..f.clone()
    };
    h.check("VLAN 42 SYN", &f.build(), &Expect::Frame(out.build()));
    h.check(
        "VLAN non-VIP",
        &Pkt::tcp(CLIENT, 1000, "10.0.0.9", 80, TCP_SYN)
            .vlan(42)
            .build(),
        &Expect::Pass,
    );
    let v6 = Pkt::tcp("fd00::1", 1000, "fd00::100", 80, TCP_SYN).vlan(5);
    let out6 = Pkt {
        eth_dst: B1,
        eth_src: LB_MAC,
        ..v6.clone()
    };
    h.check("IPv6 in VLAN 5", &v6.build(), &Expect::Frame(out6.build()));
}

/// Only the VLANs configured for the interface are balanced: a VIP packet with another tag, or
/// two tags, goes to the kernel untouched (after the firewall) and is counted.
#[test]
fn frames_of_other_vlans_pass_untouched() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let other = Expect::PassAs(verdict::PASS_OTHER_VLAN);
    let syn = Pkt::tcp(CLIENT, 1000, VIP, 80, TCP_SYN);
    h.check("VLAN 43", &syn.clone().vlan(43).build(), &other);
    h.check(
        "VLAN 43, IPv6",
        &Pkt::tcp("fd00::1", 1000, "fd00::100", 80, TCP_SYN)
            .vlan(43)
            .build(),
        &other,
    );
    h.check(
        "priority tag (VLAN 0), not configured",
        &syn.clone().vlan(0).build(),
        &other,
    );
    h.check(
        "the priority bits do not change the VLAN",
        &syn.clone().vlan(0xe000 | 43).build(),
        &other,
    );
    h.check(
        "double-tagged, inner VLAN configured",
        &syn.clone().qinq(42, 42).build(),
        &other,
    );
    h.check(
        "a fragment in VLAN 43 is not ours to drop",
        &syn.clone().vlan(43).frag(0x2000).build(),
        &other,
    );
    h.check(
        "other VLAN, not a VIP",
        &Pkt::tcp(CLIENT, 1000, "10.0.0.9", 80, TCP_SYN)
            .vlan(43)
            .build(),
        &Expect::Pass,
    );
    assert_eq!(h.dp.flow_count().unwrap(), 0);
    assert_eq!(h.service_counters("www").new_flows, 0);
    // The priority bits of a configured VLAN's tag do not matter.
    let prio = syn.clone().vlan(0xa000 | 42);
    let out = Pkt {
        eth_dst: B1,
        eth_src: LB_MAC,
        ..prio.clone()
    };
    h.check(
        "VLAN 42, priority 5",
        &prio.build(),
        &Expect::Frame(out.build()),
    );
}

#[test]
fn ipv4_options_are_skipped_by_ihl() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    // Three NOPs and a 5-byte timestamp option (no room for a stamp: pointer past the end):
    // IHL 7.
    let f = Pkt::tcp(CLIENT, 1000, VIP, 80, TCP_SYN).options(&[1, 1, 1, 68, 5, 5, 0, 0]);
    let out = Pkt {
        eth_dst: B1,
        eth_src: LB_MAC,
        ..f.clone()
    };
    h.check("IPv4 with options", &f.build(), &Expect::Frame(out.build()));
    let same = Pkt::tcp(CLIENT, 1000, VIP, 80, TCP_ACK).build();
    h.check("same flow without options", &same, &Expect::Tx(B1));
}

#[test]
fn traffic_not_for_a_service_passes_untouched() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    for (name, f) in [
        (
            "other host",
            Pkt::tcp(CLIENT, 1000, "10.0.0.9", 80, TCP_SYN).build(),
        ),
        (
            "VIP wrong port",
            Pkt::tcp(CLIENT, 1000, VIP, 8080, TCP_SYN).build(),
        ),
        (
            "VIP wrong protocol",
            Pkt::udp(CLIENT, 1000, VIP, 80).build(),
        ),
        (
            "ICMP to VIP",
            Pkt::new(CLIENT, VIP, L4::Other { proto: 1 }).build(),
        ),
        ("ARP", {
            let mut f = vec![0xff; 6];
            f.extend([2, 0, 0, 0, 0, 1, 0x08, 0x06]);
            f.extend([0u8; 28]);
            f
        }),
    ] {
        h.check(name, &f, &Expect::Pass);
    }
    assert_eq!(h.dp.flow_count().unwrap(), 0);
}

#[test]
fn truncated_headers_at_every_layer() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let v4 = Pkt::tcp(CLIENT, 1000, VIP, 80, TCP_SYN).build();
    let v4_other = Pkt::tcp(CLIENT, 1000, "10.0.0.9", 80, TCP_SYN).build();
    let udp = Pkt::udp(CLIENT, 1000, VIP, 53).build();
    let v6 = Pkt::tcp("fd00::1", 1000, "fd00::100", 80, TCP_SYN).build();
    let vlan = Pkt::tcp(CLIENT, 1000, VIP, 80, TCP_SYN).vlan(5).build();
    // Truncate to `len` and fix nothing: the IP length fields now lie.
    let cut = |f: &[u8], len: usize| f[..len].to_vec();
    // Fix the IPv4 total length to match a frame cut inside the L4 header.
    let cut_consistent_v4 = |f: &[u8], len: usize| {
        let mut g = f[..len].to_vec();
        g[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
        g[24..26].copy_from_slice(&[0, 0]);
        let sum = foobar_lb_tests::packet::checksum(&g[14..34], 0);
        g[24..26].copy_from_slice(&sum.to_be_bytes());
        g
    };
    let malformed = Expect::Drop(verdict::DROP_MALFORMED);
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, so the shortest
        // frame testable is a bare Ethernet header that announces IPv4.
        ("ethernet header only", cut(&v4, 14), Expect::Pass),
        ("VLAN tag cut", cut(&vlan, 16), Expect::Pass),
        (
            "IPv4 header cut before dst",
            cut(&v4, 14 + 12),
            Expect::Pass,
        ),
        (
            "IPv4 tot_len beyond frame",
            cut(&v4, 14 + 20 + 20),
            malformed.clone(),
        ),
        (
            "TCP header cut, lengths consistent",
            cut_consistent_v4(&v4, 14 + 20 + 10),
            malformed.clone(),
        ),
        (
            "TCP cut, not a VIP",
            cut_consistent_v4(&v4_other, 14 + 20 + 10),
            Expect::Pass,
        ),
        (
            "UDP header cut",
            cut_consistent_v4(&udp, 14 + 20 + 4),
            malformed.clone(),
        ),
        ("IPv6 header cut", cut(&v6, 14 + 30), Expect::Pass),
        (
            "IPv6 payload shorter than payload_len",
            cut(&v6, 14 + 40 + 10),
            malformed.clone(),
        ),
        ("VLAN + TCP cut", cut(&vlan, 18 + 20 + 10), malformed),
    ];
    for (name, f, e) in cases {
        h.check(name, &f, &e);
    }
    assert_eq!(h.dp.flow_count().unwrap(), 0);
}

#[test]
fn malformed_and_fragmented_packets_to_a_vip_are_dropped() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let mut bad_ihl = Pkt::tcp(CLIENT, 1000, VIP, 80, TCP_SYN).build();
    bad_ihl[14] = 0x44; // IHL 4 < 5
    h.check(
        "IHL below 5",
        &bad_ihl,
        &Expect::Drop(verdict::DROP_MALFORMED),
    );
    let mut bad_doff = Pkt::tcp(CLIENT, 1000, VIP, 80, TCP_SYN).build();
    bad_doff[14 + 20 + 12] = 0x40; // TCP data offset 4
    h.check(
        "TCP doff below 5",
        &bad_doff,
        &Expect::Drop(verdict::DROP_MALFORMED),
    );
    let more_frags = Pkt::tcp(CLIENT, 1000, VIP, 80, TCP_SYN)
        .frag(0x2000)
        .build();
    h.check(
        "first fragment",
        &more_frags,
        &Expect::Drop(verdict::DROP_FRAGMENT),
    );
    let later = Pkt::udp(CLIENT, 1000, VIP, 53).frag(0x0010).build();
    h.check(
        "later fragment",
        &later,
        &Expect::Drop(verdict::DROP_FRAGMENT),
    );
    let df = Pkt::tcp(CLIENT, 1000, VIP, 80, TCP_SYN)
        .frag(0x4000)
        .build();
    h.check("don't-fragment bit alone is fine", &df, &Expect::Tx(B1));
    let other = Pkt::tcp(CLIENT, 1000, "10.0.0.9", 80, TCP_SYN)
        .frag(0x2000)
        .build();
    h.check("fragment for another host", &other, &Expect::Pass);
}

#[test]
fn ipv6_fragments_and_long_extension_chains_to_a_vip_are_dropped() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let syn = Pkt::tcp("fd00::1", 1000, "fd00::100", 80, TCP_SYN);
    let fragment = Expect::Drop(verdict::DROP_FRAGMENT);
    h.check("first fragment", &syn.clone().v6_frag(1).build(), &fragment);
    h.check(
        "later fragment",
        &syn.clone().v6_frag(0x0010).build(),
        &fragment,
    );
    h.check(
        "hop-by-hop options, then a fragment",
        &syn.clone().v6_opts(0).v6_frag(1).build(),
        &fragment,
    );
    let chain = |p: Pkt, n: usize| (0..n).fold(p.v6_opts(0), |p, _| p.v6_opts(60));
    let walked = chain(syn.clone(), 2);
    let out = Pkt {
        eth_dst: B1,
        eth_src: LB_MAC,
        ..walked.clone()
    };
    h.check(
        "three extension headers: balanced",
        &walked.build(),
        &Expect::Frame(out.build()),
    );
    h.check(
        "four extension headers: the L4 header is out of reach",
        &chain(syn.clone(), 3).build(),
        &Expect::Drop(verdict::DROP_EXT_HEADERS),
    );
    h.check(
        "eight, then a fragment header",
        &chain(syn.clone(), 7).v6_frag(1).build(),
        &Expect::Drop(verdict::DROP_EXT_HEADERS),
    );
    h.check(
        "eight extension headers to a host address",
        &chain(Pkt::tcp("fd00::1", 1000, "fd00::9", 80, TCP_SYN), 7).build(),
        &Expect::Pass,
    );
    assert_eq!(h.dp.flow_count().unwrap(), 1);
}

/// ICMP errors about a balanced connection go to its backend, whole and unchanged but for the
/// MACs, so path-MTU discovery works; any other ICMP goes to the host.
#[test]
fn icmp_errors_about_a_flow_go_to_its_backend() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    // Two connections, one per backend.
    h.check(
        "flow to B1",
        &Pkt::tcp(CLIENT, 1000, VIP, 80, TCP_SYN).build(),
        &Expect::Tx(B1),
    );
    h.check(
        "flow to B2",
        &Pkt::tcp(CLIENT, 1001, VIP, 80, TCP_SYN).build(),
        &Expect::Tx(B2),
    );
    // A router's error about the backend's reply (VIP:80 -> client): the IP header and the
    // first 8 bytes of TCP, as RFC 792 quotes them.
    let reply =
        |dport: u16| Pkt::tcp(VIP, 80, CLIENT, dport, TCP_ACK).build()[14..14 + 28].to_vec();
    let router = "10.0.0.254";
    let to_backend = |p: Pkt, mac| {
        Expect::Frame(
            Pkt {
                eth_dst: mac,
                eth_src: LB_MAC,
                ..p
            }
            .build(),
        )
    };
    let frag_needed = Pkt::icmp_error(router, VIP, 3, 4, 1400, &reply(1001));
    h.check(
        "fragmentation needed, flow of B2",
        &frag_needed.build(),
        &to_backend(frag_needed.clone(), B2),
    );
    let unreachable = Pkt::icmp_error(router, VIP, 3, 1, 0, &reply(1000));
    h.check(
        "host unreachable, flow of B1",
        &unreachable.build(),
        &to_backend(unreachable.clone(), B1),
    );
    h.check(
        "no such flow: the host's",
        &Pkt::icmp_error(router, VIP, 3, 4, 1400, &reply(1002)).build(),
        &Expect::Pass,
    );
    h.check(
        "time exceeded: the host's",
        &Pkt::icmp_error(router, VIP, 11, 0, 0, &reply(1000)).build(),
        &Expect::Pass,
    );
    h.check(
        "quoted packet cut before its ports",
        &Pkt::icmp_error(router, VIP, 3, 4, 1400, &reply(1000)[..22]).build(),
        &Expect::Pass,
    );
    // Quoting a packet from another address than the one the error is sent to.
    let other_vip = Pkt::tcp("10.0.0.101", 80, CLIENT, 1000, TCP_ACK).build()[14..42].to_vec();
    h.check(
        "quoted source is not the addressed VIP",
        &Pkt::icmp_error(router, VIP, 3, 4, 1400, &other_vip).build(),
        &Expect::Pass,
    );

    // IPv6: packet too big and destination unreachable; the quote is as long as fits.
    let c6 = "fd00::1";
    h.check(
        "v6 flow to B1",
        &Pkt::tcp(c6, 1000, "fd00::100", 80, TCP_SYN).build(),
        &Expect::Tx(B1),
    );
    let reply6 = Pkt::tcp("fd00::100", 80, c6, 1000, TCP_ACK).build()[14..].to_vec();
    let ptb = Pkt::icmp_error("fd00::fe", "fd00::100", 2, 0, 1280, &reply6);
    h.check(
        "packet too big, flow of B1",
        &ptb.build(),
        &to_backend(ptb.clone(), B1),
    );
    let unreach6 = Pkt::icmp_error("fd00::fe", "fd00::100", 1, 3, 0, &reply6);
    h.check(
        "v6 address unreachable, flow of B1",
        &unreach6.build(),
        &to_backend(unreach6.clone(), B1),
    );
    let other6 = Pkt::tcp("fd00::100", 80, c6, 1009, TCP_ACK).build()[14..].to_vec();
    h.check(
        "v6 no such flow",
        &Pkt::icmp_error("fd00::fe", "fd00::100", 2, 0, 1280, &other6).build(),
        &Expect::Pass,
    );
    h.check(
        "echo request: the host's",
        &Pkt::icmp_error("fd00::fe", "fd00::100", 128, 0, 0, &reply6).build(),
        &Expect::Pass,
    );
    assert_eq!(h.backend_counters("www", "10.0.0.12").packets, 2);
}

#[test]
fn empty_backend_set_drops_and_counts() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let f = Pkt::tcp(CLIENT, 1000, "10.0.0.101", 80, TCP_SYN).build();
    h.check("no backends", &f, &Expect::Drop(verdict::DROP_NO_BACKEND));
    h.check("still none", &f, &Expect::Drop(verdict::DROP_NO_BACKEND));
}

#[test]
fn removed_backend_moves_its_flows_drained_backend_keeps_them() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let mut h = harness();
    let flow = |port| Pkt::tcp(CLIENT, port, VIP, 80, TCP_ACK).build();
    h.check("flow 1", &flow(1), &Expect::Tx(B1));
    h.check("flow 2", &flow(2), &Expect::Tx(B2));

    // Drain B2: its flow continues, new flows avoid it.
    h.set_state("www", "10.0.0.12", BackendState::Draining);
    h.check("drained flow continues", &flow(2), &Expect::Tx(B2));
    for port in 3..7 {
        h.check("new flow avoids drained", &flow(port), &Expect::Tx(B1));
    }

    // Mark B2 down: its flow moves on its next packet.
    h.set_state("www", "10.0.0.12", BackendState::Down);
    h.check("flow of a down backend moves", &flow(2), &Expect::Tx(B1));
    h.check("and stays moved", &flow(2), &Expect::Tx(B1));

    // Remove B1 from the config: everything lands on nothing -> counted drop.
    let mut d = h.desired();
    d[0].backends.clear();
    h.apply(&d);
    h.check(
        "all gone",
        &flow(1),
        &Expect::Drop(verdict::DROP_NO_BACKEND),
    );
}

#[test]
fn a_slot_naming_an_unset_backend_is_counted_and_dropped() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    use foobar_lb::reconcile::MapOp;
    use foobar_lb_common::BackendSet;
    let mut h = harness();
    // Simulate a corrupted set: slot 0 names id 0 (reserved), slot 1 an id never written.
    let mut set = BackendSet::EMPTY;
    set.len = 2;
    set.slots[0] = 0;
    set.slots[1] = 4000;
    let service_id = h.service_id("www");
    h.dp.execute(&[MapOp::SetBackendSet {
        service_id,
        set: Box::new(set),
    }])
    .unwrap();
    for port in 0..2 {
        let f = Pkt::tcp(CLIENT, 30000 + port, VIP, 80, TCP_SYN).build();
        h.check("bad slot", &f, &Expect::Drop(verdict::DROP_BAD_SLOT));
    }
    assert_eq!(
        h.dp.flow_count().unwrap(),
        0,
        "no flow pinned to a bad slot"
    );
}

#[test]
fn a_stale_flow_never_follows_a_reused_backend_id_in_its_own_service() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    use foobar_lb::reconcile::MapOp;
    let mut h = harness();
    let flow = Pkt::tcp(CLIENT, 8, VIP, 80, TCP_SYN).build();
    h.check("flow on www's first backend", &flow, &Expect::Tx(B1));
    let id = h.backend_id("www", "10.0.0.11");
    let www = h.service_id("www");
    let before = h.dp.flows_per_backend().unwrap();
    assert_eq!(before.get(&id), Some(&1));
    // The id given to another backend of the same service: same service, next generation.
    let mut entry = foobar_lb_common::Backend {
        mac: [0x02, 0, 0, 0, 0, 0x98],
        owner: foobar_lb_common::owner(www, 2),
        state: foobar_lb_common::BACKEND_DRAINING,
        ..Default::default()
    };
    entry.family = foobar_lb_common::FAMILY_V4;
    h.dp.execute(&[MapOp::SetBackend { id, backend: entry }])
        .unwrap();
    // The old flow's entry is not credited to the new holder of the id...
    assert_eq!(h.dp.flows_per_backend().unwrap().get(&id), None);
    // ...and its next packet does not follow the id: it is scheduled anew.
    let ack = Pkt::tcp(CLIENT, 8, VIP, 80, TCP_ACK).build();
    let o = h.run(&ack);
    assert_eq!(o.action, foobar_lb_tests::harness::XDP_TX);
    assert_ne!(
        backend_mac_of(&o.out),
        [0x02, 0, 0, 0, 0, 0x98],
        "followed the reused id"
    );
}

#[test]
fn fin_marks_a_flow_closing_but_keeps_its_backend() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let open = |port| Pkt::tcp(CLIENT, port, VIP, 80, TCP_SYN).build();
    h.check("flow 1", &open(1), &Expect::Tx(B1));
    h.check("flow 2", &open(2), &Expect::Tx(B2));
    let open_flows = |h: &Harness| -> u64 { h.dp.flows_per_backend().unwrap().values().sum() };
    assert_eq!(open_flows(&h), 2);
    let fin = Pkt::tcp(CLIENT, 1, VIP, 80, 0x11).build(); // FIN+ACK
    h.check("FIN still forwarded", &fin, &Expect::Tx(B1));
    h.check(
        "last ACK still forwarded",
        &Pkt::tcp(CLIENT, 1, VIP, 80, TCP_ACK).build(),
        &Expect::Tx(B1),
    );
    // Half-closed: the client's FIN ends only its side; the server may still be sending.
    assert_eq!(open_flows(&h), 2, "a half-closed connection still counts");
    let rst = Pkt::tcp(CLIENT, 2, VIP, 80, 0x04).build();
    h.check("RST forwarded", &rst, &Expect::Tx(B2));
    assert_eq!(open_flows(&h), 1, "a reset connection no longer counts");
    assert_eq!(
        h.dp.flow_count().unwrap(),
        2,
        "entries stay until they age out"
    );
}

#[test]
fn a_stale_flow_never_follows_a_reused_backend_id_to_another_service() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    use foobar_lb::reconcile::MapOp;
    let mut h = harness();
    let flow = Pkt::tcp(CLIENT, 7, VIP, 80, TCP_ACK).build();
    h.check("flow on www's first backend", &flow, &Expect::Tx(B1));
    let id = h.backend_id("www", "10.0.0.11");
    let dns = h.service_id("dns");
    // Simulate the id being recycled for a backend of another service.
    let mut entry = foobar_lb_common::Backend {
        mac: [0x02, 0, 0, 0, 0, 0x99],
        owner: foobar_lb_common::owner(dns, 1),
        state: foobar_lb_common::BACKEND_ACTIVE,
        ..Default::default()
    };
    entry.family = foobar_lb_common::FAMILY_V4;
    h.dp.execute(&[MapOp::SetBackend { id, backend: entry }])
        .unwrap();
    let o = h.run(&flow);
    assert_eq!(o.action, foobar_lb_tests::harness::XDP_TX);
    assert_ne!(
        backend_mac_of(&o.out),
        [0x02, 0, 0, 0, 0, 0x99],
        "followed the reused id"
    );
}

#[test]
fn frames_for_another_mac_are_passed_never_forwarded() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    // A switch flooding another host's frame, a broadcast and an IPv4 multicast MAC.
    for (what, mac) in [
        ("another host's unicast", [0x02, 0, 0, 0, 0, 0x77]),
        ("broadcast", [0xff; 6]),
        ("multicast", [0x01, 0x00, 0x5e, 0, 0, 0x64]),
    ] {
        let f = Pkt {
            eth_dst: mac,
            ..Pkt::tcp(CLIENT, 2000, VIP, 80, TCP_SYN)
        };
        h.check(what, &f.build(), &Expect::PassAs(verdict::PASS_OTHER_HOST));
        let v6 = Pkt {
            eth_dst: mac,
            ..Pkt::tcp("fd00::1", 2000, "fd00::100", 80, TCP_SYN)
        };
        h.check(what, &v6.build(), &Expect::PassAs(verdict::PASS_OTHER_HOST));
    }
    assert_eq!(h.dp.flow_count().unwrap(), 0, "no flow was created");
    assert_eq!(h.service_counters("www").new_flows, 0);
    // The same connection addressed to the balancer is balanced, from the first backend: the
    // foreign frames did not move the round-robin cursor.
    let syn = Pkt::tcp(CLIENT, 2000, VIP, 80, TCP_SYN);
    let out = Pkt {
        eth_dst: B1,
        eth_src: LB_MAC,
        ..syn.clone()
    };
    h.check("addressed to us", &syn.build(), &Expect::Frame(out.build()));
}

#[test]
fn a_syn_reusing_a_closed_flows_tuple_is_scheduled_anew() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let mut h = harness();
    let syn = Pkt::tcp(CLIENT, 3000, VIP, 80, TCP_SYN).build();
    h.check("first connection", &syn, &Expect::Tx(B1));
    let fin = Pkt::tcp(CLIENT, 3000, VIP, 80, 0x11).build();
    h.check("its FIN", &fin, &Expect::Tx(B1));
    let open_on = |h: &Harness, addr| {
        let id = h.backend_id("www", addr);
        h.dp.flows_per_backend()
            .unwrap()
            .get(&id)
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(open_on(&h, "10.0.0.11"), 1, "half-closed, still open");
    // B1 is drained: a new connection on the same 5-tuple must not follow the old entry to it.
    h.set_state("www", "10.0.0.11", BackendState::Draining);
    h.check("same tuple, new connection", &syn, &Expect::Tx(B2));
    assert_eq!(open_on(&h, "10.0.0.11"), 0, "the old connection is gone");
    assert_eq!(
        open_on(&h, "10.0.0.12"),
        1,
        "the new connection counts as open"
    );
    h.check(
        "and its packets stay",
        &Pkt::tcp(CLIENT, 3000, VIP, 80, TCP_ACK).build(),
        &Expect::Tx(B2),
    );
    // A retransmitted SYN of an open connection keeps its backend.
    h.check("SYN retransmit", &syn, &Expect::Tx(B2));
    assert_eq!(h.service_counters("www").new_flows, 2);
}

#[test]
fn a_fin_or_rst_of_no_known_flow_is_dropped_and_creates_none() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    for (what, flags) in [("FIN", 0x11), ("RST", 0x04), ("RST+ACK", 0x14)] {
        let f = Pkt::tcp(CLIENT, 4000, VIP, 80, flags).build();
        h.check(what, &f, &Expect::Drop(verdict::DROP_NO_FLOW));
    }
    assert_eq!(h.dp.flow_count().unwrap(), 0);
    // A mid-stream ACK without an entry (after an eviction) still finds a backend.
    h.check(
        "ACK without entry",
        &Pkt::tcp(CLIENT, 4000, VIP, 80, TCP_ACK).build(),
        &Expect::Tx(B1),
    );
}

/// Drain and down are planned as several map writes; a SYN arriving between any two of them
/// must still be forwarded (the set stops naming a backend before the backend goes inactive).
#[test]
fn a_syn_between_the_writes_of_a_drain_or_down_is_never_dropped() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    for to in [BackendState::Draining, BackendState::Down] {
        let mut h = harness();
        let mut d = h.desired();
        d[0].backends[1].state = to;
        let ops = h.reconciler.plan(&d).unwrap();
        assert!(ops.len() >= 2, "{ops:#?}");
        for (i, op) in ops.iter().enumerate() {
            h.dp.execute(std::slice::from_ref(op)).unwrap();
            for port in 0..2 {
                let syn = Pkt::tcp(CLIENT, 5000 + 10 * i as u16 + port, VIP, 80, TCP_SYN).build();
                let o = h.run(&syn);
                assert_eq!(
                    foobar_lb_tests::harness::action_name(o.action),
                    "tx",
                    "{to:?}: SYN after write {i} ({op:?}) not forwarded"
                );
            }
        }
    }
}

/// Offset of the IPv4 header in an untagged frame, and of the L4 header without options.
const IP: usize = 14;
const L4_OFF: usize = 34;

#[test]
fn ipv4_header_defects_to_a_vip_are_dropped_and_counted() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let good = Pkt::tcp(CLIENT, 6000, VIP, 80, TCP_SYN).build();
    let mut bad_sum = good.clone();
    bad_sum[IP + 10] ^= 0x40;
    h.check(
        "IPv4 checksum wrong",
        &bad_sum,
        &Expect::Drop(verdict::DROP_BAD_CHECKSUM),
    );
    // Not for a VIP: the host's business, untouched.
    let mut other = Pkt::tcp(CLIENT, 6000, "10.0.0.9", 80, TCP_SYN).build();
    other[IP + 10] ^= 0x40;
    h.check("bad checksum, not a VIP", &other, &Expect::Pass);
    for (what, opt) in [
        ("LSRR", [0x83u8, 7, 4, 10, 0, 0, 1, 0]),
        ("SSRR", [0x89u8, 7, 4, 10, 0, 0, 1, 0]),
        ("NOPs then SSRR", [1, 0x89, 6, 4, 10, 0, 0, 1]),
    ] {
        let f = Pkt::tcp(CLIENT, 6001, VIP, 80, TCP_SYN)
            .options(&opt)
            .build();
        h.check(what, &f, &Expect::Drop(verdict::DROP_SOURCE_ROUTE));
    }
    // Other options (record route, timestamps) are fine.
    let rr = Pkt::tcp(CLIENT, 6002, VIP, 80, TCP_SYN)
        .options(&[7, 7, 4, 0, 0, 0, 0, 0])
        .build();
    h.check("record route", &rr, &Expect::Tx(B1));
    assert_eq!(
        h.dp.flow_count().unwrap(),
        1,
        "only the good one made a flow"
    );
}

#[test]
fn martian_and_vip_sources_are_dropped() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    for src in [
        "0.1.2.3",
        "127.0.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        VIP,
        "10.0.0.101",
    ] {
        let f = Pkt::tcp(src, 6100, VIP, 80, TCP_SYN).build();
        h.check(src, &f, &Expect::Drop(verdict::DROP_MARTIAN));
    }
    for src in ["::", "::1", "ff02::1", "::ffff:10.0.0.1", "fd00::100"] {
        let f = Pkt::tcp(src, 6100, "fd00::100", 80, TCP_SYN).build();
        h.check(src, &f, &Expect::Drop(verdict::DROP_MARTIAN));
    }
    assert_eq!(h.dp.flow_count().unwrap(), 0);
    h.check(
        "a real client",
        &Pkt::tcp(CLIENT, 6100, VIP, 80, TCP_SYN).build(),
        &Expect::Tx(B1),
    );
}

#[test]
fn tcp_flag_combinations_conntrack_rejects_are_dropped() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    for (what, flags) in [
        ("NULL", 0x00u8),
        ("FIN alone", 0x01),
        ("SYN+FIN", 0x03),
        ("SYN+RST", 0x06),
        ("RST+FIN", 0x05),
        ("XMAS (FIN+PSH+URG)", 0x29),
        ("all six", 0x3f),
        ("SYN+FIN+ACK", 0x13),
    ] {
        let f = Pkt::tcp(CLIENT, 6200, VIP, 80, flags).build();
        h.check(what, &f, &Expect::Drop(verdict::DROP_BAD_TCP_FLAGS));
    }
    assert_eq!(h.dp.flow_count().unwrap(), 0);
    // Valid ones keep working: an ECN-setup SYN, then PSH+ACK data, then FIN+ACK.
    h.check(
        "SYN with ECE+CWR",
        &Pkt::tcp(CLIENT, 6200, VIP, 80, 0xc2).build(),
        &Expect::Tx(B1),
    );
    h.check(
        "PSH+ACK",
        &Pkt::tcp(CLIENT, 6200, VIP, 80, 0x18).build(),
        &Expect::Tx(B1),
    );
    h.check(
        "FIN+ACK",
        &Pkt::tcp(CLIENT, 6200, VIP, 80, 0x11).build(),
        &Expect::Tx(B1),
    );
}

#[test]
fn l4_lengths_that_do_not_fit_are_malformed() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    // TCP data offset of 15 words in a 32-byte segment.
    let mut f = Pkt::tcp(CLIENT, 6300, VIP, 80, TCP_SYN).build();
    f[L4_OFF + 12] = 0xf0;
    h.check(
        "TCP doff beyond segment",
        &f,
        &Expect::Drop(verdict::DROP_MALFORMED),
    );
    for (what, len) in [
        ("UDP length 0", 0u16),
        ("UDP length 7", 7),
        ("UDP length 300", 300),
    ] {
        let mut f = Pkt::udp(CLIENT, 6300, VIP, 53).build();
        f[L4_OFF + 4..L4_OFF + 6].copy_from_slice(&len.to_be_bytes());
        h.check(what, &f, &Expect::Drop(verdict::DROP_MALFORMED));
    }
    assert_eq!(h.dp.flow_count().unwrap(), 0);
}

/// Flows that all arrive on one CPU (a busy queue) get the whole table: with per-CPU LRU lists
/// each CPU had size / CPUs entries and live flows were evicted early.
#[test]
fn the_flow_table_holds_its_configured_size_when_one_cpu_does_all_the_work() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    const SIZE: u32 = 4096;
    let h = Harness::with_flow_table(
        CONFIG,
        &[
            ("10.0.0.11", B1),
            ("10.0.0.12", B2),
            ("fd00::11", B1),
            ("fd00::12", B2),
        ],
        SIZE,
    );
    for i in 0..SIZE {
        let src = format!("10.9.{}.{}", i >> 8, i & 255);
        let o = h.run(&Pkt::tcp(&src, 1000, VIP, 80, TCP_SYN).build());
        assert_eq!(o.action, foobar_lb_tests::harness::XDP_TX);
    }
    assert_eq!(
        h.dp.flow_count().unwrap(),
        SIZE as usize,
        "live flows were evicted before the table was full"
    );
}

/// A Maglev service of ten backends, listed in `order`.
fn maglev_config(order: &[u32]) -> String {
    let mut c = String::from(
        "interfaces = [\"lo\"]\n\n[[service]]\nname = \"mg\"\nvip = \"10.0.0.100\"\nport = 80\n\
         scheduler = \"maglev\"\nmaglev_table_size = 4093\n",
    );
    for i in order {
        c += &format!("\n[[service.backend]]\naddress = \"10.0.1.{i}\"\n");
    }
    c
}

fn maglev_macs() -> Vec<(String, [u8; 6])> {
    (1..=10)
        .map(|i| (format!("10.0.1.{i}"), [0x02, 0, 0, 0, 1, i as u8]))
        .collect()
}

#[test]
fn maglev_picks_the_slot_of_the_flows_hash_the_same_on_every_balancer() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    use foobar_lb::schedule::{Member, Scheduler};
    let macs = maglev_macs();
    let macs: Vec<(&str, [u8; 6])> = macs.iter().map(|(a, m)| (a.as_str(), *m)).collect();
    let one = Harness::new(&maglev_config(&(1..=10).collect::<Vec<_>>()), &macs);
    // Another balancer, its backends listed (and so numbered) in the opposite order.
    let other = Harness::new(&maglev_config(&(1..=10).rev().collect::<Vec<_>>()), &macs);
    // The table the controller builds, from which the expected backend of each tuple follows.
    let members: Vec<Member> = (1..=10)
        .map(|i| {
            let addr = format!("10.0.1.{i}");
            Member {
                id: one.backend_id("mg", &addr),
                weight: 1,
                addr: addr.parse().unwrap(),
            }
        })
        .collect();
    let table = Scheduler::Maglev { table_size: 4093 }.slots(&members);
    let mut seen = std::collections::HashSet::new();
    for port in 0..300u16 {
        let syn = Pkt::tcp(CLIENT, 20000 + port, VIP, 80, TCP_SYN).build();
        let key = foobar_lb_common::FlowKey {
            src: [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0],
            dst: [u32::from_ne_bytes([10, 0, 0, 100]), 0, 0, 0],
            sport: (20000 + port).to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            family: 4,
            _pad: [0; 2],
        };
        let id = table.slots[(foobar_lb_common::flow_hash(&key) % 4093) as usize];
        let addr = members.iter().find(|m| m.id == id).unwrap().addr;
        let want = macs
            .iter()
            .find(|(a, _)| a.parse::<std::net::IpAddr>().unwrap() == addr)
            .unwrap()
            .1;
        let a = one.run(&syn);
        let b = other.run(&syn);
        assert_eq!(a.action, foobar_lb_tests::harness::XDP_TX);
        assert_eq!(
            backend_mac_of(&a.out),
            want,
            "port {port}: not the table's backend"
        );
        assert_eq!(a.out, b.out, "port {port}: the two balancers disagree");
        seen.insert(want);
    }
    assert_eq!(seen.len(), 10, "300 flows reach every backend");
}

/// The kernel verifies at most 1,000,000 instructions per program; every path that reaches a
/// firewall loop costs tens of thousands. Keep well inside the budget, so that the next stage
/// does not find the program unloadable (at the time of writing: about 396,300,
/// of which NAT forwarding takes 100,000, NAT's ICMP errors 60,000 and partial checksums
/// 18,000).
#[test]
fn the_program_stays_well_inside_the_verifiers_budget() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    // Without and with flow sync's announcements (pruned by the verifier when off).
    for (what, h) in [
        ("", harness()),
        (" with sync", Harness::with_sync(CONFIG, MACS)),
    ] {
        let info = h.dp.program().info().unwrap();
        let Some(verified) = info.verified_instruction_count() else {
            eprintln!("skipped: the kernel does not report verified instructions");
            return;
        };
        println!("verified instructions{what}: {verified}");
        assert!(
            verified < 500_000,
            "the verifier processed {verified} instructions{what}, over half its 1M budget: \
             see DEVELOPING.md on keeping paths to the firewall few"
        );
    }
}

/// The key of a TCP flow from 10.0.0.1:`sport` to the VIP's port 80.
fn flow_key(sport: u16) -> FlowKey {
    FlowKey {
        src: [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0],
        dst: [u32::from_ne_bytes([10, 0, 0, 100]), 0, 0, 0],
        sport: sport.to_be(),
        dport: 80u16.to_be(),
        proto: foobar_lb_common::PROTO_TCP,
        family: foobar_lb_common::FAMILY_V4,
        _pad: [0; 2],
    }
}

/// A new DSR flow's key, backend id and owner word as the ring's `FlowEvent`s carry them.
fn flow_event(h: &Harness, sport: u16, backend: &str) -> FlowEvent {
    FlowEvent {
        key: flow_key(sport),
        backend_id: h.backend_id("www", backend),
        owner: h.backend_owner("www", backend),
    }
}

/// Everything on the program's flow-event ring now.
fn drain(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<FlowEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), std::mem::size_of::<FlowEvent>());
        // SAFETY: a whole FlowEvent (length checked), any bit pattern valid.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) });
    }
    out
}

#[test]
fn with_sync_each_new_flow_is_announced_once_and_without_it_none() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let mut h = Harness::with_sync(CONFIG, MACS);
    let (mut ring, maps, _walk) = h.dp.sync_maps().unwrap();
    h.check(
        "SYN -> B1",
        &Pkt::tcp(CLIENT, 40000, VIP, 80, TCP_SYN).build(),
        &Expect::Tx(B1),
    );
    for _ in 0..3 {
        let ack = Pkt::tcp(CLIENT, 40000, VIP, 80, TCP_ACK).build();
        h.check("established: no announcement", &ack, &Expect::Tx(B1));
    }
    h.check(
        "SYN -> B2",
        &Pkt::tcp(CLIENT, 40001, VIP, 80, TCP_SYN).build(),
        &Expect::Tx(B2),
    );
    assert_eq!(
        drain(&mut ring),
        [
            flow_event(&h, 40000, "10.0.0.11"),
            flow_event(&h, 40001, "10.0.0.12")
        ]
    );
    assert_eq!(maps.ring_counts(), (2, 0));

    let mut h = harness();
    let (mut ring, maps, _walk) = h.dp.sync_maps().unwrap();
    h.check(
        "SYN -> B1",
        &Pkt::tcp(CLIENT, 40000, VIP, 80, TCP_SYN).build(),
        &Expect::Tx(B1),
    );
    assert_eq!(drain(&mut ring), []);
    assert_eq!(maps.ring_counts(), (0, 0));
}

/// Nobody reads the ring: once full, announcements are lost and counted, and every packet is
/// forwarded all the same.
#[test]
fn a_full_sync_ring_loses_announcements_never_packets() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let mut h = Harness::with_sync(CONFIG, MACS);
    let (_ring, maps, _walk) = h.dp.sync_maps().unwrap();
    let n = 20_000u16;
    for i in 0..n {
        let syn = Pkt::tcp(CLIENT, 10_000 + i, VIP, 80, TCP_SYN).build();
        assert_eq!(
            h.run(&syn).action,
            foobar_lb_tests::harness::XDP_TX,
            "SYN {i}"
        );
    }
    let (sent, full) = maps.ring_counts();
    eprintln!("{sent} announcements fit the ring, {full} lost");
    assert_eq!(sent + full, u64::from(n));
    assert!(full > 0 && sent > 10_000, "sent {sent}, lost {full}");
    assert_eq!(h.service_counters("www").new_flows, u64::from(n));
}

const NAT_CONFIG: &str = r#"
interfaces = ["lo"]

[[service]]
name = "web"
vip = "10.0.0.100"
port = 80
forwarding = "nat"

[[service.backend]]
address = "10.0.0.11"
port = 8080

[[service]]
name = "alt"
vip = "10.0.0.101"
port = 80
forwarding = "nat"

[[service.backend]]
address = "10.0.0.11"
port = 8080
"#;

/// `p` as the balancer sends it to backend .11 (NAT: destination 10.0.0.11:8080).
fn nat_to_b1(p: &Pkt) -> Expect {
    let mut o = p.clone();
    o.dst = "10.0.0.11".parse().unwrap();
    if let L4::Tcp { dport, .. } = &mut o.l4 {
        *dport = 8080;
    }
    o.eth_dst = B1;
    o.eth_src = LB_MAC;
    Expect::Frame(o.build())
}

/// Flow sync of NAT connections, the program's half and the maps' half: a new NAT connection
/// is announced once (on its SYN, after both entries are written, so the controller reads
/// them), and a peer's connection written with `SyncMaps::write_nat` is forwarded and its
/// replies translated by a program that never saw its SYN. A peer's connection whose reply
/// 5-tuple is another connection's here is refused, the local one kept.
#[test]
fn with_sync_a_nat_connection_is_announced_and_a_written_one_is_forwarded_both_ways() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let macs: &[(&str, [u8; 6])] = &[("10.0.0.11", B1)];
    let mut a = Harness::with_sync(NAT_CONFIG, macs);
    let (mut ring, a_maps, a_walk) = a.dp.sync_maps().unwrap();
    let syn = Pkt::tcp("10.0.0.1", 40000, VIP, 80, TCP_SYN);
    a.check("A: SYN -> .11:8080", &syn.build(), &nat_to_b1(&syn));
    let ack = Pkt::tcp("10.0.0.1", 40000, VIP, 80, TCP_ACK);
    a.check("A: established", &ack.build(), &nat_to_b1(&ack));
    let events = drain(&mut ring);
    let key = flow_key(40000);
    assert_eq!(
        events,
        [FlowEvent {
            key,
            backend_id: a.backend_id("web", "10.0.0.11"),
            owner: a.backend_owner("web", "10.0.0.11"),
        }],
        "one announcement, on the SYN"
    );
    let (fwd, rev) = a_maps
        .nat_conn(&key)
        .expect("the announced connection is tracked");
    assert_eq!(fwd.backend_port, 8080u16.to_be());
    assert_eq!(rev.vip, key.dst);
    assert_eq!(a_walk.nat_conns(), [(key, fwd, rev)]);

    // B never saw the SYN: the connection written as a peer's, it forwards the client's
    // packets to .11 and translates .11's replies back from the VIP.
    let mut b = Harness::with_sync(NAT_CONFIG, macs);
    let (_b_ring, mut b_maps, _b_walk) = b.dp.sync_maps().unwrap();
    let rkey = foobar_lb_common::nat_reply_key(&key, &fwd);
    let b_fwd = foobar_lb_common::NatFwd {
        backend_id: b.backend_id("web", "10.0.0.11"),
        owner: b.backend_owner("web", "10.0.0.11"),
        ..fwd
    };
    assert_eq!(
        b_maps.write_nat(&key, &b_fwd, &rkey, &rev).unwrap(),
        foobar_lb::dataplane::NatWrite::Written
    );
    // Written again (a second bulk sync): the same connection, accepted.
    assert_eq!(
        b_maps.write_nat(&key, &b_fwd, &rkey, &rev).unwrap(),
        foobar_lb::dataplane::NatWrite::Written
    );
    b.check(
        "B: the client's packet -> .11",
        &ack.build(),
        &nat_to_b1(&ack),
    );
    let mut reply = Pkt::tcp("10.0.0.11", 8080, "10.0.0.1", 40000, TCP_ACK);
    reply.eth_src = B1;
    reply.eth_dst = LB_MAC;
    reply.payload = b"HTTP/1.1 200 OK\r\n".to_vec();
    let mut back = reply.clone();
    back.src = VIP.parse().unwrap();
    if let L4::Tcp { sport, .. } = &mut back.l4 {
        *sport = 80;
    }
    back.eth_dst = foobar_lb_tests::packet::CLIENT_MAC;
    back.eth_src = LB_MAC;
    b.check(
        "B: .11's reply -> the client, from the VIP",
        &reply.build(),
        &Expect::FrameAs(back.build(), verdict::TX_NAT_REPLY),
    );
    // The same client port to another VIP on the same backend has the same reply 5-tuple:
    // refused, and the first connection's replies still go back from its VIP.
    let mut other = key;
    other.dst = [u32::from_ne_bytes([10, 0, 0, 101]), 0, 0, 0];
    let other_rev = foobar_lb_common::NatRev {
        vip: other.dst,
        ..rev
    };
    let other_fwd = foobar_lb_common::NatFwd {
        backend_id: b.backend_id("alt", "10.0.0.11"),
        owner: b.backend_owner("alt", "10.0.0.11"),
        ..fwd
    };
    assert_eq!(
        b_maps
            .write_nat(&other, &other_fwd, &rkey, &other_rev)
            .unwrap(),
        foobar_lb::dataplane::NatWrite::Collision
    );
    assert!(
        b_maps.nat_conn(&other).is_none(),
        "no forward entry written"
    );
    b.check(
        "B: still the first connection's reply",
        &reply.build(),
        &Expect::FrameAs(back.build(), verdict::TX_NAT_REPLY),
    );
}
