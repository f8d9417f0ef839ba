//! foobar-lb controller library: configuration, the data plane (XDP program and maps),
//! reconciliation of desired state into map writes, and the control API.

pub mod api;
pub mod bird;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod desired;
pub mod firewall;
pub mod health;
pub mod health_replies;
pub mod keepalived;
pub mod logging;
pub mod metrics;
pub mod neighbor;
pub mod netdev;
pub mod pool;
pub mod reconcile;
pub mod rtnetlink;
pub mod schedule;
pub mod stats_page;
pub mod sync;
