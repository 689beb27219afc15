//! Conductor, the orchestrator: owns plan states, locks and the approval gate, and keeps
//! each plan's review in Slack.

pub mod approvals;
pub mod config;
pub mod github;
pub mod metrics;
pub mod orchestrator;
pub mod replay;
pub mod room;
pub mod slack;
pub mod watch;

use std::{sync::Arc, time::Duration};

use infracrew_agent_runtime::{Agent, WorkError};
use infracrew_bus::{ConsumerSettings, Delivery, HandlerError, Kv, Shutdown, buckets, consumers};
use infracrew_protocol::{PlanRecord, signing::Signer};
use tokio::task::JoinHandle;

use crate::{
    config::ConductorConfig,
    github::{GithubSetup, report::GithubReports, webhook::GithubEndpoint},
    metrics::ConductorMetrics,
    orchestrator::{Conductor, ConductorMessage},
    replay::SeenRequests,
    slack::{
        SlackDesk, SlackInbound, SlackSetup,
        endpoint::SlackEndpoint,
        notifier::{ReviewInput, SlackReviews},
    },
    watch::{AgentAlert, CrewWatch},
};

/// What the Conductor runs with beside its configuration file.
#[derive(Debug)]
pub struct RunOptions {
    /// The key every ApplyRequest is signed with.
    pub signer: Signer,
    /// Slack, when the configuration has a `[slack]` section.
    pub slack: Option<SlackSetup>,
    /// GitHub, when the configuration has a `[github]` section.
    pub github: Option<GithubSetup>,
}

/// Runs the Conductor until shutdown: its consumer (plans, builds, ops events), the decision
/// service on `crew.approval.request`, the sweeper, and the reviews (Slack's message, its
/// updates and thread, and the endpoint that takes decisions from Slack).
pub async fn run(
    agent: Agent,
    config: ConductorConfig,
    options: RunOptions,
    shutdown: Shutdown,
) -> Result<(), WorkError> {
    let crew = Arc::new(CrewWatch::new(
        Duration::from_secs(config.agent_silence_seconds),
        chrono::Utc::now(),
    ));
    let metrics = Arc::new(ConductorMetrics::default());
    agent.metrics.register(|registry| {
        crew.register(registry);
        metrics.register(registry);
    });
    let conductor = Arc::new(Conductor {
        bus: agent.bus.clone(),
        plans: agent.bucket(buckets::PLANS).await?,
        locks: agent.bucket(buckets::LOCKS).await?,
        config,
        instance: uuid::Uuid::new_v4().to_string(),
        crew: crew.clone(),
        metrics,
        signer: Arc::new(options.signer),
        seen: SeenRequests::new(agent.bucket(buckets::REQUESTS_SEEN).await?),
        written: Default::default(),
        lock_deletions: Default::default(),
        finished: Default::default(),
    });
    tracing::info!(public_key = %conductor.signer.public_key(), "ApplyRequests are signed; Forge needs this key as INFRACREW_CONDUCTOR_PUBLIC_KEY");
    let alerts = options
        .slack
        .as_ref()
        .map(|slack| (slack.api.clone(), slack.config.channel.clone()));
    let mut tasks = vec![
        tokio::spawn(conductor.clone().serve_decisions(shutdown.clone())),
        tokio::spawn(conductor.clone().sweep(shutdown.clone())),
        tokio::spawn(crew.follow(
            agent.bus.clone(),
            shutdown.clone(),
            move |alert: AgentAlert| {
                let alerts = alerts.clone();
                async move {
                    if let Some((api, channel)) = alerts {
                        let text = slack_morphism::SlackMessageContent::new().with_text(alert.text);
                        if let Err(error) = api.post(&channel, text, None).await {
                            tracing::error!(%error, agent = %alert.agent, "the agent alert was not posted to Slack");
                        }
                    }
                }
            },
        )),
    ];
    tasks
        .extend(start_reviews(&agent, &conductor, options.slack, options.github, &shutdown).await?);
    // No new plan before the backlog is first read (at once).
    let (room, new_plan_room) = tokio::sync::watch::channel(0);
    tasks.push(tokio::spawn(room::keep_room(
        agent.bus.clone(),
        room,
        conductor.metrics.new_plan_room(),
        shutdown.clone(),
    )));
    let handler = {
        let conductor = conductor.clone();
        move |message: ConductorMessage, delivery: Delivery| {
            let conductor = conductor.clone();
            async move { conductor.handle(message, delivery.delivered()).await }
        }
    };
    // Plans at once; each plan's events one at a time, in the order they were published
    // (ConductorMessage::order_key). New plans come through a consumer of their own, taken
    // while the crew's work on started plans leaves room (see `room`).
    let started = agent.consume(
        ConsumerSettings::default(),
        handler.clone(),
        shutdown.clone(),
    );
    let new_plans = agent.consume_from(
        consumers::NEW_PLANS,
        ConsumerSettings {
            room: Some(new_plan_room),
            ..ConsumerSettings::default()
        },
        handler,
        shutdown.clone(),
    );
    // Either consumer stopping stops the Conductor.
    let stop_all = |outcome| {
        shutdown.cancel();
        outcome
    };
    let (started, new_plans) = tokio::join!(async { stop_all(started.await) }, async {
        stop_all(new_plans.await)
    });
    if let (Err(_), Err(error)) = (&started, &new_plans) {
        tracing::error!(%error, "new plans' consumer stopped too");
    }
    let outcome = started.and(new_plans);
    for task in tasks {
        if let Err(error) = task.await {
            tracing::error!(%error, "a Conductor task failed");
        }
    }
    outcome
}

/// Where plan reviews go, in order: the pull request (when the plan came from one), then
/// Slack. GitHub goes first because an outage there is retried by redelivering the move,
/// and Slack's thread must not get its posts twice.
struct Reviews {
    plans: Kv<PlanRecord>,
    github: Option<GithubReports>,
    slack: Option<SlackReviews>,
}

impl Reviews {
    async fn handle(&self, input: ReviewInput, delivery: Delivery) -> Result<(), HandlerError> {
        let moved = match input {
            ReviewInput::Ops(event) => {
                return match &self.slack {
                    Some(slack) => slack.on_ops(event, &delivery).await,
                    None => Ok(()),
                };
            }
            ReviewInput::Moved(moved) => moved,
        };
        if self.github.is_none() && self.slack.is_none() {
            return Ok(());
        }
        // Read once for both: the record as it stands, which may be past this move.
        let record = self
            .plans
            .get(&moved.plan_id.to_string())
            .await
            .map_err(|error| HandlerError::Retry(error.to_string()))?;
        let Some(record) = record.map(|r| r.value) else {
            return Ok(());
        };
        if let Some(github) = &self.github {
            github.on_move(&moved, &record).await?;
        }
        match &self.slack {
            Some(slack) => slack.on_move(&moved, &record, &delivery).await,
            None => Ok(()),
        }
    }
}

/// Starts the endpoints that take decisions from Slack and GitHub and the reviews consumer
/// that posts to them, creating it with the first review channel. Without a channel it is
/// not created, and one left from an earlier configuration is read and acknowledged, so it
/// keeps no backlog.
async fn start_reviews(
    agent: &Agent,
    conductor: &Arc<Conductor>,
    slack: Option<SlackSetup>,
    github: Option<GithubSetup>,
    shutdown: &Shutdown,
) -> Result<Option<JoinHandle<()>>, WorkError> {
    if slack.is_some() || github.is_some() {
        agent.create_consumer(consumers::REVIEWS).await?;
    } else if !agent.has_consumer(consumers::REVIEWS).await? {
        tracing::info!("no review channel (Slack, GitHub): plans are reviewed with crew show");
        return Ok(None);
    }
    let settings = ConsumerSettings {
        concurrency: 1,
        ..ConsumerSettings::default()
    };
    let mut routes: Option<axum::Router> = None;
    let mut socket: Option<JoinHandle<()>> = None;
    let slack_reviews = match slack {
        None => None,
        Some(slack) => {
            let reviews = SlackReviews {
                api: slack.api.clone(),
                config: slack.config.clone(),
                rules: conductor.config.approvals.clone(),
                reviews: agent.bucket(buckets::REVIEWS).await?,
                shutdown: shutdown.clone(),
            };
            let desk = Arc::new(SlackDesk {
                conductor: conductor.clone(),
                api: slack.api,
                config: slack.config,
            });
            // Over HTTP, Slack's requests come to the agent's endpoint; Socket Mode dials out.
            match slack.inbound {
                SlackInbound::Http(verifier) => {
                    routes = Some(slack::endpoint::routes(Arc::new(SlackEndpoint {
                        desk,
                        verifier,
                    })));
                    tracing::info!(
                        "taking Slack's slash commands on /slack/commands and buttons on /slack/interactions, beside /health and /metrics"
                    );
                }
                SlackInbound::Socket { app_token } => {
                    let shutdown = shutdown.clone();
                    socket = Some(tokio::spawn(async move {
                        if let Err(error) = slack::socket::serve(desk, &app_token, shutdown).await {
                            tracing::error!(%error, "Slack's requests are not taken");
                        }
                    }));
                }
            }
            Some(reviews)
        }
    };
    let github_reports = match github {
        None => None,
        Some(github) => {
            let endpoint = Arc::new(GithubEndpoint {
                conductor: conductor.clone(),
                api: github.api.clone(),
                config: github.config.clone(),
                secret: github.webhook_secret,
            });
            let webhook = github::webhook::routes(endpoint);
            routes = Some(match routes {
                Some(routes) => routes.merge(webhook),
                None => webhook,
            });
            tracing::info!(
                "taking GitHub's events on /github/webhook, beside /health and /metrics"
            );
            Some(GithubReports {
                api: github.api,
                config: github.config,
                reviews: agent.bucket(buckets::REVIEWS).await?,
            })
        }
    };
    if let Some(routes) = routes {
        agent.mount(routes);
    }
    let reviews = Arc::new(Reviews {
        plans: agent.bucket(buckets::PLANS).await?,
        github: github_reports,
        slack: slack_reviews,
    });
    let agent = agent.clone();
    let shutdown = shutdown.clone();
    Ok(Some(tokio::spawn(async move {
        let handler = move |input: ReviewInput, delivery: Delivery| {
            let reviews = reviews.clone();
            async move { reviews.handle(input, delivery).await }
        };
        if let Err(error) = agent
            .consume_from(consumers::REVIEWS, settings, handler, shutdown.clone())
            .await
        {
            tracing::error!(%error, "the reviews consumer stopped");
            shutdown.cancel();
        }
        if let Some(socket) = socket
            && let Err(error) = socket.await
        {
            tracing::error!(%error, "Slack's Socket Mode listener failed");
        }
    })))
}
