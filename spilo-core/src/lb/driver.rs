//! One task per load balancer carries the routes the HA loop asks for to the backend, off the
//! loop: a slow or unreachable load balancer never delays a cycle, a failover or a demotion.
//!
//! A change of the asked routes is sent at once (only the calls whose side changed); between
//! changes the task reads the backend back every reconcile interval and repairs drift (a member
//! registered by hand, an old primary still registered). Failures are logged when they change,
//! counted, and repaired by a later attempt. A refusal for a stale term means a newer leader
//! owns the load balancer: this node stops asking until it asks with a newer term.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spilo_sdk::{LbError, LbState, LoadBalancer};
use tokio::sync::watch;

use super::plan::Routes;

/// Counters of one load balancer, for `/metrics` and `/patroni`.
#[derive(Debug, Default)]
pub struct LbStats {
    /// The label (`name`, or the type).
    pub label: String,
    /// Calls that changed or confirmed a side (`set_primary`, `set_replicas`).
    pub changes: AtomicU64,
    /// Calls that failed (any error but a stale term).
    pub failures: AtomicU64,
    /// Calls refused because a newer term owns the load balancer.
    pub stale: AtomicU64,
    /// Reconcile passes that found drift and repaired it.
    pub repairs: AtomicU64,
    /// The backend routes what this node last asked for.
    pub in_sync: AtomicBool,
    /// Unix time of the last successful change (0: none).
    pub last_change_unix: AtomicU64,
    /// The last failure, until a call succeeds.
    pub last_error: Mutex<Option<String>>,
    /// How the backend knows this node (its `describe` answer's `self`), once read.
    pub self_target: Mutex<Option<String>>,
    /// The first `describe` answered: the addressing and `self_target` are known.
    pub learned: AtomicBool,
}

impl LbStats {
    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    /// How the backend knows this node, once read.
    pub fn self_target(&self) -> Option<String> {
        self.self_target
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The last failure, if the newest call failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `/patroni`'s view.
    pub fn status_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.label,
            "in_sync": self.in_sync.load(Relaxed),
            "changes": self.changes.load(Relaxed),
            "failures": self.failures.load(Relaxed),
            "stale_term_refusals": self.stale.load(Relaxed),
            "repairs": self.repairs.load(Relaxed),
            "last_error": self.last_error(),
        })
    }
}

/// What the loop asks one backend for: routes already in the backend's addressing, and how
/// often to read it back.
#[derive(Clone, Debug, PartialEq)]
pub struct Ask {
    /// The routes.
    pub routes: Routes,
    /// The reconcile interval (the loop's `loop_wait`).
    pub every: Duration,
    /// A counter the loop bumps to ask again even when the routes are the same.
    pub generation: u64,
}

/// The loop's end of one backend's task.
pub struct Handle {
    /// The counters.
    pub stats: Arc<LbStats>,
    /// The member-key field the backend knows members by (`None`: names).
    pub addressing: Arc<Mutex<Option<String>>>,
    /// Replicas further behind leave the read-only side.
    pub max_lag: Option<u64>,
    ask: watch::Sender<Option<Ask>>,
    /// The generation last carried out, and whether it succeeded.
    done: watch::Receiver<(u64, bool)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Handle {
    /// Starts the task for `lb`; each call is bounded by `timeout`.
    pub fn start(
        label: String,
        lb: Arc<dyn LoadBalancer>,
        timeout: Duration,
        max_lag: Option<u64>,
    ) -> Handle {
        let stats = Arc::new(LbStats {
            label,
            ..LbStats::default()
        });
        let addressing = Arc::new(Mutex::new(None));
        let (ask, ask_rx) = watch::channel(None);
        let (done_tx, done) = watch::channel((0, true));
        let task = tokio::spawn(run(
            lb,
            timeout,
            ask_rx,
            done_tx,
            stats.clone(),
            addressing.clone(),
        ));
        Handle {
            stats,
            addressing,
            max_lag,
            ask,
            done,
            task,
        }
    }

    /// The member-key field the backend knows members by, once known.
    pub fn addressing(&self) -> Option<String> {
        self.addressing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks for `ask` (nothing is sent when it is what was asked last).
    pub fn ask(&self, ask: Ask) {
        self.ask.send_if_modified(|cur| {
            if cur.as_ref() == Some(&ask) {
                false
            } else {
                *cur = Some(ask);
                true
            }
        });
    }

    /// Waits until `deadline` for the backend to carry out asks up to `generation`; true when
    /// it did and the backend confirmed (a failure or a stale term is false).
    pub async fn wait_done(&self, generation: u64, deadline: tokio::time::Instant) -> bool {
        let mut done = self.done.clone();
        let outcome = tokio::time::timeout_at(deadline, done.wait_for(|(g, _)| *g >= generation))
            .await
            .ok()
            .and_then(|r| r.ok().map(|d| d.1));
        outcome.unwrap_or(false)
    }
}

async fn bounded<T>(
    op: &'static str,
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, LbError>>,
) -> Result<T, LbError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r,
        Err(_) => Err(LbError::Timeout { op, after: timeout }),
    }
}

/// What a failed step leaves: retry soon, or wait for a newer term.
enum Failed {
    Retry,
    Stale,
}

struct Task {
    lb: Arc<dyn LoadBalancer>,
    timeout: Duration,
    stats: Arc<LbStats>,
    /// The routes the backend last confirmed (`None`: unknown, send everything).
    applied: Option<Routes>,
    /// The last error logged (a repeat is not logged again).
    logged: Option<String>,
}

impl Task {
    fn failed(&mut self, e: LbError) -> Failed {
        if e.is_stale_term() {
            self.stats.stale.fetch_add(1, Relaxed);
            let msg = format!("{e}");
            if self.logged.as_deref() != Some(&msg) {
                tracing::info!(lb = %self.stats.label, "a newer leader term owns the load balancer: {e}");
                self.logged = Some(msg);
            }
            self.stats.in_sync.store(false, Relaxed);
            return Failed::Stale;
        }
        self.stats.failures.fetch_add(1, Relaxed);
        let msg = crate::error_chain(&e);
        if self.logged.as_deref() != Some(&msg) {
            tracing::warn!(lb = %self.stats.label, "load balancer call failed (retried): {msg}");
            self.logged = Some(msg.clone());
        }
        self.stats.set_error(Some(msg));
        self.stats.in_sync.store(false, Relaxed);
        Failed::Retry
    }

    fn succeeded(&mut self) {
        if self.logged.take().is_some() {
            tracing::info!(lb = %self.stats.label, "load balancer calls succeed again");
        }
        self.stats.set_error(None);
    }

    /// Sends the sides of `want` that differ from `have` (everything when `have` is unknown).
    async fn send(&mut self, want: &Routes, have: Option<&Routes>) -> Result<bool, Failed> {
        let mut changed = false;
        // Read-write traffic leaves a primary before read-only traffic is rearranged, and
        // reaches a new one first.
        if have.map(|h| h.primary != want.primary).unwrap_or(true) {
            let r = bounded(
                "set_primary",
                self.timeout,
                self.lb.set_primary(want.primary.as_deref(), want.term),
            )
            .await;
            if let Err(e) = r {
                return Err(self.failed(e));
            }
            changed = true;
            tracing::info!(lb = %self.stats.label, term = want.term.0, "read-write traffic now goes to {}", want.primary.as_deref().unwrap_or("nobody"));
        }
        if have.map(|h| h.replicas != want.replicas).unwrap_or(true) {
            let r = bounded(
                "set_replicas",
                self.timeout,
                self.lb.set_replicas(&want.replicas, want.term),
            )
            .await;
            if let Err(e) = r {
                return Err(self.failed(e));
            }
            changed = true;
            tracing::info!(lb = %self.stats.label, term = want.term.0, "read-only traffic now goes to [{}]", want.replicas.join(", "));
        }
        if changed {
            self.stats.changes.fetch_add(1, Relaxed);
            self.stats
                .last_change_unix
                .store(chrono::Utc::now().timestamp().max(0) as u64, Relaxed);
        }
        self.succeeded();
        Ok(changed)
    }

    /// Reads the backend and repairs what differs from `want`.
    async fn reconcile(&mut self, want: &Routes) -> Result<(), Failed> {
        let state = match bounded("describe", self.timeout, self.lb.describe()).await {
            Ok(s) => s,
            Err(e) => return Err(self.failed(e)),
        };
        if let Some(t) = state.term {
            if t > want.term {
                // A newer leader owns it: asking again with an older term would be refused.
                return Err(self.failed(LbError::StaleTermReported {
                    message: format!(
                        "the load balancer has seen term {}, this node asks with {}",
                        t.0, want.term.0
                    ),
                }));
            }
        }
        // A backend without a read-only side (an ELB pair without replica_elb) routes no
        // replicas: nothing to compare there.
        let mut replicas = if state.raw["replicas_routed"] == false {
            want.replicas.clone()
        } else {
            state.replicas.clone()
        };
        replicas.sort();
        replicas.dedup();
        let have = Routes {
            primary: state.primary.clone(),
            replicas,
            term: want.term,
        };
        if have.primary == want.primary && have.replicas == want.replicas {
            self.applied = Some(want.clone());
            self.succeeded();
            return Ok(());
        }
        tracing::warn!(
            lb = %self.stats.label,
            "the load balancer routes read-write to {} and read-only to [{}]; repairing to {} and [{}]",
            have.primary.as_deref().unwrap_or("nobody"),
            have.replicas.join(", "),
            want.primary.as_deref().unwrap_or("nobody"),
            want.replicas.join(", ")
        );
        self.send(want, Some(&have)).await?;
        self.stats.repairs.fetch_add(1, Relaxed);
        self.applied = Some(want.clone());
        Ok(())
    }
}

/// A member-key field a backend may address members by: `instance_id` or `lb_…` (never one of
/// the member key's own fields).
pub fn addressing_field_ok(f: &str) -> bool {
    f == "instance_id"
        || (f.len() > 3
            && f.len() <= 40
            && f.starts_with("lb_")
            && f.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
}

/// Reads `describe` until it answers, to learn how the backend knows members and this node.
async fn learn(lb: &dyn LoadBalancer, timeout: Duration) -> Result<LbState, LbError> {
    bounded("describe", timeout, lb.describe()).await
}

async fn run(
    lb: Arc<dyn LoadBalancer>,
    timeout: Duration,
    mut ask: watch::Receiver<Option<Ask>>,
    done: watch::Sender<(u64, bool)>,
    stats: Arc<LbStats>,
    addressing: Arc<Mutex<Option<String>>>,
) {
    let mut t = Task {
        lb,
        timeout,
        stats,
        applied: None,
        logged: None,
    };
    // First learn the backend's addressing and this node's identity in it.
    let mut backoff = Duration::from_millis(500);
    loop {
        match learn(t.lb.as_ref(), timeout).await {
            Ok(s) => {
                let field = match s.raw["addressing"].as_str() {
                    None => None,
                    Some(f) if addressing_field_ok(f) => Some(f.to_string()),
                    Some(f) => {
                        tracing::warn!(lb = %t.stats.label, "the backend addresses members by '{f}', which is not instance_id or an lb_ field; using member names");
                        None
                    }
                };
                let me = s.raw["self"].as_str().map(str::to_string);
                *addressing.lock().unwrap_or_else(|p| p.into_inner()) = field;
                *t.stats
                    .self_target
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = me;
                t.stats.learned.store(true, Relaxed);
                t.succeeded();
                break;
            }
            Err(e) => {
                let _ = t.failed(e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    let mut stale_term: Option<spilo_sdk::Term> = None;
    let mut retry_soon = false;
    // The generation last handled: an ask is new when its generation differs, whichever
    // branch of the select below woke the task (a timer and an ask may be ready together).
    let mut handled: Option<u64> = None;
    loop {
        let every = ask
            .borrow()
            .as_ref()
            .map(|a| a.every)
            .unwrap_or(Duration::from_secs(10));
        let wait = if retry_soon {
            every.min(Duration::from_secs(1))
        } else {
            every
        };
        tokio::select! {
            r = ask.changed() => {
                if r.is_err() {
                    return; // the loop is gone
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
        let Some(a) = ask.borrow_and_update().clone() else {
            continue;
        };
        let changed = handled != Some(a.generation);
        handled = Some(a.generation);
        if stale_term.is_some_and(|s| a.routes.term <= s) {
            let _ = done.send((a.generation, false));
            continue;
        }
        // A withdrawal (read-write traffic to nobody) is sent, not kept up: once it is done
        // the next leader owns the load balancer, and this node has nothing to repair.
        if !changed && !retry_soon && a.routes.primary.is_none() {
            continue;
        }
        let result = if changed || retry_soon {
            let have = t.applied.clone().filter(|h| h.term == a.routes.term);
            t.send(&a.routes, have.as_ref()).await.map(|_| ())
        } else {
            t.reconcile(&a.routes).await
        };
        let ok = result.is_ok();
        match result {
            Ok(()) => {
                t.applied = Some(a.routes.clone());
                t.stats.in_sync.store(true, Relaxed);
                stale_term = None;
                retry_soon = false;
            }
            Err(Failed::Stale) => {
                stale_term = Some(a.routes.term);
                retry_soon = false;
                t.applied = None;
            }
            Err(Failed::Retry) => {
                retry_soon = true;
                t.applied = None;
            }
        }
        // Done, one way or the other: a waiting hand-over goes on (and knows which way).
        let _ = done.send((a.generation, ok));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use spilo_sdk::{Term, TermFence};

    /// A load balancer in memory that can be made to fail, counting calls.
    #[derive(Default)]
    struct Memory {
        fence: TermFence,
        routes: Mutex<(Option<String>, Vec<String>)>,
        calls: Mutex<Vec<String>>,
        down: AtomicBool,
        /// No read-only side: replicas are neither kept nor described.
        primary_only: AtomicBool,
    }

    #[async_trait]
    impl LoadBalancer for Memory {
        fn backend(&self) -> &str {
            "memory"
        }
        async fn set_primary(&self, member: Option<&str>, term: Term) -> Result<(), LbError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("primary {member:?} {}", term.0));
            if self.down.load(Relaxed) {
                return Err(LbError::Unreachable {
                    op: "set_primary",
                    message: "down".into(),
                });
            }
            self.fence.admit(term).map_err(LbError::StaleTerm)?;
            self.routes.lock().unwrap().0 = member.map(str::to_string);
            Ok(())
        }
        async fn set_replicas(&self, members: &[String], term: Term) -> Result<(), LbError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("replicas {members:?} {}", term.0));
            self.fence.admit(term).map_err(LbError::StaleTerm)?;
            if !self.primary_only.load(Relaxed) {
                self.routes.lock().unwrap().1 = members.to_vec();
            }
            Ok(())
        }
        async fn describe(&self) -> Result<LbState, LbError> {
            if self.down.load(Relaxed) {
                return Err(LbError::Unreachable {
                    op: "describe",
                    message: "down".into(),
                });
            }
            let r = self.routes.lock().unwrap().clone();
            let primary_only = self.primary_only.load(Relaxed);
            Ok(LbState {
                primary: r.0,
                replicas: r.1,
                term: self.fence.highest(),
                raw: serde_json::json!({"replicas_routed": !primary_only}),
            })
        }
    }

    fn ask(primary: Option<&str>, replicas: &[&str], term: u64, generation: u64) -> Ask {
        Ask {
            routes: Routes {
                primary: primary.map(str::to_string),
                replicas: replicas.iter().map(|s| s.to_string()).collect(),
                term: Term(term),
            },
            every: Duration::from_secs(2),
            generation,
        }
    }

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn changes_are_sent_drift_is_repaired_failures_retried_and_stale_terms_stop_it() {
        let lb = Arc::new(Memory::default());
        let h = Handle::start("m".into(), lb.clone(), Duration::from_secs(1), None);
        settle().await;
        assert!(h.stats.learned.load(Relaxed));
        h.ask(ask(Some("a"), &["b"], 5, 1));
        assert!(
            h.wait_done(1, tokio::time::Instant::now() + Duration::from_secs(1))
                .await
        );
        assert_eq!(
            *lb.routes.lock().unwrap(),
            (Some("a".to_string()), vec!["b".to_string()])
        );
        assert!(h.stats.in_sync.load(Relaxed));
        // The same ask again sends nothing new.
        let before = lb.calls.lock().unwrap().len();
        h.ask(ask(Some("a"), &["b"], 5, 1));
        settle().await;
        assert_eq!(lb.calls.lock().unwrap().len(), before);
        // Someone changes the routes by hand: the next reconcile repairs them.
        lb.routes.lock().unwrap().0 = Some("x".into());
        tokio::time::sleep(Duration::from_secs(3)).await;
        settle().await;
        assert_eq!(lb.routes.lock().unwrap().0.as_deref(), Some("a"));
        assert_eq!(h.stats.repairs.load(Relaxed), 1);
        // Down: counted, and retried until it comes back.
        lb.down.store(true, Relaxed);
        h.ask(ask(Some("a"), &["b", "c"], 6, 2));
        settle().await;
        assert!(h.stats.failures.load(Relaxed) >= 1);
        assert!(h.stats.last_error().is_some_and(|e| e.contains("down")));
        lb.down.store(false, Relaxed);
        tokio::time::sleep(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(
            lb.routes.lock().unwrap().1,
            vec!["b".to_string(), "c".to_string()]
        );
        assert!(h.stats.last_error().is_none());
        // A newer leader takes over (term 9); this node's older term is refused and it stops.
        lb.fence.admit(Term(9)).expect("term 9");
        lb.routes.lock().unwrap().0 = Some("z".into());
        h.ask(ask(Some("a"), &["b"], 7, 3));
        settle().await;
        assert!(h.stats.stale.load(Relaxed) >= 1);
        let calls = lb.calls.lock().unwrap().len();
        tokio::time::sleep(Duration::from_secs(10)).await;
        settle().await;
        assert_eq!(
            lb.calls.lock().unwrap().len(),
            calls,
            "no calls after a stale term"
        );
        assert_eq!(lb.routes.lock().unwrap().0.as_deref(), Some("z"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_withdrawal_is_sent_once_and_not_kept_up() {
        let lb = Arc::new(Memory::default());
        let h = Handle::start("m".into(), lb.clone(), Duration::from_secs(1), None);
        settle().await;
        h.ask(ask(Some("a"), &[], 5, 1));
        assert!(
            h.wait_done(1, tokio::time::Instant::now() + Duration::from_secs(1))
                .await
        );
        h.ask(ask(None, &[], 5, 2));
        assert!(
            h.wait_done(2, tokio::time::Instant::now() + Duration::from_secs(1))
                .await
        );
        assert_eq!(lb.routes.lock().unwrap().0, None);
        // The next leader registers itself with a newer term: nothing from this node undoes it.
        lb.routes.lock().unwrap().0 = Some("b".into());
        let calls = lb.calls.lock().unwrap().len();
        tokio::time::sleep(Duration::from_secs(20)).await;
        settle().await;
        assert_eq!(lb.calls.lock().unwrap().len(), calls);
        assert_eq!(lb.routes.lock().unwrap().0.as_deref(), Some("b"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_without_a_read_only_side_is_not_repaired_for_it() {
        let lb = Arc::new(Memory::default());
        lb.primary_only.store(true, Relaxed);
        let h = Handle::start("m".into(), lb.clone(), Duration::from_secs(1), None);
        settle().await;
        h.ask(ask(Some("a"), &["b", "c"], 5, 1));
        assert!(
            h.wait_done(1, tokio::time::Instant::now() + Duration::from_secs(1))
                .await
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        settle().await;
        assert_eq!(h.stats.repairs.load(Relaxed), 0);
        assert!(h.stats.in_sync.load(Relaxed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_withdrawal_is_reported_to_the_waiting_hand_over() {
        let lb = Arc::new(Memory::default());
        let h = Handle::start("m".into(), lb.clone(), Duration::from_secs(1), None);
        settle().await;
        h.ask(ask(Some("a"), &[], 5, 1));
        assert!(
            h.wait_done(1, tokio::time::Instant::now() + Duration::from_secs(1))
                .await
        );
        lb.down.store(true, Relaxed);
        h.ask(ask(None, &[], 5, 2));
        assert!(
            !h.wait_done(2, tokio::time::Instant::now() + Duration::from_secs(1))
                .await,
            "a withdrawal the backend refused is not confirmed"
        );
    }
}
