//! What a chaos run found, computed from the checkers' records and the fault log: write
//! windows and their overlaps, claims-primary overlaps, lost and unexpected ids, failover time,
//! fence latency and false failovers per fault event.

use std::collections::{BTreeMap, BTreeSet};

use crate::checkers::{Attempt, Claim};

/// A gap between two acknowledged writes longer than this ends a window (the probers write
/// every 20 ms; a longer silence means the node was not seen acknowledging in between).
pub const MAX_GAP_US: i64 = 500_000;

/// A stretch during which one node acknowledged every write tried on it.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// The node.
    pub node: usize,
    /// Server time of its first acknowledged write.
    pub start: i64,
    /// Server time of its last.
    pub end: i64,
    /// How many writes it acknowledged.
    pub acks: usize,
}

/// Two nodes' windows that share time.
#[derive(Clone, Debug, PartialEq)]
pub struct Overlap {
    /// The nodes.
    pub a: usize,
    /// See `a`.
    pub b: usize,
    /// Where the shared time starts.
    pub start: i64,
    /// Where it ends (equal to `start` when two writes hit the same instant).
    pub end: i64,
}

/// The write windows of one node: runs of acknowledged attempts, broken by a failed one or by a
/// silence longer than [`MAX_GAP_US`].
pub fn windows(node: usize, attempts: &[Attempt]) -> Vec<Window> {
    runs(node, attempts.iter().map(|a| a.server), MAX_GAP_US)
}

/// Runs of `Some(time)` in `samples`, broken by a `None` or by a gap longer than `max_gap`.
fn runs(node: usize, samples: impl Iterator<Item = Option<i64>>, max_gap: i64) -> Vec<Window> {
    let mut out: Vec<Window> = Vec::new();
    let mut open: Option<Window> = None;
    for sample in samples {
        match sample {
            Some(t) => match open.as_mut() {
                Some(w) if t - w.end <= max_gap => {
                    w.end = w.end.max(t);
                    w.acks += 1;
                }
                _ => {
                    out.extend(open.take());
                    open = Some(Window {
                        node,
                        start: t,
                        end: t,
                        acks: 1,
                    });
                }
            },
            None => out.extend(open.take()),
        }
    }
    out.extend(open);
    out
}

/// Every pair of windows of distinct nodes that share time.
pub fn overlaps(windows: &[Window]) -> Vec<Overlap> {
    let mut out = Vec::new();
    for (i, x) in windows.iter().enumerate() {
        for y in &windows[i + 1..] {
            if x.node == y.node {
                continue;
            }
            let start = x.start.max(y.start);
            let end = x.end.min(y.end);
            if start <= end {
                out.push(Overlap {
                    a: x.node.min(y.node),
                    b: x.node.max(y.node),
                    start,
                    end,
                });
            }
        }
    }
    out
}

/// The shared time of `overlaps`, in milliseconds.
pub fn total_ms(overlaps: &[Overlap]) -> f64 {
    overlaps
        .iter()
        .map(|x| (x.end - x.start) as f64 / 1000.0)
        .sum::<f64>()
        + 0.0
}

/// Intervals during which each node answered `pg_is_in_recovery() = false`, as windows; their
/// overlaps are reported apart from the write overlaps (a node may claim the role and still
/// refuse writes, e.g. under the fence).
pub fn claim_windows(node: usize, claims: &[Claim]) -> Vec<Window> {
    // Claims are sampled every 200 ms: a longer gap is allowed.
    runs(
        node,
        claims.iter().map(|c| c.primary.then_some(c.at)),
        3 * MAX_GAP_US,
    )
}

/// Whether a failover is expected when a fault of this kind hits its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The fault takes the primary's lease away: a new leader is the point.
    Failover,
    /// Either outcome is correct (e.g. the postmaster restarted in place or not in time).
    Either,
    /// The primary was not touched: a leader change is a false failover.
    NoFailover,
}

/// One fault as applied.
#[derive(Clone, Debug)]
pub struct Event {
    /// Kind, e.g. `partition-dcs`.
    pub kind: String,
    /// What it hit, e.g. `n2 (primary)`.
    pub target: String,
    /// When it was applied.
    pub start: i64,
    /// When it was healed.
    pub heal: i64,
    /// When the cluster was healthy again (None: not within the wait).
    pub recovered: Option<i64>,
    /// The expectation.
    pub expect: Expect,
    /// Whether the fence latency of the primary is measured for this event (the primary was
    /// cut from the DCS or frozen while PostgreSQL kept running).
    pub fence: bool,
}

/// What one event did to the writers.
#[derive(Clone, Debug, PartialEq)]
pub struct EventOutcome {
    /// The writer before the fault.
    pub old: Option<usize>,
    /// The first other node that acknowledged a write after the fault began, and when.
    pub new: Option<(usize, i64)>,
    /// The old writer's last acknowledged write after the fault began.
    pub old_last: Option<i64>,
}

/// Acknowledged writes of every node, sorted by server time: (time, node).
pub fn acks(attempts: &[Vec<Attempt>]) -> Vec<(i64, usize)> {
    let mut out: Vec<(i64, usize)> = attempts
        .iter()
        .enumerate()
        .flat_map(|(n, list)| list.iter().filter_map(move |a| a.server.map(|t| (t, n))))
        .collect();
    out.sort();
    out
}

/// The outcome of the event starting at `start`, looking at acks up to `until` (the next
/// event's start, or the end).
pub fn outcome(acks: &[(i64, usize)], start: i64, until: i64) -> EventOutcome {
    let before = acks.partition_point(|(t, _)| *t < start);
    let old = before.checked_sub(1).map(|i| acks[i].1);
    let after = &acks[before..acks.partition_point(|(t, _)| *t < until)];
    let new = after
        .iter()
        .find(|(_, n)| Some(*n) != old)
        .map(|(t, n)| (*n, *t));
    let cut = new.map(|(_, t)| t).unwrap_or(until);
    let old_last = after
        .iter()
        .filter(|(t, n)| Some(*n) == old && *t <= cut)
        .map(|(t, _)| *t)
        .next_back();
    EventOutcome { old, new, old_last }
}

/// Lost ids (acknowledged, not in the final table) and unexpected ones (in the table, never
/// sent).
pub fn lost_and_unexpected(
    attempted: &BTreeSet<i64>,
    acked: &[(i64, i64)],
    final_ids: &BTreeSet<i64>,
) -> (Vec<i64>, Vec<i64>) {
    let lost = acked
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !final_ids.contains(id))
        .collect();
    let unexpected = final_ids
        .iter()
        .copied()
        .filter(|id| !attempted.contains(id))
        .collect();
    (lost, unexpected)
}

/// Lost acknowledged writes grouped into bursts: ids acknowledged within `gap_us` of each other
/// belong to one burst. Each burst is (first ack time, last ack time, count). In asynchronous
/// mode a failover may lose what the old primary acknowledged in its last `ttl`, so every burst
/// must span less than that.
pub fn loss_bursts(acked: &[(i64, i64)], lost: &[i64], gap_us: i64) -> Vec<(i64, i64, usize)> {
    let lost: BTreeSet<i64> = lost.iter().copied().collect();
    let mut times: Vec<i64> = acked
        .iter()
        .filter(|(id, _)| lost.contains(id))
        .map(|(_, t)| *t)
        .collect();
    times.sort();
    let mut out: Vec<(i64, i64, usize)> = Vec::new();
    for t in times {
        match out.last_mut() {
            Some(b) if t - b.1 <= gap_us => {
                b.1 = t;
                b.2 += 1;
            }
            _ => out.push((t, t, 1)),
        }
    }
    out
}

/// p50, p99 and max of `v` (milliseconds), as text.
pub fn percentiles(v: &[f64]) -> String {
    if v.is_empty() {
        return "n/a (none)".into();
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let at = |q: f64| s[(((s.len() - 1) as f64) * q).round() as usize];
    format!(
        "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (n={})",
        at(0.5),
        at(0.99),
        s[s.len() - 1],
        s.len()
    )
}

/// Counts by key, for "events by kind".
pub fn count_by<'a>(keys: impl Iterator<Item = &'a str>) -> BTreeMap<&'a str, usize> {
    let mut m = BTreeMap::new();
    for k in keys {
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(t: i64) -> Attempt {
        Attempt { server: Some(t) }
    }
    fn fail(_t: i64) -> Attempt {
        Attempt { server: None }
    }

    #[test]
    fn windows_break_on_a_failure_and_on_a_long_silence() {
        let a = vec![
            ack(0),
            ack(20_000),
            fail(40_000),
            ack(60_000),
            ack(2_000_000),
        ];
        let w = windows(0, &a);
        assert_eq!(
            w.iter()
                .map(|w| (w.start, w.end, w.acks))
                .collect::<Vec<_>>(),
            vec![
                (0, 20_000, 2),
                (60_000, 60_000, 1),
                (2_000_000, 2_000_000, 1)
            ]
        );
    }

    #[test]
    fn a_hand_over_without_shared_time_is_no_overlap_and_a_shared_instant_is_one() {
        let a = windows(0, &[ack(0), ack(20_000), ack(40_000)]);
        let b = windows(1, &[ack(50_000), ack(70_000)]);
        let all: Vec<Window> = a.iter().chain(b.iter()).cloned().collect();
        assert!(overlaps(&all).is_empty());
        // Node 1 acknowledged once while node 0 was still acknowledging: a split brain, even
        // though the shared time is a single instant.
        let c = windows(1, &[ack(30_000)]);
        let all: Vec<Window> = a.iter().chain(c.iter()).cloned().collect();
        assert_eq!(
            overlaps(&all),
            vec![Overlap {
                a: 0,
                b: 1,
                start: 30_000,
                end: 30_000
            }]
        );
    }

    #[test]
    fn the_outcome_names_the_old_writer_its_last_ack_and_the_new_writer() {
        let acks = vec![(10, 0), (20, 0), (30, 0), (45, 2), (50, 2)];
        let o = outcome(&acks, 25, 100);
        assert_eq!(o.old, Some(0));
        assert_eq!(o.old_last, Some(30));
        assert_eq!(o.new, Some((2, 45)));
        // No other writer: no failover.
        let o = outcome(&acks[..3], 15, 100);
        assert_eq!((o.old, o.new, o.old_last), (Some(0), None, Some(30)));
    }

    #[test]
    fn lost_ids_are_acked_and_missing_and_unexpected_ones_were_never_sent() {
        let attempted: BTreeSet<i64> = [1, 2, 3, 4].into();
        let acked = vec![(1, 0), (2, 0), (4, 0)];
        let final_ids: BTreeSet<i64> = [1, 3, 4, 9].into();
        assert_eq!(
            lost_and_unexpected(&attempted, &acked, &final_ids),
            (vec![2], vec![9])
        );
    }

    #[test]
    fn lost_writes_group_into_bursts_by_acknowledgement_time() {
        let acked = vec![
            (1, 0),
            (2, 100),
            (3, 200),
            (4, 5_000),
            (5, 5_100),
            (6, 9_000),
        ];
        assert_eq!(
            loss_bursts(&acked, &[2, 3, 5, 6], 1_000),
            vec![(100, 200, 2), (5_100, 5_100, 1), (9_000, 9_000, 1)]
        );
        assert!(loss_bursts(&acked, &[], 1_000).is_empty());
    }

    #[test]
    fn claim_windows_follow_the_samples() {
        let c = |at, primary| Claim { at, primary };
        let w = claim_windows(
            2,
            &[
                c(0, true),
                c(200_000, true),
                c(400_000, false),
                c(600_000, true),
            ],
        );
        assert_eq!(
            w.iter().map(|w| (w.start, w.end)).collect::<Vec<_>>(),
            vec![(0, 200_000), (600_000, 600_000)]
        );
    }

    #[test]
    fn percentiles_of_nothing_and_of_a_list() {
        assert!(percentiles(&[]).contains("none"));
        let p = percentiles(&[1.0, 2.0, 3.0, 100.0]);
        assert!(p.contains("max 100 ms") && p.contains("n=4"), "{p}");
    }
}
