//! Conductor, the orchestrator: owns plan states, locks and the approval gate, and keeps
//! each plan's review in Slack.

pub mod approvals;
pub mod config;
pub mod orchestrator;
pub mod slack;

use std::{net::SocketAddr, sync::Arc};

use infracrew_agent_runtime::{Agent, WorkError};
use infracrew_bus::{ConsumerSettings, Delivery, HandlerError, Shutdown, buckets, consumers};
use tokio::task::JoinHandle;

use crate::{
    config::ConductorConfig,
    orchestrator::{Conductor, ConductorMessage},
    slack::{
        SlackDesk, SlackInbound, SlackSetup,
        endpoint::SlackEndpoint,
        notifier::{ReviewInput, SlackReviews},
    },
};

/// What the Conductor runs with beside its configuration file.
#[derive(Debug)]
pub struct RunOptions {
    /// Slack, when the configuration has a `[slack]` section.
    pub slack: Option<SlackSetup>,
    /// Where the HTTP endpoint (Slack's requests) listens.
    pub listen: SocketAddr,
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
    let conductor = Arc::new(Conductor {
        bus: agent.bus.clone(),
        plans: agent.bucket(buckets::PLANS).await?,
        locks: agent.bucket(buckets::LOCKS).await?,
        config,
        instance: uuid::Uuid::new_v4().to_string(),
    });
    let mut tasks = vec![
        tokio::spawn(conductor.clone().serve_decisions(shutdown.clone())),
        tokio::spawn(conductor.clone().sweep(shutdown.clone())),
    ];
    tasks.push(start_reviews(&agent, &conductor, options, &shutdown).await?);
    let handler = {
        let conductor = conductor.clone();
        move |message: ConductorMessage, _delivery: Delivery| {
            let conductor = conductor.clone();
            async move { conductor.handle(message).await }
        }
    };
    // One message at a time: a plan's events are applied in the order they were published.
    let settings = ConsumerSettings {
        concurrency: 1,
        ..ConsumerSettings::default()
    };
    let outcome = agent.consume(settings, handler, shutdown.clone()).await;
    shutdown.cancel();
    for task in tasks {
        if let Err(error) = task.await {
            tracing::error!(%error, "a Conductor task failed");
        }
    }
    outcome
}

/// Starts the reviews: without Slack, the reviews consumer is read and acknowledged so it
/// keeps no backlog; with it, reviews are posted and decisions taken from Slack.
async fn start_reviews(
    agent: &Agent,
    conductor: &Arc<Conductor>,
    options: RunOptions,
    shutdown: &Shutdown,
) -> Result<JoinHandle<()>, WorkError> {
    let settings = ConsumerSettings {
        concurrency: 1,
        ..ConsumerSettings::default()
    };
    let Some(slack) = options.slack else {
        let agent = agent.clone();
        let shutdown = shutdown.clone();
        let skip = |_: ReviewInput, _: Delivery| async { Ok::<(), HandlerError>(()) };
        return Ok(tokio::spawn(async move {
            if let Err(error) = agent
                .consume_from(consumers::REVIEWS, settings, skip, shutdown.clone())
                .await
            {
                tracing::error!(%error, "the reviews consumer stopped");
                shutdown.cancel();
            }
        }));
    };
    let reviews = Arc::new(SlackReviews {
        api: slack.api.clone(),
        config: slack.config.clone(),
        rules: conductor.config.approvals.clone(),
        plans: agent.bucket(buckets::PLANS).await?,
        reviews: agent.bucket(buckets::REVIEWS).await?,
        shutdown: shutdown.clone(),
    });
    let desk = Arc::new(SlackDesk {
        conductor: conductor.clone(),
        api: slack.api,
        config: slack.config,
    });
    let inbound: JoinHandle<()> = match slack.inbound {
        SlackInbound::Http(verifier) => {
            let listener = tokio::net::TcpListener::bind(options.listen)
                .await
                .map_err(|error| WorkError::Dependency {
                    what: format!("the HTTP address {}", options.listen),
                    reason: format!(
                        "{error}; set --listen (INFRACREW_CONDUCTOR_LISTEN) to a free address"
                    ),
                })?;
            tracing::info!(
                "taking Slack's slash commands on http://{}/slack/commands and buttons on /slack/interactions",
                options.listen
            );
            let routes = slack::endpoint::routes(Arc::new(SlackEndpoint { desk, verifier }));
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, routes)
                    .with_graceful_shutdown(async move { shutdown.cancelled().await })
                    .await
                {
                    tracing::error!(%error, "the Slack endpoint stopped; Slack's requests are not taken");
                }
            })
        }
        SlackInbound::Socket { app_token } => {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                if let Err(error) = slack::socket::serve(desk, &app_token, shutdown).await {
                    tracing::error!(%error, "Slack's requests are not taken");
                }
            })
        }
    };
    let agent = agent.clone();
    let shutdown = shutdown.clone();
    Ok(tokio::spawn(async move {
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
        if let Err(error) = inbound.await {
            tracing::error!(%error, "the Slack endpoint failed");
        }
    }))
}
