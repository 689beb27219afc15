//! Identifiers, derived from their cause where a retry must land on the same id.

use std::{fmt, str::FromStr};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// UUIDv5 namespace for ids that infracrew derives; fixed forever so derivations stay stable.
const NAMESPACE: Uuid = Uuid::from_u128(0x6c1f_4a8e_0b5d_4f3a_9e2c_7d41_a8b3_c905);

/// Identifies one submitted goal. Given in goal.json or derived from the goal's content, so
/// resubmitting the same goal file names the same goal.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct GoalId(pub Uuid);

/// Identifies one plan. Derived from its goal id, so a redelivered goal yields the same plan.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct PlanId(pub Uuid);

impl GoalId {
    /// Derives a goal id from a canonical rendering of the goal's content.
    pub fn from_content(canonical_goal: &str) -> Self {
        GoalId(Uuid::new_v5(
            &NAMESPACE,
            format!("goal:{canonical_goal}").as_bytes(),
        ))
    }
}

impl PlanId {
    /// The plan id that a goal always plans into.
    pub fn for_goal(goal: GoalId) -> Self {
        PlanId(Uuid::new_v5(
            &NAMESPACE,
            format!("plan:{}", goal.0).as_bytes(),
        ))
    }
}

macro_rules! uuid_text {
    ($ty:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $ty {
            type Err = uuid::Error;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(text).map($ty)
            }
        }
    };
}
uuid_text!(GoalId);
uuid_text!(PlanId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let goal = GoalId::from_content("{\"service\":\"social-intel\"}");
        assert_eq!(goal, GoalId::from_content("{\"service\":\"social-intel\"}"));
        assert_ne!(goal, GoalId::from_content("{\"service\":\"alfred-bot\"}"));
        assert_eq!(PlanId::for_goal(goal), PlanId::for_goal(goal));
        assert_ne!(PlanId::for_goal(goal).0, goal.0);
        assert_eq!(goal.to_string().parse::<GoalId>().unwrap(), goal);
    }
}
