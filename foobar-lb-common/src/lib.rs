//! Types shared by the XDP program and the controller.
//!
//! Every map key and value is `#[repr(C)]`, `Copy`, with explicit padding and no enums, bools or
//! `Option`s, so any bit pattern the other side writes is valid. Sizes are pinned by compile-time
//! asserts so the kernel and userspace layouts cannot drift apart.
#![cfg_attr(not(test), no_std)]

pub mod csum;
pub mod firewall;
pub mod maps;
pub mod registry;
pub mod stats;
pub mod sync;

pub use firewall::*;
pub use maps::*;
pub use registry::{LAYOUT_VERSION, MAP_META};
pub use stats::*;
pub use sync::*;
