//! `foobar-lb top`: a live terminal view of every backend, sorted by packet rate (or by open
//! flows), refreshed every second, with the drops of the last interval. `q` or Esc quits, `s`
//! switches the sort.

use std::{path::Path, time::Duration};

use foobar_lb::api::StatsSnapshot;
use ratatui::{
    crossterm::event::{self, Event, KeyCode},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Row, Table},
    Frame,
};

use super::stats::{rates, Rates};

#[derive(clap::Args)]
pub struct Args {
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Sort {
    PacketRate,
    OpenFlows,
}

pub async fn run(socket: &Path, args: Args) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "top needs a terminal; in scripts use `foobar-lb status --watch` or `stats --rate`"
        );
    }
    let every = Duration::from_secs_f64(args.interval.clamp(0.2, 60.0));
    let mut prev = super::stats::snapshot(socket).await?;
    let mut at = std::time::Instant::now();
    let mut sort = Sort::PacketRate;
    let mut terminal = ratatui::init();
    let result = async {
        loop {
            // Keys are read while waiting for the next sample.
            if event::poll(every)? {
                if let Event::Key(k) = event::read()? {
                    match k.code {
                        KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                        KeyCode::Char('s') => {
                            sort = if sort == Sort::PacketRate {
                                Sort::OpenFlows
                            } else {
                                Sort::PacketRate
                            }
                        }
                        _ => {}
                    }
                }
            }
            let cur = super::stats::snapshot(socket).await?;
            let r = rates(&prev, &cur, at.elapsed().as_secs_f64());
            at = std::time::Instant::now();
            terminal.draw(|f| view(f, &cur, &r, sort))?;
            prev = cur;
        }
    }
    .await;
    ratatui::restore();
    result
}

/// One row per backend: (service, backend, health, state, open flows, pkt/s, bytes/s, new/s).
fn rows(s: &StatsSnapshot, r: &Rates, sort: Sort) -> Vec<[String; 8]> {
    let mut rows: Vec<(f64, u64, [String; 8])> = Vec::new();
    for svc in &s.services {
        let rs = r.services.iter().find(|x| x.name == svc.name);
        for b in &svc.backends {
            let (p, by, nf) = rs
                .and_then(|x| x.backends.iter().find(|(a, ..)| *a == b.address))
                .map_or((0.0, 0.0, 0.0), |(_, p, by, nf)| (*p, *by, *nf));
            let state = if b.drained { "drained" } else { &b.state };
            rows.push((
                p,
                b.flows,
                [
                    svc.name.clone(),
                    b.address.clone(),
                    b.health.clone(),
                    state.to_string(),
                    b.flows.to_string(),
                    format!("{p:.1}"),
                    format!("{by:.0}"),
                    format!("{nf:.1}"),
                ],
            ));
        }
    }
    match sort {
        Sort::PacketRate => rows.sort_by(|a, b| b.0.total_cmp(&a.0)),
        Sort::OpenFlows => rows.sort_by_key(|r| std::cmp::Reverse(r.1)),
    }
    rows.into_iter().map(|(_, _, r)| r).collect()
}

fn view(f: &mut Frame, s: &StatsSnapshot, r: &Rates, sort: Sort) {
    let [head, table, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(2),
    ])
    .areas(f.area());
    f.render_widget(
        Line::from(format!(
            "foobar-lb top — {} service(s), {} open flows, flow table {}/{} — sorted by {} (s: switch, q: quit)",
            s.services.len(),
            s.flows,
            s.flow_table_entries,
            s.flow_table_size,
            if sort == Sort::PacketRate { "packets/s" } else { "open flows" }
        )),
        head,
    );
    let header = Row::new([
        "SERVICE", "BACKEND", "HEALTH", "STATE", "FLOWS", "PKT/S", "BYTES/S", "NEW/S",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let widths = [
        Constraint::Length(16),
        Constraint::Length(26),
        Constraint::Length(9),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Length(12),
        Constraint::Length(8),
    ];
    let body = rows(s, r, sort).into_iter().map(Row::new);
    f.render_widget(
        Table::new(body, widths)
            .header(header)
            .block(Block::bordered().title("backends")),
        table,
    );
    let drops: Vec<String> = r
        .verdicts
        .iter()
        .filter(|(n, _)| n.starts_with("drop_") || n == "aborted")
        .map(|(n, v)| format!("{n} {v:.1}/s"))
        .collect();
    f.render_widget(
        Line::from(if drops.is_empty() {
            "drops: none in the last interval".to_string()
        } else {
            format!("drops: {}", drops.join("  "))
        }),
        foot,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::{backend::TestBackend, Terminal};

    fn snap(a: u64, b: u64) -> StatsSnapshot {
        let backend = |addr: &str, packets: u64, flows: u64| {
            serde_json::json!({
                "address": addr, "role": "primary", "weight": 1, "mac": null, "health": "up",
                "last_error": null, "check_latency_ms": null, "drained": false,
                "state": "active", "flows": flows,
                "counters": {"packets": packets, "bytes": packets * 100, "new_flows": 0}
            })
        };
        serde_json::from_value(serde_json::json!({
            "verdicts": [["tx", a + b], ["drop_blocklist", a]],
            "flows": 7, "flow_table_entries": 9, "flow_table_size": 1024,
            "services": [{
                "name": "www", "vip": "10.0.0.100", "port": 80, "protocol": "tcp",
                "counters": {"packets": a + b, "bytes": 0, "new_flows": 0},
                "backends": [backend("10.0.0.11", a, 5), backend("10.0.0.12", b, 2)]
            }]
        }))
        .unwrap()
    }

    fn screen(s: &StatsSnapshot, r: &Rates, sort: Sort) -> String {
        let mut t = Terminal::new(TestBackend::new(120, 12)).unwrap();
        t.draw(|f| view(f, s, r, sort)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn backends_are_listed_busiest_first_and_drops_shown() {
        let (a, b) = (snap(100, 100), snap(200, 1100));
        let r = rates(&a, &b, 1.0);
        let text = screen(&b, &r, Sort::PacketRate);
        let first = text.find("10.0.0.12").expect("web2 shown");
        let second = text.find("10.0.0.11").expect("web1 shown");
        assert!(first < second, "the busier backend first:\n{text}");
        assert!(text.contains("1000.0"), "{text}");
        assert!(text.contains("drop_blocklist 100.0/s"), "{text}");
        assert!(text.contains("flow table 9/1024"), "{text}");
        // Sorted by open flows, web1 (5) comes first.
        let text = screen(&b, &r, Sort::OpenFlows);
        assert!(
            text.find("10.0.0.11").unwrap() < text.find("10.0.0.12").unwrap(),
            "{text}"
        );
    }
}
