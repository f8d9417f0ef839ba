//! The flow table as the model keeps it: which backend a flow was given (learned from the
//! program's output on the flow's first forwarded packet), whether it was seen closing (FIN, RST), and
//! the firewall generation it was last checked under.
//!
//! Unlike the program's LRU table the model never evicts: a run must keep fewer flows than
//! the program's table holds (the fuzzer starts a fresh program before that).

use std::collections::HashMap;

use super::decode::FlowKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Index of the service in [`super::Provisioned::services`].
    pub service: usize,
    /// Index of the backend in that service's list, and its incarnation then.
    pub backend: usize,
    pub incarnation: u32,
    /// A FIN, an RST was forwarded (the entry's `FLOW_FIN`, `FLOW_RST`): either makes a SYN
    /// on the tuple open a new connection.
    pub fin: bool,
    pub rst: bool,
    /// Firewall generation the flow was last checked under.
    pub fw_gen: u32,
}

impl Flow {
    /// Seen closing (FIN or RST).
    pub fn closing(&self) -> bool {
        self.fin || self.rst
    }
}

#[derive(Debug, Clone, Default)]
pub struct Flows {
    map: HashMap<FlowKey, Flow>,
}

impl Flows {
    pub fn get(&self, k: &FlowKey) -> Option<&Flow> {
        self.map.get(k)
    }

    pub fn insert(&mut self, k: FlowKey, f: Flow) {
        self.map.insert(k, f);
    }

    pub fn get_mut(&mut self, k: &FlowKey) -> Option<&mut Flow> {
        self.map.get_mut(k)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn clear(&mut self) {
        self.map.clear()
    }
}
