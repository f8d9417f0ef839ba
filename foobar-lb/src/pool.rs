//! Which backends take new flows: round robin over the healthy primaries; only when none is
//! healthy, the backups (the first healthy one, or all with `failover = "all"`).

use crate::{
    config::{Failover, OnMarkedDown, Role},
    desired::BackendState,
};

/// One backend as the pool sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub role: Role,
    pub weight: u32,
    pub healthy: bool,
    /// Operator drain: keeps its flows, takes no new ones.
    pub drained: bool,
}

/// The data-plane state of each member, in order.
///
/// - in the active pool: `Active` (takes new flows);
/// - healthy but not in the pool (drained, or a standby backup): `Draining` (keeps its flows:
///   when a primary recovers, connections already on the backup finish there);
/// - unhealthy: `Draining` (it keeps its established connections, as HAProxy does), or `Down`
///   (its flows move on their next packet) with `on_marked_down = "shutdown-sessions"`.
pub fn states(members: &[Member], failover: Failover, on_down: OnMarkedDown) -> Vec<BackendState> {
    let usable = |m: &Member| m.healthy && !m.drained;
    let primaries = members.iter().any(|m| m.role == Role::Primary && usable(m));
    let mut first_backup_taken = false;
    members
        .iter()
        .map(|m| {
            if !m.healthy {
                return match on_down {
                    OnMarkedDown::Keep => BackendState::Draining,
                    OnMarkedDown::ShutdownSessions => BackendState::Down,
                };
            }
            let active = usable(m)
                && match (m.role, primaries) {
                    (Role::Primary, _) => true,
                    (Role::Backup, true) => false,
                    (Role::Backup, false) => match failover {
                        Failover::All => true,
                        Failover::First => !std::mem::replace(&mut first_backup_taken, true),
                    },
                };
            if active {
                BackendState::Active
            } else {
                BackendState::Draining
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use BackendState::*;

    fn m(role: Role, healthy: bool, drained: bool) -> Member {
        Member {
            role,
            weight: 1,
            healthy,
            drained,
        }
    }
    const SD: OnMarkedDown = OnMarkedDown::ShutdownSessions;
    const P: Role = Role::Primary;
    const B: Role = Role::Backup;

    #[test]
    fn healthy_primaries_take_all_new_flows() {
        let ms = [m(P, true, false), m(P, true, false), m(B, true, false)];
        assert_eq!(states(&ms, Failover::First, SD), [Active, Active, Draining]);
    }

    #[test]
    fn first_healthy_backup_when_no_primary() {
        let ms = [
            m(P, false, false),
            m(B, false, false),
            m(B, true, false),
            m(B, true, false),
        ];
        assert_eq!(
            states(&ms, Failover::First, SD),
            [Down, Down, Active, Draining]
        );
        assert_eq!(states(&ms, Failover::All, SD), [Down, Down, Active, Active]);
    }

    #[test]
    fn drained_primary_counts_as_unavailable_but_keeps_flows() {
        let ms = [m(P, true, true), m(B, true, false)];
        assert_eq!(states(&ms, Failover::First, SD), [Draining, Active]);
        let ms = [m(P, true, true), m(P, true, false)];
        assert_eq!(states(&ms, Failover::First, SD), [Draining, Active]);
    }

    #[test]
    fn a_backend_marked_down_keeps_its_connections_by_default() {
        let ms = [m(P, false, false), m(P, true, false)];
        assert_eq!(
            states(&ms, Failover::First, OnMarkedDown::Keep),
            [Draining, Active]
        );
        assert_eq!(states(&ms, Failover::First, SD), [Down, Active]);
    }

    #[test]
    fn nothing_healthy_means_empty_pool() {
        let ms = [m(P, false, false), m(B, false, true)];
        assert_eq!(states(&ms, Failover::All, SD), [Down, Down]);
    }
}
