//! The approval rules, one implementation for every channel (CLI, Slack, GitHub): who may
//! approve, reject or override which plan, and when a plan has the approvals it needs.

use std::{collections::BTreeMap, collections::BTreeSet, fmt, time::Duration};

use chrono::{DateTime, Utc};
use infracrew_protocol::{
    Approval, DecisionChannel, DecisionKind, Enforcement, Override, PlanDigest, PlanRecord,
    PlanState,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Who decides in one environment, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentRules {
    /// People who may approve or reject plans here: identities, or `@group` for everyone in
    /// one of the rules' groups.
    pub approvers: BTreeSet<String>,
    /// Distinct approvals a plan needs.
    #[schemars(range(min = 1))]
    pub required_approvals: u32,
    /// How long after a plan is ready its approvals are taken, in seconds.
    pub approval_window_seconds: u64,
    /// Approve plans that passed validation without a person (recorded as such).
    #[serde(default)]
    pub auto_approve: bool,
    /// People who may lift soft-mandatory findings, with a reason.
    #[serde(default)]
    pub policy_owners: BTreeSet<String>,
}

impl EnvironmentRules {
    pub fn approval_window(&self) -> Duration {
        Duration::from_secs(self.approval_window_seconds)
    }
}

/// The rules per environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRules {
    pub environments: BTreeMap<String, EnvironmentRules>,
    /// Named groups of identities (an on-call rota, a team) that allow lists name as `@name`.
    #[serde(default)]
    pub groups: BTreeMap<String, BTreeSet<String>>,
}

/// A person's decision on a plan, from any channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub kind: DecisionKind,
    /// The approver identity (a Slack or GitHub user already mapped to it).
    pub who: String,
    pub channel: DecisionChannel,
    /// Required for a reject reason (optional) and an override (required).
    pub reason: Option<String>,
    /// Whether the approver's identity was checked (a signature, a verified Slack request).
    pub authenticated: bool,
}

/// What an accepted decision does to the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// The plan has every approval it needs: it may be applied.
    Approved { approvers: Vec<String> },
    /// Counted; more distinct approvals are needed.
    Counted {
        approvers: Vec<String>,
        still_needed: u32,
    },
    /// The plan ends REJECTED.
    Rejected,
    /// The soft-mandatory findings are lifted: the plan becomes READY and needs approvals.
    Overridden { rules: Vec<String> },
}

/// The exact rule that refused a decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no approval rules are configured for environment {0}")]
    UnknownEnvironment(String),
    /// No live agent could carry the approval out; it is refused rather than queued.
    #[error("{0}; the plan keeps its place: approve again once it is back (see `crew status`)")]
    CrewUnhealthy(String),
    #[error("only a READY plan can be approved; this plan is {state}{}", blocking_note(.blocking))]
    NotReady {
        state: PlanState,
        blocking: Vec<String>,
    },
    #[error("the plan is already {0}; no decision changes it now")]
    Finished(PlanState),
    #[error("{who} may not decide plans in {environment}; its approvers are {}", list(.allowed))]
    NotAnApprover {
        who: String,
        environment: String,
        allowed: Vec<String>,
    },
    #[error("{0} requested this plan and cannot approve or override it")]
    OwnPlan(String),
    #[error("{0} has already approved this change; another approver is needed")]
    AlreadyApproved(String),
    #[error(
        "the approval window closed at {closed_at} ({window:?} after the plan was ready); submit the goal again"
    )]
    WindowClosed {
        closed_at: DateTime<Utc>,
        window: Duration,
    },
    #[error("{who} is not a policy owner in {environment}; its owners are {}", list(.owners))]
    NotPolicyOwner {
        who: String,
        environment: String,
        owners: Vec<String>,
    },
    #[error("an override needs a reason, which is recorded")]
    OverrideWithoutReason,
    #[error("only a BLOCKED plan has findings to override; this plan is {0}")]
    NothingToOverride(PlanState),
    #[error("hard-mandatory findings cannot be overridden: {}", .0.join(", "))]
    HardMandatory(Vec<String>),
    #[error("the plan has no built change to decide on yet")]
    NoBuild,
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "nobody (none configured)".to_owned()
    } else {
        names.join(", ")
    }
}

fn blocking_note(blocking: &[String]) -> String {
    if blocking.is_empty() {
        String::new()
    } else {
        format!(" (blocked by {})", blocking.join(", "))
    }
}

impl ApprovalRules {
    /// Every `@group` an allow list names is defined.
    pub fn check(&self) -> Result<(), String> {
        for (environment, rules) in &self.environments {
            for name in &rules.approvers {
                if let Some(group) = name.strip_prefix('@')
                    && !self.groups.contains_key(group)
                {
                    let known: Vec<&str> = self.groups.keys().map(String::as_str).collect();
                    return Err(format!(
                        "approvals.environments.{environment}.approvers names group @{group}, which approvals.groups does not define (it defines: {})",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether `who` is on `rules`' allow list, by name or through a group.
    fn allows(&self, rules: &EnvironmentRules, who: &str) -> bool {
        rules
            .approvers
            .iter()
            .any(|name| match name.strip_prefix('@') {
                Some(group) => self
                    .groups
                    .get(group)
                    .is_some_and(|members| members.contains(who)),
                None => name == who,
            })
    }

    fn is_approver(
        &self,
        rules: &EnvironmentRules,
        environment: &str,
        who: &str,
    ) -> Result<(), Refusal> {
        if self.allows(rules, who) {
            Ok(())
        } else {
            Err(Refusal::NotAnApprover {
                who: who.to_owned(),
                environment: environment.to_owned(),
                allowed: rules.approvers.iter().cloned().collect(),
            })
        }
    }

    /// Judges `decision` on `record` at `now`. On acceptance, the record carries the
    /// approval or override; the caller moves the state and stores it with compare-and-set.
    pub fn decide(
        &self,
        record: &mut PlanRecord,
        decision: &Decision,
        now: DateTime<Utc>,
    ) -> Result<Accepted, Refusal> {
        let environment = &record.plan.environment;
        let rules = self
            .environments
            .get(environment)
            .ok_or_else(|| Refusal::UnknownEnvironment(environment.clone()))?;
        if record.state.is_terminal() {
            return Err(Refusal::Finished(record.state));
        }
        let digest = record.digest().cloned().ok_or(Refusal::NoBuild)?;
        if let Some(closed_at) = window_closed(record, rules, now) {
            return Err(Refusal::WindowClosed {
                closed_at,
                window: rules.approval_window(),
            });
        }
        match decision.kind {
            DecisionKind::Approve => {
                check_approvable(record)?;
                self.is_approver(rules, environment, &decision.who)?;
                approve(record, rules, decision, digest, now)
            }
            DecisionKind::Reject => {
                self.is_approver(rules, environment, &decision.who)?;
                Ok(Accepted::Rejected)
            }
            DecisionKind::Override => override_findings(record, rules, decision, digest, now),
        }
    }

    /// Whether `record` is approved without a person: the environment auto-approves and the
    /// plan is READY (validation passed).
    pub fn auto_approves(&self, record: &PlanRecord) -> bool {
        record.state == PlanState::Ready
            && self
                .environments
                .get(&record.plan.environment)
                .is_some_and(|rules| rules.auto_approve)
    }

    /// How many more distinct approvals of the current change `record` needs, when its
    /// environment has rules.
    pub fn approvals_needed(&self, record: &PlanRecord) -> Option<u32> {
        let rules = self.environments.get(&record.plan.environment)?;
        let digest = record.digest();
        let have = record
            .approvals
            .iter()
            .filter(|approval| Some(&approval.digest) == digest)
            .count() as u32;
        Some(rules.required_approvals.saturating_sub(have))
    }

    /// When the plan's approval window closed, if it has.
    pub fn expired_at(&self, record: &PlanRecord, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let rules = self.environments.get(&record.plan.environment)?;
        window_closed(record, rules, now)
    }
}

fn window_closed(
    record: &PlanRecord,
    rules: &EnvironmentRules,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let opened = record.decision_opened_at?;
    let window = chrono::Duration::from_std(rules.approval_window()).ok()?;
    let closes = opened.checked_add_signed(window)?;
    (now >= closes).then_some(closes)
}

/// Only a READY plan (or one with some of its approvals) takes approvals.
fn check_approvable(record: &PlanRecord) -> Result<(), Refusal> {
    if !matches!(record.state, PlanState::Ready | PlanState::AwaitingApproval) {
        let blocking = record
            .build
            .iter()
            .flat_map(|build| &build.findings)
            .filter(|finding| finding.enforcement >= Enforcement::SoftMandatory)
            .map(|finding| format!("{} on {}", finding.rule, finding.resource))
            .collect();
        return Err(Refusal::NotReady {
            state: record.state,
            blocking,
        });
    }
    Ok(())
}

/// Counts an allowed approver's approval of the current digest.
fn approve(
    record: &mut PlanRecord,
    rules: &EnvironmentRules,
    decision: &Decision,
    digest: PlanDigest,
    now: DateTime<Utc>,
) -> Result<Accepted, Refusal> {
    if decision.who == record.plan.requested_by {
        return Err(Refusal::OwnPlan(decision.who.clone()));
    }
    // Approvals of an earlier rendering do not count: they saw another change.
    let counted = |approval: &Approval| approval.digest == digest;
    if record
        .approvals
        .iter()
        .any(|approval| counted(approval) && approval.approver == decision.who)
    {
        return Err(Refusal::AlreadyApproved(decision.who.clone()));
    }
    record.approvals.retain(counted);
    record.approvals.push(Approval {
        approver: decision.who.clone(),
        channel: decision.channel,
        digest,
        at: now,
        unauthenticated: !decision.authenticated,
    });
    let approvers: Vec<String> = record
        .approvals
        .iter()
        .map(|a| a.approver.clone())
        .collect();
    let have = approvers.len() as u32;
    if have >= rules.required_approvals {
        Ok(Accepted::Approved { approvers })
    } else {
        Ok(Accepted::Counted {
            approvers,
            still_needed: rules.required_approvals - have,
        })
    }
}

fn override_findings(
    record: &mut PlanRecord,
    rules: &EnvironmentRules,
    decision: &Decision,
    digest: PlanDigest,
    now: DateTime<Utc>,
) -> Result<Accepted, Refusal> {
    if record.state != PlanState::Blocked {
        return Err(Refusal::NothingToOverride(record.state));
    }
    if !rules.policy_owners.contains(&decision.who) {
        return Err(Refusal::NotPolicyOwner {
            who: decision.who.clone(),
            environment: record.plan.environment.clone(),
            owners: rules.policy_owners.iter().cloned().collect(),
        });
    }
    if decision.who == record.plan.requested_by {
        return Err(Refusal::OwnPlan(decision.who.clone()));
    }
    let reason = decision
        .reason
        .clone()
        .filter(|r| !r.trim().is_empty())
        .ok_or(Refusal::OverrideWithoutReason)?;
    let findings = record.build.iter().flat_map(|build| &build.findings);
    let hard: Vec<String> = findings
        .clone()
        .filter(|f| f.enforcement == Enforcement::HardMandatory)
        .map(|f| format!("{} on {}", f.rule, f.resource))
        .collect();
    if !hard.is_empty() {
        return Err(Refusal::HardMandatory(hard));
    }
    let rules_lifted: Vec<String> = findings
        .filter(|f| f.enforcement == Enforcement::SoftMandatory)
        .map(|f| f.rule.clone())
        .collect();
    record.overrides.push(Override {
        owner: decision.who.clone(),
        rules: rules_lifted.clone(),
        reason,
        digest,
        at: now,
    });
    Ok(Accepted::Overridden {
        rules: rules_lifted,
    })
}

impl fmt::Display for Accepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Accepted::Approved { approvers } => write!(f, "approved by {}", approvers.join(", ")),
            Accepted::Counted {
                approvers,
                still_needed,
            } => {
                write!(
                    f,
                    "approval counted ({}); {still_needed} more needed",
                    approvers.join(", ")
                )
            }
            Accepted::Rejected => f.write_str("rejected"),
            Accepted::Overridden { rules } => {
                write!(f, "findings overridden: {}", rules.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use infracrew_protocol::{BuildOutcome, Finding, examples};

    use super::*;

    fn rules() -> ApprovalRules {
        let environment = |approvers: &[&str], required, auto_approve| EnvironmentRules {
            approvers: approvers.iter().map(|a| a.to_string()).collect(),
            required_approvals: required,
            approval_window_seconds: 3600,
            auto_approve,
            policy_owners: ["erin".to_owned()].into(),
        };
        ApprovalRules {
            environments: [
                (
                    "dev".to_owned(),
                    environment(&["alice", "bob", "carol"], 1, true),
                ),
                (
                    "staging".to_owned(),
                    environment(&["alice", "bob"], 1, false),
                ),
                ("prod".to_owned(), environment(&["alice", "bob"], 2, false)),
            ]
            .into(),
            groups: BTreeMap::new(),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// A plan by dave in `environment`, built with `findings`, in `state`.
    fn record(environment: &str, state: PlanState, findings: Vec<Finding>) -> PlanRecord {
        let mut plan = examples::plan_spec();
        plan.environment = environment.into();
        let mut build = examples::build_status();
        build.findings = findings;
        build.outcome = if state == PlanState::Blocked {
            BuildOutcome::Blocked
        } else {
            BuildOutcome::Ready
        };
        PlanRecord {
            build: Some(build),
            decision_opened_at: Some(now()),
            ..PlanRecord::new(plan, state)
        }
    }

    fn decision(kind: DecisionKind, who: &str) -> Decision {
        Decision {
            kind,
            who: who.into(),
            channel: DecisionChannel::Cli,
            reason: None,
            authenticated: true,
        }
    }

    fn finding(rule: &str, enforcement: Enforcement) -> Finding {
        Finding {
            policy: "p".into(),
            rule: rule.into(),
            resource: "service/prod/social-intel".into(),
            enforcement,
            message: "m".into(),
        }
    }

    #[test]
    fn an_allowed_approver_approves_a_ready_plan() {
        let mut plan = record("staging", PlanState::Ready, vec![]);
        let accepted = rules()
            .decide(&mut plan, &decision(DecisionKind::Approve, "alice"), now())
            .unwrap();
        assert_eq!(
            accepted,
            Accepted::Approved {
                approvers: vec!["alice".into()]
            }
        );
        assert_eq!(
            plan.approvals[0].digest,
            plan.build.as_ref().unwrap().digest
        );
    }

    #[test]
    fn each_refusal_names_its_rule() {
        let rules = rules();
        let refuse = |plan: &mut PlanRecord, kind, who: &str| {
            rules
                .decide(plan, &decision(kind, who), now())
                .unwrap_err()
                .to_string()
        };

        let mut blocked = record(
            "staging",
            PlanState::Blocked,
            vec![finding("image_pinned", Enforcement::HardMandatory)],
        );
        assert_eq!(
            refuse(&mut blocked, DecisionKind::Approve, "alice"),
            "only a READY plan can be approved; this plan is BLOCKED (blocked by image_pinned on service/prod/social-intel)"
        );
        let mut ready = record("staging", PlanState::Ready, vec![]);
        assert_eq!(
            refuse(&mut ready, DecisionKind::Approve, "mallory"),
            "mallory may not decide plans in staging; its approvers are alice, bob"
        );
        assert_eq!(
            refuse(&mut ready, DecisionKind::Approve, "carol"),
            "carol may not decide plans in staging; its approvers are alice, bob"
        );
        let mut own = record("staging", PlanState::Ready, vec![]);
        own.plan.requested_by = "alice".into();
        assert_eq!(
            refuse(&mut own, DecisionKind::Approve, "alice"),
            "alice requested this plan and cannot approve or override it"
        );

        let mut prod = record("prod", PlanState::Ready, vec![]);
        rules
            .decide(&mut prod, &decision(DecisionKind::Approve, "alice"), now())
            .unwrap();
        assert_eq!(
            refuse(&mut prod, DecisionKind::Approve, "alice"),
            "alice has already approved this change; another approver is needed"
        );
        assert_eq!(prod.approvals.len(), 1, "a refusal changes nothing");

        let late = now() + chrono::Duration::hours(2);
        let mut stale = record("staging", PlanState::Ready, vec![]);
        let error = rules
            .decide(&mut stale, &decision(DecisionKind::Approve, "alice"), late)
            .unwrap_err();
        assert!(matches!(error, Refusal::WindowClosed { .. }), "{error}");
        assert_eq!(
            rules.expired_at(&stale, late),
            Some(now() + chrono::Duration::hours(1))
        );

        let mut done = record("staging", PlanState::Applied, vec![]);
        assert_eq!(
            refuse(&mut done, DecisionKind::Reject, "alice"),
            "the plan is already APPLIED; no decision changes it now"
        );
        let mut elsewhere = record("qa", PlanState::Ready, vec![]);
        assert_eq!(
            refuse(&mut elsewhere, DecisionKind::Approve, "alice"),
            "no approval rules are configured for environment qa"
        );
    }

    #[test]
    fn prod_needs_two_distinct_approvers_of_the_same_change() {
        let rules = rules();
        let mut plan = record("prod", PlanState::Ready, vec![]);
        let first = rules
            .decide(&mut plan, &decision(DecisionKind::Approve, "alice"), now())
            .unwrap();
        assert_eq!(
            first,
            Accepted::Counted {
                approvers: vec!["alice".into()],
                still_needed: 1
            }
        );

        // The change is rendered again: alice's approval was for another digest.
        let mut rebuilt = examples::build_status();
        rebuilt.digest =
            infracrew_protocol::PlanDigest::of_value(&serde_json::json!({"another": "change"}));
        plan.build = Some(rebuilt);
        let second = rules
            .decide(&mut plan, &decision(DecisionKind::Approve, "bob"), now())
            .unwrap();
        assert_eq!(
            second,
            Accepted::Counted {
                approvers: vec!["bob".into()],
                still_needed: 1
            }
        );
        let third = rules
            .decide(&mut plan, &decision(DecisionKind::Approve, "alice"), now())
            .unwrap();
        assert_eq!(
            third,
            Accepted::Approved {
                approvers: vec!["bob".into(), "alice".into()]
            }
        );
    }

    #[test]
    fn policy_owners_override_soft_findings_only_with_a_reason() {
        let rules = rules();
        let soft = || {
            record(
                "prod",
                PlanState::Blocked,
                vec![finding("prod_min_replicas", Enforcement::SoftMandatory)],
            )
        };
        let mut plan = soft();
        let error = rules
            .decide(&mut plan, &decision(DecisionKind::Override, "alice"), now())
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "alice is not a policy owner in prod; its owners are erin"
        );
        let error = rules
            .decide(&mut plan, &decision(DecisionKind::Override, "erin"), now())
            .unwrap_err();
        assert_eq!(error, Refusal::OverrideWithoutReason);

        let with_reason = Decision {
            reason: Some("one replica during the migration".into()),
            ..decision(DecisionKind::Override, "erin")
        };
        let accepted = rules.decide(&mut plan, &with_reason, now()).unwrap();
        assert_eq!(
            accepted,
            Accepted::Overridden {
                rules: vec!["prod_min_replicas".into()]
            }
        );
        assert_eq!(plan.overrides[0].reason, "one replica during the migration");

        let mut hard = record(
            "prod",
            PlanState::Blocked,
            vec![
                finding("prod_min_replicas", Enforcement::SoftMandatory),
                finding("no_privileged", Enforcement::HardMandatory),
            ],
        );
        let error = rules.decide(&mut hard, &with_reason, now()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "hard-mandatory findings cannot be overridden: no_privileged on service/prod/social-intel"
        );
    }

    #[test]
    fn auto_approval_only_where_configured_and_only_for_ready_plans() {
        let rules = rules();
        assert!(rules.auto_approves(&record("dev", PlanState::Ready, vec![])));
        assert!(!rules.auto_approves(&record("dev", PlanState::Blocked, vec![])));
        assert!(!rules.auto_approves(&record("staging", PlanState::Ready, vec![])));
    }

    #[test]
    fn an_allow_list_may_name_a_group() {
        let mut rules = rules();
        rules.groups.insert(
            "sre".into(),
            ["frank".to_owned(), "grace".to_owned()].into(),
        );
        let staging = rules.environments.get_mut("staging").unwrap();
        staging.approvers.insert("@sre".into());
        assert_eq!(rules.check(), Ok(()));
        let mut plan = record("staging", PlanState::Ready, vec![]);
        assert!(
            rules
                .decide(&mut plan, &decision(DecisionKind::Approve, "grace"), now())
                .is_ok()
        );
        let mut plan = record("staging", PlanState::Ready, vec![]);
        assert_eq!(
            rules
                .decide(
                    &mut plan,
                    &decision(DecisionKind::Approve, "mallory"),
                    now()
                )
                .unwrap_err()
                .to_string(),
            "mallory may not decide plans in staging; its approvers are @sre, alice, bob"
        );

        rules
            .environments
            .get_mut("prod")
            .unwrap()
            .approvers
            .insert("@dba".into());
        assert_eq!(
            rules.check(),
            Err("approvals.environments.prod.approvers names group @dba, which approvals.groups does not define (it defines: sre)".into())
        );
    }

    #[test]
    fn an_approver_rejects_and_others_cannot() {
        let rules = rules();
        let mut plan = record("staging", PlanState::Ready, vec![]);
        assert!(
            rules
                .decide(&mut plan, &decision(DecisionKind::Reject, "carol"), now())
                .is_err()
        );
        assert_eq!(
            rules.decide(&mut plan, &decision(DecisionKind::Reject, "bob"), now()),
            Ok(Accepted::Rejected)
        );
    }
}
