//! The bench's output: a terminal/markdown table, JSON, and an SVG chart.

use serde::Serialize;

use super::{
    attack::AttackRow, e2e, health_cost::HealthCost, micro, peers::PeerKind, wrk::ConnMode,
};

#[derive(Serialize)]
pub struct Report {
    pub date: String,
    pub machine: String,
    pub kernel: String,
    pub cpus: usize,
    pub load_average_before: String,
    pub quick: bool,
    pub micro: Vec<micro::Row>,
    /// The NAT tables' memory per tracked connection.
    pub nat_memory: Option<micro::NatMemory>,
    pub e2e: Vec<e2e::Row>,
    pub attack: Vec<AttackRow>,
    pub health: Option<HealthCost>,
    /// The active node of a pair crashes under load (`failover.rs`).
    pub failover: Vec<super::failover::Row>,
    /// `foobar-lb maglev-stats` output (release build).
    pub maglev: Option<serde_json::Value>,
    /// Ratios the issue sets as targets, computed from this run.
    pub targets: Vec<Target>,
}

#[derive(Serialize)]
pub struct Target {
    pub what: String,
    pub measured: f64,
    pub target: String,
    pub met: bool,
}

impl Report {
    /// A report with no part yet, for the runs of one part (`--failover-only`, `--nat-only`).
    pub fn empty(quick: bool) -> Report {
        Report {
            date: super::text("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            machine: super::text("hostname", &[]),
            kernel: super::text("uname", &["-r"]),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_average_before: String::new(),
            quick,
            micro: Vec::new(),
            nat_memory: None,
            e2e: Vec::new(),
            attack: Vec::new(),
            health: None,
            failover: Vec::new(),
            maglev: None,
            targets: Vec::new(),
        }
    }
}

pub fn markdown(r: &Report) -> String {
    let mut s =
        format!(
        "# foobar-lb benchmark\n\n{} on `{}` (kernel {}, {} CPUs), load average before: {}{}\n\n",
        r.date,
        r.machine,
        r.kernel,
        r.cpus,
        r.load_average_before,
        if r.quick { " — **quick run: figures not meaningful**" } else { "" }
    );
    if !r.micro.is_empty() {
        s += "## Per-packet cost (BPF_PROG_TEST_RUN)\n\n| case | ns/packet | x floor | target | method |\n|---|---:|---:|---:|---|\n";
    }
    for m in &r.micro {
        s += &format!(
            "| {} | {:.1} | {:.2} | {} | {} |\n",
            m.case,
            m.ns_per_packet,
            m.ratio_to_floor,
            m.target_ratio.map(|t| format!("≤ {t}")).unwrap_or_default(),
            m.method
        );
    }
    if let Some(m) = &r.nat_memory {
        s += &format!(
            "\nNAT connection tables: {:.0} bytes per tracked connection (kernel memlock of both \
             preallocated tables, {} bytes, over their capacity of {}; a connection's keys and \
             values are {} bytes, the rest is the hash table's per-element overhead).\n",
            m.bytes_per_connection, m.memlock_bytes, m.capacity, m.key_value_bytes
        );
    }
    if !r.failover.is_empty() {
        s += "\n## Failover (keepalived pair, the active node crashes under load)\n\n\
              | balancer | new connections failed | keep-alive connections lost | resets | 4 MiB download | takeover ms |\n\
              |---|---:|---:|---:|---|---:|\n";
        for f in &r.failover {
            s += &format!(
                "| {} | {} of {} | {} of {} | {} | {} | {:.0} |\n",
                f.balancer.label(),
                f.new_failed,
                f.new_connections,
                f.keepalive_lost,
                f.keepalive_connections,
                f.resets,
                if f.download_intact {
                    "intact"
                } else {
                    "broken"
                },
                f.takeover_ms
            );
        }
    }
    if !r.e2e.is_empty() {
        s += "\n## End to end (wrk, client → balancer → 2 nginx)\n\n| peer | mode | req/s | p50 ms | p99 ms | errors | web1 | web2 |\n|---|---|---:|---:|---:|---:|---:|---:|\n";
        for e in &r.e2e {
            s += &format!(
                "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {} |\n",
                e.peer.label(),
                e.mode.label(),
                e.requests_per_sec,
                e.p50_ms,
                e.p99_ms,
                e.errors,
                e.web1,
                e.web2
            );
        }
    }
    if !r.attack.is_empty() {
        s += "\n## Under a SYN flood from a blocked source (new connection per request)\n\n| defence | legit req/s | flood drops/s | errors |\n|---|---:|---:|---:|\n";
        for a in &r.attack {
            s += &format!(
                "| {} | {:.0} | {:.0} | {} |\n",
                a.defence.label(),
                a.legit_requests_per_sec,
                a.flood_drops_per_sec,
                a.errors
            );
        }
    }
    if let Some(h) = &r.health {
        s += &format!(
            "\n## Health checking cost\n\n{} backends, {} every {} ms: the daemon used {:.1}% of one core over {:.0} s ({} of {} up).\n",
            h.backends, h.check, h.interval_ms, h.cpu_percent_of_one_core, h.seconds, h.backends_up, h.backends
        );
    }
    if let Some(m) = &r.maglev {
        let f = |k: &str| m.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        s += &format!(
            "\n## Maglev (`foobar-lb maglev-stats`, release build)\n\n| backends | table | build ms | max/mean slots | min/mean slots | other slots moved when 1 leaves |\n|---:|---:|---:|---:|---:|---:|\n| {} | {} | {:.2} | {:.3} | {:.3} | {:.2}% |\n",
            f("backends"),
            f("table_size"),
            f("build_ms"),
            f("max_over_mean"),
            f("min_over_mean"),
            f("moved_when_one_removed") * 100.0
        );
    }
    if !r.targets.is_empty() {
        s += "\n## Targets (ratios from this run)\n\n| what | measured | target | met |\n|---|---:|---|---|\n";
    }
    for t in &r.targets {
        s += &format!(
            "| {} | {:.2} | {} | {} |\n",
            t.what,
            t.measured,
            t.target,
            if t.met { "yes" } else { "**no**" }
        );
    }
    s
}

/// A bar chart of requests/s per peer (new connection per request and keep-alive), with p99.
pub fn svg(r: &Report) -> String {
    let peers: Vec<PeerKind> = {
        let mut v = Vec::new();
        for e in &r.e2e {
            if !v.contains(&e.peer) {
                v.push(e.peer);
            }
        }
        v
    };
    let max = r
        .e2e
        .iter()
        .map(|e| e.requests_per_sec)
        .fold(1.0f64, f64::max);
    let (w, row_h, left) = (900.0, 46.0, 300.0);
    let h = 70.0 + row_h * peers.len() as f64;
    let bar_w = |v: f64| (v / max) * (w - left - 230.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"20\" font-size=\"15\" font-weight=\"bold\">foobar-lb benchmark: requests/s (p99 latency) — {} on {}</text>\n\
         <rect x=\"10\" y=\"32\" width=\"12\" height=\"10\" fill=\"#d9534f\"/><text x=\"26\" y=\"41\">new connection per request</text>\n\
         <rect x=\"210\" y=\"32\" width=\"12\" height=\"10\" fill=\"#5b9bd5\"/><text x=\"226\" y=\"41\">keep-alive</text>\n",
        r.date, r.machine
    );
    for (i, p) in peers.iter().enumerate() {
        let y = 55.0 + row_h * i as f64;
        s += &format!(
            "<text x=\"10\" y=\"{}\">{}</text>\n",
            y + 20.0,
            xml(&p.label())
        );
        for (j, (mode, color)) in [
            (ConnMode::NewConnectionPerRequest, "#d9534f"),
            (ConnMode::KeepAlive, "#5b9bd5"),
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(e) = r.e2e.iter().find(|e| e.peer == *p && e.mode == mode) {
                let by = y + 4.0 + 19.0 * j as f64;
                let bw = bar_w(e.requests_per_sec).max(1.0);
                s += &format!(
                    "<rect x=\"{left}\" y=\"{by}\" width=\"{bw:.1}\" height=\"16\" fill=\"{color}\"/>\n<text x=\"{:.1}\" y=\"{:.1}\">{:.0} req/s (p99 {:.2} ms)</text>\n",
                    left + bw + 5.0,
                    by + 12.0,
                    e.requests_per_sec,
                    e.p99_ms
                );
            }
        }
    }
    s + "</svg>\n"
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use foobar_lb::config::XdpMode;

    use super::*;
    use crate::bench::attack::Defence;

    // The enums render as the labels the string-keyed rows had, in the table and in the JSON.
    #[test]
    fn rows_render_as_labels() {
        let r = Report {
            date: String::new(),
            machine: String::new(),
            kernel: String::new(),
            cpus: 1,
            load_average_before: String::new(),
            quick: false,
            micro: Vec::new(),
            nat_memory: Some(micro::NatMemory {
                capacity: 4,
                key_value_bytes: 208,
                memlock_bytes: 1200,
                bytes_per_connection: 300.0,
            }),
            e2e: vec![e2e::Row {
                peer: PeerKind::FoobarLb(XdpMode::Generic),
                mode: ConnMode::NewConnectionPerRequest,
                requests_per_sec: 1000.0,
                p50_ms: 1.0,
                p99_ms: 2.0,
                errors: 0,
                web1: 3,
                web2: 4,
            }],
            attack: vec![AttackRow {
                defence: Defence::NftablesIngressDrop,
                legit_requests_per_sec: 10.0,
                flood_drops_per_sec: 20.0,
                errors: 5,
            }],
            failover: Vec::new(),
            health: None,
            maglev: None,
            targets: Vec::new(),
        };
        let md = markdown(&r);
        assert!(md.contains(
            "| foobar-lb [generic] | new connection per request | 1000 | 1.00 | 2.00 | 0 | 3 | 4 |\n"
        ));
        assert!(md.contains("| nftables ingress drop + DNAT | 10 | 20 | 5 |\n"));
        assert!(md.contains("NAT connection tables: 300 bytes per tracked connection"));
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.contains(r#""peer":"foobar-lb [generic]","mode":"new connection per request""#)
        );
        assert!(json.contains(r#""defence":"nftables ingress drop + DNAT""#));
        assert!(svg(&r).contains(">foobar-lb [generic]</text>"));
    }
}
