//! Leader terms and fencing by term.
//!
//! A [`Term`] names one leadership: it strictly increases every time a node takes the leader
//! key, on every backend. It is the store's own counter for the *creation* of the leader key
//! (etcd: the key's `create_revision`; ZooKeeper: the znode's `czxid`; a plugin: the `created`
//! field of its snapshot entries, ABI 1.1), so two leaderships never share one and a later one
//! is always larger — no clock, no counter of ours.
//!
//! A backend with no such counter (a DCS plugin built for ABI 1.0) has **no term**: the leader
//! is known, its term is not (`None`), and side effects that need a term are refused rather
//! than given a made-up one.
//!
//! A receiver of side effects keeps a [`TermFence`]: it remembers the highest term it has seen
//! and refuses anything carrying an older one, so a deposed primary that wakes up late cannot
//! undo what its successor did.
//!
//! ```
//! use spilo_sdk::term::{Term, TermFence};
//!
//! let fence = TermFence::new();
//! assert!(fence.admit(Term(7)).is_ok());
//! assert!(fence.admit(Term(7)).is_ok()); // the same leadership again
//! assert!(fence.admit(Term(9)).is_ok());
//! let stale = fence.admit(Term(7)).unwrap_err();
//! assert_eq!((stale.offered, stale.highest), (Term(7), Term(9)));
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

/// One leadership's number; larger is later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Term(pub u64);

impl Term {
    /// The term of a leader key created at store counter `created`; `None` when the backend
    /// reports no creation counter (or a meaningless one: zero or negative).
    pub fn from_created(created: Option<i64>) -> Option<Term> {
        created.filter(|c| *c > 0).map(|c| Term(c as u64))
    }
}

impl std::fmt::Display for Term {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A side effect carried an older term than one already seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stale term {offered}: term {highest} was already seen")]
pub struct StaleTerm {
    /// The term the refused call carried.
    pub offered: Term,
    /// The highest term seen so far.
    pub highest: Term,
}

/// The highest term seen so far; refuses older ones. Cheap, lock-free and shareable.
#[derive(Debug, Default)]
pub struct TermFence {
    /// The highest term admitted (0: none yet; terms are positive).
    highest: AtomicU64,
}

impl TermFence {
    /// A fence that has seen no term.
    pub const fn new() -> TermFence {
        TermFence {
            highest: AtomicU64::new(0),
        }
    }

    /// Admits `term` if no newer one was seen, remembering it; equal terms are admitted (the
    /// same leader repeating itself).
    pub fn admit(&self, term: Term) -> Result<(), StaleTerm> {
        let previous = self.highest.fetch_max(term.0, Ordering::SeqCst);
        if previous > term.0 {
            Err(StaleTerm {
                offered: term,
                highest: Term(previous),
            })
        } else {
            Ok(())
        }
    }

    /// The highest term admitted so far.
    pub fn highest(&self) -> Option<Term> {
        match self.highest.load(Ordering::SeqCst) {
            0 => None,
            t => Some(Term(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_admits_newer_and_equal_terms_and_refuses_older_ones() {
        let f = TermFence::new();
        assert_eq!(f.highest(), None);
        assert_eq!(f.admit(Term(3)), Ok(()));
        assert_eq!(f.admit(Term(3)), Ok(()));
        assert_eq!(f.admit(Term(10)), Ok(()));
        assert_eq!(
            f.admit(Term(4)),
            Err(StaleTerm {
                offered: Term(4),
                highest: Term(10)
            })
        );
        // A refused term does not lower what the fence remembers.
        assert_eq!(f.highest(), Some(Term(10)));
    }

    #[test]
    fn a_missing_or_meaningless_creation_counter_is_no_term() {
        assert_eq!(Term::from_created(None), None);
        assert_eq!(Term::from_created(Some(0)), None);
        assert_eq!(Term::from_created(Some(-3)), None);
        assert_eq!(Term::from_created(Some(42)), Some(Term(42)));
    }
}
