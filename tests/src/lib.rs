//! Test support for foobar-lb: a packet builder with checksums, a BPF_PROG_TEST_RUN harness
//! provisioned through the controller's own map-writing code, and network-namespace guards.

pub mod daemon;
pub mod harness;
pub mod netns;
pub mod packet;
pub mod traffic;

/// Tests that need the kernel run as root; say so plainly instead of failing obscurely.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests load XDP programs and create network namespaces: run them as root \
         (`cargo xtask test` does)"
    );
}
