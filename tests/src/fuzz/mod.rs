//! Differential fuzzing: random and mutated frames through the real XDP program
//! (BPF_PROG_TEST_RUN) and through the reference model ([`crate::model`]), compared on the
//! action, the one verdict counter that moved, and the output frame.
//!
//! Deterministic: frame `i` of a run with seed `s` is drawn from its own PRNG stream
//! ([`rng::Rng::for_frame`]), so (seed, index) names it. The program's flow table carries
//! state from earlier frames; the model learns the same flows from the program's output.

pub mod mutate;
pub mod rng;
pub mod seeds;
pub mod world;

use std::collections::BTreeMap;

use foobar_lb_common::{verdict, Counters};

use crate::{
    harness::{action_name, Harness},
    model::{self, known_bugs::KNOWN_PROGRAM_BUGS, Action, Expected, Model, Provisioned},
    packet::LB_MAC,
};
use rng::Rng;
use world::World;

/// The program's flow-table size in fuzz runs; the program is reloaded (empty table) once
/// the model counts [`FLOWS_BEFORE_RELOAD`] flows, so the LRU never evicts one.
pub const FLOW_TABLE: u32 = 262_144;
pub const FLOWS_BEFORE_RELOAD: usize = 100_000;

#[derive(Debug, Clone)]
pub struct Options {
    pub frames: u64,
    pub seed: u64,
    /// Stop after this many disagreements (known program bugs not counted).
    pub max_disagreements: usize,
    /// Reload the program (an empty flow table, the world's state) once the model counts this
    /// many flows; at most [`FLOWS_BEFORE_RELOAD`].
    pub flows_before_reload: usize,
    /// A change to the provisioned state every this many frames (half-way between).
    pub event_every: u64,
}

impl Options {
    pub fn new(frames: u64, seed: u64) -> Options {
        Options {
            frames,
            seed,
            max_disagreements: 10,
            flows_before_reload: FLOWS_BEFORE_RELOAD,
            event_every: EVENT_EVERY,
        }
    }
}

/// One generated frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub index: u64,
    pub class: &'static str,
    pub mutations: Vec<&'static str>,
    pub bytes: Vec<u8>,
}

/// Frame `index` of a run seeded with `seed`: a seed frame, mutated three times in five.
pub fn frame(seed: u64, index: u64, world: &World) -> Frame {
    let mut rng = Rng::for_frame(seed, index);
    let s = seeds::seed(&mut rng, world);
    let mut bytes = s.frame;
    let mutations = if rng.chance(60) {
        mutate::mutate(&mut rng, &mut bytes, &s.layout)
    } else {
        Vec::new()
    };
    bytes.truncate(mutate::MAX_FRAME);
    Frame {
        index,
        class: s.class,
        mutations,
        bytes,
    }
}

#[derive(Debug, Clone, Default)]
pub struct ClassStats {
    pub frames: u64,
    pub agreed: u64,
    pub known_bug: u64,
    pub disagreed: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub frames: u64,
    pub agreed: u64,
    pub by_class: BTreeMap<&'static str, ClassStats>,
    /// Frames per expected verdict (what the run exercised).
    pub by_verdict: BTreeMap<&'static str, u64>,
    /// Per known program bug: frames, and the report of the first.
    pub known_bugs: BTreeMap<&'static str, (u64, String)>,
    pub disagreements: Vec<String>,
    pub reloads: u64,
    /// Changes made to the provisioned state during the run.
    pub events: Vec<String>,
    /// Frames per mutation applied ("none": the seed as built).
    pub by_mutation: BTreeMap<&'static str, u64>,
    /// Flow-table and counter comparisons made.
    pub checkpoints: u64,
    /// What the last one compared.
    pub last_checkpoint: String,
}

impl Stats {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} frames: {} agreed, {} known program bug, {} disagreements ({} flow-table and \
             counter checkpoints, {} state changes, {} program reloads)\n",
            self.frames,
            self.agreed,
            self.known_bugs.values().map(|(n, _)| n).sum::<u64>(),
            self.disagreements.len(),
            self.checkpoints,
            self.events.len(),
            self.reloads
        );
        s += "  by class (frames / agreed / known bug / disagreed):\n";
        for (c, st) in &self.by_class {
            s += &format!(
                "    {c:<16} {:>9} {:>9} {:>7} {:>7}\n",
                st.frames, st.agreed, st.known_bug, st.disagreed
            );
        }
        s += "  by expected verdict:\n";
        for (v, n) in &self.by_verdict {
            s += &format!("    {v:<20} {n:>9}\n");
        }
        s += "  mutations applied:\n   ";
        for (m, n) in &self.by_mutation {
            s += &format!(" {m} {n},");
        }
        s.pop();
        s += "\n";
        for (id, (n, _)) in &self.known_bugs {
            s += &format!("  known program bug {id}: {n} frames\n");
        }
        s += &format!("  last checkpoint compared {}\n", self.last_checkpoint);
        s
    }
}

/// The program, provisioned with [`world`]'s state, and the model of the same state.
pub struct Fuzzer {
    pub h: Harness,
    pub model: Model,
    last: Vec<u64>,
    /// What is provisioned now (events change it).
    desired: Vec<foobar_lb::desired::ServiceSpec>,
    rules: Vec<foobar_lb::firewall::RuleConfig>,
    blocklist: Vec<String>,
    /// Counters the program must show, as the model predicts them: per service and backend
    /// (model indexes), per rule position.
    services_acc: Vec<Counters>,
    backends_acc: Vec<Vec<Counters>>,
    rules_acc: Vec<Counters>,
    /// Backends removed by events: (service index, its spec), to add back.
    removed: Vec<(usize, foobar_lb::desired::BackendSpec)>,
    /// Every (backend id, owner word) the program has been given, with the backend (service
    /// index, backend index, incarnation) it named: ids are reused, owner words are not.
    ids: std::collections::HashMap<(u32, u32), (usize, usize, u32)>,
}

/// By default, a change to the provisioned state every this many frames.
pub const EVENT_EVERY: u64 = 20_000;

impl Fuzzer {
    /// Loads the program (needs root and the built object) and provisions it.
    pub fn new() -> Fuzzer {
        let macs = world::macs();
        let macs: Vec<(&str, crate::packet::Mac)> =
            macs.iter().map(|(a, m)| (a.as_str(), *m)).collect();
        let mut h = Harness::with_flow_table(world::CONFIG, &macs, FLOW_TABLE);
        let mut desired = h.desired();
        for &(svc, addr, state) in world::STATES {
            let s = desired.iter_mut().find(|s| s.name == svc).expect("service");
            let b = s
                .backends
                .iter_mut()
                .find(|b| b.addr.to_string() == addr)
                .expect("backend");
            b.state = state;
        }
        h.apply(&desired);
        let rules = world::rules();
        h.fw_rules(&rules);
        h.blocklist(world::BLOCKLIST);
        h.vip_policy_drop(true);
        let model = Model::new(Provisioned::new(LB_MAC, &h.config, &desired));
        let last = h.verdicts();
        let mut fz = Fuzzer {
            h,
            model,
            last,
            desired,
            blocklist: world::BLOCKLIST.lines().map(String::from).collect(),
            services_acc: Vec::new(),
            backends_acc: Vec::new(),
            rules_acc: vec![Counters::default(); rules.len()],
            rules,
            removed: Vec::new(),
            ids: std::collections::HashMap::new(),
        };
        for (spec, svc) in fz.desired.iter().zip(&fz.model.state.services) {
            assert_eq!(
                spec.name, svc.name,
                "model services in the desired state's order"
            );
        }
        fz.record_ids();
        fz.services_acc = vec![Counters::default(); fz.model.state.services.len()];
        fz.backends_acc = fz
            .model
            .state
            .services
            .iter()
            .map(|s| vec![Counters::default(); s.backends.len()])
            .collect();
        // The world's VIP policy is drop (set on the program above).
        fz.model.state.firewall.vip_policy_drop = true;
        fz.model.set_firewall(fz.firewall());
        fz
    }

    /// Notes the ids the program now gives the backends present.
    fn record_ids(&mut self) {
        for (s, svc) in self.model.state.services.iter().enumerate() {
            for (b, backend) in svc.backends.iter().enumerate() {
                if !backend.removed {
                    let addr = backend.addr.to_string();
                    let id = self.h.backend_id(&svc.name, &addr);
                    let owner = self.h.backend_owner(&svc.name, &addr);
                    self.ids.insert((id, owner), (s, b, backend.incarnation));
                }
            }
        }
    }

    fn firewall(&self) -> model::Firewall {
        model::Firewall {
            rules: self
                .rules
                .iter()
                .map(model::firewall::Rule::from_config)
                .collect(),
            blocklist: self
                .blocklist
                .iter()
                .map(|l| l.parse().expect("prefix"))
                .collect(),
            vip_policy_drop: self.model.state.firewall.vip_policy_drop,
        }
    }

    /// Changes the provisioned state, in the program as the daemon would and in the model:
    /// a backend's state, a backend removed or added back, a firewall rule (or all) removed or
    /// restored, a block-list prefix added or removed or the list emptied or restored (each
    /// rule or block-list change moves the generation established flows are checked
    /// against), the VIP policy switched. Returns what changed.
    pub fn event(&mut self, rng: &mut Rng) -> String {
        use foobar_lb::desired::BackendState::*;
        match rng.below(6) {
            3 => {
                let what = if !self.removed.is_empty() && rng.chance(50) {
                    let (s, spec) = self.removed.remove(rng.below(self.removed.len()));
                    let addr = spec.addr;
                    self.desired[s].backends.push(spec);
                    let b = self.model_backend(s, addr);
                    self.model.state.services[s].backends[b].removed = false;
                    // A new id, its counters reset.
                    self.backends_acc[s][b] = Counters::default();
                    format!("backend {}/{addr} added back", self.desired[s].name)
                } else {
                    let pairs: Vec<(usize, usize)> = self
                        .desired
                        .iter()
                        .enumerate()
                        .flat_map(|(s, spec)| (0..spec.backends.len()).map(move |b| (s, b)))
                        .collect();
                    let &(s, i) = rng.pick(&pairs);
                    let spec = self.desired[s].backends.remove(i);
                    let b = self.model_backend(s, spec.addr);
                    let mb = &mut self.model.state.services[s].backends[b];
                    mb.removed = true;
                    mb.incarnation += 1;
                    let what = format!("backend {}/{} removed", self.desired[s].name, spec.addr);
                    self.removed.push((s, spec));
                    what
                };
                self.h.apply(&self.desired);
                self.record_ids();
                what
            }
            0 => {
                let pairs: Vec<(usize, usize)> = self
                    .desired
                    .iter()
                    .enumerate()
                    .flat_map(|(s, spec)| (0..spec.backends.len()).map(move |b| (s, b)))
                    .collect();
                let &(s, b) = rng.pick(&pairs);
                let state = *rng.pick(&[Active, Active, Draining, Down]);
                self.desired[s].backends[b].state = state;
                self.h.apply(&self.desired);
                self.record_ids();
                let (name, addr) = (&self.desired[s].name, self.desired[s].backends[b].addr);
                let svc = self
                    .model
                    .state
                    .services
                    .iter_mut()
                    .find(|m| &m.name == name)
                    .expect("service");
                let mb = svc
                    .backends
                    .iter_mut()
                    .find(|m| m.addr == addr)
                    .expect("backend");
                mb.state = state;
                format!("backend {name}/{addr} -> {state:?}")
            }
            1 => {
                let all = world::rules();
                let what = if self.rules.len() == all.len() && rng.chance(25) {
                    // No rules: the program's rule stage is switched off.
                    self.rules.clear();
                    "all rules removed".to_string()
                } else if self.rules.len() == all.len() {
                    let i = rng.below(all.len());
                    self.rules.remove(i);
                    format!("rule {} removed", i + 1)
                } else {
                    self.rules = all;
                    "rules restored".to_string()
                };
                self.h.fw_rules(&self.rules);
                // Rule counters are per position: they restart with the list, as the daemon
                // restarts them.
                self.h
                    .dp
                    .reset_rule_counters()
                    .expect("reset rule counters");
                self.rules_acc = vec![Counters::default(); self.rules.len()];
                self.model.set_firewall(self.firewall());
                what
            }
            4 => {
                // Not a firewall generation change: the policy concerns traffic of no service,
                // so no flow's admission depends on it.
                let drop = !self.model.state.firewall.vip_policy_drop;
                self.h.vip_policy_drop(drop);
                self.model.state.firewall.vip_policy_drop = drop;
                format!("VIP policy {}", if drop { "drop" } else { "allow" })
            }
            _ => {
                let prefix = rng.pick(world::TOGGLED_BLOCKS).to_string();
                let what = if rng.chance(15) {
                    // An empty list: the program's block-list stage is switched off.
                    let was = std::mem::take(&mut self.blocklist);
                    if was.is_empty() {
                        self.blocklist = world::BLOCKLIST.lines().map(String::from).collect();
                        "block list restored".to_string()
                    } else {
                        "block list emptied".to_string()
                    }
                } else if let Some(i) = self.blocklist.iter().position(|p| *p == prefix) {
                    self.blocklist.remove(i);
                    format!("block list: {prefix} removed")
                } else {
                    self.blocklist.push(prefix.clone());
                    format!("block list: {prefix} added")
                };
                self.h.blocklist(&self.blocklist.join("\n"));
                self.model.set_firewall(self.firewall());
                what
            }
        }
    }

    /// Runs one frame through both; `Ok` if they agree, else which known bug explains the
    /// difference (`Err(Some(id))`) or a report of a new disagreement (`Err(None)` with text).
    pub fn check(&mut self, seed: u64, f: &Frame) -> Result<Expected, (Option<usize>, String)> {
        let expected = self.model.expect(&f.bytes);
        let o = self.h.run(&f.bytes);
        let now = self.h.verdicts();
        let moved: Vec<(usize, u64)> = now
            .iter()
            .zip(&self.last)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| (i, a - b))
            .collect();
        self.last = now;
        let iface = self.model.state.iface_mac;
        let result = match agrees(&expected, o.action, &moved, &f.bytes, &o.out, iface) {
            Ok(()) => Ok(expected.clone()),
            Err(why) => {
                let known = KNOWN_PROGRAM_BUGS.iter().position(|bug| {
                    let e = self.model.expect_with(&f.bytes, bug.quirks);
                    agrees(&e, o.action, &moved, &f.bytes, &o.out, iface).is_ok()
                });
                Err((
                    known,
                    report(
                        seed,
                        f,
                        &expected,
                        &why,
                        o.action,
                        &moved,
                        &o.out,
                        &self.model,
                    ),
                ))
            }
        };
        // Learn from what the program did, whatever the verdict.
        let effect_of = match &result {
            Err((Some(i), _)) => self
                .model
                .expect_with(&f.bytes, KNOWN_PROGRAM_BUGS[*i].quirks),
            _ => expected,
        };
        self.model.observe(&effect_of, o.action, &o.out);
        self.count(&effect_of, o.action, f.bytes.len() as u64);
        result
    }

    /// Index in the model's service `s` of the backend at `addr`.
    fn model_backend(&self, s: usize, addr: std::net::IpAddr) -> usize {
        self.model.state.services[s]
            .backends
            .iter()
            .position(|b| b.addr == addr)
            .expect("backend")
    }

    /// Adds a frame to the counters the program must show.
    fn count(&mut self, e: &Expected, action: u32, bytes: u64) {
        if let Some(i) = e.rule_hit {
            self.rules_acc[i].packets += 1;
            self.rules_acc[i].bytes += bytes;
        }
        if action != crate::harness::XDP_TX {
            return;
        }
        let (key, new) = match e.effect {
            model::Effect::NewFlow { key, .. } => (key, true),
            model::Effect::Known { key, .. } | model::Effect::IcmpError { key } => (key, false),
            model::Effect::None => return,
        };
        let Some(flow) = self.model.flows.get(&key) else {
            return;
        };
        for c in [
            &mut self.services_acc[flow.service],
            &mut self.backends_acc[flow.service][flow.backend],
        ] {
            c.packets += 1;
            c.bytes += bytes;
            c.new_flows += new as u64;
        }
    }

    /// Compares what only accumulates: the flow table (keys, backends, FIN/RST), the service,
    /// backend and rule counters. Returns what differs.
    pub fn checkpoint(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let services = &self.model.state.services;
        let program = program_flows(&self.h);
        if program.len() != self.model.flows.len() {
            problems.push(format!(
                "flow table holds {} flows, the model {}",
                program.len(),
                self.model.flows.len()
            ));
        }
        for (key, id, owner, fin, rst) in &program {
            match self.model.flows.get(key) {
                None => problems.push(format!("flow {key:?} in the program only")),
                Some(f) => {
                    let want = (f.service, f.backend, f.incarnation);
                    if self.ids.get(&(*id, *owner)) != Some(&want) || (f.fin, f.rst) != (*fin, *rst)
                    {
                        problems.push(format!(
                            "flow {key:?}: program backend id {id} owner {owner:#x} fin {fin} \
                             rst {rst}, model {}/{} (incarnation {}) fin {} rst {}",
                            services[f.service].name,
                            services[f.service].backends[f.backend].addr,
                            f.incarnation,
                            f.fin,
                            f.rst
                        ));
                    }
                }
            }
        }
        for (s, svc) in services.iter().enumerate() {
            let got = self.h.service_counters(&svc.name);
            if got != self.services_acc[s] {
                problems.push(format!(
                    "service {} counters {got:?}, model {:?}",
                    svc.name, self.services_acc[s]
                ));
            }
            for (b, backend) in svc.backends.iter().enumerate().filter(|(_, b)| !b.removed) {
                let got = self
                    .h
                    .backend_counters(&svc.name, &backend.addr.to_string());
                if got != self.backends_acc[s][b] {
                    problems.push(format!(
                        "backend {}/{} counters {got:?}, model {:?}",
                        svc.name, backend.addr, self.backends_acc[s][b]
                    ));
                }
            }
        }
        let rules = self
            .h
            .dp
            .rule_counters(self.rules.len())
            .expect("rule counters");
        for (i, (got, want)) in rules.iter().zip(&self.rules_acc).enumerate() {
            if (got.packets, got.bytes) != (want.packets, want.bytes) {
                problems.push(format!(
                    "rule {} counted {} packets / {} bytes, model {} / {}",
                    i + 1,
                    got.packets,
                    got.bytes,
                    want.packets,
                    want.bytes
                ));
            }
        }
        problems.truncate(20);
        problems
    }
}

impl Default for Fuzzer {
    fn default() -> Fuzzer {
        Fuzzer::new()
    }
}

/// Whether the program's outcome is the expected one; else what differs.
pub fn agrees(
    e: &Expected,
    action: u32,
    moved: &[(usize, u64)],
    frame: &[u8],
    out: &[u8],
    iface: crate::packet::Mac,
) -> Result<(), String> {
    let mut why = Vec::new();
    if action != e.action.xdp() {
        why.push(format!(
            "action {} (expected {})",
            action_name(action),
            action_name(e.action.xdp())
        ));
    }
    if moved != [(e.verdict as usize, 1)] {
        why.push(format!(
            "counters moved {} (expected {} +1)",
            moved_names(moved),
            verdict::NAMES[e.verdict as usize]
        ));
    }
    match e.action {
        Action::Pass | Action::Drop => {
            if out != frame {
                why.push("frame modified".into());
            }
        }
        Action::Tx => {
            if out.len() != frame.len() || out.len() < 14 {
                why.push(format!(
                    "output length {} (input {})",
                    out.len(),
                    frame.len()
                ));
            } else {
                if out[6..12] != iface {
                    why.push("source MAC is not the interface's".into());
                }
                if out[12..] != frame[12..] {
                    why.push("bytes after the MACs changed".into());
                }
                if !e.allowed.iter().any(|m| out[0..6] == *m) {
                    why.push(format!(
                        "sent to {} (allowed: {})",
                        crate::packet::mac_str(&out[0..6]),
                        e.allowed
                            .iter()
                            .map(|m| crate::packet::mac_str(m))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why.join("; "))
    }
}

fn moved_names(moved: &[(usize, u64)]) -> String {
    let v: Vec<String> = moved
        .iter()
        .map(|(i, n)| format!("{} +{n}", verdict::NAMES.get(*i).unwrap_or(&"?")))
        .collect();
    format!("[{}]", v.join(", "))
}

/// A frame decoded by etherparse (lax: it decodes as far as the bytes allow).
pub fn decoded(frame: &[u8]) -> String {
    match etherparse::LaxPacketHeaders::from_ethernet(frame) {
        Ok(p) => format!(
            "link: {:?}\n      vlan: {:?}\n      net: {:?}\n      transport: {:?}\n      payload: {} bytes{}",
            p.link,
            p.link_exts,
            p.net,
            p.transport,
            p.payload.slice().len(),
            p.stop_err
                .map(|(e, layer)| format!("\n      stopped at {layer:?}: {e}"))
                .unwrap_or_default()
        ),
        Err(e) => format!("undecodable: {e}"),
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[allow(clippy::too_many_arguments)]
fn report(
    seed: u64,
    f: &Frame,
    e: &Expected,
    why: &str,
    action: u32,
    moved: &[(usize, u64)],
    out: &[u8],
    m: &Model,
) -> String {
    let parsed = model::decode::parse(&f.bytes);
    let flow = match &parsed {
        model::decode::Parsed::Flow(p) => format!("{:?}", m.flows.get(&p.key)),
        _ => "-".into(),
    };
    format!(
        "DISAGREEMENT seed={seed} frame={} class={} mutations={:?}\n  \
         differs: {why}\n  \
         expected: {} counted {} to {:?}\n  \
         program:  {} counted {}\n  \
         model's parse: {parsed:?}\n  model's flow entry: {flow}\n  \
         input  ({} bytes): {}\n      {}\n  \
         output ({} bytes): {}\n      {}\n",
        f.index,
        f.class,
        f.mutations,
        action_name(e.action.xdp()),
        verdict::NAMES[e.verdict as usize],
        e.allowed
            .iter()
            .map(|m| crate::packet::mac_str(m))
            .collect::<Vec<_>>(),
        action_name(action),
        moved_names(moved),
        f.bytes.len(),
        hex(&f.bytes),
        decoded(&f.bytes),
        out.len(),
        hex(out),
        decoded(out),
    )
}

/// Runs `opts.frames` frames; `progress` is called every 100,000 frames.
pub fn run(opts: &Options, mut progress: impl FnMut(&Stats)) -> Stats {
    let world = World::new();
    let mut fz = Fuzzer::new();
    let mut st = Stats::default();
    for i in 0..opts.frames {
        if fz.model.flows.len() >= opts.flows_before_reload.min(FLOWS_BEFORE_RELOAD) {
            checkpoint(&fz, &mut st, opts.seed, i);
            // An empty table again, so the program's LRU never evicts a flow the model keeps.
            drop(fz);
            fz = Fuzzer::new();
            st.reloads += 1;
        }
        if i > 0 && i % CHECKPOINT_EVERY == 0 {
            checkpoint(&fz, &mut st, opts.seed, i);
        }
        if i % opts.event_every == opts.event_every / 2 {
            let mut rng = Rng::for_frame(opts.seed ^ 0x5eed_e7e7, i);
            let what = fz.event(&mut rng);
            st.events.push(format!("frame {i}: {what}"));
        }
        let f = frame(opts.seed, i, &world);
        if f.mutations.is_empty() {
            *st.by_mutation.entry("none").or_default() += 1;
        }
        for m in &f.mutations {
            *st.by_mutation.entry(m).or_default() += 1;
        }
        let class = st.by_class.entry(f.class).or_default();
        class.frames += 1;
        st.frames += 1;
        match fz.check(opts.seed, &f) {
            Ok(e) => {
                class.agreed += 1;
                st.agreed += 1;
                let name = match e.effect {
                    model::Effect::NewFlow { .. } => "tx (new flow)",
                    model::Effect::Known { .. } => "tx (known flow)",
                    model::Effect::IcmpError { .. } => "tx (ICMP error)",
                    model::Effect::None => verdict::NAMES[e.verdict as usize],
                };
                *st.by_verdict.entry(name).or_default() += 1;
            }
            Err((Some(bug), text)) => {
                class.known_bug += 1;
                let entry = st
                    .known_bugs
                    .entry(KNOWN_PROGRAM_BUGS[bug].id)
                    .or_insert((0, text));
                entry.0 += 1;
            }
            Err((None, text)) => {
                class.disagreed += 1;
                st.disagreements.push(text);
                if st.disagreements.len() >= opts.max_disagreements {
                    break;
                }
            }
        }
        if (i + 1) % 100_000 == 0 {
            progress(&st);
        }
    }
    if st.disagreements.len() < opts.max_disagreements {
        let frames = st.frames;
        checkpoint(&fz, &mut st, opts.seed, frames);
    }
    st
}

/// Flow table and counters are compared every this many frames (and at the end).
pub const CHECKPOINT_EVERY: u64 = 10_000;

fn checkpoint(fz: &Fuzzer, st: &mut Stats, seed: u64, before: u64) {
    st.checkpoints += 1;
    st.last_checkpoint = format!(
        "{} flows, {} forwarded packets over {} services, {} rule matches",
        fz.model.flows.len(),
        fz.services_acc.iter().map(|c| c.packets).sum::<u64>(),
        fz.services_acc.len(),
        fz.rules_acc.iter().map(|c| c.packets).sum::<u64>()
    );
    let problems = fz.checkpoint();
    if !problems.is_empty() {
        st.disagreements.push(format!(
            "DISAGREEMENT seed={seed} checkpoint before frame {before} (flows and counters \
             since the last one, {CHECKPOINT_EVERY} frames):\n  {}\n",
            problems.join("\n  ")
        ));
    }
}

/// The program's flow table, read through the map's kernel id (the controller's `Dataplane`
/// offers counts only): (key, backend id, owner word, FIN seen, RST seen).
pub fn program_flows(h: &Harness) -> Vec<(model::FlowKey, u32, u32, bool, bool)> {
    use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapInfo};
    use foobar_lb_common::{FlowKey, FlowValue, FAMILY_V4, FLOW_FIN, FLOW_RST};
    let ids =
        h.dp.program()
            .info()
            .expect("program info")
            .map_ids()
            .expect("map ids")
            .unwrap_or_default();
    let id = ids
        .into_iter()
        .find(|&id| MapInfo::from_id(id).is_ok_and(|i| i.name_as_str() == Some("FLOWS")))
        .expect("the program uses FLOWS");
    let map = Map::from_map_data(MapData::from_id(id).expect("FLOWS by id")).expect("map");
    let flows: BpfHashMap<MapData, FlowKey, FlowValue> =
        BpfHashMap::try_from(map).expect("FLOWS is a hash map");
    let addr = |w: [u32; 4], family: u8| -> std::net::IpAddr {
        if family == FAMILY_V4 {
            std::net::Ipv4Addr::from(w[0].to_ne_bytes()).into()
        } else {
            let mut b = [0u8; 16];
            for (i, x) in w.iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(&x.to_ne_bytes());
            }
            std::net::Ipv6Addr::from(b).into()
        }
    };
    flows
        .iter()
        .filter_map(Result::ok)
        .map(|(k, v)| {
            (
                model::FlowKey {
                    src: addr(k.src, k.family),
                    dst: addr(k.dst, k.family),
                    sport: u16::from_be(k.sport),
                    dport: u16::from_be(k.dport),
                    proto: k.proto,
                },
                v.backend_id,
                v.owner,
                v.seen & FLOW_FIN != 0,
                v.seen & FLOW_RST != 0,
            )
        })
        .collect()
}
