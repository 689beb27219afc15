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

/// Why a text names no single plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanRefError {
    #[error("no plan id starts with {0:?}")]
    NoMatch(String),
    #[error("{text:?} names {count} plans; give more of the id")]
    Ambiguous { text: String, count: usize },
}

impl PlanId {
    /// The plan among `known` that `text` names: a whole id, or a unique prefix of one (people
    /// type the first eight characters that `crew plans` shows).
    pub fn resolve<'a>(
        text: &str,
        known: impl IntoIterator<Item = &'a str>,
    ) -> Result<PlanId, PlanRefError> {
        let text = text.trim();
        if let Ok(id) = text.parse::<PlanId>() {
            return Ok(id);
        }
        let matching: Vec<PlanId> = known
            .into_iter()
            .filter(|id| !text.is_empty() && id.starts_with(text))
            .filter_map(|id| id.parse().ok())
            .collect();
        match matching.as_slice() {
            [one] => Ok(*one),
            [] => Err(PlanRefError::NoMatch(text.to_owned())),
            many => Err(PlanRefError::Ambiguous {
                text: text.to_owned(),
                count: many.len(),
            }),
        }
    }
}

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

    #[test]
    fn a_plan_is_named_by_its_id_or_a_unique_prefix() {
        let ids = [
            "0f6c1a52-7e44-4c51-9d0b-2f1ad3a7c001",
            "0f6c9999-7e44-4c51-9d0b-2f1ad3a7c002",
        ];
        let first: PlanId = ids[0].parse().unwrap();
        assert_eq!(PlanId::resolve(ids[0], ids), Ok(first));
        assert_eq!(PlanId::resolve(" 0f6c1a ", ids), Ok(first));
        assert_eq!(
            PlanId::resolve("0f6c", ids).unwrap_err().to_string(),
            "\"0f6c\" names 2 plans; give more of the id"
        );
        assert_eq!(
            PlanId::resolve("", ids),
            Err(PlanRefError::NoMatch(String::new()))
        );
        assert_eq!(
            PlanId::resolve("zz", ids).unwrap_err().to_string(),
            "no plan id starts with \"zz\""
        );
    }
}
