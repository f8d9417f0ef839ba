//! Full NAT through BPF_PROG_TEST_RUN: whole output frames both ways (built from scratch with
//! full checksums, so the program's incremental updates are checked against an independent
//! computation), the source port allocation and its exhaustion, strays to a SNAT address, and
//! the FIB lookup's failures.
//!
//! The FIB lookup asks the kernel, so each test runs in a network namespace of its own with
//! one veth (`lb0`, the balancer's interface, MAC `LB_MAC`) on 10.0.0.0/24 and fd00::/64,
//! permanent neighbour entries for the backends that have one, and forwarding on (the
//! lookup requires it on the receiving interface). Test runs report `lb0` as their ingress.

use foobar_lb_common::verdict;
use foobar_lb_tests::{
    harness::{Expect, Harness, XDP_TX},
    netns::{self, in_netns, unique_prefix, Netns},
    packet::{mac_str, Pkt, CLIENT_MAC, L4, LB_MAC, TCP_ACK, TCP_SYN},
};

const CONFIG: &str = r#"
interfaces = ["lo"]

[[service]]
name = "web"
vip = "10.0.0.100"
port = 80
forwarding = "fullnat"
snat = ["10.0.0.250", "fd00::250"]

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
forwarding = "fullnat"
snat = ["10.0.0.250"]

[[service.backend]]
address = "10.0.0.11"
port = 5353

[[service]]
name = "web6"
vip = "fd00::100"
port = 80
forwarding = "fullnat"
snat = ["fd00::250"]

[[service.backend]]
address = "fd00::11"
port = 8080

[[service]]
name = "dns6"
vip = "fd00::100"
port = 53
protocol = "udp"
forwarding = "fullnat"
snat = ["fd00::250"]

[[service.backend]]
address = "fd00::11"
port = 5353

[[service]]
name = "tiny"
vip = "10.0.0.101"
port = 80
forwarding = "fullnat"
snat = ["10.0.0.251"]
snat_ports = "5000-5001"

[[service.backend]]
address = "10.0.0.11"
port = 8080

[[service]]
name = "noneigh"
vip = "10.0.0.102"
port = 80
forwarding = "fullnat"
snat = ["10.0.0.250"]

[[service.backend]]
address = "10.0.0.13"

[[service]]
name = "noroute"
vip = "10.0.0.103"
port = 80
forwarding = "fullnat"
snat = ["10.0.0.250"]

[[service.backend]]
address = "192.0.2.77"
"#;

const B1: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const B2: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
const B3: [u8; 6] = [0x02, 0, 0, 0, 0, 0x13];
/// What the controller resolved (it needs a MAC to provision a backend); the FIB lookup,
/// not these, gives full NAT its next hop.
const MACS: &[(&str, [u8; 6])] = &[
    ("10.0.0.11", B1),
    ("10.0.0.12", B2),
    ("10.0.0.13", B3),
    ("192.0.2.77", B3),
    ("fd00::11", B1),
];

const CLIENT: &str = "198.51.100.7";
const CLIENT6: &str = "2001:db8::7";
const VIP: &str = "10.0.0.100";
const VIP6: &str = "fd00::100";
const SNAT: &str = "10.0.0.250";
const SNAT6: &str = "fd00::250";

/// Runs `f` with a harness in a namespace of its own (see the module doc).
fn with_harness(tag: &str, f: impl FnOnce(Harness) + Send) {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let ns = Netns::new(&format!("{}ns", unique_prefix(tag))).expect("namespace");
    let lb_mac = mac_str(&LB_MAC);
    let ip = |args: &[&str]| ns.ip(args).expect("ip");
    ip(&[
        "link", "add", "lb0", "address", &lb_mac, "type", "veth", "peer", "name", "lb0p",
    ]);
    ip(&["addr", "add", "10.0.0.1/24", "dev", "lb0"]);
    ip(&["addr", "add", "fd00::1/64", "dev", "lb0", "nodad"]);
    ip(&["link", "set", "lb0p", "up"]);
    ip(&["link", "set", "lb0", "up"]);
    for (addr, mac) in [
        ("10.0.0.11", "02:00:00:00:00:11"),
        ("10.0.0.12", "02:00:00:00:00:12"),
        ("fd00::11", "02:00:00:00:00:11"),
    ] {
        ip(&[
            "neigh",
            "replace",
            addr,
            "lladdr",
            mac,
            "nud",
            "permanent",
            "dev",
            "lb0",
        ]);
    }
    ns.sysctl("net.ipv4.conf.all.forwarding", "1").unwrap();
    ns.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    in_netns(&ns.name, || {
        let ifindex = netns::ifindex("lb0");
        assert!(ifindex > 1, "lb0's ifindex");
        let mut h = Harness::new(CONFIG, MACS);
        h.set_ingress(ifindex);
        f(h);
        Ok(())
    })
    .unwrap();
}

fn set_ports(p: &mut Pkt, s: u16, d: u16) {
    match &mut p.l4 {
        L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport } => {
            *sport = s;
            *dport = d;
        }
        _ => unreachable!(),
    }
}

/// What the balancer sends the backend for client packet `p`: source -> SNAT address and
/// `sport`, destination -> backend, MACs -> the backend's (from the neighbour table) and
/// lb0's.
fn to_backend(p: &Pkt, snat: &str, sport: u16, backend: &str, bport: u16, mac: [u8; 6]) -> Pkt {
    let mut o = p.clone();
    o.src = snat.parse().unwrap();
    o.dst = backend.parse().unwrap();
    set_ports(&mut o, sport, bport);
    o.eth_dst = mac;
    o.eth_src = LB_MAC;
    o
}

/// Forwards `p` to a backend, checking the whole frame; returns the allocated source port.
#[allow(clippy::too_many_arguments)]
fn forward(
    h: &Harness,
    name: &str,
    p: &Pkt,
    snat: &str,
    backend: &str,
    bport: u16,
    mac: [u8; 6],
    ports: (u16, u16),
) -> u16 {
    let mut sport = 0;
    h.check_by(name, &p.build(), XDP_TX, verdict::TX, |out| {
        sport = foobar_lb_tests::packet::sport_of(out);
        assert!(
            (ports.0..=ports.1).contains(&sport),
            "{name}: source port {sport} outside {ports:?}"
        );
        to_backend(p, snat, sport, backend, bport, mac).build()
    });
    sport
}

/// A backend's reply as it reaches the balancer (its packets to the SNAT address).
fn from_backend(
    backend: &str,
    bport: u16,
    snat: &str,
    sport: u16,
    mac: [u8; 6],
    tcp: Option<u8>,
) -> Pkt {
    let mut p = match tcp {
        Some(flags) => Pkt::tcp(backend, bport, snat, sport, flags),
        None => Pkt::udp(backend, bport, snat, sport),
    };
    p.eth_src = mac;
    p.eth_dst = LB_MAC;
    p
}

/// What the client gets for reply `p`: from the VIP and port, to the client and its port,
/// to the MAC its first frame came from.
fn to_client(p: &Pkt, vip: &str, vport: u16, client: &str, cport: u16) -> Expect {
    Expect::FrameAs(
        client_bound(p, vip, vport, client, cport).build(),
        verdict::TX_NAT_REPLY,
    )
}

/// [`to_client`]'s frame.
fn client_bound(p: &Pkt, vip: &str, vport: u16, client: &str, cport: u16) -> Pkt {
    let mut o = p.clone();
    o.src = vip.parse().unwrap();
    o.dst = client.parse().unwrap();
    set_ports(&mut o, vport, cport);
    o.eth_dst = CLIENT_MAC;
    o.eth_src = LB_MAC;
    o
}

const ALL: (u16, u16) = (1024, 65535);

#[test]
fn fullnat_tcp_v4_both_directions_round_robin() {
    with_harness("fa", |h| {
        let syn = Pkt::tcp(CLIENT, 40000, VIP, 80, TCP_SYN);
        let p1 = forward(&h, "SYN -> web1", &syn, SNAT, "10.0.0.11", 8080, B1, ALL);
        let syn2 = Pkt::tcp(CLIENT, 40001, VIP, 80, TCP_SYN);
        let p2 = forward(&h, "SYN -> web2", &syn2, SNAT, "10.0.0.12", 8080, B2, ALL);
        let synack = from_backend("10.0.0.11", 8080, SNAT, p1, B1, Some(TCP_SYN | TCP_ACK));
        h.check(
            "SYN-ACK back to the client from VIP:80",
            &synack.build(),
            &to_client(&synack, VIP, 80, CLIENT, 40000),
        );
        for i in 0..3 {
            let mut ack = Pkt::tcp(CLIENT, 40000, VIP, 80, TCP_ACK);
            ack.payload = format!("request {i}").into_bytes();
            h.check(
                "established: the same source port",
                &ack.build(),
                &Expect::Frame(to_backend(&ack, SNAT, p1, "10.0.0.11", 8080, B1).build()),
            );
            let mut data = from_backend("10.0.0.11", 8080, SNAT, p1, B1, Some(TCP_ACK));
            data.payload = vec![i as u8; 1000 + i];
            h.check(
                "established: backend -> client",
                &data.build(),
                &to_client(&data, VIP, 80, CLIENT, 40000),
            );
        }
        let reply2 = from_backend("10.0.0.12", 8080, SNAT, p2, B2, Some(TCP_SYN | TCP_ACK));
        h.check(
            "second connection's reply",
            &reply2.build(),
            &to_client(&reply2, VIP, 80, CLIENT, 40001),
        );
        // Tracked in pairs, listed with the SNAT endpoint the backend sees.
        assert_eq!(h.dp.nat_table_fill().unwrap(), (2, 2));
        let mut conns = h.dp.nat_connections().unwrap();
        conns.sort_by_key(|c| c.client.1);
        assert_eq!(conns[0].snat, Some((SNAT.parse().unwrap(), p1)));
        assert_eq!(conns[0].backend, ("10.0.0.11".parse().unwrap(), 8080));
        assert_eq!(conns[1].snat, Some((SNAT.parse().unwrap(), p2)));
        assert_eq!(conns[0].state, foobar_lb::dataplane::NatState::Established);
        let svc = h.service_counters("web");
        assert_eq!((svc.packets, svc.new_flows), (5, 2));
    });
}

/// A refused SYN under full NAT: the RST (to the SNAT address and port) is dropped
/// (`drop_syn_refused`), both entries go, the backend's refusal counter moves, and the
/// retransmitted SYN is scheduled anew (next backend).
#[test]
fn fullnat_a_refused_syn_is_dropped_forgotten_and_counted() {
    with_harness("fr", |h| {
        let id1 = h.backend_id("web", "10.0.0.11");
        let syn = Pkt::tcp(CLIENT, 40200, VIP, 80, TCP_SYN);
        let p1 = forward(&h, "SYN -> web1", &syn, SNAT, "10.0.0.11", 8080, B1, ALL);
        let refusal = from_backend("10.0.0.11", 8080, SNAT, p1, B1, Some(0x14));
        h.check(
            "RST+ACK to the unanswered SYN: dropped",
            &refusal.build(),
            &Expect::Drop(verdict::DROP_SYN_REFUSED),
        );
        assert_eq!(h.dp.nat_table_fill().unwrap(), (0, 0), "both entries gone");
        assert_eq!(h.dp.refused(id1).unwrap(), 1);
        let p2 = forward(
            &h,
            "retransmitted SYN -> web2",
            &syn,
            SNAT,
            "10.0.0.12",
            8080,
            B2,
            ALL,
        );
        let synack = from_backend("10.0.0.12", 8080, SNAT, p2, B2, Some(TCP_SYN | TCP_ACK));
        h.check(
            "SYN-ACK",
            &synack.build(),
            &to_client(&synack, VIP, 80, CLIENT, 40200),
        );
        let rst = from_backend("10.0.0.12", 8080, SNAT, p2, B2, Some(0x14));
        h.check(
            "RST after the answer: forwarded",
            &rst.build(),
            &to_client(&rst, VIP, 80, CLIENT, 40200),
        );
        assert_eq!(h.dp.refused(h.backend_id("web", "10.0.0.12")).unwrap(), 0);
    });
}

#[test]
fn fullnat_tcp_v6_both_directions() {
    with_harness("fb", |h| {
        let syn = Pkt::tcp(CLIENT6, 50000, VIP6, 80, TCP_SYN);
        let p = forward(&h, "IPv6 SYN", &syn, SNAT6, "fd00::11", 8080, B1, ALL);
        let reply = from_backend("fd00::11", 8080, SNAT6, p, B1, Some(TCP_SYN | TCP_ACK));
        h.check(
            "IPv6 reply",
            &reply.build(),
            &to_client(&reply, VIP6, 80, CLIENT6, 50000),
        );
        let ack = Pkt::tcp(CLIENT6, 50000, VIP6, 80, TCP_ACK);
        h.check(
            "IPv6 established",
            &ack.build(),
            &Expect::Frame(to_backend(&ack, SNAT6, p, "fd00::11", 8080, B1).build()),
        );
    });
}

#[test]
fn fullnat_udp_with_and_without_checksum_both_families() {
    with_harness("fc", |h| {
        let q = Pkt::udp(CLIENT, 33000, VIP, 53);
        let p = forward(&h, "UDP query", &q, SNAT, "10.0.0.11", 5353, B1, ALL);
        let a = from_backend("10.0.0.11", 5353, SNAT, p, B1, None);
        h.check(
            "UDP answer",
            &a.build(),
            &to_client(&a, VIP, 53, CLIENT, 33000),
        );
        // No checksum (zero) over IPv4 stays none, both ways.
        let mut q0 = Pkt::udp(CLIENT, 33001, VIP, 53);
        q0.udp_no_checksum = true;
        let p0 = forward(
            &h,
            "UDP without checksum",
            &q0,
            SNAT,
            "10.0.0.11",
            5353,
            B1,
            ALL,
        );
        let mut a0 = from_backend("10.0.0.11", 5353, SNAT, p0, B1, None);
        a0.udp_no_checksum = true;
        let o = h.check(
            "UDP answer without checksum",
            &a0.build(),
            &to_client(&a0, VIP, 53, CLIENT, 33001),
        );
        assert_eq!(&o.out[14 + 20 + 6..14 + 20 + 8], &[0, 0], "stays zero");
        let q6 = Pkt::udp(CLIENT6, 33002, VIP6, 53);
        let p6 = forward(&h, "IPv6 UDP query", &q6, SNAT6, "fd00::11", 5353, B1, ALL);
        let a6 = from_backend("fd00::11", 5353, SNAT6, p6, B1, None);
        h.check(
            "IPv6 UDP answer",
            &a6.build(),
            &to_client(&a6, VIP6, 53, CLIENT6, 33002),
        );
        assert_eq!(h.dp.nat_table_fill().unwrap(), (3, 3));
    });
}

/// The client's own port is the first candidate, as Linux's masquerade keeps it: a backend
/// then sees a port the client reuses come with the same client's TCP timestamps behind it.
/// (A port first picked for another client would carry another clock's, and a backend still
/// holding that 4-tuple in TIME_WAIT answers the SYN with an ACK (PAWS): the client resets
/// and retries a second later; measured with wrk before this: ~900 such retries in 5 s.)
/// A second client on the same port, or a port outside the range, gets one from the hash.
#[test]
fn fullnat_keeps_the_clients_port_when_it_is_free() {
    with_harness("fk", |h| {
        let a = Pkt::tcp(CLIENT6, 41000, VIP6, 80, TCP_SYN);
        let pa = forward(&h, "first client", &a, SNAT6, "fd00::11", 8080, B1, ALL);
        assert_eq!(pa, 41000, "the client's port, free, is kept");
        let b = Pkt::tcp("2001:db8::8", 41000, VIP6, 80, TCP_SYN);
        let pb = forward(&h, "second client", &b, SNAT6, "fd00::11", 8080, B1, ALL);
        assert_ne!(pb, 41000, "taken by the first client: another port");
        // Below the range (1024-65535): a port from the hash.
        let c = Pkt::tcp(CLIENT6, 999, VIP6, 80, TCP_SYN);
        let pc = forward(
            &h,
            "port below the range",
            &c,
            SNAT6,
            "fd00::11",
            8080,
            B1,
            ALL,
        );
        assert!(pc >= 1024, "{pc}");
    });
}

#[test]
fn fullnat_source_ports_run_out_counted_and_nothing_is_left_behind() {
    with_harness("fd", |h| {
        // "tiny": one SNAT address, ports 5000-5001, one backend: two connections fit.
        let a = Pkt::tcp(CLIENT, 41000, "10.0.0.101", 80, TCP_SYN);
        let pa = forward(
            &h,
            "first",
            &a,
            "10.0.0.251",
            "10.0.0.11",
            8080,
            B1,
            (5000, 5001),
        );
        let b = Pkt::tcp(CLIENT, 41001, "10.0.0.101", 80, TCP_SYN);
        let pb = forward(
            &h,
            "second",
            &b,
            "10.0.0.251",
            "10.0.0.11",
            8080,
            B1,
            (5000, 5001),
        );
        assert_ne!(pa, pb, "two connections, two ports");
        let c = Pkt::tcp(CLIENT, 41002, "10.0.0.101", 80, TCP_SYN).build();
        h.check(
            "third: no free port",
            &c,
            &Expect::Drop(verdict::DROP_SNAT_EXHAUSTED),
        );
        assert_eq!(h.dp.nat_table_fill().unwrap(), (2, 2));
        // The same client port to the other VIP's service is another reply 5-tuple (another
        // SNAT address): no collision.
        let other = Pkt::tcp(CLIENT, 41000, VIP, 80, TCP_SYN);
        forward(&h, "web beside", &other, SNAT, "10.0.0.11", 8080, B1, ALL);
    });
}

#[test]
fn fullnat_strays_to_a_snat_address_are_dropped_inside_the_range_only() {
    with_harness("fe", |h| {
        // Nothing tracked: TCP and UDP inside the range are dropped, whoever sends them.
        let stray = Pkt::tcp("10.0.0.11", 8080, SNAT, 40000, TCP_ACK).build();
        h.check(
            "TCP to SNAT:40000",
            &stray,
            &Expect::Drop(verdict::DROP_SNAT_STRAY),
        );
        let stray_udp = Pkt::udp(CLIENT, 53, SNAT, 1024).build();
        h.check(
            "UDP to SNAT:1024",
            &stray_udp,
            &Expect::Drop(verdict::DROP_SNAT_STRAY),
        );
        let stray6 = Pkt::tcp(CLIENT6, 9999, SNAT6, 65535, TCP_SYN).build();
        h.check(
            "IPv6 TCP to SNAT:65535",
            &stray6,
            &Expect::Drop(verdict::DROP_SNAT_STRAY),
        );
        // Outside the range: the host's (SSH to the address, say).
        let ssh = Pkt::tcp(CLIENT, 50000, SNAT, 22, TCP_SYN).build();
        h.check("TCP to SNAT:22", &ssh, &Expect::Pass);
        let tiny = Pkt::tcp(CLIENT, 50000, "10.0.0.251", 5002, TCP_SYN).build();
        h.check("outside 5000-5001", &tiny, &Expect::Pass);
        let tiny_in = Pkt::tcp(CLIENT, 50000, "10.0.0.251", 5001, TCP_SYN).build();
        h.check(
            "inside 5000-5001",
            &tiny_in,
            &Expect::Drop(verdict::DROP_SNAT_STRAY),
        );
        // Another address of the host: untouched.
        let host = Pkt::tcp(CLIENT, 50000, "10.0.0.1", 40000, TCP_SYN).build();
        h.check("the host's own address", &host, &Expect::Pass);
    });
}

#[test]
fn fullnat_next_hop_failures_are_counted_and_leave_no_entries() {
    with_harness("ff", |h| {
        let syn = Pkt::tcp(CLIENT, 42000, "10.0.0.102", 80, TCP_SYN).build();
        h.check(
            "backend without a neighbour entry",
            &syn,
            &Expect::Drop(verdict::DROP_FIB_NO_NEIGH),
        );
        let syn = Pkt::tcp(CLIENT, 42001, "10.0.0.103", 80, TCP_SYN).build();
        h.check(
            "backend with no route",
            &syn,
            &Expect::Drop(verdict::DROP_FIB_NO_ROUTE),
        );
        assert_eq!(h.dp.nat_table_fill().unwrap(), (0, 0));
    });
}

#[test]
fn fullnat_hairpin_a_backend_reaches_its_own_service() {
    with_harness("fg", |h| {
        // web1 (10.0.0.11) connects to the VIP; round robin gives it to web1 itself: the
        // packet goes back to web1 from the SNAT address, so web1's reply comes to us.
        let mut syn = Pkt::tcp("10.0.0.11", 45000, VIP, 80, TCP_SYN);
        syn.eth_src = B1;
        let p = forward(&h, "hairpin SYN", &syn, SNAT, "10.0.0.11", 8080, B1, ALL);
        let reply = from_backend("10.0.0.11", 8080, SNAT, p, B1, Some(TCP_SYN | TCP_ACK));
        let mut want = reply.clone();
        want.src = VIP.parse().unwrap();
        want.dst = "10.0.0.11".parse().unwrap();
        set_ports(&mut want, 80, 45000);
        want.eth_dst = B1;
        want.eth_src = LB_MAC;
        h.check(
            "its reply, to itself from the VIP",
            &reply.build(),
            &Expect::FrameAs(want.build(), verdict::TX_NAT_REPLY),
        );
        // And the next connection goes to web2.
        let mut syn2 = Pkt::tcp("10.0.0.11", 45001, VIP, 80, TCP_SYN);
        syn2.eth_src = B1;
        forward(&h, "hairpin SYN 2", &syn2, SNAT, "10.0.0.12", 8080, B2, ALL);
    });
}

// ---- ICMP errors about full-NAT connections (nat_icmp.rs) -----------------------------------

/// (name, from the client's side, sender, (type, code), the field after the checksum, cut).
type Case = (
    &'static str,
    bool,
    &'static str,
    (u8, u8),
    u32,
    Option<usize>,
);

/// Errors from the backend's side (a router on its path, or the backend) to the SNAT address
/// reach the client from the VIP, quoting what the client sent; errors from the client's side
/// to the VIP reach the backend from the SNAT address, quoting what the backend sent. Whole
/// and 8-byte quotes, IPv4 and IPv6; the refusal and strays as for TCP/UDP.
#[test]
fn fullnat_icmp_errors_are_translated_both_ways() {
    with_harness("fi", |h| {
        let mut ports = Vec::new();
        for (client, vip, backend, snat) in [
            (CLIENT, VIP, "10.0.0.11", SNAT),
            (CLIENT6, VIP6, "fd00::11", SNAT6),
        ] {
            let syn = Pkt::tcp(client, 40300, vip, 80, TCP_SYN);
            let p = forward(&h, "SYN", &syn, snat, backend, 8080, B1, ALL);
            let synack = from_backend(backend, 8080, snat, p, B1, Some(TCP_SYN | TCP_ACK));
            h.check(
                "SYN-ACK",
                &synack.build(),
                &to_client(&synack, vip, 80, client, 40300),
            );
            ports.push(p);
        }
        let cases: [Case; 8] = [
            (
                "v4 backend's router: fragmentation needed",
                false,
                "10.0.0.254",
                (3, 4),
                1400,
                None,
            ),
            (
                "v4 backend's router: 8-byte quote",
                false,
                "10.0.0.254",
                (3, 4),
                1400,
                Some(28),
            ),
            (
                "v4 backend: port unreachable",
                false,
                "10.0.0.11",
                (3, 3),
                0,
                Some(28),
            ),
            (
                "v4 client's router: fragmentation needed",
                true,
                "203.0.113.1",
                (3, 4),
                1280,
                None,
            ),
            (
                "v4 client: port unreachable, 8-byte quote",
                true,
                CLIENT,
                (3, 3),
                0,
                Some(28),
            ),
            (
                "v6 backend's router: packet too big",
                false,
                "fd00::fe",
                (2, 0),
                1280,
                None,
            ),
            (
                "v6 backend's router: 8-byte quote",
                false,
                "fd00::fe",
                (2, 0),
                1280,
                Some(48),
            ),
            (
                "v6 client's router: packet too big",
                true,
                "2001:db8:ffff::1",
                (2, 0),
                1280,
                None,
            ),
        ];
        for (name, client_side, from, kind, rest, cut) in cases {
            let v6 = from.contains(':');
            let (client, vip, backend, snat, p) = if v6 {
                (CLIENT6, VIP6, "fd00::11", SNAT6, ports[1])
            } else {
                (CLIENT, VIP, "10.0.0.11", SNAT, ports[0])
            };
            if client_side {
                let err = Pkt::icmp_error_quoting(
                    from,
                    vip,
                    kind,
                    rest,
                    &Pkt::tcp_data(vip, 80, client, 40300),
                    cut,
                );
                let sent = Pkt::tcp_data(backend, 8080, snat, p);
                let mut want = Pkt::icmp_error_quoting(snat, backend, kind, rest, &sent, cut);
                want.eth_dst = B1;
                want.eth_src = LB_MAC;
                h.check(name, &err.build(), &Expect::Frame(want.build()));
            } else {
                let quoted = Pkt::tcp_data(snat, p, backend, 8080);
                let mut err = Pkt::icmp_error_quoting(from, snat, kind, rest, &quoted, cut);
                err.eth_src = B1;
                let got = Pkt::tcp_data(client, 40300, vip, 80);
                let mut want = Pkt::icmp_error_quoting(vip, client, kind, rest, &got, cut);
                want.eth_dst = CLIENT_MAC;
                want.eth_src = LB_MAC;
                h.check(
                    name,
                    &err.build(),
                    &Expect::FrameAs(want.build(), verdict::TX_NAT_REPLY),
                );
            }
        }
        // An error to the SNAT address about a port of its range that no connection uses is
        // a stray; outside the range, and quoting nothing tracked elsewhere, the host's.
        let quoted = Pkt::tcp_data(SNAT, 40000, "10.0.0.11", 8080);
        let stray = Pkt::icmp_error_quoting("10.0.0.254", SNAT, (3, 4), 1400, &quoted, None);
        h.check(
            "ICMP about SNAT:40000, untracked",
            &stray.build(),
            &Expect::Drop(verdict::DROP_SNAT_STRAY),
        );
        let quoted6 = Pkt::tcp_data(SNAT6, 40000, "fd00::11", 8080);
        let stray6 = Pkt::icmp_error_quoting("fd00::fe", SNAT6, (2, 0), 1280, &quoted6, Some(48));
        h.check(
            "ICMPv6 about SNAT6:40000, untracked",
            &stray6.build(),
            &Expect::Drop(verdict::DROP_SNAT_STRAY),
        );
        let ssh = Pkt::tcp_data(SNAT, 22, "10.0.0.11", 22);
        let host = Pkt::icmp_error_quoting("10.0.0.254", SNAT, (3, 4), 1400, &ssh, None);
        h.check(
            "ICMP about SNAT:22 (the host's)",
            &host.build(),
            &Expect::Pass,
        );
        let other = Pkt::icmp_error_quoting(
            "203.0.113.1",
            VIP,
            (3, 4),
            1280,
            &Pkt::tcp_data(VIP, 80, CLIENT, 40999),
            None,
        );
        h.check("client side, no connection", &other.build(), &Expect::Pass);
    });
}

/// A full-NAT backend's ICMP unreachable to a SYN it never answered (to the SNAT address) is a
/// refusal: dropped, forgotten, counted; the retransmitted SYN goes to the next backend.
#[test]
fn fullnat_an_icmp_unreachable_to_an_unanswered_syn_is_a_refusal() {
    with_harness("fj", |h| {
        let id1 = h.backend_id("web", "10.0.0.11");
        let syn = Pkt::tcp(CLIENT, 40400, VIP, 80, TCP_SYN);
        let p1 = forward(&h, "SYN -> web1", &syn, SNAT, "10.0.0.11", 8080, B1, ALL);
        let sent = to_backend(&syn, SNAT, p1, "10.0.0.11", 8080, B1);
        let mut refusal = Pkt::icmp_error_quoting("10.0.0.11", SNAT, (3, 3), 0, &sent, Some(28));
        refusal.eth_src = B1;
        h.check(
            "port unreachable to the unanswered SYN: dropped",
            &refusal.build(),
            &Expect::Drop(verdict::DROP_SYN_REFUSED),
        );
        assert_eq!(h.dp.nat_table_fill().unwrap(), (0, 0), "both entries gone");
        assert_eq!(h.dp.refused(id1).unwrap(), 1);
        forward(
            &h,
            "retransmitted SYN -> web2",
            &syn,
            SNAT,
            "10.0.0.12",
            8080,
            B2,
            ALL,
        );
    });
}

/// Full NAT's half of `nat.rs`'s `partial_checksums_leave_as_their_receivers_need_them`:
/// frames whose TCP/UDP checksum arrived partial (a sender with checksum offload on) leave
/// with the full checksum in native mode and with the new pseudo-header's sum in generic
/// mode; both addresses and ports change here. TCP and UDP, IPv4 and IPv6, both directions,
/// replies of one and several summed chunks and of odd length.
#[test]
fn fullnat_partial_checksums_leave_as_their_receivers_need_them() {
    with_harness("fp", |mut h| {
        let ifindex = h.ingress;
        for (m, generic) in [(0u16, false), (1, true)] {
            h.dp.set_attach_mode(ifindex, generic).unwrap();
            let mode = if generic { "generic" } else { "native" };
            let sent = |p: Pkt| if generic { p.partial() } else { p };
            let cases = [
                (
                    CLIENT,
                    "10.0.0.101",
                    "10.0.0.251",
                    "10.0.0.11",
                    80,
                    8080,
                    true,
                ),
                (CLIENT6, VIP6, SNAT6, "fd00::11", 80, 8080, true),
                (CLIENT, VIP, SNAT, "10.0.0.11", 53, 5353, false),
                (CLIENT6, VIP6, SNAT6, "fd00::11", 53, 5353, false),
            ];
            for (i, (client, vip, snat, backend, vport, bport, tcp)) in
                cases.into_iter().enumerate()
            {
                let cport = 45000 + m * 100 + i as u16;
                let mut p = if tcp {
                    Pkt::tcp(client, cport, vip, vport, TCP_SYN)
                } else {
                    Pkt::udp(client, cport, vip, vport)
                };
                p.payload = vec![0x3c; if tcp { 0 } else { 61 }];
                let mut sport = 0;
                h.check_by(
                    &format!("{mode}: {client} -> {vip}:{vport}, partial"),
                    &p.clone().partial().build(),
                    XDP_TX,
                    verdict::TX,
                    |out| {
                        sport = foobar_lb_tests::packet::sport_of(out);
                        sent(to_backend(&p, snat, sport, backend, bport, B1)).build()
                    },
                );
                for len in [1usize, 1400, 1401] {
                    let mut r =
                        from_backend(backend, bport, snat, sport, B1, tcp.then_some(TCP_ACK));
                    r.payload = vec![0xe7; len];
                    let o = client_bound(&r, vip, vport, client, cport);
                    h.check(
                        &format!("{mode}: {len}-byte reply from {backend}, partial"),
                        &r.partial().build(),
                        &Expect::FrameAs(sent(o).build(), verdict::TX_NAT_REPLY),
                    );
                }
            }
        }
    });
}
