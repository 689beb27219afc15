//! The plans a Conductor has moving through the crew's agents (VALIDATING, APPROVED,
//! APPLYING), and the room that leaves for new plans.
//!
//! A Conductor takes new plans only while fewer than its limit are moving. Behind, it then
//! finishes the plans it started before it starts more: new plans wait in the stream, where
//! they cost nothing, instead of in every agent's queue, where each plan in hand makes every
//! other one wait longer (and hold its service's lock longer).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use infracrew_protocol::{PlanId, PlanState};
use tokio::sync::watch;

/// A plan moving longer than this is no longer counted: another replica wrote its end, or it
/// waits on something slow (a real rollout, a stalled agent the sweeper looks after) that
/// holds up none of the crew's work.
const COUNTED_FOR: Duration = Duration::from_secs(60);
const PRUNED_EVERY: Duration = Duration::from_secs(1);

/// The plans this process moved last into a state that waits on an agent, each with when.
#[derive(Debug)]
pub struct MovingPlans {
    limit: usize,
    counted: Mutex<Counted>,
    room: watch::Sender<usize>,
}

#[derive(Debug)]
struct Counted {
    plans: HashMap<PlanId, Instant>,
    /// When plans counted too long were last let go: at most once a second, as that reads
    /// them all.
    pruned_at: Instant,
}

impl MovingPlans {
    /// At most `limit` plans moving at once (at least one).
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        MovingPlans {
            limit,
            counted: Mutex::new(Counted {
                plans: HashMap::new(),
                pruned_at: Instant::now(),
            }),
            room: watch::Sender::new(limit),
        }
    }

    /// How many more plans may start, kept up to date.
    pub fn room(&self) -> watch::Receiver<usize> {
        self.room.subscribe()
    }

    /// Counts a plan this process just wrote in `state`.
    pub fn note(&self, plan: PlanId, state: PlanState) {
        let mut counted = self
            .counted
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if waits_on_an_agent(state) {
            counted.plans.entry(plan).or_insert_with(Instant::now);
            if counted.plans.len() >= self.limit && counted.pruned_at.elapsed() >= PRUNED_EVERY {
                counted
                    .plans
                    .retain(|_, since| since.elapsed() < COUNTED_FOR);
                counted.pruned_at = Instant::now();
            }
        } else {
            counted.plans.remove(&plan);
        }
        let room = self.limit.saturating_sub(counted.plans.len());
        self.room
            .send_if_modified(|known| std::mem::replace(known, room) != room);
    }
}

/// States in which a plan is in an agent's hands: a build and its validation (Forge,
/// Sentinel) or an apply (Forge). The others wait on a person, on a lock, or on nothing.
fn waits_on_an_agent(state: PlanState) -> bool {
    matches!(
        state,
        PlanState::Validating | PlanState::Approved | PlanState::Applying
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(n: u128) -> PlanId {
        PlanId(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn room_shrinks_as_plans_start_moving_and_grows_as_they_stop() {
        let moving = MovingPlans::new(2);
        let room = moving.room();
        moving.note(plan(1), PlanState::Validating);
        moving.note(plan(1), PlanState::Approved);
        assert_eq!(*room.borrow(), 1, "one plan, however many moves");
        moving.note(plan(2), PlanState::Validating);
        assert_eq!(*room.borrow(), 0);
        moving.note(plan(1), PlanState::Applied);
        moving.note(plan(2), PlanState::Ready);
        assert_eq!(*room.borrow(), 2, "ended, or waiting on a person");
    }

    #[test]
    fn plans_waiting_on_a_lock_or_a_person_take_no_room() {
        let moving = MovingPlans::new(1);
        for state in [
            PlanState::Planned,
            PlanState::Ready,
            PlanState::AwaitingApproval,
            PlanState::Blocked,
        ] {
            moving.note(plan(1), state);
            assert_eq!(*moving.room().borrow(), 1, "{state}");
        }
    }
}
