//! BPF_PROG_TEST_RUN harness: loads the real program (unattached), provisions it through the
//! controller's reconciler and map writer, runs fixtures and reads counters.

use std::collections::HashMap;

use aya::programs::{TestRun, TestRunOptions};
use foobar_lb::{
    config::Config,
    daemon::desired_state,
    dataplane::{Dataplane, LoadOptions},
    desired::{BackendState, Mac, ServiceSpec},
    reconcile::Reconciler,
};
use foobar_lb_common::{verdict, Counters};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub fn action_name(a: u32) -> &'static str {
    ["aborted", "drop", "pass", "tx", "redirect"]
        .get(a as usize)
        .copied()
        .unwrap_or("?")
}

pub struct Harness {
    pub dp: Dataplane,
    pub reconciler: Reconciler,
    pub config: Config,
    pub macs: HashMap<std::net::IpAddr, Mac>,
    /// The ingress interface test runs report (1: loopback, the kernel's default).
    pub ingress: u32,
}

/// What a fixture expects.
#[derive(Debug, Clone)]
pub enum Expect {
    /// XDP_PASS with the frame unchanged.
    Pass,
    /// XDP_PASS with the frame unchanged, counted under this verdict index.
    PassAs(u32),
    /// Direct server return to this MAC: XDP_TX of the input frame with the destination MAC
    /// set to it and the source MAC to the load balancer's ([`crate::packet::LB_MAC`]), every
    /// other byte unchanged. Shorthand for [`Expect::Frame`] of that frame.
    Tx(Mac),
    /// XDP_TX of exactly this frame, stated field by field by the fixture (Katran's tester
    /// style), so a rewrite of any header is checked byte for byte.
    Frame(Vec<u8>),
    /// XDP_DROP counted under this verdict index.
    Drop(u32),
    /// XDP_TX of exactly this frame, counted under this verdict index (a NAT reply).
    FrameAs(Vec<u8>, u32),
    /// XDP_REDIRECT of exactly this frame (out of another interface of the balancer: a
    /// two-arm NAT), counted as `tx_redirect`.
    Redirect(Vec<u8>),
}

pub struct Outcome {
    pub action: u32,
    pub out: Vec<u8>,
}

impl Harness {
    /// Loads the program and provisions `config`, with `macs` as the resolved backend MACs.
    pub fn new(config_toml: &str, macs: &[(&str, Mac)]) -> Harness {
        Harness::with_flow_table(config_toml, macs, 65536)
    }

    pub fn with_flow_table(config_toml: &str, macs: &[(&str, Mac)], flows: u32) -> Harness {
        Harness::with_tables(config_toml, macs, flows, 65536)
    }

    /// With a flow table of `flows` and NAT tables of `nat` entries each.
    pub fn with_tables(config_toml: &str, macs: &[(&str, Mac)], flows: u32, nat: u32) -> Harness {
        Harness::load(config_toml, macs, flows, nat, false)
    }

    /// With the program's flow-sync announcements on, as `[sync]` loads it.
    pub fn with_sync(config_toml: &str, macs: &[(&str, Mac)]) -> Harness {
        Harness::load(config_toml, macs, 65536, 65536, true)
    }

    fn load(config_toml: &str, macs: &[(&str, Mac)], flows: u32, nat: u32, sync: bool) -> Harness {
        assert!(
            crate::root_and_object(),
            "call `if !foobar_lb_tests::root_and_object() {{ return; }}` first in this test"
        );
        let config = Config::parse(config_toml).expect("test config is valid");
        let dp = Dataplane::load(&LoadOptions {
            flow_table_size: flows,
            nat_table_size: nat,
            pin_dir: None,
            sync,
        })
        .expect("load the XDP program");
        let mut h = Harness {
            dp,
            reconciler: Reconciler::default(),
            config,
            macs: macs.iter().map(|(a, m)| (a.parse().unwrap(), *m)).collect(),
            ingress: 1,
        };
        // BPF_PROG_TEST_RUN reports loopback (ifindex 1) as the ingress interface; test frames
        // are addressed to LB_MAC, as a client's would be to the balancer's interface.
        h.dp.set_interface(1, crate::packet::LB_MAC).unwrap();
        // The config's VLANs of "lo" are those of that interface.
        let vlans = h.config.vlans.get("lo").cloned().unwrap_or_default();
        h.dp.set_vlans(1, &vlans).unwrap();
        h.apply(&h.desired());
        h
    }

    pub fn desired(&self) -> Vec<ServiceSpec> {
        desired_state(&self.config, &self.macs)
    }

    /// Applies a desired state through the reconciler, as the daemon does.
    pub fn apply(&mut self, desired: &[ServiceSpec]) {
        let ops = self.reconciler.plan(desired).expect("plan");
        self.dp.execute(&ops).expect("execute");
    }

    /// Sets one backend's state and applies.
    pub fn set_state(&mut self, service: &str, backend: &str, state: BackendState) {
        let mut d = self.desired();
        for s in d.iter_mut().filter(|s| s.name == service) {
            for b in s
                .backends
                .iter_mut()
                .filter(|b| b.addr.to_string() == backend)
            {
                b.state = state;
            }
        }
        self.apply(&d);
    }

    /// Installs firewall rules the way the daemon does (compiled, one map update).
    pub fn fw_rules(&mut self, rules: &[foobar_lb::firewall::RuleConfig]) {
        let set = foobar_lb::firewall::compile_all(rules).expect("valid rules");
        self.dp.set_rules(&set).unwrap();
    }

    /// Loads a block list the way the daemon does (idle buffer, then flip).
    pub fn blocklist(&mut self, text: &str) -> std::time::Duration {
        let nets = foobar_lb::firewall::parse_blocklist(text).expect("valid list");
        let start = std::time::Instant::now();
        self.dp.load_blocklist(&nets).unwrap();
        start.elapsed()
    }

    /// Sets the VIP policy of the interface BPF_PROG_TEST_RUN reports as ingress (loopback).
    pub fn vip_policy_drop(&mut self, drop: bool) {
        self.dp.set_vip_policy(1, drop).unwrap();
        self.dp
            .set_fw_flag(foobar_lb_common::FW_HAS_VIP_POLICY, drop)
            .unwrap();
    }

    pub fn rule_counters(&self, n: usize) -> Vec<u64> {
        self.dp
            .rule_counters(n)
            .unwrap()
            .iter()
            .map(|c| c.packets)
            .collect()
    }

    /// Test runs report `ifindex` (an interface of the calling thread's network namespace)
    /// as the ingress interface, which balances frames to [`crate::packet::LB_MAC`]: for
    /// paths that ask the kernel about it (the FIB lookup of full NAT).
    pub fn set_ingress(&mut self, ifindex: u32) {
        self.dp
            .set_interface(ifindex, crate::packet::LB_MAC)
            .unwrap();
        self.ingress = ifindex;
    }

    pub fn run(&self, frame: &[u8]) -> Outcome {
        let mut out = vec![0u8; frame.len() + 256];
        let md = xdp_md(frame, self.ingress);
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: (self.ingress != 1).then_some(&md[..]),
            ..TestRunOptions::default()
        };
        let r = self.dp.program().test_run(opts).expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        Outcome {
            action: r.return_value,
            out,
        }
    }

    pub fn verdicts(&self) -> Vec<u64> {
        self.dp.verdicts().unwrap()
    }

    pub fn service_id(&self, name: &str) -> u32 {
        self.reconciler.services()[name].id
    }

    pub fn backend_id(&self, service: &str, addr: &str) -> u32 {
        self.reconciler.services()[service].backends[&addr.parse().unwrap()].id
    }

    /// The backend's owner word (service id and the id's generation), as its entry and the
    /// flow entries scheduled to it hold it.
    pub fn backend_owner(&self, service: &str, addr: &str) -> u32 {
        let svc = &self.reconciler.services()[service];
        foobar_lb_common::owner(svc.id, svc.backends[&addr.parse().unwrap()].generation)
    }

    pub fn backend_counters(&self, service: &str, addr: &str) -> Counters {
        self.dp
            .backend_counters(self.backend_id(service, addr))
            .unwrap()
    }

    pub fn service_counters(&self, service: &str) -> Counters {
        self.dp.service_counters(self.service_id(service)).unwrap()
    }

    /// Runs one fixture that forwards (`want_action`, counted under `want_counter`) a frame
    /// the fixture can state only from a field of the output (an allocated port):
    /// `expected` gets the output and returns the whole frame wanted, compared byte for byte
    /// with checksums checked as [`Harness::check`] does.
    pub fn check_by(
        &self,
        name: &str,
        frame: &[u8],
        want_action: u32,
        want_counter: u32,
        expected: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Outcome {
        let before = self.verdicts();
        let o = self.run(frame);
        let after = self.verdicts();
        self.judge(name, frame, &o, &before, &after, want_action, want_counter);
        let want = expected(&o.out);
        let ctx = format!("fixture {name:?}");
        assert_frame(&o.out, &want, &ctx);
        o
    }

    /// Runs one fixture and checks verdict, output frame and the verdict counter.
    pub fn check(&self, name: &str, frame: &[u8], expect: &Expect) -> Outcome {
        let before = self.verdicts();
        let o = self.run(frame);
        let after = self.verdicts();
        let (want_action, want_counter) = match expect {
            Expect::Pass => (XDP_PASS, verdict::PASS),
            Expect::PassAs(reason) => (XDP_PASS, *reason),
            Expect::Tx(_) | Expect::Frame(_) => (XDP_TX, verdict::TX),
            Expect::Drop(reason) => (XDP_DROP, *reason),
            Expect::FrameAs(_, reason) => (XDP_TX, *reason),
            Expect::Redirect(_) => (XDP_REDIRECT, verdict::TX_REDIRECT),
        };
        self.judge(name, frame, &o, &before, &after, want_action, want_counter);
        let input = crate::packet::decode(frame);
        let output = if o.out.len() >= 14 {
            Some(crate::packet::decode(&o.out))
        } else {
            None
        };
        let ctx = || format!("fixture {name:?}\n  input:  {input:?}\n  output: {output:?}");
        match expect {
            Expect::Pass | Expect::PassAs(_) => {
                assert_eq!(o.out, frame, "passed frame was modified; {}", ctx())
            }
            Expect::Drop(_) => {}
            Expect::Tx(mac) => {
                let mut want = frame.to_vec();
                want[0..6].copy_from_slice(mac);
                want[6..12].copy_from_slice(&crate::packet::LB_MAC);
                assert_frame(&o.out, &want, &ctx());
            }
            Expect::Frame(want) | Expect::FrameAs(want, _) | Expect::Redirect(want) => {
                assert_frame(&o.out, want, &ctx())
            }
        }
        o
    }
}

impl Harness {
    /// The action and the one verdict counter that moved.
    #[allow(clippy::too_many_arguments)]
    fn judge(
        &self,
        name: &str,
        frame: &[u8],
        o: &Outcome,
        before: &[u64],
        after: &[u64],
        want_action: u32,
        want_counter: u32,
    ) {
        let input = crate::packet::decode(frame);
        let output = if o.out.len() >= 14 {
            Some(crate::packet::decode(&o.out))
        } else {
            None
        };
        let ctx = || format!("fixture {name:?}\n  input:  {input:?}\n  output: {output:?}");
        assert_eq!(
            action_name(o.action),
            action_name(want_action),
            "wrong verdict; {}",
            ctx()
        );
        let counted: Vec<(usize, u64)> = after
            .iter()
            .zip(before)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| (i, a - b))
            .collect();
        assert_eq!(
            counted,
            vec![(want_counter as usize, 1)],
            "expected exactly one {} count; {}",
            verdict::NAMES[want_counter as usize],
            ctx()
        );
    }
}

/// The output frame must be `want`, byte for byte, with valid checksums (or a partial one,
/// built so: [`crate::packet::Pkt::partial`]); a mismatch names the fields that differ.
fn assert_frame(got: &[u8], want: &[u8], ctx: &str) {
    let (g, w) = (crate::packet::decode(got), crate::packet::decode(want));
    assert!(
        w.checksums_ok || w.partial_checksum,
        "the fixture's expected frame has bad checksums; {ctx}"
    );
    assert!(
        got == want,
        "wrong output frame; differing fields:\n{}\n  got bytes:  {got:02x?}\n  want bytes: {want:02x?}\n{ctx}",
        g.diff(&w).join("\n")
    );
}

/// The test run's context: struct xdp_md (data, data_end, data_meta, ingress_ifindex,
/// rx_queue_index, egress_ifindex) for `frame` received on `ingress`.
fn xdp_md(frame: &[u8], ingress: u32) -> Vec<u8> {
    [0, frame.len() as u32, 0, ingress, 0, 0]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect()
}

/// Mean ns per run the kernel reports for `repeat` runs of `prog` on `frame`.
///
/// BPF_PROG_TEST_RUN reuses one buffer: from the second run on, the program sees its own output.
pub fn time_ns(prog: &aya::programs::Xdp, frame: &[u8], repeat: u32) -> f64 {
    time_ns_at(prog, frame, repeat, 1)
}

/// [`time_ns`] with interface `ingress` (of the calling thread's network namespace; 1:
/// loopback, the kernel's default) reported as the receiving one, as [`Harness::run`] does.
pub fn time_ns_at(prog: &aya::programs::Xdp, frame: &[u8], repeat: u32, ingress: u32) -> f64 {
    let mut out = vec![0u8; frame.len() + 256];
    let md = xdp_md(frame, ingress);
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: (ingress != 1).then_some(&md[..]),
        repeat,
        ..TestRunOptions::default()
    };
    let r = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
    r.duration.as_nanos() as f64
}

/// A block list of 100,000 prefixes: 80,000 IPv4 /24s (even third octets only, so the odd
/// neighbours are unblocked; 20.0.2.0/24 is in, 20.0.3.0/24 is not) and 20,000 IPv6 /48s
/// (fd00:bad:0::/48 to fd00:bad:4e1f::/48).
pub fn big_blocklist() -> String {
    let mut s = String::with_capacity(2_000_000);
    for i in 0..80_000u32 {
        s += &format!(
            "{}.{}.{}.0/24\n",
            20 + (i >> 15),
            (i >> 7) & 255,
            (i & 127) * 2
        );
    }
    for i in 0..20_000u32 {
        s += &format!("fd00:bad:{i:x}::/48\n");
    }
    s
}

pub fn backend_mac_of(frame: &[u8]) -> Mac {
    frame[0..6].try_into().unwrap()
}
