//! Admission control for environment creates: at most `concurrency` run at once; the rest wait
//! in one bounded queue, served strictly by priority class and round-robin across teams within
//! a class, and are refused with a retry hint when the queue is full or they waited too long.
//!
//! # Algorithm
//!
//! One `std::sync::Mutex` guards the whole state; no critical section awaits or runs caller
//! code. The state is the number of running permits and, per priority class, a ring of the teams
//! that have waiters in that class plus each team's waiters ordered by arrival ticket.
//!
//! - **Admit.** If a slot is free, take it at once. A slot is only free when nobody waits
//!   (releases hand slots straight to waiters), so this never jumps the queue. Otherwise join
//!   the queue, unless it already holds `max_queue` waiters: then see *Full queue* below.
//! - **Release** (dropping a [`Permit`]). Pick the next waiter: the first class with waiters,
//!   the team at the front of that class's ring, that team's oldest waiter; the team goes to the
//!   back of the ring if it still has waiters. The slot moves to that waiter without ever being
//!   free, through the waiter's `oneshot` channel. If nobody waits, the slot becomes free.
//! - **Full queue.** Refusing every newcomer would let one team's burst of batch jobs lock out
//!   an incident, and every other team. So a newcomer may instead displace the newest waiter of
//!   the longest team in the lowest class that has waiters, when that class is lower than the
//!   newcomer's, or is the same class and that team has at least two more waiters there than
//!   the newcomer's team (longest-queue drop, as in fair-queueing routers). The displaced waiter
//!   is refused with [`ShedReason::QueueFull`]. Otherwise the newcomer is refused at once.
//! - **Waited too long.** A waiter not admitted within `max_wait` removes itself and is refused
//!   with [`ShedReason::WaitedTooLong`].
//!
//! # Cancellation
//!
//! A queued `admit` future owns a guard that, when dropped, removes its waiter under the lock.
//! A release pops and sends under the same lock, so either the guard finds its waiter (nothing
//! was sent) or the permit is already in the channel, and dropping the receiver drops that
//! permit, whose drop hands the slot on. Should a send ever find the receiver gone, the permit
//! is disarmed and the slot offered to the next waiter in the same critical section.
//!
//! # Retry hint
//!
//! `retry_after = clamp(mean_hold × (ahead + 1) / concurrency, 1 s, 60 s)`, where `ahead` is the
//! number of waiters in the refused request's class or a higher one (those it would queue
//! behind), and `mean_hold` is an exponentially weighted mean of how long permits were held,
//! `mean ← mean + (held − mean) / 8`, the first sample taken as is; before any permit has been
//! released it is taken as `max_wait`, a deliberately long guess. That is roughly when a slot
//! would be free for a retry that joins the back of its class.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// The retry hint of every refusal lies within these bounds.
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Weight of the newest sample in the mean hold time (as TCP's smoothed round-trip time).
const HOLD_SMOOTHING: f64 = 1.0 / 8.0;

/// Who waits ahead of whom: strictly by class, then round-robin across teams within a class.
/// The order of the variants is the order of service: `Access` first, `Batch` last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Access,
    Incident,
    Interactive,
    Batch,
}

impl Priority {
    /// Every class, in the order of service.
    pub const ALL: [Priority; 4] = [
        Priority::Access,
        Priority::Incident,
        Priority::Interactive,
        Priority::Batch,
    ];

    /// The class's index in [`Priority::ALL`].
    fn rank(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Creates running at once; 0 is taken as 1 (it would admit nothing, ever).
    pub concurrency: usize,
    /// Waiters in all; beyond it, refuse at once (or displace, see the module documentation).
    pub max_queue: usize,
    /// A waiter not admitted by then is refused.
    pub max_wait: Duration,
}

/// A refusal, with a hint of when a retry could succeed (the module documentation gives the
/// formula).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("too busy to create an environment now ({reason}); retry after {}s", retry_after.as_secs())]
pub struct Shed {
    pub retry_after: Duration,
    pub reason: ShedReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// The queue was full, on arrival or later when a waiter was displaced.
    QueueFull,
    /// Not admitted within `max_wait`.
    WaitedTooLong,
}

impl fmt::Display for ShedReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            ShedReason::QueueFull => "the queue is full",
            ShedReason::WaitedTooLong => "waited too long for a slot",
        })
    }
}

/// The state at one moment, for metrics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionSnapshot {
    /// Permits alive.
    pub running: usize,
    /// Waiters per class, in the order of [`Priority::ALL`].
    pub waiting: [usize; 4],
    /// The exponentially weighted mean hold time; `None` until a permit has been released.
    pub mean_hold: Option<Duration>,
}

impl AdmissionSnapshot {
    pub fn waiting_in(&self, priority: Priority) -> usize {
        self.waiting[priority.rank()]
    }

    pub fn total_waiting(&self) -> usize {
        self.waiting.iter().sum()
    }
}

/// Admission control for environment creates; `Send + Sync`, meant to be shared behind an `Arc`.
pub struct Admission {
    shared: Arc<Shared>,
}

/// A create may run while this lives; dropping it, on any task or thread, admits the next
/// waiter.
pub struct Permit {
    shared: Arc<Shared>,
    acquired_at: Instant,
    /// False only for a permit that never reached its waiter, whose slot was passed on instead.
    armed: bool,
}

/// How a slot, or a refusal after queueing, reaches a waiter.
type Handoff = oneshot::Sender<Result<Permit, Shed>>;

struct Shared {
    config: AdmissionConfig,
    state: Mutex<State>,
}

struct State {
    /// Permits alive, including one in flight to a waiter. Below `concurrency` only while
    /// nobody waits.
    running: usize,
    /// Waiters, indexed by [`Priority::rank`].
    classes: [ClassQueue; 4],
    /// Rises with every arrival, so orders a team's waiters first come, first served.
    next_ticket: u64,
    mean_hold: Option<Duration>,
}

/// The waiters of one priority class.
#[derive(Default)]
struct ClassQueue {
    /// The teams with waiters in this class: the front one is served next, then goes to the back.
    turn_order: VecDeque<String>,
    /// Each team's waiters by ticket, oldest first; a team is here iff it is in `turn_order`,
    /// and never with no waiters.
    waiters_by_team: HashMap<String, BTreeMap<u64, Handoff>>,
    n_waiting: usize,
}

/// A queued `admit`'s claim on its place in the queue; dropping it while still queued (the
/// future was cancelled) leaves the queue.
struct QueuedWaiter<'admission> {
    shared: &'admission Shared,
    team: String,
    priority: Priority,
    ticket: u64,
    in_queue: bool,
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Self {
        let config = AdmissionConfig {
            concurrency: config.concurrency.max(1),
            ..config
        };
        let state = State {
            running: 0,
            classes: Default::default(),
            next_ticket: 0,
            mean_hold: None,
        };
        Self {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(state),
            }),
        }
    }

    /// Waits for a slot, in the fair order; or refuses at once (queue full) or after max_wait.
    /// Cancel-safe: dropping the future while queued removes the waiter, and a slot handed to
    /// a waiter that was dropped at that moment goes to the next one (never leaks).
    pub async fn admit(&self, team: &str, priority: Priority) -> Result<Permit, Shed> {
        let config = &self.shared.config;
        let (mut receiver, mut waiter) = {
            let mut state = self.shared.lock_state();
            if state.running < config.concurrency {
                debug_assert_eq!(state.n_waiting(), 0, "a slot was free while waiters queued");
                state.running += 1;
                return Ok(Permit::new(Arc::clone(&self.shared)));
            }
            if state.n_waiting() >= config.max_queue {
                let Some((displaced, displaced_priority)) = state.displace_for(team, priority)
                else {
                    return Err(state.shed(ShedReason::QueueFull, priority, config));
                };
                let shed = state.shed(ShedReason::QueueFull, displaced_priority, config);
                // A displaced waiter whose future is already gone needs no telling.
                let _ = displaced.send(Err(shed));
            }
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            let (handoff, receiver) = oneshot::channel();
            state.classes[priority.rank()].push(team, ticket, handoff);
            let waiter = QueuedWaiter {
                shared: &self.shared,
                team: team.to_owned(),
                priority,
                ticket,
                in_queue: true,
            };
            (receiver, waiter)
        };
        match tokio::time::timeout(config.max_wait, &mut receiver).await {
            Ok(Ok(outcome)) => {
                // Whoever sent the outcome took the waiter out of the queue.
                waiter.in_queue = false;
                outcome
            }
            Ok(Err(_sender_dropped)) => {
                // Only the waiter itself removes its handoff without sending on it; this
                // cannot happen, but a refusal is the safe answer.
                waiter.in_queue = false;
                Err(self.shed(ShedReason::WaitedTooLong, priority))
            }
            Err(_elapsed) => {
                let refused = {
                    let mut state = self.shared.lock_state();
                    waiter
                        .leave_queue(&mut state)
                        .then(|| state.shed(ShedReason::WaitedTooLong, priority, config))
                };
                match refused {
                    Some(shed) => Err(shed),
                    // Admitted or displaced just as time ran out: the outcome is in the channel
                    // (taken outside the lock, since dropping a permit takes the lock).
                    None => receiver
                        .try_recv()
                        .unwrap_or_else(|_| Err(self.shed(ShedReason::WaitedTooLong, priority))),
                }
            }
        }
    }

    /// For metrics and tests: running permits, waiters per priority, the mean hold time.
    pub fn snapshot(&self) -> AdmissionSnapshot {
        let state = self.shared.lock_state();
        AdmissionSnapshot {
            running: state.running,
            waiting: std::array::from_fn(|rank| state.classes[rank].n_waiting),
            mean_hold: state.mean_hold,
        }
    }

    fn shed(&self, reason: ShedReason, priority: Priority) -> Shed {
        self.shared
            .lock_state()
            .shed(reason, priority, &self.shared.config)
    }
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("admission state poisoned: a thread panicked while holding its lock")
    }
}

/// Gives a slot that its permit no longer needs to the next waiter, or frees it if nobody
/// waits. Called with the lock held.
fn hand_on_slot(shared: &Arc<Shared>, state: &mut State) {
    while let Some(handoff) = state.pop_next_waiter() {
        match handoff.send(Ok(Permit::new(Arc::clone(shared)))) {
            Ok(()) => return,
            // The receiver is gone: disarm the unsent permit (its drop would take the lock we
            // hold) and offer the slot to the next waiter.
            Err(unsent) => {
                if let Ok(permit) = unsent {
                    permit.disarm();
                }
            }
        }
    }
    state.running -= 1;
}

impl State {
    fn n_waiting(&self) -> usize {
        self.classes.iter().map(|class| class.n_waiting).sum()
    }

    fn pop_next_waiter(&mut self) -> Option<Handoff> {
        self.classes.iter_mut().find_map(ClassQueue::pop_next)
    }

    /// With the queue full, takes out the waiter that a newcomer of `team` and `priority` may
    /// displace, if any, with that waiter's class.
    fn displace_for(&mut self, team: &str, priority: Priority) -> Option<(Handoff, Priority)> {
        let lowest = Priority::ALL
            .into_iter()
            .rev()
            .find(|class| self.classes[class.rank()].n_waiting > 0)?;
        if lowest < priority {
            return None;
        }
        let class = &mut self.classes[lowest.rank()];
        let (longest_team, longest_count) = class.longest_team()?;
        if lowest == priority && longest_count < class.count_of(team) + 2 {
            return None;
        }
        let handoff = class.pop_newest_of(&longest_team)?;
        Some((handoff, lowest))
    }

    fn record_hold(&mut self, held: Duration) {
        self.mean_hold = Some(match self.mean_hold {
            None => held,
            Some(mean) => {
                let mean_seconds = mean.as_secs_f64();
                let moved = mean_seconds + HOLD_SMOOTHING * (held.as_secs_f64() - mean_seconds);
                Duration::try_from_secs_f64(moved).unwrap_or(mean)
            }
        });
    }

    /// A refusal of a request in `priority`, with the retry hint of the module documentation.
    fn shed(&self, reason: ShedReason, priority: Priority, config: &AdmissionConfig) -> Shed {
        let ahead: usize = self.classes[..=priority.rank()]
            .iter()
            .map(|class| class.n_waiting)
            .sum();
        let mean_hold = self.mean_hold.unwrap_or(config.max_wait);
        let slots_to_wait_for = (ahead + 1) as f64 / config.concurrency as f64;
        let estimate = Duration::try_from_secs_f64(mean_hold.as_secs_f64() * slots_to_wait_for)
            .unwrap_or(MAX_RETRY_AFTER);
        Shed {
            retry_after: estimate.clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER),
            reason,
        }
    }
}

impl ClassQueue {
    fn push(&mut self, team: &str, ticket: u64, handoff: Handoff) {
        match self.waiters_by_team.get_mut(team) {
            Some(waiters) => {
                waiters.insert(ticket, handoff);
            }
            None => {
                let waiters = BTreeMap::from([(ticket, handoff)]);
                self.waiters_by_team.insert(team.to_owned(), waiters);
                self.turn_order.push_back(team.to_owned());
            }
        }
        self.n_waiting += 1;
    }

    /// The oldest waiter of the team whose turn it is; the team goes to the back of the ring.
    fn pop_next(&mut self) -> Option<Handoff> {
        let team = self.turn_order.pop_front()?;
        let waiters = self.waiters_by_team.get_mut(&team)?;
        let (_, handoff) = waiters.pop_first()?;
        if waiters.is_empty() {
            self.waiters_by_team.remove(&team);
        } else {
            self.turn_order.push_back(team);
        }
        self.n_waiting -= 1;
        Some(handoff)
    }

    /// Takes out one waiter, if it is still queued.
    fn remove(&mut self, team: &str, ticket: u64) -> Option<Handoff> {
        let waiters = self.waiters_by_team.get_mut(team)?;
        let handoff = waiters.remove(&ticket)?;
        if waiters.is_empty() {
            self.forget_team(team);
        }
        self.n_waiting -= 1;
        Some(handoff)
    }

    fn pop_newest_of(&mut self, team: &str) -> Option<Handoff> {
        let waiters = self.waiters_by_team.get_mut(team)?;
        let (_, handoff) = waiters.pop_last()?;
        if waiters.is_empty() {
            self.forget_team(team);
        }
        self.n_waiting -= 1;
        Some(handoff)
    }

    fn forget_team(&mut self, team: &str) {
        self.waiters_by_team.remove(team);
        self.turn_order.retain(|queued| queued != team);
    }

    fn count_of(&self, team: &str) -> usize {
        self.waiters_by_team.get(team).map_or(0, BTreeMap::len)
    }

    /// The team with the most waiters; of equals, the one served last.
    fn longest_team(&self) -> Option<(String, usize)> {
        self.turn_order
            .iter()
            .map(|team| (team, self.count_of(team)))
            .max_by_key(|(_, count)| *count)
            .map(|(team, count)| (team.clone(), count))
    }
}

impl QueuedWaiter<'_> {
    /// Takes this waiter out of the queue; false if it was no longer there (a slot or a
    /// refusal was sent to it).
    fn leave_queue(&mut self, state: &mut State) -> bool {
        self.in_queue = false;
        state.classes[self.priority.rank()]
            .remove(&self.team, self.ticket)
            .is_some()
    }
}

impl Drop for QueuedWaiter<'_> {
    fn drop(&mut self) {
        if self.in_queue {
            let mut state = self.shared.lock_state();
            self.leave_queue(&mut state);
        }
    }
}

impl Permit {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            acquired_at: Instant::now(),
            armed: true,
        }
    }

    /// How long this permit has been held.
    pub fn held_for(&self) -> Duration {
        self.acquired_at.elapsed()
    }

    /// Drops this permit without releasing its slot, which the caller passes on.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let held = self.acquired_at.elapsed();
        let mut state = self.shared.lock_state();
        state.record_hold(held);
        hand_on_slot(&self.shared, &mut state);
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Permit")
            .field("held_for", &self.held_for())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn new_admission(concurrency: usize, max_queue: usize, max_wait: Duration) -> Admission {
        Admission::new(AdmissionConfig {
            concurrency,
            max_queue,
            max_wait,
        })
    }

    const LONG_WAIT: Duration = Duration::from_secs(3600);

    fn poll_once<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    /// Admits at once, or fails the test.
    fn admit_now(admission: &Admission, team: &str, priority: Priority) -> Permit {
        let mut admit = std::pin::pin!(admission.admit(team, priority));
        match poll_once(admit.as_mut()) {
            Poll::Ready(Ok(permit)) => permit,
            Poll::Ready(Err(shed)) => panic!("{team} {priority:?} was refused: {shed}"),
            Poll::Pending => panic!("{team} {priority:?} had to wait"),
        }
    }

    type AdmitFuture<'a> = Pin<Box<dyn Future<Output = Result<Permit, Shed>> + 'a>>;

    /// Queued `admit` futures, polled by hand so that the order of arrival and of service is
    /// exactly the order of the calls.
    #[derive(Default)]
    struct Line<'a> {
        queued: Vec<(String, AdmitFuture<'a>)>,
    }

    impl<'a> Line<'a> {
        fn join(&mut self, admission: &'a Admission, team: &str, priority: Priority, label: &str) {
            let team = team.to_owned();
            let mut future: AdmitFuture<'a> =
                Box::pin(async move { admission.admit(&team, priority).await });
            assert!(
                poll_once(future.as_mut()).is_pending(),
                "{label} should queue"
            );
            self.queued.push((label.to_owned(), future));
        }

        /// Polls every queued future; at most one may have finished: its label and outcome.
        fn next_outcome(&mut self) -> Option<(String, Result<Permit, Shed>)> {
            let mut finished = Vec::new();
            let mut index = 0;
            while index < self.queued.len() {
                match poll_once(self.queued[index].1.as_mut()) {
                    Poll::Ready(outcome) => finished.push((self.queued.remove(index).0, outcome)),
                    Poll::Pending => index += 1,
                }
            }
            assert!(finished.len() <= 1, "more than one waiter finished at once");
            finished.pop()
        }

        /// Releases `permit` and returns who got the slot, and the slot.
        fn hand_on(&mut self, permit: Permit) -> (String, Permit) {
            drop(permit);
            match self.next_outcome() {
                Some((label, Ok(permit))) => (label, permit),
                Some((label, Err(shed))) => panic!("{label} was refused: {shed}"),
                None => panic!("nobody got the released slot"),
            }
        }

        /// Releases slots one at a time until everyone queued has been admitted; the labels in
        /// the order of admission.
        fn drain(&mut self, mut permit: Permit) -> Vec<String> {
            let mut order = Vec::new();
            while !self.queued.is_empty() {
                let (label, next) = self.hand_on(permit);
                order.push(label);
                permit = next;
            }
            order
        }

        fn forget(&mut self, label: &str) {
            self.queued.retain(|(queued, _)| queued != label);
        }
    }

    fn assert_idle_and_usable(admission: &Admission) {
        let snapshot = admission.snapshot();
        assert_eq!(snapshot.running, 0, "{snapshot:?}");
        assert_eq!(snapshot.total_waiting(), 0, "{snapshot:?}");
        drop(admit_now(admission, "anyone", Priority::Batch));
        assert_eq!(admission.snapshot().running, 0);
    }

    /// xorshift64*: enough randomness for storms, no dependency.
    struct Random(u64);

    impl Random {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
        }
    }

    /// Counts permits alive from the holder's side; decremented before the permit is released.
    struct Holding<'a> {
        alive: &'a AtomicUsize,
    }

    impl<'a> Holding<'a> {
        fn start(alive: &'a AtomicUsize, most_alive: &AtomicUsize) -> Self {
            let now = alive.fetch_add(1, Ordering::SeqCst) + 1;
            most_alive.fetch_max(now, Ordering::SeqCst);
            Self { alive }
        }
    }

    impl Drop for Holding<'_> {
        fn drop(&mut self) {
            self.alive.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn admission_and_permit_are_send_and_sync_and_admit_is_send() {
        fn send_and_sync<T: Send + Sync>() {}
        fn send<T: Send>(_: &T) {}
        send_and_sync::<Admission>();
        send_and_sync::<Permit>();
        let admission = new_admission(1, 1, LONG_WAIT);
        send(&admission.admit("a", Priority::Batch));
    }

    #[tokio::test(start_paused = true)]
    async fn free_slots_are_taken_at_once_and_given_back_on_drop() {
        let admission = new_admission(2, 10, LONG_WAIT);
        let first = admit_now(&admission, "a", Priority::Batch);
        let second = admit_now(&admission, "b", Priority::Access);
        assert_eq!(admission.snapshot().running, 2);
        drop(first);
        assert_eq!(admission.snapshot().running, 1);
        drop(second);
        assert_idle_and_usable(&admission);
    }

    #[tokio::test(start_paused = true)]
    async fn a_concurrency_of_zero_is_taken_as_one() {
        let admission = new_admission(0, 10, LONG_WAIT);
        let permit = admit_now(&admission, "a", Priority::Batch);
        let mut line = Line::default();
        line.join(&admission, "a", Priority::Batch, "second");
        assert_eq!(line.drain(permit), ["second"]);
    }

    #[tokio::test(start_paused = true)]
    async fn access_waiter_arriving_after_batch_waiters_is_admitted_first() {
        let admission = new_admission(1, 100, LONG_WAIT);
        let busy = admit_now(&admission, "a", Priority::Batch);
        let mut line = Line::default();
        line.join(&admission, "a", Priority::Batch, "batch a");
        line.join(&admission, "b", Priority::Batch, "batch b");
        line.join(&admission, "c", Priority::Interactive, "interactive c");
        line.join(&admission, "a", Priority::Incident, "incident a");
        line.join(&admission, "d", Priority::Access, "access d");
        assert_eq!(
            line.drain(busy),
            [
                "access d",
                "incident a",
                "interactive c",
                "batch a",
                "batch b"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn late_team_is_served_round_robin_not_behind_an_early_burst() {
        let admission = new_admission(1, 1000, LONG_WAIT);
        let busy = admit_now(&admission, "a", Priority::Batch);
        let mut line = Line::default();
        for index in 0..100 {
            line.join(&admission, "a", Priority::Batch, &format!("a{index}"));
        }
        for index in 0..5 {
            line.join(&admission, "b", Priority::Batch, &format!("b{index}"));
        }
        let order = line.drain(busy);
        let first_ten: Vec<&str> = order[..10].iter().map(String::as_str).collect();
        assert_eq!(
            first_ten,
            ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3", "a4", "b4"]
        );
        let rest: Vec<String> = (5..100).map(|index| format!("a{index}")).collect();
        assert_eq!(order[10..], rest);
    }

    #[tokio::test(start_paused = true)]
    async fn team_alone_gets_every_slot() {
        let admission = new_admission(3, 100, LONG_WAIT);
        let held: Vec<Permit> = (0..3)
            .map(|_| admit_now(&admission, "a", Priority::Batch))
            .collect();
        let mut line = Line::default();
        for index in 0..5 {
            line.join(&admission, "a", Priority::Batch, &format!("a{index}"));
        }
        // Every slot released goes to the lone team while it waits; none stays idle.
        let mut held = held.into_iter();
        let mut now_held = Vec::new();
        for expected in ["a0", "a1", "a2"] {
            let (label, permit) = line.hand_on(held.next().expect("three held"));
            assert_eq!(label, expected);
            now_held.push(permit);
            assert_eq!(admission.snapshot().running, 3);
        }
        let permit = now_held.pop().expect("three held");
        assert_eq!(line.drain(permit), ["a3", "a4"]);
        drop(now_held);
        assert_idle_and_usable(&admission);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_of_one_team_and_class_are_served_first_come_first_served() {
        let admission = new_admission(1, 100, LONG_WAIT);
        let busy = admit_now(&admission, "a", Priority::Interactive);
        let mut line = Line::default();
        let labels: Vec<String> = (0..20).map(|index| format!("a{index}")).collect();
        for label in &labels {
            line.join(&admission, "a", Priority::Interactive, label);
        }
        assert_eq!(line.drain(busy), labels);
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_refuses_at_once() {
        let admission = new_admission(1, 2, LONG_WAIT);
        let _busy = admit_now(&admission, "a", Priority::Batch);
        let mut line = Line::default();
        line.join(&admission, "a", Priority::Batch, "a0");
        line.join(&admission, "a", Priority::Batch, "a1");
        let mut refused = std::pin::pin!(admission.admit("a", Priority::Batch));
        match poll_once(refused.as_mut()) {
            Poll::Ready(Err(shed)) => assert_eq!(shed.reason, ShedReason::QueueFull),
            other => panic!("expected an immediate refusal, got {other:?}"),
        }
        assert_eq!(admission.snapshot().waiting_in(Priority::Batch), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn max_queue_of_zero_refuses_whenever_slots_are_busy() {
        let admission = new_admission(1, 0, LONG_WAIT);
        let _busy = admit_now(&admission, "a", Priority::Batch);
        let shed = admission.admit("b", Priority::Access).await.unwrap_err();
        assert_eq!(shed.reason, ShedReason::QueueFull);
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_lets_a_higher_class_displace_the_newest_of_the_lowest() {
        let admission = new_admission(1, 3, LONG_WAIT);
        let busy = admit_now(&admission, "a", Priority::Batch);
        let mut line = Line::default();
        line.join(&admission, "a", Priority::Batch, "a0");
        line.join(&admission, "a", Priority::Batch, "a1");
        line.join(&admission, "b", Priority::Interactive, "b0");
        line.join(&admission, "c", Priority::Incident, "c0");
        match line.next_outcome() {
            Some((label, Err(shed))) => {
                assert_eq!(label, "a1");
                assert_eq!(shed.reason, ShedReason::QueueFull);
            }
            other => panic!("expected a1 to be displaced, got {other:?}"),
        }
        assert_eq!(admission.snapshot().total_waiting(), 3);
        // An arrival in the lowest class, from a team no larger there, displaces nobody.
        let mut refused = std::pin::pin!(admission.admit("d", Priority::Batch));
        match poll_once(refused.as_mut()) {
            Poll::Ready(Err(shed)) => assert_eq!(shed.reason, ShedReason::QueueFull),
            other => panic!("expected an immediate refusal, got {other:?}"),
        }
        assert_eq!(line.drain(busy), ["c0", "b0", "a0"]);

        // Nor does an arrival below every waiter.
        let admission = new_admission(1, 1, LONG_WAIT);
        let _busy = admit_now(&admission, "a", Priority::Batch);
        let mut line = Line::default();
        line.join(&admission, "a", Priority::Interactive, "a0");
        let mut refused = std::pin::pin!(admission.admit("b", Priority::Batch));
        match poll_once(refused.as_mut()) {
            Poll::Ready(Err(shed)) => assert_eq!(shed.reason, ShedReason::QueueFull),
            other => panic!("expected an immediate refusal, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_lets_a_small_team_displace_the_newest_of_the_largest_in_its_class() {
        let admission = new_admission(1, 4, LONG_WAIT);
        let busy = admit_now(&admission, "a", Priority::Batch);
        let mut line = Line::default();
        for index in 0..4 {
            line.join(&admission, "a", Priority::Batch, &format!("a{index}"));
        }
        line.join(&admission, "b", Priority::Batch, "b0");
        let (label, outcome) = line.next_outcome().expect("a waiter displaced");
        assert_eq!(label, "a3");
        assert_eq!(outcome.unwrap_err().reason, ShedReason::QueueFull);
        line.join(&admission, "b", Priority::Batch, "b1");
        let (label, _) = line.next_outcome().expect("a waiter displaced");
        assert_eq!(label, "a2");
        // Two each now: a third from b would only shift the imbalance, so it is refused.
        let mut refused = std::pin::pin!(admission.admit("b", Priority::Batch));
        match poll_once(refused.as_mut()) {
            Poll::Ready(Err(shed)) => assert_eq!(shed.reason, ShedReason::QueueFull),
            other => panic!("expected an immediate refusal, got {other:?}"),
        }
        assert_eq!(line.drain(busy), ["a0", "b0", "a1", "b1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn waiter_not_admitted_within_max_wait_is_refused_and_leaves_the_queue() {
        let max_wait = Duration::from_secs(30);
        let admission = new_admission(1, 10, max_wait);
        let _busy = admit_now(&admission, "a", Priority::Batch);
        let mut line = Line::default();
        line.join(&admission, "a", Priority::Batch, "stays");
        let started = Instant::now();
        let shed = admission
            .admit("b", Priority::Interactive)
            .await
            .unwrap_err();
        assert_eq!(shed.reason, ShedReason::WaitedTooLong);
        assert_eq!(started.elapsed(), max_wait);
        let snapshot = admission.snapshot();
        assert_eq!(snapshot.waiting_in(Priority::Interactive), 0);
        assert_eq!(snapshot.waiting_in(Priority::Batch), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_queued_admit_removes_the_waiter() {
        let admission = new_admission(1, 10, LONG_WAIT);
        let busy = admit_now(&admission, "a", Priority::Batch);
        let mut line = Line::default();
        line.join(&admission, "a", Priority::Batch, "gives up");
        line.join(&admission, "b", Priority::Batch, "waits");
        assert_eq!(admission.snapshot().total_waiting(), 2);
        line.forget("gives up");
        assert_eq!(admission.snapshot().total_waiting(), 1);
        assert_eq!(line.drain(busy), ["waits"]);
    }

    #[tokio::test(start_paused = true)]
    async fn slot_handed_to_a_waiter_dropped_at_that_moment_is_not_leaked() {
        let admission = new_admission(1, 10, LONG_WAIT);
        let busy = admit_now(&admission, "a", Priority::Batch);
        let mut line = Line::default();
        line.join(&admission, "a", Priority::Batch, "dropped");
        line.join(&admission, "b", Priority::Batch, "next");
        // The slot is sent to "dropped", whose future is then dropped before it sees it.
        drop(busy);
        line.forget("dropped");
        let (label, permit) = line.next_outcome().expect("the slot went on");
        assert_eq!(label, "next");
        drop(permit);
        // And with nobody after it, the slot comes free.
        let busy = admit_now(&admission, "a", Priority::Batch);
        line.join(&admission, "a", Priority::Batch, "dropped");
        drop(busy);
        line.forget("dropped");
        assert_idle_and_usable(&admission);
    }

    #[tokio::test(start_paused = true)]
    async fn slot_offered_to_a_waiter_whose_receiver_is_gone_goes_to_the_next() {
        // Reaches past the guard: a handoff whose receiver was dropped while still queued.
        let admission = new_admission(1, 10, LONG_WAIT);
        let busy = admit_now(&admission, "a", Priority::Batch);
        let (gone_handoff, gone_receiver) = oneshot::channel();
        admission.shared.lock_state().classes[Priority::Batch.rank()].push("a", 1000, gone_handoff);
        drop(gone_receiver);
        let mut line = Line::default();
        line.join(&admission, "b", Priority::Batch, "next");
        let (label, permit) = line.hand_on(busy);
        assert_eq!(label, "next");
        drop(permit);
        assert_idle_and_usable(&admission);
    }

    #[tokio::test(start_paused = true)]
    async fn permit_dropped_on_another_thread_or_task_admits_the_next() {
        let admission = Arc::new(new_admission(1, 10, LONG_WAIT));
        let permit = admit_now(&admission, "a", Priority::Batch);
        let waiting = tokio::spawn({
            let admission = Arc::clone(&admission);
            async move { admission.admit("b", Priority::Batch).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(admission.snapshot().total_waiting(), 1);
        std::thread::spawn(move || drop(permit))
            .join()
            .expect("the thread dropped the permit");
        let permit = waiting.await.expect("joined").expect("admitted");
        tokio::spawn(async move { drop(permit) })
            .await
            .expect("the task dropped the permit");
        assert_idle_and_usable(&admission);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_follows_queue_length_and_mean_hold_within_bounds() {
        let max_wait = Duration::from_secs(20);
        let admission = new_admission(2, 3, max_wait);
        let first = admit_now(&admission, "a", Priority::Batch);
        let second = admit_now(&admission, "a", Priority::Batch);
        let mut line = Line::default();
        for index in 0..3 {
            line.join(&admission, "a", Priority::Batch, &format!("a{index}"));
        }
        // No hold measured yet: max_wait stands in. 20 s × (3 ahead + 1) / 2 slots = 40 s.
        let shed = admission.admit("a", Priority::Batch).await.unwrap_err();
        assert_eq!(shed.retry_after, Duration::from_secs(40));
        // The first hold measured is the mean: 4 s × (3 + 1) / 2 = 8 s.
        tokio::time::advance(Duration::from_secs(4)).await;
        let (_, third) = line.hand_on(first);
        assert_eq!(admission.snapshot().mean_hold, Some(Duration::from_secs(4)));
        line.join(&admission, "a", Priority::Batch, "a3");
        let shed = admission.admit("a", Priority::Batch).await.unwrap_err();
        assert_eq!(shed.retry_after, Duration::from_secs(8));
        // Later ones move it by an eighth: 4 + (16 − 4) / 8 = 5.5 s; 5.5 s × 4 / 2 = 11 s.
        tokio::time::advance(Duration::from_secs(12)).await;
        let (_, fourth) = line.hand_on(second);
        assert_eq!(
            admission.snapshot().mean_hold,
            Some(Duration::from_millis(5500))
        );
        line.join(&admission, "a", Priority::Batch, "a4");
        let shed = admission.admit("a", Priority::Batch).await.unwrap_err();
        assert_eq!(shed.retry_after, Duration::from_secs(11));
        drop((third, fourth, line));

        // A higher class counts only the waiters ahead of it: 20 s × (0 + 1) / 2 = 10 s.
        let admission = new_admission(2, 10, max_wait);
        let _busy = [
            admit_now(&admission, "a", Priority::Batch),
            admit_now(&admission, "a", Priority::Batch),
        ];
        let mut line = Line::default();
        for index in 0..3 {
            line.join(&admission, "a", Priority::Batch, &format!("a{index}"));
        }
        let shed = admission.admit("b", Priority::Access).await.unwrap_err();
        assert_eq!(shed.reason, ShedReason::WaitedTooLong);
        assert_eq!(shed.retry_after, Duration::from_secs(10));

        // Never below 1 s: holds of no time at all.
        let admission = new_admission(1, 0, max_wait);
        for _ in 0..50 {
            drop(admit_now(&admission, "a", Priority::Batch));
        }
        let _busy = admit_now(&admission, "a", Priority::Batch);
        let shed = admission.admit("a", Priority::Batch).await.unwrap_err();
        assert_eq!(shed.retry_after, MIN_RETRY_AFTER);

        // Never above 60 s: an hour's guess for one slot.
        let admission = new_admission(1, 0, Duration::from_secs(3600));
        let _busy = admit_now(&admission, "a", Priority::Batch);
        let shed = admission.admit("a", Priority::Batch).await.unwrap_err();
        assert_eq!(shed.retry_after, MAX_RETRY_AFTER);
    }

    /// One storm's outcomes, counted.
    #[derive(Debug, Default)]
    struct Tally {
        ran: usize,
        queue_full: usize,
        waited_too_long: usize,
        gave_up: usize,
        aborted: usize,
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_concurrency_permits_under_a_storm_of_admits() {
        const CONCURRENCY: usize = 8;
        const TEAMS: [&str; 5] = ["a", "b", "c", "d", "e"];
        let admission = Arc::new(new_admission(CONCURRENCY, 200, Duration::from_secs(2)));
        let alive = Arc::new(AtomicUsize::new(0));
        let most_alive = Arc::new(AtomicUsize::new(0));
        let mut random = Random(0x5eed);
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let team = TEAMS[random.below(5) as usize];
            let priority = Priority::ALL[random.below(4) as usize];
            let hold = Duration::from_millis(random.below(400));
            let patience = Duration::from_millis(random.below(4000));
            let (admission, alive, most_alive) = (
                Arc::clone(&admission),
                Arc::clone(&alive),
                Arc::clone(&most_alive),
            );
            tasks.push(tokio::spawn(async move {
                let Ok(admitted) =
                    tokio::time::timeout(patience, admission.admit(team, priority)).await
                else {
                    return Err(None);
                };
                let permit = admitted.map_err(|shed| Some(shed.reason))?;
                let holding = Holding::start(&alive, &most_alive);
                assert!(admission.snapshot().running <= CONCURRENCY);
                tokio::time::sleep(hold).await;
                drop(holding);
                drop(permit);
                Ok(())
            }));
            if random.below(8) == 0 {
                // Arrivals spread over about five seconds, in bursts.
                tokio::time::sleep(Duration::from_millis(random.below(80))).await;
            }
            if random.below(10) == 0 {
                // Cancel anyone at any point: queued, just handed a slot, or holding one.
                tasks[random.below(tasks.len() as u64) as usize].abort();
            }
        }
        let mut tally = Tally::default();
        for task in tasks {
            match task.await {
                Ok(Ok(())) => tally.ran += 1,
                Ok(Err(Some(ShedReason::QueueFull))) => tally.queue_full += 1,
                Ok(Err(Some(ShedReason::WaitedTooLong))) => tally.waited_too_long += 1,
                Ok(Err(None)) => tally.gave_up += 1,
                Err(error) if error.is_cancelled() => tally.aborted += 1,
                Err(error) => panic!("a storm task failed: {error}"),
            }
        }
        assert_eq!(most_alive.load(Ordering::SeqCst), CONCURRENCY, "{tally:?}");
        // The storm exercised every way out.
        assert!(
            tally.ran > 0
                && tally.queue_full > 0
                && tally.waited_too_long > 0
                && tally.gave_up > 0
                && tally.aborted > 0,
            "{tally:?}"
        );
        assert_idle_and_usable(&admission);
    }

    /// Polls the inner future at most `polls` times, then drops it: a cancellation at a point
    /// chosen without timers.
    struct GiveUpAfterPolls<F> {
        inner: Pin<Box<F>>,
        polls: u64,
    }

    impl<F: Future> Future for GiveUpAfterPolls<F> {
        type Output = Option<F::Output>;
        fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
            if self.polls == 0 {
                return Poll::Ready(None);
            }
            self.polls -= 1;
            match self.inner.as_mut().poll(context) {
                Poll::Ready(output) => Poll::Ready(Some(output)),
                Poll::Pending => {
                    context.waker().wake_by_ref();
                    Poll::Pending
                }
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_more_than_concurrency_permits_across_threads() {
        const CONCURRENCY: usize = 4;
        let admission = Arc::new(new_admission(CONCURRENCY, 1000, LONG_WAIT));
        let alive = Arc::new(AtomicUsize::new(0));
        let most_alive = Arc::new(AtomicUsize::new(0));
        let mut random = Random(0xfeed);
        let mut tasks = Vec::new();
        for index in 0..1000 {
            let team = ["a", "b", "c"][random.below(3) as usize];
            let priority = Priority::ALL[random.below(4) as usize];
            let hold_yields = random.below(20);
            let patience_polls = if random.below(3) == 0 {
                random.below(200)
            } else {
                u64::MAX
            };
            let (admission, alive, most_alive) = (
                Arc::clone(&admission),
                Arc::clone(&alive),
                Arc::clone(&most_alive),
            );
            tasks.push(tokio::spawn(async move {
                let admit = GiveUpAfterPolls {
                    inner: Box::pin(admission.admit(team, priority)),
                    polls: patience_polls,
                };
                let Some(admitted) = admit.await else {
                    return false;
                };
                let permit = admitted.expect("the queue is never full nor the wait too long");
                let holding = Holding::start(&alive, &most_alive);
                for _ in 0..hold_yields {
                    tokio::task::yield_now().await;
                }
                drop(holding);
                drop(permit);
                true
            }));
            if index % 7 == 0 {
                tasks[random.below(tasks.len() as u64) as usize].abort();
            }
        }
        let mut ran = 0;
        for task in tasks {
            match task.await {
                Ok(true) => ran += 1,
                Ok(false) => {}
                Err(error) => assert!(error.is_cancelled(), "a storm task failed: {error}"),
            }
        }
        assert!(ran > 0);
        assert!(most_alive.load(Ordering::SeqCst) <= CONCURRENCY);
        let snapshot = admission.snapshot();
        assert_eq!((snapshot.running, snapshot.total_waiting()), (0, 0));
        tokio::time::timeout(
            Duration::from_secs(10),
            admission.admit("a", Priority::Batch),
        )
        .await
        .expect("admitted at once")
        .expect("admitted");
    }
}
