//! Target choice: a smooth weighted round-robin schedule, power-of-two
//! choices on in-flight counts, and a consistent-hash ring, each precomputed
//! once per upstream so a pick is lock-free.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balance, Endpoint};

/// Virtual nodes per unit of weight on the hash ring.
const VNODES: u32 = 64;

#[derive(Debug)]
pub(super) struct Picker {
    /// Target indices in smooth weighted round-robin order.
    schedule: Vec<usize>,
    next: AtomicUsize,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    RoundRobin,
    LeastRequest,
    /// Sorted (point, target) pairs.
    Ring(Vec<(u64, usize)>),
}

impl Picker {
    pub(super) fn new(endpoints: &[Endpoint], balance: &Balance) -> Picker {
        let kind = match balance {
            Balance::RoundRobin => Kind::RoundRobin,
            Balance::LeastRequest => Kind::LeastRequest,
            Balance::ConsistentHash(_) => {
                let mut ring = Vec::new();
                for (i, ep) in endpoints.iter().enumerate() {
                    for v in 0..ep.weight * VNODES {
                        ring.push((hash(format!("{}#{v}", ep.target).as_bytes()), i));
                    }
                }
                ring.sort_unstable();
                Kind::Ring(ring)
            }
        };
        Picker {
            schedule: smooth_schedule(endpoints),
            next: AtomicUsize::new(0),
            kind,
        }
    }

    /// A target that `usable` accepts, or `None`.
    pub(super) fn pick(
        &self,
        endpoints: &[Endpoint],
        key: Option<u64>,
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        match (&self.kind, key) {
            (Kind::Ring(ring), Some(key)) if !ring.is_empty() => {
                let start = ring.partition_point(|(p, _)| *p < key);
                (0..ring.len())
                    .map(|k| ring[(start + k) % ring.len()].1)
                    .find(|&i| usable(i))
            }
            (Kind::LeastRequest, _) if endpoints.len() > 1 => {
                let n = self.schedule.len();
                for _ in 0..4 {
                    let a = self.schedule[fastrand::usize(..n)];
                    // Two distinct targets, or with two targets half the draws compare nothing.
                    let mut b = self.schedule[fastrand::usize(..n)];
                    for _ in 0..8 {
                        if b != a {
                            break;
                        }
                        b = self.schedule[fastrand::usize(..n)];
                    }
                    match (usable(a), usable(b)) {
                        (true, true) => {
                            let load = |i: usize| {
                                (endpoints[i].in_flight.load(Ordering::Relaxed) as u64 + 1) * 1000
                                    / endpoints[i].weight as u64
                            };
                            return Some(if load(b) < load(a) { b } else { a });
                        }
                        (true, false) => return Some(a),
                        (false, true) => return Some(b),
                        (false, false) => {}
                    }
                }
                self.round_robin(usable)
            }
            _ => self.round_robin(usable),
        }
    }

    fn round_robin(&self, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.schedule.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| self.schedule[(start + k) % n])
            .find(|&i| usable(i))
    }
}

/// nginx's smooth weighted round robin, unrolled into one cycle.
fn smooth_schedule(endpoints: &[Endpoint]) -> Vec<usize> {
    let total: i64 = endpoints.iter().map(|e| e.weight as i64).sum();
    let mut current = vec![0i64; endpoints.len()];
    (0..total)
        .map(|_| {
            for (c, e) in current.iter_mut().zip(endpoints) {
                *c += e.weight as i64;
            }
            let best = (0..current.len())
                .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
                .unwrap_or(0);
            current[best] -= total;
            best
        })
        .collect()
}

/// FNV-1a, then a 64-bit finaliser so nearby keys spread over the ring.
pub(super) fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{Settings, Target, Upstream};

    fn upstream(weights: &[u32], balance: Balance) -> std::sync::Arc<Upstream> {
        let targets = weights
            .iter()
            .enumerate()
            .map(|(i, w)| (Target::parse(&format!("http://10.0.0.{i}:80")).unwrap(), *w))
            .collect();
        Upstream::new(
            "t".into(),
            targets,
            Settings {
                balance,
                ..Settings::default()
            },
        )
    }

    #[test]
    fn smooth_round_robin_interleaves_by_weight() {
        let up = upstream(&[3, 1], Balance::RoundRobin);
        let picks: Vec<usize> = (0..8).map(|_| up.pick(None, &[])).collect();
        assert_eq!(picks, [0, 0, 1, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn hash_keeps_a_key_on_its_target_and_moves_only_its_keys() {
        let up = upstream(
            &[1, 1, 1],
            Balance::ConsistentHash(crate::upstream::HashOn::ClientIp),
        );
        let keys: Vec<u64> = (0..300u32).map(|k| hash(&k.to_be_bytes())).collect();
        let first: Vec<usize> = keys.iter().map(|k| up.pick(Some(*k), &[])).collect();
        let again: Vec<usize> = keys.iter().map(|k| up.pick(Some(*k), &[])).collect();
        assert_eq!(first, again);
        for t in 0..3 {
            let share = first.iter().filter(|&&i| i == t).count();
            assert!(
                (50..=150).contains(&share),
                "target {t} got {share} of 300 keys"
            );
        }
        // Excluding target 0 moves only the keys that were on it.
        let moved: Vec<usize> = keys.iter().map(|k| up.pick(Some(*k), &[0])).collect();
        for (a, b) in first.iter().zip(&moved) {
            if *a != 0 {
                assert_eq!(a, b);
            } else {
                assert_ne!(*b, 0);
            }
        }
    }

    #[test]
    fn tried_targets_are_avoided() {
        let up = upstream(&[1, 1], Balance::LeastRequest);
        for _ in 0..20 {
            assert_eq!(up.pick(None, &[0]), 1);
        }
        // With everything tried, something is still returned.
        assert!(up.pick(None, &[0, 1]) < 2);
    }
}
