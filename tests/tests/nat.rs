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
