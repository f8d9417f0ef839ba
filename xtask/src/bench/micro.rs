//! Per-packet cost of the XDP program through BPF_PROG_TEST_RUN, with a realistic provisioning:
//! 16 services x 64 backends, 100,000 block-list prefixes, 100,000 flows in the flow table.
//! Figures are the kernel's mean ns per run, median of several runs, and ratios to the
//! XDP_PASS floor measured the same way in the same run.

use foobar_lb::dataplane::AuxProgram;
use foobar_lb_common::{FlowKey, NatFwd, NatRev};
use foobar_lb_tests::{
    harness::{big_blocklist, time_ns, time_ns_at, Harness, XDP_DROP, XDP_PASS, XDP_TX},
    netns::{self, in_netns, unique_prefix, Netns},
    packet::{mac_str, Pkt, LB_MAC, TCP_ACK, TCP_SYN},
};
use serde::Serialize;
use std::mem::size_of;

const SERVICES: usize = 16;
const BACKENDS: usize = 64;
/// This service (VIP 10.200.0.3) schedules by Maglev; the others by round robin.
const MAGLEV_SERVICE: usize = 2;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub case: String,
    pub ns_per_packet: f64,
    /// ns_per_packet / the floor measured by the same method.
    pub ratio_to_floor: f64,
    /// The target ratio from the issue, if any.
    pub target_ratio: Option<f64>,
    pub method: String,
}

fn config() -> (String, Vec<(String, [u8; 6])>) {
    let mut c = String::from("interfaces = [\"lo\"]\n");
    let mut macs = Vec::new();
    for s in 0..SERVICES {
        // The last service is IPv6.
        let v6 = s == SERVICES - 1;
        let vip = if v6 {
            "fd00:200::1".to_string()
        } else {
            format!("10.200.0.{}", s + 1)
        };
        c += &format!("\n[[service]]\nname = \"s{s}\"\nvip = \"{vip}\"\nport = 80\n");
        if s == MAGLEV_SERVICE {
            c += "scheduler = \"maglev\"\n";
        }
        for b in 0..BACKENDS {
            let addr = if v6 {
                format!("fd00:201::{b:x}")
            } else {
                format!("10.201.{s}.{}", b + 1)
            };
            c += &format!("[[service.backend]]\naddress = \"{addr}\"\n");
            // Every backend "is" at the balancer's own MAC: BPF_PROG_TEST_RUN repeats feed
            // the program its own output, and a frame rewritten to another MAC would be judged
            // not addressed to us from the second repeat on (a different, cheaper path).
            macs.push((addr, LB_MAC));
        }
    }
    (c, macs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The per-packet rows, and the NAT tables' memory per tracked connection.
pub fn run(quick: bool) -> anyhow::Result<(Vec<Row>, NatMemory)> {
    let (runs, repeat, flows, singles) = if quick {
        (3, 2_000, 5_000u32, 300)
    } else {
        (9, 200_000, 100_000u32, 5_000)
    };
    println!("bench micro: provisioning {SERVICES} services x {BACKENDS} backends...");
    let (cfg, macs) = config();
    let macs: Vec<(&str, [u8; 6])> = macs.iter().map(|(a, m)| (a.as_str(), *m)).collect();
    let mut h = Harness::with_flow_table(&cfg, &macs, 262_144);
    println!("bench micro: loading 100,000 block-list prefixes...");
    let took = if std::env::var_os("BENCH_NO_BLOCKLIST").is_some() {
        h.blocklist("")
    } else {
        h.blocklist(&big_blocklist())
    };
    println!("bench micro:   loaded in {} ms", took.as_millis());
    println!("bench micro: filling the flow table with {flows} flows (one SYN each)...");
    for i in 0..flows {
        let src = format!("172.16.{}.{}", (i >> 8) & 255, i & 255);
        let f = Pkt::tcp(&src, 1024 + (i >> 16) as u16, "10.200.0.1", 80, TCP_SYN).build();
        h.run(&f);
    }
    let have = h.dp.flow_count()?;
    println!("bench micro:   {have} flows in the table");

    let floor = AuxProgram::pass()?;
    let lb = h.dp.program();
    let est4 = Pkt::tcp("172.16.0.7", 1024, "10.200.0.1", 80, TCP_ACK).build();
    let est6 = Pkt::tcp("fd00:cafe::1", 4000, "fd00:200::1", 80, TCP_ACK).build();
    h.run(&Pkt::tcp("fd00:cafe::1", 4000, "fd00:200::1", 80, TCP_SYN).build());
    let pass = Pkt::tcp("172.17.0.1", 4000, "10.250.0.1", 443, TCP_ACK).build();
    let blocked = Pkt::tcp("20.0.2.1", 4000, "10.200.0.1", 80, TCP_SYN).build();

    let cases = [
        ("pass-through (not for a service)", &pass, 2.0),
        ("established flow, IPv4 (flow-table hit)", &est4, 4.0),
        ("established flow, IPv6 (flow-table hit)", &est6, 4.0),
        ("firewall drop (100,000 prefixes loaded)", &blocked, 3.0),
    ];
    // Each case must time the path it names, on every repeat: the verdict is the expected
    // one and the output frame is the input again but for its source MAC (the balancer's).
    for ((case, frame, _), want) in cases.iter().zip([XDP_PASS, XDP_TX, XDP_TX, XDP_DROP]) {
        let o = h.run(frame);
        let same = o.out[..6] == frame[..6] && o.out[12..] == frame[12..];
        anyhow::ensure!(
            o.action == want && (want == XDP_DROP || same),
            "bench case {case:?} takes another path (action {}, frame changed: {})",
            o.action,
            !same
        );
    }
    // Rounds interleave the floor and every case, and each ratio is taken within its round,
    // so a burst of load on this shared machine skews one round, not one case.
    println!("bench micro: timing ({runs} rounds x {repeat} repeats per case)...");
    let mut floors = Vec::new();
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..runs {
        let floor_ns = time_ns(floor.program(), &est4, repeat);
        floors.push(floor_ns);
        for (i, (_, frame, _)) in cases.iter().enumerate() {
            let t = time_ns(lb, frame, repeat);
            ns[i].push(t);
            ratios[i].push(t / floor_ns);
        }
    }
    let method = format!("median of {runs} interleaved rounds x {repeat} repeats; ratio per round");
    let mut rows = vec![Row {
        case: "XDP_PASS floor (trivial program)".into(),
        ns_per_packet: median(floors),
        ratio_to_floor: 1.0,
        target_ratio: None,
        method: method.clone(),
    }];
    for (i, (case, _, target)) in cases.iter().enumerate() {
        rows.push(Row {
            case: case.to_string(),
            ns_per_packet: median(ns[i].clone()),
            ratio_to_floor: median(ratios[i].clone()),
            target_ratio: Some(*target),
            method: method.clone(),
        });
    }
    // New flows: a repeated SYN would hit the flow table from its second run, so each SYN is
    // new (one run each) and the floor is measured the same way.
    println!("bench micro: timing {singles} new flows one run each...");
    let (mut floors, mut syns, mut maglev) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..singles {
        floors.push(time_ns(floor.program(), &est4, 1));
        let src = format!("172.18.{}.{}", (i >> 8) & 255, i & 255);
        let syn = Pkt::tcp(&src, 5000, "10.200.0.2", 80, TCP_SYN).build();
        syns.push(time_ns(lb, &syn, 1));
        let syn = Pkt::tcp(&src, 5000, "10.200.0.3", 80, TCP_SYN).build();
        maglev.push(time_ns(lb, &syn, 1));
    }
    let (single_floor, new_flow, maglev) = (median(floors), median(syns), median(maglev));
    let single_method =
        format!("median of {singles} single runs, each a distinct SYN, interleaved with the floor");
    rows.push(Row {
        case: "XDP_PASS floor, single runs".into(),
        ns_per_packet: single_floor,
        ratio_to_floor: 1.0,
        target_ratio: None,
        method: single_method.clone(),
    });
    rows.push(Row {
        case: "new flow (SYN: scheduler + flow insert)".into(),
        ns_per_packet: new_flow,
        ratio_to_floor: new_flow / single_floor,
        target_ratio: Some(8.0),
        method: single_method.clone(),
    });
    rows.push(Row {
        case: "new flow, Maglev service (hash pick + flow insert)".into(),
        ns_per_packet: maglev,
        ratio_to_floor: maglev / single_floor,
        target_ratio: None,
        method: single_method,
    });
    drop(h);
    rows.extend(sync_new_flows(&cfg, &macs, singles, &floor)?);
    let (nat_rows, memory) = nat(quick, &floor)?;
    rows.extend(nat_rows);
    rows.extend(fullnat(quick)?);
    rows.extend(million_flows(quick, &floor)?);
    Ok((rows, memory))
}

/// Memory of the NAT connection tables, per tracked connection (one entry in each table).
#[derive(Debug, Clone, Serialize)]
pub struct NatMemory {
    /// Entries each table holds (preallocated: the memory is the capacity's).
    pub capacity: u32,
    /// Key and value bytes of one connection's two entries.
    pub key_value_bytes: usize,
    /// The kernel's `memlock` of both tables (fdinfo), in bytes.
    pub memlock_bytes: u64,
    /// `memlock_bytes / capacity`.
    pub bytes_per_connection: f64,
}

/// The new-flow cost with flow sync's announcement on (`[sync]`) against the same program
/// loaded without it, both on the same provisioning (no block list, an empty flow table),
/// interleaved. The ring is drained as the controller would, so it never fills.
fn sync_new_flows(
    cfg: &str,
    macs: &[(&str, [u8; 6])],
    singles: u32,
    floor: &AuxProgram,
) -> anyhow::Result<Vec<Row>> {
    println!("bench micro: timing {singles} new flows with and without flow sync...");
    let off = Harness::with_flow_table(cfg, macs, 65536);
    let mut on = Harness::with_sync(cfg, macs);
    let (mut ring, _maps, _walk) = on.dp.sync_maps()?;
    let probe = Pkt::tcp("172.19.255.255", 5000, "10.200.0.2", 80, TCP_SYN).build();
    anyhow::ensure!(
        on.run(&probe).action == XDP_TX && ring.next().is_some(),
        "the sync harness announced no new flow"
    );
    let est4 = Pkt::tcp("172.16.0.7", 1024, "10.200.0.1", 80, TCP_ACK).build();
    let (mut floors, mut without, mut with) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..singles {
        floors.push(time_ns(floor.program(), &est4, 1));
        let src = format!("172.19.{}.{}", (i >> 8) & 255, i & 255);
        let syn = Pkt::tcp(&src, 5000, "10.200.0.2", 80, TCP_SYN).build();
        without.push(time_ns(off.dp.program(), &syn, 1));
        with.push(time_ns(on.dp.program(), &syn, 1));
        while ring.next().is_some() {}
    }
    let single_floor = median(floors);
    let method = format!(
        "median of {singles} single runs, each a distinct SYN, the two programs and the floor \
         interleaved; no block list, empty flow table"
    );
    Ok([
        (
            "new flow, flow sync off (same provisioning as the next)",
            median(without),
        ),
        (
            "new flow, flow sync on (announced on the ring)",
            median(with),
        ),
    ]
    .into_iter()
    .map(|(case, ns)| Row {
        case: case.into(),
        ns_per_packet: ns,
        ratio_to_floor: ns / single_floor,
        target_ratio: None,
        method: method.clone(),
    })
    .collect())
}

/// NAT (`forwarding = "nat"`): an established connection each way and new connections, with
/// `flows` connections tracked (1,000,000 in a full run). BPF_PROG_TEST_RUN repeats feed the
/// program its own output, so the backend is given the VIP's own address and port (and every
/// MAC is the balancer's): the translation then rewrites every field to the value it had, and
/// each repeat takes the same path, checksum updates included.
fn nat(quick: bool, floor: &AuxProgram) -> anyhow::Result<(Vec<Row>, NatMemory)> {
    let (flows, runs, repeat, singles, capacity) = if quick {
        (5_000u32, 3, 2_000, 300, 1u32 << 14)
    } else {
        (1_000_000u32, 9, 200_000, 5_000, 1 << 20)
    };
    let cfg = "interfaces = [\"lo\"]\n\n[[service]]\nname = \"nat\"\nvip = \"10.210.0.1\"\n\
               port = 80\nforwarding = \"nat\"\n[[service.backend]]\naddress = \"10.210.0.1\"\n\
               port = 80\n";
    let mut h = Harness::with_tables(cfg, &[("10.210.0.1", LB_MAC)], 65_536, capacity);
    let (fwd_bytes, rev_bytes) = h.dp.nat_table_memlock()?;
    let memory = NatMemory {
        capacity,
        key_value_bytes: 2 * size_of::<FlowKey>() + size_of::<NatFwd>() + size_of::<NatRev>(),
        memlock_bytes: fwd_bytes + rev_bytes,
        bytes_per_connection: (fwd_bytes + rev_bytes) as f64 / capacity as f64,
    };
    println!(
        "bench micro: NAT tables of {capacity}: {} bytes (kernel memlock), {:.0} per connection",
        memory.memlock_bytes, memory.bytes_per_connection
    );
    println!("bench micro: tracking {flows} NAT connections...");
    let syn = |src: &str, port: u16| {
        let mut p = Pkt::tcp(src, port, "10.210.0.1", 80, TCP_SYN);
        p.eth_src = LB_MAC;
        p.build()
    };
    for i in 0..flows {
        let src = format!("172.20.{}.{}", (i >> 8) & 255, i & 255);
        h.run(&syn(&src, 1024 + (i >> 16) as u16));
    }
    let (fwd, rev) = h.dp.nat_table_fill()?;
    let counted: Vec<(usize, u64)> = h
        .verdicts()
        .into_iter()
        .enumerate()
        .filter(|(_, n)| *n > 0)
        .collect();
    anyhow::ensure!(
        fwd == flows as u64 && rev == flows as u64,
        "{fwd}/{rev} of {flows} tracked; verdict counters (index, count) {counted:?}"
    );
    let lb = h.dp.program();
    let mut est = Pkt::tcp("172.20.0.7", 1024, "10.210.0.1", 80, TCP_ACK);
    est.eth_src = LB_MAC;
    let est = est.build();
    let mut reply = Pkt::tcp("10.210.0.1", 80, "172.20.0.7", 1024, TCP_ACK);
    reply.eth_src = LB_MAC;
    let reply = reply.build();
    let [est_t, reply_t] = side_by_side(
        &h,
        floor,
        "NAT",
        [("established", &est), ("reply", &reply)],
        runs,
        repeat,
    )?;
    let (mut floors, mut syns) = (Vec::new(), Vec::new());
    for i in 0..singles {
        floors.push(time_ns(floor.program(), &est, 1));
        let src = format!("172.21.{}.{}", (i >> 8) & 255, i & 255);
        syns.push(time_ns(lb, &syn(&src, 5000), 1));
    }
    let (single_floor, new_flow) = (median(floors), median(syns));
    let method = format!("median of {runs} interleaved rounds x {repeat} repeats; ratio per round");
    let partial = partial_checksums(&mut h, floor, runs, repeat)?;
    let mut rows = vec![
        Row {
            case: format!("NAT established, client -> backend, IPv4, {flows} tracked"),
            ns_per_packet: est_t.0,
            ratio_to_floor: est_t.1,
            target_ratio: None,
            method: method.clone(),
        },
        Row {
            case: format!("NAT reply, backend -> client, IPv4, {flows} tracked"),
            ns_per_packet: reply_t.0,
            ratio_to_floor: reply_t.1,
            target_ratio: None,
            method,
        },
        Row {
            case: format!("NAT new connection (SYN: scheduler + pair insert), {flows} tracked"),
            ns_per_packet: new_flow,
            ratio_to_floor: new_flow / single_floor,
            target_ratio: None,
            method: format!(
                "median of {singles} single runs, each a distinct SYN, interleaved with the floor"
            ),
        },
    ];
    rows.extend(partial);
    Ok((rows, memory))
}

/// Times `cases` (name, frame) through `h`'s program against the floor (the first frame
/// through `floor`), in `runs` interleaved rounds of `repeat` runs each at `h`'s ingress:
/// per case the median ns and the median of the per-round ratios. Each frame must come back
/// unchanged (XDP_TX), or a repeat (fed its own output) would take another path.
fn side_by_side<const N: usize>(
    h: &Harness,
    floor: &AuxProgram,
    what: &str,
    cases: [(&str, &Vec<u8>); N],
    runs: usize,
    repeat: u32,
) -> anyhow::Result<[(f64, f64); N]> {
    for (case, frame) in cases {
        let o = h.run(frame);
        anyhow::ensure!(
            o.action == XDP_TX && o.out == *frame,
            "{what} bench case {case} takes another path (action {})",
            o.action
        );
    }
    let mut ns = [(); N].map(|_| Vec::new());
    let mut ratios = [(); N].map(|_| Vec::new());
    for _ in 0..runs {
        let f = time_ns_at(floor.program(), cases[0].1, repeat, h.ingress);
        for (i, (_, frame)) in cases.iter().enumerate() {
            let t = time_ns_at(h.dp.program(), frame, repeat, h.ingress);
            ns[i].push(t);
            ratios[i].push(t / f);
        }
    }
    let mut out = [(0.0, 0.0); N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (
            median(std::mem::take(&mut ns[i])),
            median(std::mem::take(&mut ratios[i])),
        );
    }
    Ok(out)
}

/// What a partial checksum (a sender with `tx` offload on) costs a NAT packet: a 1400-byte
/// segment with a full checksum and the same with a partial one, side by side. In generic
/// mode, where the timed frame (translated to itself) leaves unchanged: the partial one is
/// summed at the program's exit and left partial, every repeat.
fn partial_checksums(
    h: &mut Harness,
    floor: &AuxProgram,
    runs: usize,
    repeat: u32,
) -> anyhow::Result<Vec<Row>> {
    h.dp.set_attach_mode(1, true)?;
    let mut full = Pkt::tcp("172.20.0.7", 1024, "10.210.0.1", 80, TCP_ACK);
    full.eth_src = LB_MAC;
    full.payload = vec![0x5a; 1400];
    let (full, partial) = (full.build(), full.partial().build());
    let cases = [("full checksum", &full), ("partial checksum", &partial)];
    let [full_t, partial_t] = side_by_side(h, floor, "NAT 1400-byte", cases, runs, repeat)?;
    h.dp.set_attach_mode(1, false)?;
    let method = format!("median of {runs} interleaved rounds x {repeat} repeats; ratio per round");
    Ok(vec![
        Row {
            case: "NAT established, 1400-byte segment, full checksum".into(),
            ns_per_packet: full_t.0,
            ratio_to_floor: full_t.1,
            target_ratio: None,
            method: method.clone(),
        },
        Row {
            case: "NAT established, 1400-byte segment, partial checksum (summed at exit)".into(),
            ns_per_packet: partial_t.0,
            ratio_to_floor: partial_t.1,
            target_ratio: None,
            method,
        },
    ])
}

/// Full NAT (`forwarding = "fullnat"`): as [`nat`], with the source translated too (the SNAT
/// address and port) and, for a new connection, the source-port claim and the FIB lookup.
/// The lookup asks the kernel, so this part runs in a network namespace of its own: one
/// interface `lb0` at the balancer's MAC, reported as the test runs' ingress, forwarding on.
/// For repeats to take one path, the timed connection's backend is its VIP's own address and
/// port (its neighbour entry the balancer's MAC) and its SNAT address and only port are the
/// client's own: the translation rewrites every field to the value it had. The `flows`
/// tracked connections are another service's (32 backends behind a router, 8 SNAT
/// addresses: about 6% of their ports in use), which the new connections open too.
fn fullnat(quick: bool) -> anyhow::Result<Vec<Row>> {
    let (flows, runs, repeat, singles, capacity) = if quick {
        (5_000u32, 3, 2_000, 300, 1u32 << 14)
    } else {
        (1_000_000u32, 9, 200_000, 5_000, 1 << 20)
    };
    let ns = Netns::new(&format!("{}ns", unique_prefix("bf")))?;
    let lb_mac = mac_str(&LB_MAC);
    let ip = |args: &[&str]| ns.ip(args).map(|_| ());
    ip(&[
        "link", "add", "lb0", "address", &lb_mac, "type", "veth", "peer", "name", "lb0p",
    ])?;
    ip(&["addr", "add", "10.210.255.1/16", "dev", "lb0"])?;
    ip(&["link", "set", "lb0p", "up"])?;
    ip(&["link", "set", "lb0", "up"])?;
    // The timed connection's backend (the VIP's own address) at the balancer's MAC, so a
    // repeat's input stays addressed to it; the tracked ones' router at another.
    for (addr, mac) in [
        ("10.210.0.1", lb_mac.as_str()),
        ("10.210.255.254", "02:00:00:00:00:fe"),
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
        ])?;
    }
    ip(&["route", "add", "10.211.0.0/16", "via", "10.210.255.254"])?;
    ns.sysctl("net.ipv4.conf.all.forwarding", "1")?;
    let mut cfg = String::from(
        "interfaces = [\"lo\"]\n\n[[service]]\nname = \"timed\"\nvip = \"10.210.0.1\"\n\
         port = 80\nforwarding = \"fullnat\"\nsnat = [\"172.22.0.7\"]\nsnat_ports = \"1024-1024\"\n\
         [[service.backend]]\naddress = \"10.210.0.1\"\nport = 80\n\n[[service]]\n\
         name = \"tracked\"\nvip = \"10.210.0.2\"\nport = 80\nforwarding = \"fullnat\"\nsnat = [",
    );
    cfg += &(1..=8)
        .map(|i| format!("\"10.212.0.{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    cfg += "]\n";
    for i in 1..=32 {
        cfg += &format!("[[service.backend]]\naddress = \"10.211.0.{i}\"\nport = 80\n");
    }
    in_netns(&ns.name, || {
        let lb0 = netns::ifindex("lb0");
        anyhow::ensure!(lb0 > 1, "lb0 has no index");
        let mut h = Harness::with_tables(&cfg, &[], 65_536, capacity);
        h.set_ingress(lb0);
        let floor = AuxProgram::pass()?;
        println!("bench micro: tracking {flows} full-NAT connections...");
        for i in 0..flows {
            let src = format!("172.23.{}.{}", (i >> 8) & 255, i & 255);
            let syn = Pkt::tcp(&src, 1024 + (i >> 16) as u16, "10.210.0.2", 80, TCP_SYN);
            h.run(&syn.build());
        }
        let (fwd, rev) = h.dp.nat_table_fill()?;
        let counted: Vec<(usize, u64)> = h
            .verdicts()
            .into_iter()
            .enumerate()
            .filter(|(_, n)| *n > 0)
            .collect();
        // A new connection whose candidate ports are all taken is dropped (a few in 100,000
        // at this fill): the rows say how many are tracked.
        anyhow::ensure!(
            fwd == rev && fwd * 100 >= flows as u64 * 99,
            "{fwd}/{rev} of {flows} full-NAT connections tracked; verdict counters (index, \
             count) {counted:?}"
        );
        let flows = fwd;
        let frame = |src: &str, sport: u16, dst: &str, dport: u16, flags: u8| {
            let mut p = Pkt::tcp(src, sport, dst, dport, flags);
            p.eth_src = LB_MAC;
            p.build()
        };
        let syn = frame("172.22.0.7", 1024, "10.210.0.1", 80, TCP_SYN);
        let est = frame("172.22.0.7", 1024, "10.210.0.1", 80, TCP_ACK);
        let reply = frame("10.210.0.1", 80, "172.22.0.7", 1024, TCP_ACK);
        let o = h.run(&syn);
        anyhow::ensure!(
            o.action == XDP_TX && o.out == syn,
            "full-NAT bench case open takes another path (action {})",
            o.action
        );
        let cases = [("established", &est), ("reply", &reply)];
        let [est_t, reply_t] = side_by_side(&h, &floor, "full-NAT", cases, runs, repeat)?;
        let lb = h.dp.program();
        // Each from a port of its own, as real clients' are: the client's port is the first
        // candidate, free at this fill but for a repeated one.
        let new = |i: u32| {
            let src = format!("172.24.{}.{}", (i >> 8) & 255, i & 255);
            frame(
                &src,
                20_000 + (i % 40_000) as u16,
                "10.210.0.2",
                80,
                TCP_SYN,
            )
        };
        let o = h.run(&new(u32::MAX));
        anyhow::ensure!(
            o.action == XDP_TX,
            "the full-NAT new connection case is not forwarded (action {})",
            o.action
        );
        let (mut floors, mut syns) = (Vec::new(), Vec::new());
        for i in 0..singles {
            floors.push(time_ns_at(floor.program(), &est, 1, lb0));
            syns.push(time_ns_at(lb, &new(i), 1, lb0));
        }
        let (single_floor, new_conn) = (median(floors), median(syns));
        let method =
            format!("median of {runs} interleaved rounds x {repeat} repeats; ratio per round");
        Ok(vec![
            Row {
                case: format!(
                    "full NAT established, client -> backend (source and destination), IPv4, \
                     {flows} tracked"
                ),
                ns_per_packet: est_t.0,
                ratio_to_floor: est_t.1,
                target_ratio: None,
                method: method.clone(),
            },
            Row {
                case: format!("full NAT reply, backend -> client, IPv4, {flows} tracked"),
                ns_per_packet: reply_t.0,
                ratio_to_floor: reply_t.1,
                target_ratio: None,
                method,
            },
            Row {
                case: format!(
                    "full NAT new connection (SYN: scheduler + SNAT port claim + FIB lookup + \
                     pair insert), {flows} tracked"
                ),
                ns_per_packet: new_conn,
                ratio_to_floor: new_conn / single_floor,
                target_ratio: None,
                method: format!(
                    "median of {singles} single runs, each a distinct SYN, interleaved with the \
                     floor"
                ),
            },
        ])
    })
}

/// Established and new flows with 1,000,000 flows in a 1,048,576-flow table (a shared LRU: no
/// flow is evicted), each against the floor timed the same way in the same round.
fn million_flows(quick: bool, floor: &AuxProgram) -> anyhow::Result<Vec<Row>> {
    let (flows, runs, repeat, singles) = if quick {
        (20_000u32, 3, 2_000, 300)
    } else {
        (1_000_000u32, 9, 200_000, 5_000)
    };
    let (cfg, macs) = config();
    let macs: Vec<(&str, [u8; 6])> = macs.iter().map(|(a, m)| (a.as_str(), *m)).collect();
    let h = Harness::with_flow_table(&cfg, &macs, 1 << 20);
    println!("bench micro: filling a 1,048,576-flow table with {flows} flows...");
    for i in 0..flows {
        let src = format!("100.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        h.run(&Pkt::tcp(&src, 1024, "10.200.0.1", 80, TCP_SYN).build());
    }
    let have = h.dp.flow_count()?;
    anyhow::ensure!(have == flows as usize, "{have} of {flows} flows kept");
    let lb = h.dp.program();
    let est = Pkt::tcp("100.0.1.7", 1024, "10.200.0.1", 80, TCP_ACK).build();
    let o = h.run(&est);
    anyhow::ensure!(o.action == XDP_TX, "the established case is not forwarded");
    let mut ratios = Vec::new();
    let mut ns = Vec::new();
    for _ in 0..runs {
        let f = time_ns(floor.program(), &est, repeat);
        let t = time_ns(lb, &est, repeat);
        ns.push(t);
        ratios.push(t / f);
    }
    let (mut floors, mut syns) = (Vec::new(), Vec::new());
    for i in 0..singles {
        floors.push(time_ns(floor.program(), &est, 1));
        let src = format!("101.0.{}.{}", (i >> 8) & 255, i & 255);
        syns.push(time_ns(
            lb,
            &Pkt::tcp(&src, 5000, "10.200.0.2", 80, TCP_SYN).build(),
            1,
        ));
    }
    let (single_floor, new_flow) = (median(floors), median(syns));
    Ok(vec![
        Row {
            case: format!("established flow, IPv4, {flows} flows in the table"),
            ns_per_packet: median(ns),
            ratio_to_floor: median(ratios),
            target_ratio: Some(4.0),
            method: format!(
                "median of {runs} interleaved rounds x {repeat} repeats; ratio per round"
            ),
        },
        Row {
            case: format!("new flow, {flows} flows in the table"),
            ns_per_packet: new_flow,
            ratio_to_floor: new_flow / single_floor,
            target_ratio: Some(8.0),
            method: format!(
                "median of {singles} single runs, each a distinct SYN, interleaved with the floor"
            ),
        },
    ])
}
