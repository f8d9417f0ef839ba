//! Prometheus metrics: `GET /metrics` in OpenMetrics text, built per scrape from the daemon's
//! snapshot (the same numbers `foobar-lb stats` shows).

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::{mpsc, oneshot},
};

use crate::api::{Request, Response, StatsSnapshot};

type Labels = Vec<(String, String)>;

/// Renders a snapshot as OpenMetrics text.
pub fn render(s: &StatsSnapshot) -> String {
    let mut reg = Registry::with_prefix("foobar_lb");
    let counter = |reg: &mut Registry, name: &str, help: &str| {
        let f = Family::<Labels, Counter>::default();
        reg.register(name, help, f.clone());
        f
    };
    let gauge = |reg: &mut Registry, name: &str, help: &str| {
        let f = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        reg.register(name, help, f.clone());
        f
    };
    let verdicts = counter(
        &mut reg,
        "verdict_packets",
        "Packets by XDP verdict and reason",
    );
    for (name, n) in &s.verdicts {
        verdicts
            .get_or_create(&vec![("verdict".into(), name.clone())])
            .inc_by(*n);
    }
    let svc_packets = counter(&mut reg, "service_packets", "Packets forwarded per service");
    let svc_bytes = counter(&mut reg, "service_bytes", "Bytes forwarded per service");
    let svc_flows = counter(
        &mut reg,
        "service_new_flows",
        "New flows scheduled per service",
    );
    let be_packets = counter(&mut reg, "backend_packets", "Packets forwarded per backend");
    let be_bytes = counter(&mut reg, "backend_bytes", "Bytes forwarded per backend");
    let be_flows = counter(
        &mut reg,
        "backend_new_flows",
        "New flows scheduled per backend",
    );
    let be_active = gauge(
        &mut reg,
        "backend_active_flows",
        "Open connections per backend (flows without FIN/RST seen)",
    );
    let be_up = gauge(
        &mut reg,
        "backend_up",
        "1 if the last health state is up (or unchecked)",
    );
    let be_serving = gauge(
        &mut reg,
        "backend_in_pool",
        "1 if the backend takes new flows",
    );
    let be_rate = gauge(
        &mut reg,
        "backend_packets_per_second",
        "Forwarded packets/s (2 s window)",
    );
    let be_latency = gauge(
        &mut reg,
        "backend_check_latency_seconds",
        "Last successful check time",
    );
    for svc in &s.services {
        let l = vec![("service".to_string(), svc.name.clone())];
        svc_packets.get_or_create(&l).inc_by(svc.counters.packets);
        svc_bytes.get_or_create(&l).inc_by(svc.counters.bytes);
        svc_flows.get_or_create(&l).inc_by(svc.counters.new_flows);
        for b in &svc.backends {
            let l = vec![
                ("service".to_string(), svc.name.clone()),
                ("backend".to_string(), b.address.clone()),
                ("role".to_string(), format!("{:?}", b.role).to_lowercase()),
            ];
            be_packets.get_or_create(&l).inc_by(b.counters.packets);
            be_bytes.get_or_create(&l).inc_by(b.counters.bytes);
            be_flows.get_or_create(&l).inc_by(b.counters.new_flows);
            be_active.get_or_create(&l).set(b.flows as f64);
            be_rate.get_or_create(&l).set(b.packets_per_sec);
            let up = matches!(b.health.as_str(), "up" | "unchecked");
            be_up.get_or_create(&l).set(if up { 1.0 } else { 0.0 });
            be_serving
                .get_or_create(&l)
                .set(if b.state == "active" { 1.0 } else { 0.0 });
            if let Some(ms) = b.check_latency_ms {
                be_latency.get_or_create(&l).set(ms / 1000.0);
            }
        }
    }
    let rule_packets = counter(
        &mut reg,
        "firewall_rule_packets",
        "Packets matched per rule",
    );
    let rule_bytes = counter(&mut reg, "firewall_rule_bytes", "Bytes matched per rule");
    for r in &s.firewall.rules {
        let l = vec![
            ("rule".to_string(), r.index.to_string()),
            ("spec".to_string(), r.rule.clone()),
        ];
        rule_packets.get_or_create(&l).inc_by(r.packets);
        rule_bytes.get_or_create(&l).inc_by(r.bytes);
    }
    let blocked = gauge(
        &mut reg,
        "firewall_blocklist_prefixes",
        "Prefixes in the block list",
    );
    blocked
        .get_or_create(&vec![])
        .set(s.firewall.blocklist_prefixes as f64);
    let flows = gauge(&mut reg, "flows", "Entries in the flow table");
    flows.get_or_create(&vec![]).set(s.flows as f64);
    let writes = counter(
        &mut reg,
        "map_writes",
        "Service and backend map writes by this daemon (0 after a restart that changed nothing)",
    );
    writes.get_or_create(&vec![]).inc_by(s.map_writes);
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}

/// Serves `/metrics` until the daemon stops; each scrape asks the daemon for a snapshot.
pub async fn serve(
    listener: TcpListener,
    daemon: mpsc::Sender<(Request, oneshot::Sender<Response>)>,
) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let daemon = daemon.clone();
        tokio::spawn(async move {
            // Read the request head (bounded); only the request line matters.
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            while len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf[len..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => len += n,
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let (status, body) = if head.starts_with("GET /metrics ") {
                let (tx, rx) = oneshot::channel();
                let snap = match daemon.send((Request::Stats, tx)).await {
                    Ok(()) => rx.await.ok().and_then(|r| r.stats),
                    Err(_) => None,
                };
                match snap {
                    Some(s) => ("200 OK", render(&s)),
                    None => ("503 Service Unavailable", "daemon is stopping\n".into()),
                }
            } else {
                ("404 Not Found", "try /metrics\n".into())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
        });
    }
}
