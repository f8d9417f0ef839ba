//! Auxiliary programs of the object: the XDP_PASS floor (also attached to veth peers in test
//! topologies) and the benchmark's minimal fixed-MAC rewrite.

use aya::{
    programs::{Xdp, XdpMode as AyaXdpMode},
    Ebpf, EbpfLoader,
};
use foobar_lb_common::{MAP_FLOWS, PASS_PROG_NAME};

use super::{DataplaneError, MISSING, OBJECT};
use crate::config::XdpMode;

/// Loads one auxiliary program of the object (not the balancer) with small maps.
fn load_aux(name: &'static str, mac: Option<[u8; 6]>) -> Result<Ebpf, DataplaneError> {
    if OBJECT.is_empty() {
        return Err(DataplaneError::NotBuilt);
    }
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(MAP_FLOWS, 1024);
    if let Some(mac) = &mac {
        loader.override_global(foobar_lb_common::BENCH_MAC_GLOBAL, mac, true);
    }
    let mut ebpf = loader.load(OBJECT).map_err(DataplaneError::Load)?;
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(DataplaneError::Missing("auxiliary XDP program"))?
        .try_into()
        .map_err(DataplaneError::Program)?;
    prog.load().map_err(DataplaneError::Program)?;
    Ok(ebpf)
}

/// Auxiliary programs for benchmarks, loaded but not attached: the XDP_PASS floor and the
/// minimal fixed-MAC rewrite. Run them with BPF_PROG_TEST_RUN or attach them.
pub struct AuxProgram {
    ebpf: Ebpf,
    name: &'static str,
}

impl AuxProgram {
    pub fn pass() -> Result<AuxProgram, DataplaneError> {
        Ok(AuxProgram {
            ebpf: load_aux(PASS_PROG_NAME, None)?,
            name: PASS_PROG_NAME,
        })
    }

    pub fn fixed_mac(mac: [u8; 6]) -> Result<AuxProgram, DataplaneError> {
        let name = foobar_lb_common::BENCH_FIXED_PROG_NAME;
        Ok(AuxProgram {
            ebpf: load_aux(name, Some(mac))?,
            name,
        })
    }

    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(self.name)
            .and_then(|p| p.try_into().ok())
            .expect("loaded")
    }

    /// Attaches to `iface` (of the current network namespace) for as long as this lives.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<(), DataplaneError> {
        let m = match mode {
            XdpMode::Generic => AyaXdpMode::Skb,
            XdpMode::Native | XdpMode::Auto => AyaXdpMode::Driver,
        };
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(self.name)
            .and_then(|p| p.try_into().ok())
            .expect("loaded");
        prog.attach(iface, m)
            .map(|_| ())
            .map_err(|source| DataplaneError::Attach {
                iface: iface.to_owned(),
                mode: "requested",
                source,
            })
    }
}

/// The embedded XDP object (ELF), for tools that inspect it without loading it.
pub fn object() -> Result<&'static [u8], DataplaneError> {
    if OBJECT.is_empty() {
        return Err(DataplaneError::NotBuilt);
    }
    Ok(OBJECT)
}

/// Whether this binary carries its XDP program, and if not why.
pub fn object_status() -> Result<&'static str, &'static str> {
    if OBJECT.is_empty() {
        Err(MISSING)
    } else {
        Ok(env!("FOOBAR_LB_EBPF_ROUTE"))
    }
}
