//! Keeps each plan's review in Slack in step with the plan: posted when the plan needs a
//! decision (READY or BLOCKED), updated in place on every move, Forge's steps in its thread,
//! and a notice there when the plan ends.
//!
//! It reads its own durable consumer (`conductor-reviews`: plan moves and ops events, one at a
//! time and in stream order), so Slack being slow or down delays only the posts, never a
//! plan. A post Slack cannot take now is retried with backoff, after the `Retry-After` Slack
//! gives, and the ones behind it wait their turn: nothing is lost or reordered. A post that
//! cannot succeed (a wrong token or channel) is logged with the fix and recorded for
//! `crew show`.

use std::{future::Future, time::Duration};

use infracrew_bus::{Delivery, HandlerError, Kv, Shutdown};
use infracrew_protocol::{
    DecodeError, FieldError, OpsEvent, PlanId, PlanRecord, PlanState, PlanTransitioned,
    ReviewRecord, decode, subjects,
};

use super::{
    api::{SlackApi, SlackCallError},
    review::{final_notice, ops_line, review_message},
};
use crate::{approvals::ApprovalRules, config::SlackConfig};

/// The first wait after Slack failed without saying how long to wait; it doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often a long wait tells the server the message is still being worked on.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// What the reviews consumer reads.
#[derive(Debug)]
pub enum ReviewInput {
    Moved(PlanTransitioned),
    Ops(OpsEvent),
}

impl infracrew_bus::Inbound for ReviewInput {
    fn decode(subject: &str, payload: &[u8]) -> Result<Self, DecodeError> {
        match subject {
            subjects::PLAN_STATE => decode(payload).map(ReviewInput::Moved),
            subjects::OPS_EVENT | subjects::OPS_STEP => decode(payload).map(ReviewInput::Ops),
            other => Err(DecodeError::Invalid {
                kind: "review input",
                errors: vec![FieldError {
                    path: String::new(),
                    message: format!("the review channel does not read {other}"),
                }],
            }),
        }
    }
}

/// Posts and updates reviews in the configured channel.
#[derive(Debug)]
pub struct SlackReviews {
    pub api: SlackApi,
    pub config: SlackConfig,
    pub rules: ApprovalRules,
    pub reviews: Kv<ReviewRecord>,
    pub shutdown: Shutdown,
}

impl SlackReviews {
    /// Posts or updates the review of the plan `record` after the moves `moved` carries.
    pub async fn on_move(
        &self,
        moved: &PlanTransitioned,
        record: &PlanRecord,
        delivery: &Delivery,
    ) -> Result<(), HandlerError> {
        // Plans that approve themselves ask nobody: no review.
        if self
            .rules
            .environments
            .get(&record.plan.environment)
            .is_some_and(|rules| rules.auto_approve)
        {
            return Ok(());
        }
        let content = review_message(record, &self.rules, self.config.diff_lines);
        let review = self.review(moved.plan_id).await?;
        let Some(message) = review.slack else {
            if moved
                .moves()
                .any(|(_, step)| matches!(step.to, PlanState::Ready | PlanState::Blocked))
            {
                let posted = self
                    .call(delivery, "posting the review", || {
                        self.api.post(&self.config.channel, content.clone(), None)
                    })
                    .await?;
                self.record(moved.plan_id, posted.map(Some)).await?;
            }
            return Ok(());
        };
        let updated = self
            .call(delivery, "updating the review", || {
                self.api.update(&message, content.clone())
            })
            .await?;
        if let Err(error) = updated {
            return self.record(moved.plan_id, Err(error)).await;
        }
        if let Some(notice) = final_notice(record, &moved.transition) {
            let text = slack_morphism::SlackMessageContent::new().with_text(notice);
            let posted = self
                .call(delivery, "posting the final notice", || {
                    self.api
                        .post(&message.channel, text.clone(), Some(&message))
                })
                .await?;
            if let Err(error) = posted {
                return self.record(moved.plan_id, Err(error)).await;
            }
        }
        Ok(())
    }

    /// Posts one of Forge's steps in the review's thread.
    pub async fn on_ops(&self, event: OpsEvent, delivery: &Delivery) -> Result<(), HandlerError> {
        let Some(line) = ops_line(&event) else {
            return Ok(());
        };
        let Some(message) = self.review(event.plan_id).await?.slack else {
            return Ok(());
        };
        let text = slack_morphism::SlackMessageContent::new().with_text(line);
        let posted = self
            .call(delivery, "posting a step in the thread", || {
                self.api
                    .post(&message.channel, text.clone(), Some(&message))
            })
            .await?;
        match posted {
            Ok(_) => Ok(()),
            Err(error) => self.record(event.plan_id, Err(error)).await,
        }
    }

    async fn review(&self, plan_id: PlanId) -> Result<ReviewRecord, HandlerError> {
        self.reviews
            .get(&plan_id.to_string())
            .await
            .map(|review| review.map(|r| r.value).unwrap_or_default())
            .map_err(|error| HandlerError::Retry(error.to_string()))
    }

    /// Records a new message, or the error that keeps the review from Slack, for `crew show`.
    async fn record(
        &self,
        plan_id: PlanId,
        outcome: Result<Option<infracrew_protocol::SlackMessageRef>, SlackCallError>,
    ) -> Result<(), HandlerError> {
        let mut review = self.review(plan_id).await?;
        match outcome {
            Ok(message) => {
                review.slack = message.or(review.slack);
                review.slack_error = None;
            }
            Err(error) => {
                tracing::error!(plan = %plan_id, %error, "the Slack review is not up to date");
                review.slack_error = Some(error.to_string());
            }
        }
        self.reviews
            .put(&plan_id.to_string(), &review)
            .await
            .map(|_| ())
            .map_err(|error| HandlerError::Retry(error.to_string()))
    }

    /// Runs a Slack call until Slack takes it or refuses it for good; the outer error means
    /// the Conductor is stopping and the message goes back to the server for later.
    async fn call<T, F, Fut>(
        &self,
        delivery: &Delivery,
        what: &str,
        attempt: F,
    ) -> Result<Result<T, SlackCallError>, HandlerError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, SlackCallError>>,
    {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match attempt().await {
                Ok(value) => return Ok(Ok(value)),
                Err(SlackCallError::Transient {
                    reason,
                    retry_after,
                }) => {
                    let wait = retry_after.unwrap_or(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    tracing::warn!(%reason, wait = ?wait, "{what}: Slack did not take it; trying again");
                    self.wait(delivery, wait).await?;
                }
                Err(permanent) => return Ok(Err(permanent)),
            }
        }
    }

    async fn wait(&self, delivery: &Delivery, wait: Duration) -> Result<(), HandlerError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(());
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    return Err(HandlerError::Retry("the Conductor is stopping; the Slack post is retried after it starts".into()));
                }
                _ = tokio::time::sleep((deadline - now).min(PROGRESS_EVERY)) => {}
            }
            // Waiting on Slack is work in progress: the message must not be redelivered to
            // another replica meanwhile, or posts could pass each other.
            if let Err(error) = delivery.in_progress().await {
                tracing::warn!(%error, "could not extend the review message's deadline");
            }
        }
    }
}
