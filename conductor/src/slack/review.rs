//! What a plan's review looks like in Slack: one Block Kit message rendered from the plan
//! record (so each update shows the whole current state), the lines of its thread, and the
//! replies people get. Pure functions, so the look is tested without Slack.

use infracrew_protocol::{Enforcement, OpsEvent, OpsEventKind, PlanRecord, PlanState, Transition};
use slack_morphism::prelude::*;

use crate::approvals::ApprovalRules;

/// The action ids of the review buttons; the button's value is the plan id.
pub const APPROVE_ACTION: &str = "approve";
pub const REJECT_ACTION: &str = "reject";

/// Slack refuses a section text over 3,000 characters.
const SECTION_LIMIT: usize = 2_900;

/// The review message for `record`: what is asked, the change, the findings, where the
/// decision stands, and the buttons while the plan takes approvals.
pub fn review_message(
    record: &PlanRecord,
    rules: &ApprovalRules,
    diff_lines: usize,
) -> SlackMessageContent {
    let plan = &record.plan;
    let id = plan.plan_id.to_string();
    let mut blocks: Vec<SlackBlock> = vec![
        SlackHeaderBlock::new(pt!(format!(
            "{} {} in {}",
            intent(record),
            plan.service,
            plan.environment
        )))
        .into(),
        SlackSectionBlock::new()
            .with_fields(vec![
                md!(format!("*Plan*\n`{id}`")),
                md!(format!(
                    "*State*\n{} {}",
                    state_emoji(record.state),
                    record.state
                )),
                md!(format!("*Requested by*\n{}", plan.requested_by)),
                md!(format!(
                    "*Risk*\n{}{}",
                    format!("{:?}", plan.risk.level).to_lowercase(),
                    if plan.risk.reasons.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", plan.risk.reasons.join("; "))
                    }
                )),
            ])
            .into(),
    ];
    if let Some(reason) = &plan.reason {
        blocks.push(
            SlackSectionBlock::new()
                .with_text(md!(format!("_{reason}_")))
                .into(),
        );
    }
    if let Some(build) = &record.build {
        let summary = build.summary;
        let mut text = format!(
            "*Change* `{}` ({} to create, {} to change, {} to remove)",
            build.digest.short(),
            summary.create,
            summary.update,
            summary.delete
        );
        if let Some(cost) = &build.cost {
            text.push_str(&format!(
                "\n*Cost* {:+.2} {} a month ({:.2} -> {:.2})",
                cost.monthly_delta, cost.currency, cost.monthly_before, cost.monthly_after
            ));
        }
        blocks.push(SlackSectionBlock::new().with_text(md!(text)).into());
        blocks.push(
            SlackSectionBlock::new()
                .with_text(md!(diff_block(&build.diff_text, diff_lines, &id)))
                .into(),
        );
        blocks.push(
            SlackSectionBlock::new()
                .with_text(md!(findings_text(record)))
                .into(),
        );
    }
    blocks.push(
        SlackContextBlock::new(vec![SlackContextBlockElement::MarkDown(
            SlackBlockMarkDownText::new(decision_text(record, rules)),
        )])
        .into(),
    );
    if matches!(record.state, PlanState::Ready | PlanState::AwaitingApproval) {
        blocks.push(
            SlackActionsBlock::new(vec![
                SlackBlockButtonElement::new(pt!("Approve"))
                    .with_action_id(SlackActionId(APPROVE_ACTION.into()))
                    .with_value(id.clone())
                    .with_style(SlackBlockButtonStyle::Primary)
                    .into(),
                SlackBlockButtonElement::new(pt!("Reject"))
                    .with_action_id(SlackActionId(REJECT_ACTION.into()))
                    .with_value(id.clone())
                    .with_style(SlackBlockButtonStyle::Danger)
                    .into(),
            ])
            .into(),
        );
    }
    SlackMessageContent::new()
        .with_text(summary_line(record))
        .with_blocks(blocks)
}

/// The one-line text Slack shows in notifications and where blocks cannot be drawn.
pub fn summary_line(record: &PlanRecord) -> String {
    let plan = &record.plan;
    format!(
        "Plan {} ({} {} in {}, by {}): {}",
        short_id(record),
        intent(record),
        plan.service,
        plan.environment,
        plan.requested_by,
        record.state
    )
}

/// The thread line for one of Forge's steps, or nothing for the ends, which the final notice
/// reports.
pub fn ops_line(event: &OpsEvent) -> Option<String> {
    let mark = match event.kind {
        OpsEventKind::ApplyStarted => ":arrow_forward:",
        OpsEventKind::StepStarted => ":small_blue_diamond:",
        OpsEventKind::StepProgress => ":hourglass_flowing_sand:",
        OpsEventKind::StepSucceeded => ":heavy_check_mark:",
        OpsEventKind::StepFailed => ":warning:",
        OpsEventKind::ApplyDone
        | OpsEventKind::ApplyFailed
        | OpsEventKind::ApplyRefused
        | OpsEventKind::RolledBack => return None,
    };
    let step = event
        .step
        .as_deref()
        .map(|step| format!("`{step}` "))
        .unwrap_or_default();
    Some(format!("{mark} {step}{}", event.message))
}

/// The notice posted in the thread when the plan ends, if this move ends it.
pub fn final_notice(record: &PlanRecord, moved: &Transition) -> Option<String> {
    let plan = &record.plan;
    let what = format!("{} in {}", plan.service, plan.environment);
    let text = match moved.to {
        PlanState::Applied => format!(
            ":white_check_mark: Applied: {what} is done and healthy. {}",
            moved.why
        ),
        PlanState::Failed => format!(":x: Failed: {what} was not applied. {}", moved.why),
        PlanState::RolledBack => format!(
            ":rewind: Rolled back: {what} is back on the approved previous state. {}",
            moved.why
        ),
        PlanState::Rejected => format!(":no_entry: Rejected by {}: {}", moved.by, moved.why),
        PlanState::Expired => format!(":hourglass: Expired: {}", moved.why),
        _ => return None,
    };
    Some(text)
}

/// A plan id as people read it in lists.
pub fn short_id(record: &PlanRecord) -> String {
    record.plan.plan_id.to_string()[..8].to_owned()
}

fn intent(record: &PlanRecord) -> String {
    serde_json::to_value(record.plan.intent)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn state_emoji(state: PlanState) -> &'static str {
    match state {
        PlanState::Ready | PlanState::AwaitingApproval => ":eyes:",
        PlanState::Blocked => ":no_entry:",
        PlanState::Approved | PlanState::Applying => ":gear:",
        PlanState::Applied => ":white_check_mark:",
        PlanState::Failed => ":x:",
        PlanState::RolledBack => ":rewind:",
        PlanState::Rejected | PlanState::Expired | PlanState::Superseded => ":heavy_minus_sign:",
        PlanState::Submitted | PlanState::Planned | PlanState::Validating | PlanState::NoChange => {
            ":hourglass:"
        }
    }
}

/// The diff in a code block, cut to `max_lines` (and Slack's size limit) with the command
/// that shows it whole.
fn diff_block(diff: &str, max_lines: usize, plan_id: &str) -> String {
    let lines: Vec<&str> = diff.lines().collect();
    let mut shown = String::new();
    let mut count = 0;
    for line in &lines {
        if count == max_lines || shown.len() + line.len() + 1 > SECTION_LIMIT - 200 {
            break;
        }
        shown.push_str(line);
        shown.push('\n');
        count += 1;
    }
    let mut text = format!("```\n{shown}```");
    if count < lines.len() {
        text.push_str(&format!(
            "\n_{} more lines: `crew show {plan_id}` shows the whole diff_",
            lines.len() - count
        ));
    }
    text
}

fn findings_text(record: &PlanRecord) -> String {
    let findings: Vec<String> = record
        .build
        .iter()
        .flat_map(|build| &build.findings)
        .map(|finding| {
            let level = match finding.enforcement {
                Enforcement::HardMandatory => "hard",
                Enforcement::SoftMandatory => "soft",
                Enforcement::Advisory => "advisory",
            };
            format!(
                "• [{level}] *{}* on `{}`: {}",
                finding.rule, finding.resource, finding.message
            )
        })
        .collect();
    let mut text = if findings.is_empty() {
        "*Findings* none: every policy passed".to_owned()
    } else {
        format!("*Findings*\n{}", findings.join("\n"))
    };
    if text.len() > SECTION_LIMIT {
        let mut cut = SECTION_LIMIT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// Where the decision stands: approvals so far and still needed, or how the plan ended.
pub fn decision_text(record: &PlanRecord, rules: &ApprovalRules) -> String {
    let approvals: Vec<String> = record
        .approvals
        .iter()
        .map(|approval| {
            format!(
                "{} ({:?}, {})",
                approval.approver,
                approval.channel,
                approval.at.format("%H:%M UTC")
            )
            .to_lowercase()
        })
        .collect();
    let approved_by = if approvals.is_empty() {
        String::new()
    } else {
        format!("Approved by {}. ", approvals.join(", "))
    };
    let last = record.history.last();
    let why = last.map(|moved| moved.why.as_str()).unwrap_or_default();
    match record.state {
        PlanState::Ready | PlanState::AwaitingApproval => {
            let needed = rules.approvals_needed(record).unwrap_or(1);
            format!(
                "{approved_by}{needed} more approval{} needed: `/approve {}` or the button. {} cannot approve their own plan.",
                if needed == 1 { "" } else { "s" },
                record.plan.plan_id,
                record.plan.requested_by
            )
        }
        PlanState::Blocked => format!(
            "Blocked: {why}. No approval is taken; a policy owner may override soft findings with `crew override`."
        ),
        PlanState::Approved => format!("{approved_by}Waiting for Forge to start."),
        PlanState::Applying => format!("{approved_by}Applying: steps follow in the thread."),
        PlanState::Applied => format!("{approved_by}Applied: {why}"),
        PlanState::Failed => format!("{approved_by}Failed: {why}"),
        PlanState::RolledBack => format!("{approved_by}Rolled back: {why}"),
        PlanState::Rejected => format!(
            "Rejected by {}: {why}",
            last.map(|moved| moved.by.as_str()).unwrap_or("?")
        ),
        PlanState::Expired => format!("Expired: {why}"),
        state => format!("{state}: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use infracrew_protocol::{BuildOutcome, Finding, examples};

    use super::*;

    fn record(state: PlanState) -> PlanRecord {
        let mut build = examples::build_status();
        build.outcome = BuildOutcome::Ready;
        build.diff_text = (1..=50).map(|n| format!("line {n}\n")).collect();
        PlanRecord {
            build: Some(build),
            ..PlanRecord::new(examples::plan_spec(), state)
        }
    }

    fn rules() -> ApprovalRules {
        toml::from_str(
            r#"
            [environments.prod]
            approvers = ["alice", "bob"]
            required_approvals = 2
            approval_window_seconds = 60
            [environments.staging]
            approvers = ["alice", "bob"]
            required_approvals = 1
            approval_window_seconds = 60
            "#,
        )
        .unwrap()
    }

    fn json(content: &SlackMessageContent) -> String {
        serde_json::to_string(content).unwrap()
    }

    #[test]
    fn a_ready_plan_has_buttons_a_cut_diff_and_what_is_needed() {
        let mut ready = record(PlanState::Ready);
        ready.plan.environment = "prod".into();
        let content = review_message(&ready, &rules(), 30);
        let text = json(&content);
        let id = ready.plan.plan_id.to_string();
        assert!(text.contains(r#""action_id":"approve""#), "{text}");
        assert!(text.contains(&format!(r#""value":"{id}""#)), "{text}");
        assert!(text.contains("line 30\\n```"), "{text}");
        assert!(!text.contains("line 31"), "{text}");
        assert!(
            text.contains(&format!(
                "20 more lines: `crew show {id}` shows the whole diff"
            )),
            "{text}"
        );
        assert!(text.contains("2 more approvals needed"), "{text}");
    }

    #[test]
    fn a_blocked_plan_has_no_buttons_and_names_its_findings() {
        let mut blocked = record(PlanState::Blocked);
        blocked.build.as_mut().unwrap().findings = vec![Finding {
            policy: "guardrails".into(),
            rule: "no_privileged".into(),
            resource: "service/prod/social-intel".into(),
            enforcement: Enforcement::HardMandatory,
            message: "privileged containers are not allowed".into(),
        }];
        let text = json(&review_message(&blocked, &rules(), 30));
        assert!(!text.contains(r#""action_id""#), "{text}");
        assert!(
            text.contains("[hard] *no_privileged* on `service/prod/social-intel`: privileged containers are not allowed"),
            "{text}"
        );
    }

    #[test]
    fn step_events_go_to_the_thread_and_ends_make_one_notice() {
        let mut event = examples::ops_event();
        event.kind = OpsEventKind::StepProgress;
        event.step = Some("apply social-intel".into());
        event.message = "replica 1 of 2 ready".into();
        assert_eq!(
            ops_line(&event).as_deref(),
            Some(":hourglass_flowing_sand: `apply social-intel` replica 1 of 2 ready")
        );
        event.kind = OpsEventKind::ApplyDone;
        assert_eq!(ops_line(&event), None);
        let applied = record(PlanState::Applied);
        let moved = Transition {
            from: Some(PlanState::Applying),
            to: PlanState::Applied,
            by: "forge".into(),
            why: "2 replicas healthy".into(),
            at: chrono::Utc::now(),
        };
        assert!(
            final_notice(&applied, &moved)
                .unwrap()
                .starts_with(":white_check_mark: Applied: ")
        );
    }
}
