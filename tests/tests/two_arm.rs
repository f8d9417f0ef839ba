//! A two-arm balancer through BPF_PROG_TEST_RUN: clients on one interface (`arm0`, MAC
//! `LB_MAC`), backends on another (`arm1`, MAC [`ARM_MAC`]). Every frame the balancer sends
//! about a connection, its packets and the ICMP errors about it, either way, must leave by
//! the other interface: XDP_REDIRECT (the test run returns the verdict and the rewritten
//! frame; nothing is sent), with that interface's MAC as its source, counted as `tx_redirect`.
//! The expected frames are built from scratch with full checksums.
//!
//! Each test runs in a network namespace of its own holding both interfaces (a veth pair: the
//! redirect map takes only interfaces that exist there, and full NAT's FIB lookup asks the
//! kernel): 198.51.100.1/24 and 2001:db8::1/64 on `arm0`, 10.0.1.1/24 and fd00:1::1/64 on
//! `arm1` with permanent neighbour entries for the backends, forwarding on. NAT backends
//! name `arm1` as their interface (`Backend::ifindex`, as the daemon writes it from their
//! neighbour entry); full NAT finds it by the FIB.

use foobar_lb::desired::Forwarding;
use foobar_lb_tests::{
    harness::{Expect, Harness, XDP_REDIRECT},
    netns::{self, in_netns, unique_prefix, Netns},
    packet::{mac_str, Pkt, CLIENT_MAC, LB_MAC, TCP_ACK, TCP_SYN},
};

const CONFIG: &str = r#"
interfaces = ["lo"]

[[service]]
name = "web"
vip = "10.0.0.100"
port = 80
forwarding = "nat"

[[service.backend]]
address = "10.0.1.11"
port = 8080

[[service]]
name = "dns"
vip = "10.0.0.100"
port = 53
protocol = "udp"
forwarding = "nat"

[[service.backend]]
address = "10.0.1.11"
port = 5353

[[service]]
name = "web6"
vip = "fd00::100"
port = 80
forwarding = "nat"

[[service.backend]]
address = "fd00:1::11"
port = 8080

[[service]]
name = "full"
vip = "10.0.0.101"
port = 80
forwarding = "fullnat"
snat = ["10.0.1.250"]

[[service.backend]]
address = "10.0.1.12"
port = 8080
"#;

/// The backend arm's MAC.
const ARM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbb];
const B1: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const B2: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
const MACS: &[(&str, [u8; 6])] = &[("10.0.1.11", B1), ("fd00:1::11", B1), ("10.0.1.12", B2)];

const CLIENT: &str = "198.51.100.7";
const CLIENT6: &str = "2001:db8::7";
const VIP: &str = "10.0.0.100";
const VIP6: &str = "fd00::100";
const FULL_VIP: &str = "10.0.0.101";
const SNAT: &str = "10.0.1.250";

/// The harness and the two arms' interface indexes.
struct Arms {
    h: Harness,
    client_arm: u32,
    backend_arm: u32,
}

impl Arms {
    /// Test runs from now on report the client's arm as their ingress.
    fn at_client_arm(&mut self) -> &Harness {
        self.h.ingress = self.client_arm;
        &self.h
    }

    /// Test runs from now on report the backends' arm as their ingress.
    fn at_backend_arm(&mut self) -> &Harness {
        self.h.ingress = self.backend_arm;
        &self.h
    }
}

/// Runs `f` with both arms in a namespace of their own (see the module doc).
fn with_arms(tag: &str, f: impl FnOnce(Arms) + Send) {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let ns = Netns::new(&format!("{}ns", unique_prefix(tag))).expect("namespace");
    let mac = |m: [u8; 6]| mac_str(&m);
    let ip = |args: &[&str]| ns.ip(args).expect("ip");
    ip(&[
        "link",
        "add",
        "arm0",
        "address",
        &mac(LB_MAC),
        "type",
        "veth",
        "peer",
        "name",
        "arm1",
        "address",
        &mac(ARM_MAC),
    ]);
    ip(&["addr", "add", "198.51.100.1/24", "dev", "arm0"]);
    ip(&["addr", "add", "2001:db8::1/64", "dev", "arm0", "nodad"]);
    ip(&["addr", "add", "10.0.1.1/24", "dev", "arm1"]);
    ip(&["addr", "add", "fd00:1::1/64", "dev", "arm1", "nodad"]);
    ip(&["link", "set", "arm0", "up"]);
    ip(&["link", "set", "arm1", "up"]);
    for (addr, m) in [("10.0.1.11", B1), ("fd00:1::11", B1), ("10.0.1.12", B2)] {
        ip(&[
            "neigh",
            "replace",
            addr,
            "lladdr",
            &mac(m),
            "nud",
            "permanent",
            "dev",
            "arm1",
        ]);
    }
    ns.sysctl("net.ipv4.conf.all.forwarding", "1").unwrap();
    ns.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    in_netns(&ns.name, || {
        let (client_arm, backend_arm) = (netns::ifindex("arm0"), netns::ifindex("arm1"));
        assert!(client_arm > 1 && backend_arm > 1, "the arms' indexes");
        let mut h = Harness::new(CONFIG, MACS);
        h.set_ingress(client_arm);
        h.dp.set_interface(backend_arm, ARM_MAC).unwrap();
        // NAT backends on the backends' arm, as the daemon finds them in the neighbour table.
        let mut desired = h.desired();
        for b in desired.iter_mut().flat_map(|s| s.backends.iter_mut()) {
            if matches!(b.forwarding, Forwarding::Nat { .. }) {
                b.ifindex = backend_arm;
            }
        }
        h.apply(&desired);
        f(Arms {
            h,
            client_arm,
            backend_arm,
        });
        Ok(())
    })
    .unwrap();
}

fn set_ports(p: &mut Pkt, s: u16, d: u16) {
    match &mut p.l4 {
        foobar_lb_tests::packet::L4::Tcp { sport, dport, .. }
        | foobar_lb_tests::packet::L4::Udp { sport, dport } => {
            *sport = s;
            *dport = d;
        }
        _ => unreachable!(),
    }
}

/// `p` with these addresses and ports, from MAC `eth_src` to `eth_dst`.
fn moved(p: &Pkt, (src, sport): (&str, u16), (dst, dport): (&str, u16), eth: Eth) -> Pkt {
    let mut o = p.clone();
    o.src = src.parse().unwrap();
    o.dst = dst.parse().unwrap();
    set_ports(&mut o, sport, dport);
    (o.eth_dst, o.eth_src) = eth;
    o
}

/// (destination, source) MACs.
type Eth = ([u8; 6], [u8; 6]);
/// From the client to the client's arm; from the client's arm to the client.
const CLIENT_IN: Eth = (LB_MAC, CLIENT_MAC);
const CLIENT_OUT: Eth = (CLIENT_MAC, LB_MAC);
/// From backend 1 to the backends' arm; from the backends' arm to backends 1 and 2.
const B1_IN: Eth = (ARM_MAC, B1);
const B1_OUT: Eth = (B1, ARM_MAC);
const B2_OUT: Eth = (B2, ARM_MAC);

/// Opens client:cport -> vip:80 (NAT) on backend:8080, then lets the backend answer: both
/// frames redirected to the other arm.
fn open_nat(a: &mut Arms, client: &str, cport: u16, vip: &str, backend: &str) {
    let syn = Pkt::tcp(client, cport, vip, 80, TCP_SYN);
    let want = moved(&syn, (client, cport), (backend, 8080), B1_OUT);
    a.at_client_arm()
        .check("SYN", &syn.build(), &Expect::Redirect(want.build()));
    let synack = moved(
        &Pkt::tcp(backend, 8080, client, cport, TCP_SYN | TCP_ACK),
        (backend, 8080),
        (client, cport),
        B1_IN,
    );
    let want = moved(&synack, (vip, 80), (client, cport), CLIENT_OUT);
    a.at_backend_arm()
        .check("SYN-ACK", &synack.build(), &Expect::Redirect(want.build()));
}

/// Opens client:cport -> FULL_VIP:80 (full NAT) on 10.0.1.12:8080 by the FIB (the backends'
/// arm, its MAC, the neighbour's) and lets the backend answer; returns the SNAT port.
fn open_full(a: &mut Arms, cport: u16) -> u16 {
    let syn = Pkt::tcp(CLIENT, cport, FULL_VIP, 80, TCP_SYN);
    let mut sport = 0;
    a.at_client_arm().check_by(
        "full NAT SYN",
        &syn.build(),
        XDP_REDIRECT,
        foobar_lb_common::verdict::TX_REDIRECT,
        |out| {
            sport = foobar_lb_tests::packet::sport_of(out);
            moved(&syn, (SNAT, sport), ("10.0.1.12", 8080), B2_OUT).build()
        },
    );
    let synack = moved(
        &Pkt::tcp("10.0.1.12", 8080, SNAT, sport, TCP_SYN | TCP_ACK),
        ("10.0.1.12", 8080),
        (SNAT, sport),
        (ARM_MAC, B2),
    );
    let want = moved(&synack, (FULL_VIP, 80), (CLIENT, cport), CLIENT_OUT);
    a.at_backend_arm().check(
        "full NAT SYN-ACK",
        &synack.build(),
        &Expect::Redirect(want.build()),
    );
    sport
}

const FRAG_NEEDED: (u8, u8) = (3, 4);
const V6_TOO_BIG: (u8, u8) = (2, 0);

/// ICMP errors about a two-arm connection leave by the other arm, as its packets do: from
/// the client's side (its router, about a reply) to the backend out of the backends' arm,
/// from the backend's side (a router on its path, about a forwarded packet) to the client out
/// of the client's arm. NAT in both families, and full NAT.
#[test]
fn icmp_errors_about_two_arm_connections_leave_by_the_other_arm() {
    with_arms("ti", |mut a| {
        open_nat(&mut a, CLIENT, 40300, VIP, "10.0.1.11");
        open_nat(&mut a, CLIENT6, 40300, VIP6, "fd00:1::11");
        for (client, vip, backend, c_router, b_router, kind, mtu) in [
            (
                CLIENT,
                VIP,
                "10.0.1.11",
                "203.0.113.1",
                "10.0.1.254",
                FRAG_NEEDED,
                1400,
            ),
            (
                CLIENT6,
                VIP6,
                "fd00:1::11",
                "2001:db8:ffff::1",
                "fd00:1::fe",
                V6_TOO_BIG,
                1280,
            ),
        ] {
            let reply = Pkt::tcp_data(vip, 80, client, 40300);
            let mut err = Pkt::icmp_error_quoting(c_router, vip, kind, mtu, &reply, None);
            (err.eth_dst, err.eth_src) = CLIENT_IN;
            let sent = Pkt::tcp_data(backend, 8080, client, 40300);
            let mut want = Pkt::icmp_error_quoting(c_router, backend, kind, mtu, &sent, None);
            (want.eth_dst, want.eth_src) = B1_OUT;
            a.at_client_arm().check(
                "the client's router -> the backend",
                &err.build(),
                &Expect::Redirect(want.build()),
            );

            let forwarded = Pkt::tcp_data(client, 40300, backend, 8080);
            let mut err = Pkt::icmp_error_quoting(b_router, client, kind, mtu, &forwarded, None);
            (err.eth_dst, err.eth_src) = B1_IN;
            let got = Pkt::tcp_data(client, 40300, vip, 80);
            let mut want = Pkt::icmp_error_quoting(vip, client, kind, mtu, &got, None);
            (want.eth_dst, want.eth_src) = CLIENT_OUT;
            a.at_backend_arm().check(
                "the backend's router -> the client",
                &err.build(),
                &Expect::Redirect(want.build()),
            );
        }

        let p = open_full(&mut a, 40301);
        let reply = Pkt::tcp_data(FULL_VIP, 80, CLIENT, 40301);
        let mut err =
            Pkt::icmp_error_quoting("203.0.113.1", FULL_VIP, FRAG_NEEDED, 1400, &reply, None);
        (err.eth_dst, err.eth_src) = CLIENT_IN;
        let sent = Pkt::tcp_data("10.0.1.12", 8080, SNAT, p);
        let mut want = Pkt::icmp_error_quoting(SNAT, "10.0.1.12", FRAG_NEEDED, 1400, &sent, None);
        (want.eth_dst, want.eth_src) = B2_OUT;
        a.at_client_arm().check(
            "full NAT: the client's router -> the backend",
            &err.build(),
            &Expect::Redirect(want.build()),
        );
        let forwarded = Pkt::tcp_data(SNAT, p, "10.0.1.12", 8080);
        let mut err =
            Pkt::icmp_error_quoting("10.0.1.254", SNAT, FRAG_NEEDED, 1400, &forwarded, None);
        (err.eth_dst, err.eth_src) = (ARM_MAC, B2);
        let got = Pkt::tcp_data(CLIENT, 40301, FULL_VIP, 80);
        let mut want = Pkt::icmp_error_quoting(FULL_VIP, CLIENT, FRAG_NEEDED, 1400, &got, None);
        (want.eth_dst, want.eth_src) = CLIENT_OUT;
        a.at_backend_arm().check(
            "full NAT: the backend's router -> the client",
            &err.build(),
            &Expect::Redirect(want.build()),
        );
    });
}

/// NAT, two-arm: the client's packets leave by the backends' arm (the backend's MAC, that
/// arm's own), the replies by the client's arm (the client's MAC, that arm's own), new and
/// established connections, TCP and UDP, both families; all counted `tx_redirect`, and the
/// client's side in the service's counters as for one arm.
#[test]
fn nat_both_directions_leave_by_the_other_arm() {
    with_arms("tn", |mut a| {
        open_nat(&mut a, CLIENT, 40000, VIP, "10.0.1.11");
        open_nat(&mut a, CLIENT6, 40000, VIP6, "fd00:1::11");
        for (client, vip, backend) in [(CLIENT, VIP, "10.0.1.11"), (CLIENT6, VIP6, "fd00:1::11")] {
            for i in 0..2 {
                let mut ack = Pkt::tcp(client, 40000, vip, 80, TCP_ACK);
                ack.payload = format!("request {i}").into_bytes();
                let want = moved(&ack, (client, 40000), (backend, 8080), B1_OUT);
                a.at_client_arm().check(
                    "established: client -> backend",
                    &ack.build(),
                    &Expect::Redirect(want.build()),
                );
                let mut data = Pkt::tcp(backend, 8080, client, 40000, TCP_ACK);
                (data.eth_dst, data.eth_src) = B1_IN;
                data.payload = vec![i as u8; 1000 + i];
                let want = moved(&data, (vip, 80), (client, 40000), CLIENT_OUT);
                a.at_backend_arm().check(
                    "established: backend -> client",
                    &data.build(),
                    &Expect::Redirect(want.build()),
                );
            }
        }
        // UDP: a query and its answer, with and without an IPv4 UDP checksum.
        for no_checksum in [false, true] {
            let cport = 33000 + no_checksum as u16;
            let mut q = Pkt::udp(CLIENT, cport, VIP, 53);
            q.udp_no_checksum = no_checksum;
            let want = moved(&q, (CLIENT, cport), ("10.0.1.11", 5353), B1_OUT);
            a.at_client_arm()
                .check("UDP query", &q.build(), &Expect::Redirect(want.build()));
            let mut r = Pkt::udp("10.0.1.11", 5353, CLIENT, cport);
            r.udp_no_checksum = no_checksum;
            (r.eth_dst, r.eth_src) = B1_IN;
            let want = moved(&r, (VIP, 53), (CLIENT, cport), CLIENT_OUT);
            a.at_backend_arm()
                .check("UDP answer", &r.build(), &Expect::Redirect(want.build()));
        }
        // SYN, two ACKs per family; the replies are not the service's.
        assert_eq!(a.h.service_counters("web").packets, 3);
        assert_eq!(a.h.service_counters("web6").packets, 3);
        assert_eq!(a.h.service_counters("dns").packets, 2);
        assert_eq!(a.h.dp.nat_table_fill().unwrap(), (4, 4));
    });
}

/// Full NAT whose FIB lookup finds the backend on the other arm: the client's packets leave
/// by it (the next hop's MAC and that arm's own, from the FIB), the replies by the client's
/// arm, new and established; counted `tx_redirect`.
#[test]
fn fullnat_by_the_fib_leaves_by_the_other_arm() {
    with_arms("tf", |mut a| {
        let p = open_full(&mut a, 40000);
        for i in 0..2 {
            let mut ack = Pkt::tcp(CLIENT, 40000, FULL_VIP, 80, TCP_ACK);
            ack.payload = format!("request {i}").into_bytes();
            let want = moved(&ack, (SNAT, p), ("10.0.1.12", 8080), B2_OUT);
            a.at_client_arm().check(
                "established: client -> backend, the same SNAT port",
                &ack.build(),
                &Expect::Redirect(want.build()),
            );
            let mut data = Pkt::tcp("10.0.1.12", 8080, SNAT, p, TCP_ACK);
            (data.eth_dst, data.eth_src) = (ARM_MAC, B2);
            data.payload = vec![i as u8; 1000 + i];
            let want = moved(&data, (FULL_VIP, 80), (CLIENT, 40000), CLIENT_OUT);
            a.at_backend_arm().check(
                "established: backend -> client",
                &data.build(),
                &Expect::Redirect(want.build()),
            );
        }
        let svc = a.h.service_counters("full");
        assert_eq!((svc.packets, svc.new_flows), (3, 1));
    });
}

/// Frames whose checksum arrived partial (a sender with `tx` offload on) and leave by the
/// other arm (XDP_REDIRECT) are finished as on one arm (`nat.rs`'s
/// `partial_checksums_leave_as_their_receivers_need_them`): the full checksum in native
/// mode, the new pseudo-header's sum in generic mode, by the receiving arm's mode. NAT, both
/// directions, both families.
#[test]
fn partial_checksums_leaving_by_the_other_arm_are_finished() {
    with_arms("tp", |mut a| {
        for (m, generic) in [(0u16, false), (1, true)] {
            a.h.dp.set_attach_mode(a.client_arm, generic).unwrap();
            a.h.dp.set_attach_mode(a.backend_arm, generic).unwrap();
            let sent = |p: Pkt| if generic { p.partial() } else { p };
            for (client, vip, backend) in
                [(CLIENT, VIP, "10.0.1.11"), (CLIENT6, VIP6, "fd00:1::11")]
            {
                let cport = 41000 + m;
                open_nat(&mut a, client, cport, vip, backend);
                let mut req = Pkt::tcp(client, cport, vip, 80, TCP_ACK);
                req.payload = vec![0x3d; 1401];
                let want = moved(&req, (client, cport), (backend, 8080), B1_OUT);
                a.at_client_arm().check(
                    &format!("generic {generic}: partial request to {backend}"),
                    &req.clone().partial().build(),
                    &Expect::Redirect(sent(want).build()),
                );
                let mut data = Pkt::tcp(backend, 8080, client, cport, TCP_ACK);
                (data.eth_dst, data.eth_src) = B1_IN;
                data.payload = vec![0xd3; 1400];
                let want = moved(&data, (vip, 80), (client, cport), CLIENT_OUT);
                a.at_backend_arm().check(
                    &format!("generic {generic}: partial reply from {backend}"),
                    &data.clone().partial().build(),
                    &Expect::Redirect(sent(want).build()),
                );
            }
        }
    });
}
