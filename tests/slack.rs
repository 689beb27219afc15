//! Plan reviews in Slack, end to end: four agent processes on a real nats-server, the
//! Conductor posting to a Slack simulator that speaks Slack's wire format, and slash commands
//! and button presses signed with the signing secret exactly as Slack signs them.
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what a test should do

use std::{path::PathBuf, time::Duration};

use infracrew_bus::Bus;
use infracrew_e2e::{
    AgentProcess, approve, crew_bus, start_crew_serving, submit, text, wait_for_state,
};
use infracrew_protocol::{DecisionChannel, PlanId, PlanState};
use infracrew_testkit::{
    NatsServer,
    slack::{
        Failure, Message, SlackSimulator, button_press, send_signed, send_with_signature, sign,
        slash_command, unix_now,
    },
    workspace_root,
};

const BOT_TOKEN: &str = "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy";
const SIGNING_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const APP_TOKEN: &str = "xapp-1-A0INFRACREW-1234567890-0123456789abcdef";

/// A crew whose Conductor reviews plans in the simulated Slack.
struct SlackCrew {
    server: NatsServer,
    bus: Bus,
    slack: SlackSimulator,
    agents: Vec<AgentProcess>,
    /// The Conductor's HTTP address.
    endpoint: String,
    dir: tempfile::TempDir,
}

/// Starts the crew with the demo rules, Slack users mapped to alice, bob, carol and dave, and
/// reviews in `channel`; Slack's requests come over HTTP.
async fn slack_crew(channel: &str) -> SlackCrew {
    slack_crew_in_mode(channel, "http").await
}

/// The same, with Slack's requests over `mode` (`http` or `socket`).
async fn slack_crew_in_mode(channel: &str, mode: &str) -> SlackCrew {
    slack_crew_with(channel, mode, &[]).await
}

/// The same, with more arguments for the Conductor.
async fn slack_crew_with(channel: &str, mode: &str, conductor_args: &[&str]) -> SlackCrew {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let slack = SlackSimulator::start(BOT_TOKEN, APP_TOKEN).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let demo = std::fs::read_to_string(workspace_root().join("config/demo.toml")).unwrap();
    let config = format!(
        "{demo}\n[slack]\napi_url = \"{}\"\nchannel = \"{channel}\"\nmode = \"{mode}\"\n\n[slack.users]\nU0ALICE = \"alice\"\nU0BOB = \"bob\"\nU0CAROL = \"carol\"\nU0DAVE = \"dave\"\n",
        slack.api_url()
    );
    let config_file = dir.path().join("conductor.toml");
    std::fs::write(&config_file, config).unwrap();
    let mut args = vec!["--config", config_file.to_str().unwrap()];
    args.extend_from_slice(conductor_args);
    let (agents, endpoint) = start_crew_serving(
        &server,
        &args,
        &[
            ("SLACK_BOT_TOKEN", BOT_TOKEN),
            ("SLACK_SIGNING_SECRET", SIGNING_SECRET),
            ("SLACK_APP_TOKEN", APP_TOKEN),
        ],
        &[],
    )
    .await;
    SlackCrew {
        server,
        bus,
        slack,
        agents,
        endpoint,
        dir,
    }
}

impl SlackCrew {
    /// Waits until `condition` holds; on time-out, fails with the agents' logs.
    async fn wait_until<F, Fut>(&self, what: &str, condition: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        infracrew_e2e::wait_until(
            what,
            &self.agents,
            || format!("Slack saw {:#?}", self.slack.calls()),
            condition,
        )
        .await;
    }

    /// The plan's review message, once posted.
    async fn review(&self, plan: PlanId) -> Message {
        self.wait_until(&format!("the review of {plan}"), || async {
            review_of(&self.slack, plan).is_some()
        })
        .await;
        review_of(&self.slack, plan).unwrap()
    }

    /// Waits until the review message says `state`.
    async fn review_says(&self, plan: PlanId, state: PlanState) -> Message {
        let wanted = state.to_string();
        self.wait_until(&format!("the review of {plan} to say {wanted}"), || async {
            review_of(&self.slack, plan).is_some_and(|message| message.text.ends_with(&wanted))
        })
        .await;
        review_of(&self.slack, plan).unwrap()
    }

    /// Sends a slash command from `user`, signed now; returns the status and the reply text.
    async fn command(&self, command: &str, text: &str, user: &str) -> (u16, String) {
        let body = slash_command(command, text, user, &self.slack.response_url(user));
        let (status, answer) = send_signed(
            &format!("{}/slack/commands", self.endpoint),
            &body,
            SIGNING_SECRET,
            unix_now(),
        )
        .await;
        let reply = serde_json::from_str::<serde_json::Value>(&answer)
            .ok()
            .and_then(|json| json["text"].as_str().map(str::to_owned))
            .unwrap_or(answer);
        (status, reply)
    }

    /// Presses a review button as `user`, and returns what the person is told.
    async fn press(&self, action: &str, plan: PlanId, user: &str) -> String {
        let review = self.review(plan).await;
        let name = format!("{user}-{action}-{}", unix_now());
        let body = button_press(
            action,
            &plan.to_string(),
            user,
            &review.ts,
            &self.slack.response_url(&name),
        );
        let (status, _) = send_signed(
            &format!("{}/slack/interactions", self.endpoint),
            &body,
            SIGNING_SECRET,
            unix_now(),
        )
        .await;
        assert_eq!(status, 200);
        self.wait_until("the answer to the button", || async {
            !self.slack.responses(&name).is_empty()
        })
        .await;
        self.slack.responses(&name)[0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn goal(&self, name: &str, json: serde_json::Value) -> String {
        let path: PathBuf = self.dir.path().join(name);
        std::fs::write(&path, json.to_string()).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

/// The top-level message that reviews `plan`.
fn review_of(slack: &SlackSimulator, plan: PlanId) -> Option<Message> {
    let id = plan.to_string();
    slack
        .messages()
        .into_iter()
        .find(|message| message.thread_ts.is_none() && message.blocks.to_string().contains(&id))
}

fn has_buttons(message: &Message) -> bool {
    message
        .blocks
        .to_string()
        .contains("\"action_id\":\"approve\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_are_approved_by_slash_command_and_by_button_and_the_review_follows_them() {
    let crew = slack_crew("#infra-reviews").await;
    let plan = submit(
        &crew.server,
        "examples/goals/valid/social-intel-staging.json",
    );
    wait_for_state(&crew.bus, plan, PlanState::Ready, &crew.agents).await;
    let review = crew.review(plan).await;
    assert!(has_buttons(&review), "{:#}", review.blocks);
    let blocks = review.blocks.to_string();
    for shown in [
        "social-intel",
        "staging",
        "dave",
        "*Risk*",
        "*Findings*",
        "```",
    ] {
        assert!(blocks.contains(shown), "{shown} missing from {blocks}");
    }

    let short = &plan.to_string()[..8];
    let (status, reply) = crew.command("/approve", short, "U0ALICE").await;
    assert_eq!(status, 200);
    assert!(reply.contains("approved by alice"), "{reply}");
    let record = wait_for_state(&crew.bus, plan, PlanState::Applied, &crew.agents).await;
    assert_eq!(record.approvals[0].channel, DecisionChannel::Slack);
    let review = crew.review_says(plan, PlanState::Applied).await;
    assert!(!has_buttons(&review), "an applied plan has no buttons");
    assert!(
        review
            .blocks
            .to_string()
            .contains("Approved by alice (slack"),
        "{:#}",
        review.blocks
    );
    crew.wait_until("the success notice in the thread", || async {
        crew.slack
            .thread(&review.ts)
            .iter()
            .any(|message| message.text.starts_with(":white_check_mark: Applied"))
    })
    .await;
    let thread = crew.slack.thread(&review.ts);
    assert!(
        thread
            .iter()
            .any(|message| message.text.starts_with(":heavy_check_mark:")),
        "Forge's steps go to the thread: {thread:#?}"
    );

    let second = submit(
        &crew.server,
        &crew.goal(
            "legal.json",
            serde_json::json!({"intent": "deploy", "service": "legal-compliance",
                "environment": "staging", "version": "3.1.0", "requested_by": "dave"}),
        ),
    );
    wait_for_state(&crew.bus, second, PlanState::Ready, &crew.agents).await;
    let told = crew.press("approve", second, "U0BOB").await;
    assert!(told.contains("approved by bob"), "{told}");
    wait_for_state(&crew.bus, second, PlanState::Applied, &crew.agents).await;
    crew.review_says(second, PlanState::Applied).await;

    let (_, status) = crew.command("/plan", short, "U0CAROL").await;
    assert!(status.contains("APPLIED"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_and_replayed_requests_are_refused_and_change_nothing() {
    let crew = slack_crew("#infra-reviews").await;
    let plan = submit(
        &crew.server,
        "examples/goals/valid/social-intel-staging.json",
    );
    wait_for_state(&crew.bus, plan, PlanState::Ready, &crew.agents).await;
    let commands = format!("{}/slack/commands", crew.endpoint);
    let approve_body = slash_command(
        "/approve",
        &plan.to_string(),
        "U0ALICE",
        &crew.slack.response_url("alice"),
    );

    let now = unix_now();
    let forged = sign("not the signing secret", now, &approve_body);
    let (status, body) = send_with_signature(&commands, &approve_body, &forged, now).await;
    assert_eq!(
        (status, body.as_str()),
        (
            401,
            "the request's signature does not match the signing secret"
        )
    );
    let stale = now - 6 * 60;
    let (status, body) = send_signed(&commands, &approve_body, SIGNING_SECRET, stale).await;
    assert_eq!(status, 401);
    assert!(
        body.starts_with("the request's timestamp is more than five minutes from now"),
        "{body}"
    );
    let button = button_press("approve", &plan.to_string(), "U0ALICE", "1", "http://x/");
    let (status, _) = send_with_signature(
        &format!("{}/slack/interactions", crew.endpoint),
        &button,
        &forged,
        now,
    )
    .await;
    assert_eq!(status, 401);

    // A request Slack really sent, captured and sent again.
    let status_body = slash_command("/plan", &plan.to_string(), "U0BOB", "http://x/");
    let signature = sign(SIGNING_SECRET, now, &status_body);
    let (first, _) = send_with_signature(&commands, &status_body, &signature, now).await;
    let (again, body) = send_with_signature(&commands, &status_body, &signature, now).await;
    assert_eq!((first, again), (200, 401));
    assert_eq!(
        body,
        "this exact request was already received; a replay is refused"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let record = wait_for_state(&crew.bus, plan, PlanState::Ready, &crew.agents).await;
    assert!(record.approvals.is_empty(), "{:?}", record.approvals);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refused_decision_gets_its_reason_and_prod_needs_two_distinct_people() {
    let crew = slack_crew("#infra-reviews").await;
    let (_, reply) = crew.command("/approve", "deadbeef", "U0ALICE").await;
    assert_eq!(reply, ":no_entry: no plan id starts with \"deadbeef\"");
    let (_, reply) = crew.command("/approve", "", "U0ALICE").await;
    assert!(reply.starts_with("/approve needs a plan id."), "{reply}");

    let staging = submit(
        &crew.server,
        "examples/goals/valid/social-intel-staging.json",
    );
    wait_for_state(&crew.bus, staging, PlanState::Ready, &crew.agents).await;
    let id = staging.to_string();
    let (_, reply) = crew.command("/approve", &id, "U0CAROL").await;
    assert!(
        reply.ends_with("carol may not decide plans in staging; its approvers are alice, bob"),
        "{reply}"
    );
    let (_, reply) = crew.command("/approve", &id, "U0MALLORY").await;
    assert!(
        reply.contains("Slack user U0MALLORY is not linked to an approver identity"),
        "{reply}"
    );

    let own = submit(
        &crew.server,
        &crew.goal(
            "own.json",
            serde_json::json!({"intent": "deploy", "service": "financial-tax",
                "environment": "staging", "version": "2.0.0", "requested_by": "alice"}),
        ),
    );
    wait_for_state(&crew.bus, own, PlanState::Ready, &crew.agents).await;
    let told = crew.press("approve", own, "U0ALICE").await;
    assert!(
        told.ends_with("alice requested this plan and cannot approve or override it"),
        "{told}"
    );

    let prod = submit(
        &crew.server,
        "examples/goals/valid/alfred-bot-prod-blue-green.json",
    );
    wait_for_state(&crew.bus, prod, PlanState::Ready, &crew.agents).await;
    let prod_id = prod.to_string();
    let (_, reply) = crew.command("/approve", &prod_id, "U0ALICE").await;
    assert!(
        reply.contains("approval counted (alice); 1 more needed"),
        "{reply}"
    );
    let (_, reply) = crew.command("/approve", &prod_id, "U0ALICE").await;
    assert!(
        reply.ends_with("alice has already approved this change; another approver is needed"),
        "{reply}"
    );
    // The same person from the CLI is the same approver.
    let again = approve(&crew.server, prod, "alice");
    assert!(
        text(&again.stderr).contains("alice has already approved this change"),
        "{}",
        text(&again.stderr)
    );
    let review = crew.review_says(prod, PlanState::AwaitingApproval).await;
    assert!(has_buttons(&review));
    assert!(
        review.blocks.to_string().contains("1 more approval needed"),
        "{:#}",
        review.blocks
    );
    let told = crew.press("approve", prod, "U0BOB").await;
    assert!(told.contains("approved by alice, bob"), "{told}");
    wait_for_state(&crew.bus, prod, PlanState::Applied, &crew.agents).await;

    let (_, reply) = crew.command("/approve", &prod_id, "U0BOB").await;
    assert!(
        reply.ends_with("the plan is already APPLIED; no decision changes it now"),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_plan_has_no_approve_button_and_a_typed_approve_is_refused() {
    let crew = slack_crew("#infra-reviews").await;
    let thin = submit(
        &crew.server,
        &crew.goal(
            "thin.json",
            serde_json::json!({"intent": "deploy", "service": "alfred-bot", "environment": "prod",
                "version": "2.0.0", "replicas": 1, "requested_by": "dave"}),
        ),
    );
    wait_for_state(&crew.bus, thin, PlanState::Blocked, &crew.agents).await;
    let review = crew.review(thin).await;
    assert!(!has_buttons(&review), "{:#}", review.blocks);
    assert!(
        review.blocks.to_string().contains("prod_min_replicas"),
        "{:#}",
        review.blocks
    );
    let (_, reply) = crew.command("/approve", &thin.to_string(), "U0ALICE").await;
    assert!(
        reply.contains(
            "only a READY plan can be approved; this plan is BLOCKED (blocked by prod_min_replicas"
        ),
        "{reply}"
    );
    let record = wait_for_state(&crew.bus, thin, PlanState::Blocked, &crew.agents).await;
    assert!(record.approvals.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_rate_limiting_and_an_outage_delay_the_posts_but_lose_none() {
    let crew = slack_crew("#infra-reviews").await;
    crew.slack.fail_next([
        Failure::RateLimited {
            retry_after_secs: 2,
        },
        Failure::Status(503),
    ]);
    let plan = submit(
        &crew.server,
        "examples/goals/valid/social-intel-staging.json",
    );
    // The plan does not wait for Slack.
    wait_for_state(&crew.bus, plan, PlanState::Ready, &crew.agents).await;
    let approved = approve(&crew.server, plan, "bob");
    assert!(approved.status.success(), "{}", text(&approved.stderr));
    wait_for_state(&crew.bus, plan, PlanState::Applied, &crew.agents).await;

    let review = crew.review_says(plan, PlanState::Applied).await;
    crew.wait_until("the success notice", || async {
        crew.slack
            .thread(&review.ts)
            .iter()
            .any(|message| message.text.starts_with(":white_check_mark: Applied"))
    })
    .await;
    let calls = crew.slack.calls();
    assert!(!calls[0].ok && !calls[1].ok && calls[2].ok, "{calls:#?}");
    assert_eq!(calls[2].method, "chat.postMessage");
    assert!(
        calls[1].at - calls[0].at >= Duration::from_secs(2),
        "Retry-After is honoured: {:?}",
        calls[1].at - calls[0].at
    );
    // Every later move reached Slack, in order, after the first post.
    let updates: Vec<&str> = calls[3..]
        .iter()
        .filter(|call| call.method == "chat.update")
        .filter_map(|call| call.body["text"].as_str())
        .collect();
    let states: Vec<&str> = updates
        .iter()
        .filter_map(|text| text.rsplit(": ").next())
        .collect();
    let position = |state: &str| states.iter().position(|s| *s == state);
    assert!(
        position("APPLYING") < position("APPLIED") && position("APPLIED").is_some(),
        "{states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_slack_refuses_for_good_is_shown_with_its_fix_in_crew_show() {
    let crew = slack_crew("#infra-reviewz").await;
    let plan = submit(
        &crew.server,
        "examples/goals/valid/social-intel-staging.json",
    );
    wait_for_state(&crew.bus, plan, PlanState::Ready, &crew.agents).await;
    let shown = || {
        let output = infracrew_e2e::crew(&crew.server, &["show", &plan.to_string()]);
        text(&output.stdout)
    };
    crew.wait_until("crew show to name the Slack error", || async {
        shown().contains("slack review NOT POSTED")
    })
    .await;
    assert!(
        shown().contains("Slack answered channel_not_found: the channel #infra-reviewz does not exist or the app cannot see it"),
        "{}",
        shown()
    );
    // The plan itself carries on: approved from the CLI, applied.
    let approved = approve(&crew.server, plan, "alice");
    assert!(approved.status.success(), "{}", text(&approved.stderr));
    wait_for_state(&crew.bus, plan, PlanState::Applied, &crew.agents).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_mode_takes_the_same_commands_and_buttons() {
    let crew = slack_crew_in_mode("#infra-reviews", "socket").await;
    let plan = submit(
        &crew.server,
        "examples/goals/valid/social-intel-staging.json",
    );
    wait_for_state(&crew.bus, plan, PlanState::Ready, &crew.agents).await;
    let review = crew.review(plan).await;

    let refused = crew
        .slack
        .socket_command("/approve", &plan.to_string(), "U0CAROL", "http://unused/")
        .await;
    assert_eq!(refused["response_type"], "ephemeral");
    assert!(
        refused["text"]
            .as_str()
            .unwrap()
            .ends_with("carol may not decide plans in staging; its approvers are alice, bob"),
        "{refused}"
    );
    let name = "alice-socket-button";
    crew.slack
        .socket_button_press(
            "approve",
            &plan.to_string(),
            "U0ALICE",
            &review.ts,
            &crew.slack.response_url(name),
        )
        .await;
    crew.wait_until("the answer to the button", || async {
        !crew.slack.responses(name).is_empty()
    })
    .await;
    let told = crew.slack.responses(name)[0]["text"].to_string();
    assert!(told.contains("approved by alice"), "{told}");
    wait_for_state(&crew.bus, plan, PlanState::Applied, &crew.agents).await;
    crew.review_says(plan, PlanState::Applied).await;
    let status = crew
        .slack
        .socket_command("/plan", &plan.to_string()[..8], "U0BOB", "http://unused/")
        .await;
    assert!(
        status["text"].as_str().unwrap().contains("APPLIED"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_going_down_and_coming_back_is_announced_in_slack() {
    let mut crew =
        slack_crew_with("#infra-reviews", "http", &["--agent-silence-seconds", "2"]).await;
    let sentinel = crew
        .agents
        .iter()
        .position(|a| a.name == "sentinel")
        .unwrap();
    // Killed only once the crew has been heard from, so its silence is a silence and not a
    // start the Conductor has not heard yet.
    let heard = infracrew_e2e::crew(&crew.server, &["status", "--wait", "15s"]);
    assert!(heard.status.success(), "{}", text(&heard.stdout));
    crew.agents[sentinel].kill();
    let says = |needle: &'static str| {
        let slack = &crew.slack;
        move || async move {
            slack
                .messages()
                .iter()
                .any(|message| message.text.contains(needle))
        }
    };
    crew.wait_until(
        "Slack hears sentinel is down",
        says("sentinel is down: no heartbeat for"),
    )
    .await;
    let down = crew.slack.messages();
    let alert = down
        .iter()
        .find(|message| message.text.contains("sentinel is down"))
        .unwrap();
    assert_eq!(alert.channel, "C0REVIEWS");
    assert!(alert.text.contains("`crew status`"), "{}", alert.text);
    assert!(
        !down
            .iter()
            .any(|message| message.text.contains("forge is down")),
        "only the silent agent is announced"
    );

    crew.agents[sentinel] = AgentProcess::start("sentinel", &crew.server, &[]);
    crew.wait_until(
        "Slack hears sentinel is back",
        says("sentinel is back: instance"),
    )
    .await;
}
