//! NAT forwarding through BPF_PROG_TEST_RUN: whole output frames for both directions (the
//! expected frames are built from scratch with full checksums, so the program's incremental
//! updates are checked against an independent computation), connection tracking in pairs,
//! collisions, a full table, and the sweeper.

use foobar_lb::config::NatTimeouts;
use foobar_lb_common::verdict;
use foobar_lb_tests::{
    harness::{Expect, Harness},
    packet::{Pkt, CLIENT_MAC, LB_MAC, TCP_ACK, TCP_SYN},
};

const CONFIG: &str = r#"
interfaces = ["lo"]

[[service]]
name = "web"
vip = "10.0.0.100"
port = 80
forwarding = "nat"

[[service.backend]]
address = "10.0.0.11"
port = 8080

[[service.backend]]
address = "10.0.0.12"
port = 8080

[[service]]
name = "dns"
vip = "10.0.0.100"
port = 53
protocol = "udp"
forwarding = "nat"

[[service.backend]]
address = "10.0.0.11"
port = 5353

[[service]]
name = "web6"
vip = "fd00::100"
port = 80
forwarding = "nat"

[[service.backend]]
address = "fd00::11"
port = 8080

[[service.backend]]
address = "fd00::12"

[[service]]
name = "dns6"
vip = "fd00::100"
port = 53
protocol = "udp"
forwarding = "nat"

[[service.backend]]
address = "fd00::11"
port = 5353

[[service]]
name = "alt"
vip = "10.0.0.101"
port = 80
forwarding = "nat"

[[service.backend]]
address = "10.0.0.11"
port = 8080

[[service]]
name = "dsr"
vip = "10.0.0.102"
port = 80

[[service.backend]]
address = "10.0.0.13"
"#;

const B1: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const B2: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
const B3: [u8; 6] = [0x02, 0, 0, 0, 0, 0x13];
const MACS: &[(&str, [u8; 6])] = &[
    ("10.0.0.11", B1),
    ("10.0.0.12", B2),
    ("10.0.0.13", B3),
    ("fd00::11", B1),
    ("fd00::12", B2),
];

const CLIENT: &str = "198.51.100.7";
const VIP: &str = "10.0.0.100";
const TCP_RST: u8 = 0x04;
const TCP_FIN: u8 = 0x01;

fn harness() -> Harness {
    Harness::new(CONFIG, MACS)
}

/// What the balancer sends a backend for `p`: destination address, port and MACs changed.
fn to_backend(p: &Pkt, addr: &str, port: u16, mac: [u8; 6]) -> Pkt {
    let mut o = p.clone();
    o.dst = addr.parse().unwrap();
    set_dport(&mut o, port);
    o.eth_dst = mac;
    o.eth_src = LB_MAC;
    o
}

fn set_dport(p: &mut Pkt, port: u16) {
    match &mut p.l4 {
        foobar_lb_tests::packet::L4::Tcp { dport, .. }
        | foobar_lb_tests::packet::L4::Udp { dport, .. } => *dport = port,
        _ => unreachable!(),
    }
}

fn set_sport(p: &mut Pkt, port: u16) {
    match &mut p.l4 {
        foobar_lb_tests::packet::L4::Tcp { sport, .. }
        | foobar_lb_tests::packet::L4::Udp { sport, .. } => *sport = port,
        _ => unreachable!(),
    }
}

/// A backend's reply as it reaches the balancer (its default gateway).
fn from_backend(mut p: Pkt, mac: [u8; 6]) -> Pkt {
    p.eth_src = mac;
    p.eth_dst = LB_MAC;
    p
}

/// What the balancer sends the client for reply `p`: source back to the VIP and port.
fn to_client(p: &Pkt, vip: &str, vport: u16) -> Pkt {
    let mut o = p.clone();
    o.src = vip.parse().unwrap();
    set_sport(&mut o, vport);
    o.eth_dst = CLIENT_MAC;
    o.eth_src = LB_MAC;
    o
}

fn reply_expect(p: &Pkt, vip: &str, vport: u16) -> Expect {
    Expect::FrameAs(to_client(p, vip, vport).build(), verdict::TX_NAT_REPLY)
}

#[test]
fn tcp_v4_both_directions_with_port_translation() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let syn = Pkt::tcp(CLIENT, 40000, VIP, 80, TCP_SYN);
    h.check(
        "SYN -> first backend, port 80 -> 8080",
        &syn.build(),
        &Expect::Frame(to_backend(&syn, "10.0.0.11", 8080, B1).build()),
    );
    let syn2 = Pkt::tcp(CLIENT, 40001, VIP, 80, TCP_SYN);
    h.check(
        "second SYN -> second backend",
        &syn2.build(),
        &Expect::Frame(to_backend(&syn2, "10.0.0.12", 8080, B2).build()),
    );
    let synack = from_backend(
        Pkt::tcp("10.0.0.11", 8080, CLIENT, 40000, TCP_SYN | TCP_ACK),
        B1,
    );
    h.check(
        "SYN-ACK back from the VIP:80",
        &synack.build(),
        &reply_expect(&synack, VIP, 80),
    );
    for i in 0..3 {
        let mut ack = Pkt::tcp(CLIENT, 40000, VIP, 80, TCP_ACK);
        ack.payload = format!("request {i}").into_bytes();
        h.check(
            "established: client -> backend",
            &ack.build(),
            &Expect::Frame(to_backend(&ack, "10.0.0.11", 8080, B1).build()),
        );
        let mut data = from_backend(Pkt::tcp("10.0.0.11", 8080, CLIENT, 40000, TCP_ACK), B1);
        data.payload = vec![i as u8; 1000 + i];
        h.check(
            "established: backend -> client",
            &data.build(),
            &reply_expect(&data, VIP, 80),
        );
    }
    let ack2 = Pkt::tcp(CLIENT, 40001, VIP, 80, TCP_ACK);
    h.check(
        "flow 2 stays on its backend",
        &ack2.build(),
        &Expect::Frame(to_backend(&ack2, "10.0.0.12", 8080, B2).build()),
    );
    // Service and backend counters count the client side, as for DSR.
    let svc = h.service_counters("web");
    assert_eq!((svc.packets, svc.new_flows), (6, 2));
    // Tracked in pairs; nothing in the DSR flow table.
    assert_eq!(h.dp.nat_table_fill().unwrap(), (2, 2));
    assert_eq!(h.dp.flow_count().unwrap(), 0);
    let mut conns = h.dp.nat_connections().unwrap();
    conns.sort_by_key(|c| c.client.1);
    assert_eq!(conns.len(), 2);
    assert_eq!(conns[0].client, (CLIENT.parse().unwrap(), 40000));
    assert_eq!(conns[0].vip, (VIP.parse().unwrap(), 80));
    assert_eq!(conns[0].backend, ("10.0.0.11".parse().unwrap(), 8080));
    assert_eq!(conns[0].state, foobar_lb::dataplane::NatState::Established);
    assert_eq!(conns[1].state, foobar_lb::dataplane::NatState::SynSent);
}

#[test]
fn tcp_v6_both_directions() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let client = "2001:db8::7";
    let syn = Pkt::tcp(client, 50000, "fd00::100", 80, TCP_SYN);
    h.check(
        "IPv6 SYN -> fd00::11 port 8080",
        &syn.build(),
        &Expect::Frame(to_backend(&syn, "fd00::11", 8080, B1).build()),
    );
    let syn2 = Pkt::tcp(client, 50001, "fd00::100", 80, TCP_SYN);
    h.check(
        "a backend without a port keeps the service's",
        &syn2.build(),
        &Expect::Frame(to_backend(&syn2, "fd00::12", 80, B2).build()),
    );
    let reply = from_backend(
        Pkt::tcp("fd00::11", 8080, client, 50000, TCP_SYN | TCP_ACK),
        B1,
    );
    h.check(
        "IPv6 reply",
        &reply.build(),
        &reply_expect(&reply, "fd00::100", 80),
    );
    let ack = Pkt::tcp(client, 50000, "fd00::100", 80, TCP_ACK);
    h.check(
        "IPv6 established",
        &ack.build(),
        &Expect::Frame(to_backend(&ack, "fd00::11", 8080, B1).build()),
    );
}

#[test]
fn udp_with_and_without_checksum() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let q = Pkt::udp(CLIENT, 33000, VIP, 53);
    h.check(
        "UDP query -> 10.0.0.11:5353",
        &q.build(),
        &Expect::Frame(to_backend(&q, "10.0.0.11", 5353, B1).build()),
    );
    let a = from_backend(Pkt::udp("10.0.0.11", 5353, CLIENT, 33000), B1);
    h.check(
        "UDP answer from VIP:53",
        &a.build(),
        &reply_expect(&a, VIP, 53),
    );
    // No checksum (zero) over IPv4 stays none: the expected frames carry zero too.
    let mut q0 = Pkt::udp(CLIENT, 33001, VIP, 53);
    q0.udp_no_checksum = true;
    let out = to_backend(&q0, "10.0.0.11", 5353, B1);
    let o = h.check(
        "UDP without checksum",
        &q0.build(),
        &Expect::Frame(out.build()),
    );
    let l4 = 14 + 20;
    assert_eq!(&o.out[l4 + 6..l4 + 8], &[0, 0], "checksum stays zero");
    let mut a0 = from_backend(Pkt::udp("10.0.0.11", 5353, CLIENT, 33001), B1);
    a0.udp_no_checksum = true;
    h.check(
        "UDP answer without checksum",
        &a0.build(),
        &reply_expect(&a0, VIP, 53),
    );
    // IPv6: the UDP checksum is mandatory and updated like TCP's.
    let q6 = Pkt::udp("2001:db8::7", 33002, "fd00::100", 53);
    h.check(
        "IPv6 UDP query -> [fd00::11]:5353",
        &q6.build(),
        &Expect::Frame(to_backend(&q6, "fd00::11", 5353, B1).build()),
    );
    let a6 = from_backend(Pkt::udp("fd00::11", 5353, "2001:db8::7", 33002), B1);
    h.check(
        "IPv6 UDP answer",
        &a6.build(),
        &reply_expect(&a6, "fd00::100", 53),
    );
    assert_eq!(h.dp.nat_table_fill().unwrap(), (3, 3));
    let conns = h.dp.nat_connections().unwrap();
    assert!(conns
        .iter()
        .all(|c| c.state == foobar_lb::dataplane::NatState::Replied));
}

#[test]
fn traffic_that_is_no_tracked_reply_passes_untouched() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let syn = Pkt::tcp(CLIENT, 40000, VIP, 80, TCP_SYN);
    h.check(
        "SYN",
        &syn.build(),
        &Expect::Frame(to_backend(&syn, "10.0.0.11", 8080, B1).build()),
    );
    // From the backend, to another client port: the backend's own traffic, not a reply.
    let other = from_backend(Pkt::tcp("10.0.0.11", 8080, CLIENT, 40999, TCP_ACK), B1);
    h.check("no entry: passed", &other.build(), &Expect::Pass);
    // From the backend's SSH port to the same client port.
    let ssh = from_backend(Pkt::tcp("10.0.0.11", 22, CLIENT, 40000, TCP_ACK), B1);
    h.check("other source port: passed", &ssh.build(), &Expect::Pass);
    // Not from a NAT backend at all.
    let stranger = Pkt::tcp("192.0.2.9", 8080, CLIENT, 40000, TCP_ACK);
    h.check("another host: passed", &stranger.build(), &Expect::Pass);
    // A tracked reply in a frame for another MAC is not ours to translate.
    let mut flooded = from_backend(Pkt::tcp("10.0.0.11", 8080, CLIENT, 40000, TCP_ACK), B1);
    flooded.eth_dst = [0x02, 0, 0, 0, 0, 0x77];
    h.check("frame for another host", &flooded.build(), &Expect::Pass);
}

#[test]
fn dsr_services_are_unchanged_beside_nat_ones() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let syn = Pkt::tcp(CLIENT, 40000, "10.0.0.102", 80, TCP_SYN).build();
    h.check("DSR SYN", &syn, &Expect::Tx(B3));
    let ack = Pkt::tcp(CLIENT, 40000, "10.0.0.102", 80, TCP_ACK).build();
    h.check("DSR established", &ack, &Expect::Tx(B3));
    assert_eq!(h.dp.flow_count().unwrap(), 1);
    assert_eq!(h.dp.nat_table_fill().unwrap(), (0, 0));
}

#[test]
fn a_reply_tuple_in_use_is_a_counted_collision() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let syn = Pkt::tcp(CLIENT, 40000, VIP, 80, TCP_SYN);
    h.check(
        "web SYN -> 10.0.0.11:8080",
        &syn.build(),
        &Expect::Frame(to_backend(&syn, "10.0.0.11", 8080, B1).build()),
    );
    // Same client port to another VIP whose only backend is the same 10.0.0.11:8080: its
    // replies would be indistinguishable from the first connection's.
    let alt = Pkt::tcp(CLIENT, 40000, "10.0.0.101", 80, TCP_SYN).build();
    h.check(
        "alt SYN collides",
        &alt,
        &Expect::Drop(verdict::DROP_NAT_COLLISION),
    );
    assert_eq!(h.dp.nat_table_fill().unwrap(), (1, 1));
    // The first connection's replies still go back from the first VIP.
    let r = from_backend(Pkt::tcp("10.0.0.11", 8080, CLIENT, 40000, TCP_ACK), B1);
    h.check(
        "first connection intact",
        &r.build(),
        &reply_expect(&r, VIP, 80),
    );
}

#[test]
fn a_full_table_drops_new_connections_and_keeps_the_old() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = Harness::with_tables(CONFIG, MACS, 65536, 8);
    for port in 0..8 {
        let syn = Pkt::tcp(CLIENT, 41000 + port, VIP, 80, TCP_SYN).build();
        assert_eq!(
            h.run(&syn).action,
            foobar_lb_tests::harness::XDP_TX,
            "{port}"
        );
    }
    assert_eq!(h.dp.nat_table_fill().unwrap(), (8, 8));
    let syn = Pkt::tcp(CLIENT, 41100, VIP, 80, TCP_SYN).build();
    h.check(
        "ninth connection",
        &syn,
        &Expect::Drop(verdict::DROP_NAT_TABLE_FULL),
    );
    // No half pair was left behind, and tracked connections still work.
    assert_eq!(h.dp.nat_table_fill().unwrap(), (8, 8));
    let ack = Pkt::tcp(CLIENT, 41000, VIP, 80, TCP_ACK);
    h.check(
        "tracked connection",
        &ack.build(),
        &Expect::Frame(to_backend(&ack, "10.0.0.11", 8080, B1).build()),
    );
}

#[test]
fn closed_connections_reopen_and_the_sweeper_forgets_idle_ones() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let mut h = harness();
    let syn = Pkt::tcp(CLIENT, 40000, VIP, 80, TCP_SYN);
    h.check(
        "SYN",
        &syn.build(),
        &Expect::Frame(to_backend(&syn, "10.0.0.11", 8080, B1).build()),
    );
    // Answered first: a RST to an unanswered SYN is a refusal, not forwarded (see
    // `a_refused_syn_is_dropped_forgotten_and_counted`).
    let synack = from_backend(
        Pkt::tcp("10.0.0.11", 8080, CLIENT, 40000, TCP_SYN | TCP_ACK),
        B1,
    );
    h.check("SYN-ACK", &synack.build(), &reply_expect(&synack, VIP, 80));
    let rst = from_backend(Pkt::tcp("10.0.0.11", 8080, CLIENT, 40000, TCP_RST), B1);
    h.check("backend RST", &rst.build(), &reply_expect(&rst, VIP, 80));
    assert_eq!(
        h.dp.nat_connections().unwrap()[0].state,
        foobar_lb::dataplane::NatState::Closed
    );
    // A SYN on the closed connection's 5-tuple opens a new one, scheduled anew (next backend).
    h.check(
        "SYN after RST: rescheduled",
        &syn.build(),
        &Expect::Frame(to_backend(&syn, "10.0.0.12", 8080, B2).build()),
    );
    assert_eq!(h.dp.nat_table_fill().unwrap(), (1, 1));
    // A FIN-closing one and a UDP one beside it. The harness's flow clock stands at 0.
    let syn2 = Pkt::tcp(CLIENT, 40001, VIP, 80, TCP_SYN).build();
    h.run(&syn2);
    let fin = Pkt::tcp(CLIENT, 40001, VIP, 80, TCP_FIN | TCP_ACK).build();
    assert_eq!(h.run(&fin).action, foobar_lb_tests::harness::XDP_TX);
    h.run(&Pkt::udp(CLIENT, 33000, VIP, 53).build());
    assert_eq!(h.dp.nat_table_fill().unwrap(), (3, 3));
    let t = NatTimeouts::default();
    // units: 2^30 ns. At 20 units (21 s): only UDP unreplied (30 s) and closing (120 s)
    // and syn_sent (60 s) remain.
    assert_eq!(h.dp.sweep_nat(&t, 20).unwrap(), 0);
    assert_eq!(h.dp.sweep_nat(&t, 29).unwrap(), 1, "UDP after 30 s");
    assert_eq!(h.dp.sweep_nat(&t, 57).unwrap(), 1, "syn_sent after 60 s");
    assert_eq!(h.dp.nat_table_fill().unwrap(), (1, 1));
    assert_eq!(h.dp.sweep_nat(&t, 112).unwrap(), 0, "closing lives 120 s");
    assert_eq!(h.dp.sweep_nat(&t, 113).unwrap(), 1, "closing after 120 s");
    assert_eq!(h.dp.nat_table_fill().unwrap(), (0, 0));
    // Forgotten: a late reply passes untranslated.
    let late = from_backend(Pkt::tcp("10.0.0.12", 8080, CLIENT, 40000, TCP_ACK), B2);
    h.check("late reply", &late.build(), &Expect::Pass);
}

/// Passive health's data-plane half: a backend's RST to a SYN it never answered is dropped
/// (`drop_syn_refused`), the connection forgotten so the retransmitted SYN is scheduled anew,
/// and the refusal counted for that backend; a RST after an answer is forwarded as before.
#[test]
fn a_refused_syn_is_dropped_forgotten_and_counted() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let (id1, id2) = (
        h.backend_id("web", "10.0.0.11"),
        h.backend_id("web", "10.0.0.12"),
    );
    assert_eq!(
        (h.dp.refused(id1).unwrap(), h.dp.refused(id2).unwrap()),
        (0, 0)
    );
    let syn = Pkt::tcp(CLIENT, 40100, VIP, 80, TCP_SYN);
    h.check(
        "SYN -> first backend",
        &syn.build(),
        &Expect::Frame(to_backend(&syn, "10.0.0.11", 8080, B1).build()),
    );
    assert_eq!(h.dp.nat_table_fill().unwrap(), (1, 1));
    let refusal = from_backend(
        Pkt::tcp("10.0.0.11", 8080, CLIENT, 40100, TCP_RST | TCP_ACK),
        B1,
    );
    h.check(
        "RST+ACK to the unanswered SYN: dropped",
        &refusal.build(),
        &Expect::Drop(verdict::DROP_SYN_REFUSED),
    );
    assert_eq!(h.dp.nat_table_fill().unwrap(), (0, 0), "both entries gone");
    assert_eq!(
        (h.dp.refused(id1).unwrap(), h.dp.refused(id2).unwrap()),
        (1, 0)
    );
    // The client's retransmission is a new connection: round robin's next backend.
    h.check(
        "retransmitted SYN: scheduled anew",
        &syn.build(),
        &Expect::Frame(to_backend(&syn, "10.0.0.12", 8080, B2).build()),
    );
    let synack = from_backend(
        Pkt::tcp("10.0.0.12", 8080, CLIENT, 40100, TCP_SYN | TCP_ACK),
        B2,
    );
    h.check("SYN-ACK", &synack.build(), &reply_expect(&synack, VIP, 80));
    let rst = from_backend(
        Pkt::tcp("10.0.0.12", 8080, CLIENT, 40100, TCP_RST | TCP_ACK),
        B2,
    );
    h.check(
        "RST after the answer: forwarded",
        &rst.build(),
        &reply_expect(&rst, VIP, 80),
    );
    assert_eq!(
        (h.dp.refused(id1).unwrap(), h.dp.refused(id2).unwrap()),
        (1, 0)
    );
    assert_eq!(
        h.dp.nat_table_fill().unwrap(),
        (1, 1),
        "closed, left to the sweeper"
    );
    // UDP has no RST: an unanswered UDP connection's reply is translated as before.
    let q = Pkt::udp(CLIENT, 33100, VIP, 53);
    h.run(&q.build());
    let a = from_backend(Pkt::udp("10.0.0.11", 5353, CLIENT, 33100), B1);
    h.check("UDP reply", &a.build(), &reply_expect(&a, VIP, 53));
}

#[test]
fn a_removed_backend_loses_its_connections() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let mut h = harness();
    let syn = Pkt::tcp(CLIENT, 40000, VIP, 80, TCP_SYN);
    h.check(
        "SYN",
        &syn.build(),
        &Expect::Frame(to_backend(&syn, "10.0.0.11", 8080, B1).build()),
    );
    h.set_state("web", "10.0.0.11", foobar_lb::desired::BackendState::Down);
    // Its next packet is scheduled anew, as a DSR flow's would be, and the pair replaced.
    let ack = Pkt::tcp(CLIENT, 40000, VIP, 80, TCP_ACK);
    h.check(
        "moved to the remaining backend",
        &ack.build(),
        &Expect::Frame(to_backend(&ack, "10.0.0.12", 8080, B2).build()),
    );
    assert_eq!(h.dp.nat_table_fill().unwrap(), (1, 1));
    let old = from_backend(Pkt::tcp("10.0.0.11", 8080, CLIENT, 40000, TCP_ACK), B1);
    h.check(
        "the old backend's reply: untracked",
        &old.build(),
        &Expect::Pass,
    );
}

/// An IPv4 address in 20.0.0.0/12 whose prefilter bit (one of 4096) is `addr`'s.
fn sharing_bit_with(addr: &str) -> String {
    let want = bit(addr);
    (1..1u32 << 20)
        .map(|i| format!("20.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))
        .find(|a| bit(a) == want)
        .expect("a million addresses cover every bit")
}

fn bit(addr: &str) -> u32 {
    let (a, f) = foobar_lb_common::encode_addr(addr.parse().unwrap());
    foobar_lb_common::vip_filter_bit(&a, f)
}

#[test]
fn a_client_sharing_a_backends_prefilter_bit_is_still_balanced() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    // The NAT reply prefilter says "maybe a backend" for this client: it must still be
    // balanced, as the backend-address check is only a prefilter.
    let client = sharing_bit_with("10.0.0.11");
    let syn = Pkt::tcp(&client, 40000, VIP, 80, TCP_SYN);
    h.check(
        "SYN from an address sharing 10.0.0.11's bit",
        &syn.build(),
        &Expect::Frame(to_backend(&syn, "10.0.0.11", 8080, B1).build()),
    );
}

#[test]
fn replies_reach_a_client_sharing_a_vips_prefilter_bit() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let client = sharing_bit_with(VIP);
    let syn = Pkt::tcp(&client, 40000, VIP, 80, TCP_SYN);
    h.check(
        "SYN",
        &syn.build(),
        &Expect::Frame(to_backend(&syn, "10.0.0.11", 8080, B1).build()),
    );
    let fin = from_backend(
        Pkt::tcp("10.0.0.11", 8080, &client, 40000, TCP_FIN | TCP_ACK),
        B1,
    );
    h.check("backend FIN", &fin.build(), &reply_expect(&fin, VIP, 80));
}

// ---- ICMP errors about NAT connections (nat_icmp.rs) ----------------------------------------

/// (name, sender, "c" from the client's side or "", (type, code), the field after the
/// checksum, cut).
type Case = (
    &'static str,
    &'static str,
    &'static str,
    (u8, u8),
    u32,
    Option<usize>,
);

const FRAG_NEEDED: (u8, u8) = (3, 4);
const PORT_UNREACHABLE: (u8, u8) = (3, 3);
const V6_TOO_BIG: (u8, u8) = (2, 0);
const V6_PORT_UNREACHABLE: (u8, u8) = (1, 4);
/// IPv4 header + 8 bytes of TCP: no TCP checksum in the quote.
const CUT_V4: usize = 28;
/// IPv6 header + 8 bytes.
const CUT_V6: usize = 48;

/// Opens client:cport -> vip:80 on its first backend and lets the backend answer.
fn open(h: &Harness, client: &str, cport: u16, vip: &str, backend: &str, bport: u16, mac: [u8; 6]) {
    let syn = Pkt::tcp(client, cport, vip, 80, TCP_SYN);
    h.check(
        "SYN",
        &syn.build(),
        &Expect::Frame(to_backend(&syn, backend, bport, mac).build()),
    );
    let synack = from_backend(
        Pkt::tcp(backend, bport, client, cport, TCP_SYN | TCP_ACK),
        mac,
    );
    h.check("SYN-ACK", &synack.build(), &reply_expect(&synack, vip, 80));
}

/// Errors from the backend's side (the backend itself, or a router between the balancer and
/// it) about a forwarded packet reach the client from the VIP, quoting what the client sent;
/// errors from the client's side (its router, or the client) about a reply reach the backend,
/// quoting what the backend sent. Whole quotes and 8-byte ones, IPv4 and IPv6.
#[test]
fn icmp_errors_about_a_nat_connection_are_translated_both_ways() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    const ROUTER_B: &str = "10.0.0.254";
    const ROUTER_C: &str = "203.0.113.1";
    const ROUTER_B6: &str = "fd00::fe";
    const ROUTER_C6: &str = "2001:db8:ffff::1";
    const CLIENT6: &str = "2001:db8::7";
    open(&h, CLIENT, 40300, VIP, "10.0.0.11", 8080, B1);
    open(&h, CLIENT6, 40300, "fd00::100", "fd00::11", 8080, B1);
    let before = h.service_counters("web").packets;
    let cases: [Case; 8] = [
        (
            "v4 router: fragmentation needed",
            ROUTER_B,
            "",
            FRAG_NEEDED,
            1400,
            None,
        ),
        (
            "v4 router: fragmentation needed, 8-byte quote",
            ROUTER_B,
            "",
            FRAG_NEEDED,
            1400,
            Some(CUT_V4),
        ),
        (
            "v4 backend: port unreachable",
            "10.0.0.11",
            "",
            PORT_UNREACHABLE,
            0,
            None,
        ),
        (
            "v4 client's router: fragmentation needed",
            ROUTER_C,
            "c",
            FRAG_NEEDED,
            1280,
            None,
        ),
        (
            "v4 client: port unreachable, 8-byte quote",
            CLIENT,
            "c",
            PORT_UNREACHABLE,
            0,
            Some(CUT_V4),
        ),
        (
            "v6 router: packet too big",
            ROUTER_B6,
            "",
            V6_TOO_BIG,
            1280,
            None,
        ),
        (
            "v6 router: packet too big, 8-byte quote",
            ROUTER_B6,
            "",
            V6_TOO_BIG,
            1280,
            Some(CUT_V6),
        ),
        (
            "v6 client's router: packet too big",
            ROUTER_C6,
            "c",
            V6_TOO_BIG,
            1280,
            Some(CUT_V6),
        ),
    ];
    for (name, from, side, kind, rest, cut) in cases {
        let v6 = from.contains(':');
        let (client, vip, backend) = if v6 {
            (CLIENT6, "fd00::100", "fd00::11")
        } else {
            (CLIENT, VIP, "10.0.0.11")
        };
        if side.is_empty() {
            // The backend's side: the error quotes the forwarded packet, goes to the client.
            let quoted = to_backend(&Pkt::tcp_data(client, 40300, vip, 80), backend, 8080, B1);
            let mut err = Pkt::icmp_error_quoting(from, client, kind, rest, &quoted, cut);
            err.eth_src = B1;
            let mut want = Pkt::icmp_error_quoting(
                vip,
                client,
                kind,
                rest,
                &Pkt::tcp_data(client, 40300, vip, 80),
                cut,
            );
            want.eth_dst = CLIENT_MAC;
            want.eth_src = LB_MAC;
            h.check(
                name,
                &err.build(),
                &Expect::FrameAs(want.build(), verdict::TX_NAT_REPLY),
            );
        } else {
            // The client's side: the error quotes the reply the client got, goes to the
            // backend quoting what it sent.
            let err = Pkt::icmp_error_quoting(
                from,
                vip,
                kind,
                rest,
                &Pkt::tcp_data(vip, 80, client, 40300),
                cut,
            );
            let mut want = Pkt::icmp_error_quoting(
                from,
                backend,
                kind,
                rest,
                &Pkt::tcp_data(backend, 8080, client, 40300),
                cut,
            );
            want.eth_dst = B1;
            want.eth_src = LB_MAC;
            h.check(name, &err.build(), &Expect::Frame(want.build()));
        }
    }
    // The errors towards the backend count as the service's packets, as forwarded ones do.
    assert_eq!(h.service_counters("web").packets, before + 2);
    // Untracked: the client's port is another (and the backend's error about it) -> host.
    let other = Pkt::icmp_error_quoting(
        ROUTER_C,
        VIP,
        FRAG_NEEDED,
        1280,
        &Pkt::tcp_data(VIP, 80, CLIENT, 40999),
        None,
    );
    h.check("client side, no connection", &other.build(), &Expect::Pass);
    let quoted = to_backend(
        &Pkt::tcp_data(CLIENT, 40999, VIP, 80),
        "10.0.0.11",
        8080,
        B1,
    );
    let other = Pkt::icmp_error_quoting(ROUTER_B, CLIENT, FRAG_NEEDED, 1400, &quoted, None);
    h.check("backend side, no connection", &other.build(), &Expect::Pass);
}

/// UDP quotes: the UDP checksum in the quote is updated, and a zero one (none computed) stays
/// zero, as for forwarded datagrams.
#[test]
fn icmp_errors_quoting_udp_keep_a_zero_checksum_zero() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    for no_checksum in [false, true] {
        let cport = 33200 + no_checksum as u16;
        let mut q = Pkt::udp(CLIENT, cport, VIP, 53);
        q.udp_no_checksum = no_checksum;
        h.check(
            "query",
            &q.build(),
            &Expect::Frame(to_backend(&q, "10.0.0.11", 5353, B1).build()),
        );
        let mut a = from_backend(Pkt::udp("10.0.0.11", 5353, CLIENT, cport), B1);
        a.udp_no_checksum = no_checksum;
        h.check("answer", &a.build(), &reply_expect(&a, VIP, 53));
        // The client has closed its port: its port unreachable reaches the backend.
        let mut reply = Pkt::udp(VIP, 53, CLIENT, cport);
        reply.udp_no_checksum = no_checksum;
        let err = Pkt::icmp_error_quoting(CLIENT, VIP, PORT_UNREACHABLE, 0, &reply, None);
        let mut sent = Pkt::udp("10.0.0.11", 5353, CLIENT, cport);
        sent.udp_no_checksum = no_checksum;
        let mut want =
            Pkt::icmp_error_quoting(CLIENT, "10.0.0.11", PORT_UNREACHABLE, 0, &sent, None);
        want.eth_dst = B1;
        want.eth_src = LB_MAC;
        h.check(
            "port unreachable to the backend",
            &err.build(),
            &Expect::Frame(want.build()),
        );
    }
}

/// Passive health: a backend's ICMP destination unreachable to a SYN it never answered is a
/// refusal, as its RST would be (dropped, connection forgotten, counted); "fragmentation
/// needed" is none (translated), nor is an unreachable after the answer.
#[test]
fn an_icmp_unreachable_to_an_unanswered_syn_is_a_refusal() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let h = harness();
    let (id1, id2) = (
        h.backend_id("web", "10.0.0.11"),
        h.backend_id("web", "10.0.0.12"),
    );
    let syn = Pkt::tcp(CLIENT, 40400, VIP, 80, TCP_SYN);
    let sent = to_backend(&syn, "10.0.0.11", 8080, B1);
    h.check(
        "SYN -> first backend",
        &syn.build(),
        &Expect::Frame(sent.build()),
    );
    // A router's "fragmentation needed" is no refusal: translated to the client.
    let mut frag =
        Pkt::icmp_error_quoting("10.0.0.254", CLIENT, FRAG_NEEDED, 1400, &sent, Some(CUT_V4));
    frag.eth_src = B1;
    let mut want = Pkt::icmp_error_quoting(VIP, CLIENT, FRAG_NEEDED, 1400, &syn, Some(CUT_V4));
    want.eth_dst = CLIENT_MAC;
    want.eth_src = LB_MAC;
    h.check(
        "fragmentation needed to the SYN: translated",
        &frag.build(),
        &Expect::FrameAs(want.build(), verdict::TX_NAT_REPLY),
    );
    let mut refusal = Pkt::icmp_error_quoting(
        "10.0.0.11",
        CLIENT,
        PORT_UNREACHABLE,
        0,
        &sent,
        Some(CUT_V4),
    );
    refusal.eth_src = B1;
    h.check(
        "port unreachable to the unanswered SYN: dropped",
        &refusal.build(),
        &Expect::Drop(verdict::DROP_SYN_REFUSED),
    );
    assert_eq!(h.dp.nat_table_fill().unwrap(), (0, 0), "both entries gone");
    assert_eq!(
        (h.dp.refused(id1).unwrap(), h.dp.refused(id2).unwrap()),
        (1, 0)
    );
    h.check(
        "retransmitted SYN: scheduled anew",
        &syn.build(),
        &Expect::Frame(to_backend(&syn, "10.0.0.12", 8080, B2).build()),
    );
    // IPv6: destination unreachable (type 1) from the backend, likewise.
    let syn6 = Pkt::tcp("2001:db8::7", 40400, "fd00::100", 80, TCP_SYN);
    let sent6 = to_backend(&syn6, "fd00::11", 8080, B1);
    h.check("SYN6", &syn6.build(), &Expect::Frame(sent6.build()));
    let mut refusal6 = Pkt::icmp_error_quoting(
        "fd00::11",
        "2001:db8::7",
        V6_PORT_UNREACHABLE,
        0,
        &sent6,
        None,
    );
    refusal6.eth_src = B1;
    h.check(
        "ICMPv6 unreachable to the unanswered SYN: dropped",
        &refusal6.build(),
        &Expect::Drop(verdict::DROP_SYN_REFUSED),
    );
    let id6 = h.backend_id("web6", "fd00::11");
    assert_eq!(h.dp.refused(id6).unwrap(), 1);
    assert_eq!(
        h.dp.nat_table_fill().unwrap(),
        (1, 1),
        "only web2's connection"
    );
}

/// `p` with its last two payload bytes chosen so that its full TCP/UDP checksum equals the
/// pseudo-header's sum: a full checksum that looks partial (once in 65,536 by chance).
fn full_checksum_looking_partial(mut p: Pkt) -> Pkt {
    assert!(p.payload.len() >= 2 && p.payload.len().is_multiple_of(2));
    let n = p.payload.len();
    for w in 0..=u16::MAX {
        p.payload[n - 2..].copy_from_slice(&w.to_be_bytes());
        if p.build() == p.clone().partial().build() {
            return p;
        }
    }
    unreachable!("some word makes the checksum equal the pseudo-header's sum");
}

/// A sender with checksum offload on (veth, tap: the default) hands on frames whose TCP/UDP
/// checksum field holds only the pseudo-header's sum (CHECKSUM_PARTIAL; README "Checksum
/// offload"). In native mode the frame reaches its receiver with no checksum state and is
/// verified there: the balancer sends it with the full checksum. In generic mode its partial
/// state travels on with it: the balancer sends the new pseudo-header's sum, for whoever
/// transmits it last to finish. Both directions, TCP and UDP, IPv4 and IPv6, payloads of one
/// and several summed chunks, odd lengths. A full checksum equal to the pseudo-header's sum
/// stays a correct full checksum in both modes.
#[test]
fn partial_checksums_leave_as_their_receivers_need_them() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let mut h = harness();
    for (m, generic) in [(0u16, false), (1, true)] {
        h.dp.set_attach_mode(1, generic).unwrap();
        let mode = if generic { "generic" } else { "native" };
        // What the receiver gets: partial stays partial in generic mode only.
        let sent = |p: Pkt| if generic { p.partial() } else { p };
        for (i, len) in [0usize, 1, 1400, 1401].into_iter().enumerate() {
            let cport = 42000 + m * 100 + i as u16;
            let syn = Pkt::tcp(CLIENT, cport, "10.0.0.101", 80, TCP_SYN);
            h.check(
                &format!("{mode}: SYN, partial"),
                &syn.clone().partial().build(),
                &Expect::Frame(sent(to_backend(&syn, "10.0.0.11", 8080, B1)).build()),
            );
            let mut data = from_backend(Pkt::tcp("10.0.0.11", 8080, CLIENT, cport, TCP_ACK), B1);
            data.payload = vec![0x5a; len];
            h.check(
                &format!("{mode}: {len}-byte reply, partial"),
                &data.clone().partial().build(),
                &Expect::FrameAs(
                    sent(to_client(&data, "10.0.0.101", 80)).build(),
                    verdict::TX_NAT_REPLY,
                ),
            );
            let mut req = Pkt::tcp(CLIENT, cport, "10.0.0.101", 80, TCP_ACK);
            req.payload = vec![0xc3; len];
            h.check(
                &format!("{mode}: {len}-byte request, partial"),
                &req.clone().partial().build(),
                &Expect::Frame(sent(to_backend(&req, "10.0.0.11", 8080, B1)).build()),
            );
        }
        for (client, vip, backend) in [
            (CLIENT, VIP, "10.0.0.11"),
            ("2001:db8::7", "fd00::100", "fd00::11"),
        ] {
            let cport = 43000 + m;
            let q = Pkt::udp(client, cport, vip, 53);
            h.check(
                &format!("{mode}: UDP query to {vip}, partial"),
                &q.clone().partial().build(),
                &Expect::Frame(sent(to_backend(&q, backend, 5353, B1)).build()),
            );
            let mut a = from_backend(Pkt::udp(backend, 5353, client, cport), B1);
            a.payload = vec![0x77; 777];
            h.check(
                &format!("{mode}: UDP answer from {backend}, partial"),
                &a.clone().partial().build(),
                &Expect::FrameAs(sent(to_client(&a, vip, 53)).build(), verdict::TX_NAT_REPLY),
            );
        }
        // A full checksum that looks partial is a full one, and stays correct.
        let cport = 44000 + m;
        let syn = Pkt::tcp(CLIENT, cport, "10.0.0.101", 80, TCP_SYN);
        h.check(
            &format!("{mode}: SYN"),
            &syn.build(),
            &Expect::Frame(to_backend(&syn, "10.0.0.11", 8080, B1).build()),
        );
        let mut req = Pkt::tcp(CLIENT, cport, "10.0.0.101", 80, TCP_ACK);
        req.payload = vec![0x11; 100];
        let req = full_checksum_looking_partial(req);
        h.check(
            &format!("{mode}: a full checksum equal to the pseudo-header's sum"),
            &req.build(),
            &Expect::Frame(to_backend(&req, "10.0.0.11", 8080, B1).build()),
        );
        let mut data = from_backend(Pkt::tcp("10.0.0.11", 8080, CLIENT, cport, TCP_ACK), B1);
        data.payload = vec![0x22; 600];
        let data = full_checksum_looking_partial(data);
        h.check(
            &format!("{mode}: a reply's full checksum equal to the pseudo-header's sum"),
            &data.build(),
            &reply_expect(&data, "10.0.0.101", 80),
        );
    }
}
