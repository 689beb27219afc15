//! Plans on pull requests, end to end: four agent processes on a real nats-server, the
//! Conductor reporting to a GitHub simulator that speaks GitHub's REST shapes, and webhook
//! events signed with the webhook secret exactly as GitHub signs them.
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what a test should do

use infracrew_bus::Bus;
use infracrew_e2e::{
    AgentProcess, crew as crew_cli, crew_bus, messages_on, start_crew_serving, submit, text,
    wait_for_state,
};
use infracrew_protocol::{
    ApplyRequest, DecisionChannel, GateCheck, GoalStatement, OpsEventKind, PlanId, PlanRecord,
    PlanState, subjects,
};
use infracrew_testkit::{
    NatsServer,
    github::{GithubSimulator, deliver_webhook, issue_comment_event, pull_request_review_event},
    workspace_root,
};

const TOKEN: &str = "ghp_infracrewTestToken0123456789abcdefABCD";
const SECRET: &[u8] = b"webhook secret shared with GitHub";
const OWNER: &str = "acme";
const REPO: &str = "infra";
const PULL: u64 = 42;
const COMMIT: &str = "6dcb09b5b57875f334f61aebed695e2e4193db5e";

async fn github_crew() -> (NatsServer, GithubCrewParts) {
    github_crew_with_forge(|_| Vec::new()).await
}

/// The crew with Forge's arguments made from the simulator's address.
async fn github_crew_with_forge(
    forge_args: impl FnOnce(&str) -> Vec<String>,
) -> (NatsServer, GithubCrewParts) {
    let server = NatsServer::start().unwrap();
    let parts = GithubCrewParts::start(&server, forge_args).await;
    (server, parts)
}

/// A crew whose Conductor reports to the simulated GitHub and takes its webhook (the server
/// is kept apart, for the CLI helpers).
struct GithubCrewParts {
    bus: Bus,
    github: GithubSimulator,
    agents: Vec<AgentProcess>,
    webhook: String,
    dir: tempfile::TempDir,
}

impl GithubCrewParts {
    /// Fails, listing every ops event's message, unless one of them `says` so.
    async fn assert_an_ops_event(&self, says: impl Fn(&str) -> bool) {
        let events: Vec<infracrew_protocol::OpsEvent> = messages_on(&self.bus, subjects::OPS).await;
        let messages: Vec<&str> = events.iter().map(|event| event.message.as_str()).collect();
        assert!(
            messages.iter().any(|message| says(message)),
            "{messages:#?}"
        );
    }

    async fn start(server: &NatsServer, forge_args: impl FnOnce(&str) -> Vec<String>) -> Self {
        let bus = crew_bus(server).await;
        let github = GithubSimulator::start(TOKEN).await.unwrap();
        // The workflow the ci-dispatch driver dispatches (Forge is ready once it reads it).
        github.add_workflow("acme", "deploys", "deploy.yml");
        let forge_args = forge_args(&github.url());
        let forge_args: Vec<&str> = forge_args.iter().map(String::as_str).collect();
        let dir = tempfile::tempdir().unwrap();
        let demo = std::fs::read_to_string(workspace_root().join("config/demo.toml")).unwrap();
        let config = format!(
            "{demo}\n[github]\napi_url = \"{}\"\n\n[github.users]\nalice-gh = \"alice\"\nbob-gh = \"bob\"\ndave-gh = \"dave\"\n",
            github.url()
        );
        let config_file = dir.path().join("conductor.toml");
        std::fs::write(&config_file, config).unwrap();
        let (agents, endpoint) = start_crew_serving(
            server,
            &["--config", config_file.to_str().unwrap()],
            &[
                ("INFRACREW_GITHUB_TOKEN", TOKEN),
                (
                    "INFRACREW_GITHUB_WEBHOOK_SECRET",
                    std::str::from_utf8(SECRET).unwrap(),
                ),
            ],
            &forge_args,
        )
        .await;
        GithubCrewParts {
            bus,
            github,
            agents,
            webhook: format!("{endpoint}/github/webhook"),
            dir,
        }
    }

    async fn wait_until<F, Fut>(&self, what: &str, condition: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        infracrew_e2e::wait_until(
            what,
            &self.agents,
            || format!("GitHub saw {:#?}", self.github.requests()),
            condition,
        )
        .await;
    }

    /// The staging sample goal, submitted and approved by alice once READY; its READY record.
    async fn approved_sample_plan(&self, server: &NatsServer) -> PlanRecord {
        let plan = submit(server, "examples/goals/valid/social-intel-staging.json");
        let ready = wait_for_state(&self.bus, plan, PlanState::Ready, &self.agents).await;
        let approved = infracrew_e2e::approve(server, plan, "alice");
        assert!(approved.status.success(), "{}", text(&approved.stderr));
        ready
    }

    /// The staging sample goal, proposed in pull request 42.
    fn goal_from_the_pull_request(&self) -> String {
        let mut goal: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                workspace_root().join("examples/goals/valid/social-intel-staging.json"),
            )
            .unwrap(),
        )
        .unwrap();
        goal["source"] = serde_json::json!({
            "repository": format!("{OWNER}/{REPO}"),
            "commit": COMMIT,
            "pull_request": PULL,
            "path": "goals/social-intel-staging.json",
        });
        let path = self.dir.path().join("goal.json");
        std::fs::write(&path, goal.to_string()).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// The (context, state) of every status set on the commit, in order.
    fn statuses(&self) -> Vec<(String, String)> {
        self.github
            .statuses(OWNER, REPO, COMMIT)
            .into_iter()
            .map(|status| (status.context, status.state))
            .collect()
    }

    /// The comments on the pull request that report a plan (replies excluded).
    fn plan_comments(&self, plan: PlanId) -> Vec<infracrew_testkit::github::RecordedComment> {
        self.github
            .comments(OWNER, REPO, PULL)
            .into_iter()
            .filter(|comment| {
                comment.body.starts_with("### infracrew")
                    && comment.body.contains(&plan.to_string()[..8])
            })
            .collect()
    }

    fn replies(&self) -> Vec<String> {
        self.github
            .comments(OWNER, REPO, PULL)
            .into_iter()
            .map(|comment| comment.body)
            .filter(|body| !body.starts_with("### infracrew"))
            .collect()
    }

    async fn comment(&self, login: &str, body: &str) -> (u16, String) {
        let event = issue_comment_event(OWNER, REPO, PULL, login, body);
        deliver_webhook(&self.webhook, "issue_comment", SECRET, &event)
            .await
            .unwrap()
    }
}

fn has(statuses: &[(String, String)], context: &str, state: &str) -> bool {
    statuses.iter().any(|(c, s)| c == context && s == state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_on_a_pull_request_gets_statuses_one_comment_and_is_approved_by_a_comment() {
    let (server, crew) = github_crew().await;
    let plan = submit(&server, &crew.goal_from_the_pull_request());
    wait_for_state(&crew.bus, plan, PlanState::Ready, &crew.agents).await;
    crew.wait_until("the plan and apply statuses", || async {
        let statuses = crew.statuses();
        has(&statuses, "infracrew/plan", "success") && has(&statuses, "infracrew/apply", "pending")
    })
    .await;
    let statuses = crew.statuses();
    assert_eq!(
        statuses[0],
        ("infracrew/plan".to_owned(), "pending".to_owned()),
        "{statuses:?}"
    );
    crew.wait_until("the plan's comment", || async {
        crew.plan_comments(plan)
            .iter()
            .any(|comment| comment.body.contains(&format!("/approve {plan}")))
    })
    .await;
    let comment = &crew.plan_comments(plan)[0];
    assert!(comment.body.contains("```diff"), "{}", comment.body);
    assert!(comment.body.contains("social-intel"), "{}", comment.body);

    let (status, answer) = crew.comment("alice-gh", &format!("/approve {plan}")).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(&plan.to_string()[..8]), "{answer}");
    let record = wait_for_state(&crew.bus, plan, PlanState::Applied, &crew.agents).await;
    assert_eq!(record.approvals.len(), 1);
    assert_eq!(record.approvals[0].approver, "alice");
    assert_eq!(record.approvals[0].channel, DecisionChannel::Github);
    crew.wait_until("the apply's success status", || async {
        has(&crew.statuses(), "infracrew/apply", "success")
    })
    .await;
    // One comment for the plan, edited in place as it moved; the command got a reply.
    crew.wait_until("the comment to say APPLIED", || async {
        crew.plan_comments(plan)
            .iter()
            .any(|comment| comment.body.contains("APPLIED"))
    })
    .await;
    let comments = crew.plan_comments(plan);
    assert_eq!(comments.len(), 1, "{comments:#?}");
    assert!(comments[0].edits >= 2, "{comments:#?}");
    assert!(
        crew.replies()
            .iter()
            .any(|reply| reply.contains("white_check_mark")),
        "{:?}",
        crew.replies()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_refusals_say_why_and_an_approving_review_approves() {
    let (server, crew) = github_crew().await;
    let plan = submit(&server, &crew.goal_from_the_pull_request());
    wait_for_state(&crew.bus, plan, PlanState::Ready, &crew.agents).await;

    // Signed with another secret, or not at all: refused before anything is read.
    let event = issue_comment_event(OWNER, REPO, PULL, "alice-gh", &format!("/approve {plan}"));
    let (status, reason) = deliver_webhook(&crew.webhook, "issue_comment", b"a guess", &event)
        .await
        .unwrap();
    assert_eq!(status, 401, "{reason}");
    assert!(
        reason.contains("X-Hub-Signature-256 does not match"),
        "{reason}"
    );

    // A login nobody linked, and the requester approving their own plan: refused, with why.
    let (status, answer) = crew.comment("mallory", &format!("/approve {plan}")).await;
    assert_eq!(status, 200);
    assert!(
        answer.contains("GitHub user mallory is not linked"),
        "{answer}"
    );
    assert!(answer.contains("[github.users]"), "{answer}");
    let (_, answer) = crew.comment("dave-gh", &format!("/approve {plan}")).await;
    assert!(answer.contains("Refused"), "{answer}");
    assert!(answer.contains("dave"), "{answer}");
    let record = wait_for_state(&crew.bus, plan, PlanState::Ready, &crew.agents).await;
    assert!(record.approvals.is_empty());
    crew.wait_until("the refusals replied on the pull request", || async {
        crew.replies()
            .iter()
            .filter(|reply| reply.contains("Refused"))
            .count()
            >= 2
    })
    .await;

    // An approving review from a linked approver approves the pull request's waiting plan.
    let review = pull_request_review_event(OWNER, REPO, PULL, "bob-gh", "approved", COMMIT);
    let (status, answer) = deliver_webhook(&crew.webhook, "pull_request_review", SECRET, &review)
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let record = wait_for_state(&crew.bus, plan, PlanState::Applied, &crew.agents).await;
    assert_eq!(record.approvals[0].approver, "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crew_submit_from_github_sends_a_pull_requests_goals_with_their_source_or_none() {
    let (server, crew) = github_crew().await;
    let goal = std::fs::read_to_string(
        workspace_root().join("examples/goals/valid/social-intel-staging.json"),
    )
    .unwrap();
    let head = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";
    crew.github.add_pull_request(
        OWNER,
        REPO,
        7,
        head,
        "dave-gh",
        [
            ("goals/social-intel.json", goal.as_str()),
            ("README.md", "not a goal"),
        ],
    );
    let submit_from = |pull: &str| {
        crew_cli(
            &server,
            &[
                "submit",
                "--from-github",
                pull,
                "--github-api-url",
                &crew.github.url(),
                "--github-token",
                TOKEN,
                "--json",
            ],
        )
    };
    let output = submit_from("acme/infra#7");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let plan: PlanId = report["plan_id"].as_str().unwrap().parse().unwrap();
    let record = wait_for_state(&crew.bus, plan, PlanState::Ready, &crew.agents).await;
    let source = record.plan.source.unwrap();
    assert_eq!(source.repository, "acme/infra");
    assert_eq!(source.commit, head);
    assert_eq!(source.pull_request, Some(7));
    assert_eq!(source.path.as_deref(), Some("goals/social-intel.json"));
    crew.wait_until("the plan status on the head commit", || async {
        crew.github
            .statuses(OWNER, REPO, head)
            .iter()
            .any(|status| status.context == "infracrew/plan" && status.state == "success")
    })
    .await;

    // One broken goal file: the whole pull request is refused, each problem named.
    crew.github.add_pull_request(
        OWNER,
        REPO,
        8,
        "b1b2c3d4e5f60718293a4b5c6d7e8f9012345678",
        "dave-gh",
        [
            ("goals/fine.json", goal.as_str()),
            ("goals/broken.json", "{\"intent\": \"deploy\""),
        ],
    );
    let output = submit_from("acme/infra#8");
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("goals/broken.json"), "{stderr}");
    assert!(stderr.contains("nothing was sent"), "{stderr}");
    let goals: Vec<GoalStatement> = messages_on(&crew.bus, subjects::GOAL_SUBMITTED).await;
    assert_eq!(goals.len(), 1, "only pull request 7's goal was sent");

    let output = submit_from("acme/infra");
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("OWNER/REPO#NUMBER"));
}

/// Forge deploying social-intel through the `deploy.yml` workflow of acme/deploys.
fn ci_dispatch_forge(api_url: &str) -> Vec<String> {
    [
        "--service-driver",
        "social-intel=ci-dispatch",
        "--ci-repository",
        "acme/deploys",
        "--ci-workflow",
        "deploy.yml",
        "--ci-poll",
        "50ms",
        "--github-api-url",
        api_url,
        "--github-token",
        TOKEN,
    ]
    .map(str::to_owned)
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ci_dispatch_driver_deploys_through_the_workflow_run_it_follows() {
    let (server, crew) = github_crew_with_forge(ci_dispatch_forge).await;
    let ready = crew.approved_sample_plan(&server).await;
    let (plan, digest) = (ready.plan.plan_id, ready.digest().unwrap().to_string());
    let record = wait_for_state(&crew.bus, plan, PlanState::Applied, &crew.agents).await;
    assert!(record.history.last().unwrap().why.contains("ci-dispatch"));

    let dispatches = crew.github.dispatches("acme", "deploys");
    assert_eq!(dispatches.len(), 1, "{dispatches:#?}");
    let inputs = &dispatches[0].inputs;
    assert_eq!(dispatches[0].r#ref, "main");
    assert_eq!(inputs["plan_id"], plan.to_string());
    assert_eq!(inputs["digest"], digest);
    assert_eq!(inputs["service"], "social-intel");
    assert_eq!(inputs["environment"], "staging");
    assert_eq!(inputs["version"], "infracrew/social-intel:1.4.0");
    // The run's steps came back as the apply's progress.
    crew.assert_an_ops_event(|message| message.contains("Deploy social-intel: success"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_failing_while_a_run_is_followed_is_asked_again_not_a_failed_plan() {
    let (server, crew) = github_crew_with_forge(ci_dispatch_forge).await;
    // GitHub goes down for the calls after the dispatch, which follow the run (finding it,
    // reading it). octocrab asks three more times on a 5xx by itself, so a call fails only
    // after four answers; eight leave one failed call to report even when Forge's readiness
    // check (every heartbeat) takes some of them.
    crew.github.fail_after_next_dispatch(8, 502);
    let plan = crew.approved_sample_plan(&server).await.plan.plan_id;
    wait_for_state(&crew.bus, plan, PlanState::Applied, &crew.agents).await;
    assert_eq!(crew.github.dispatches("acme", "deploys").len(), 1);
    crew.assert_an_ops_event(|message| {
        message.contains("GitHub answered 502") && message.ends_with("asking again")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_being_applied_is_not_failed_by_a_forged_request_nor_moved_by_an_expired_copy() {
    let (server, crew) = github_crew_with_forge(ci_dispatch_forge).await;
    // GitHub is down from the dispatch until the test lets it recover: the plan stays
    // APPLYING, its run followed and asked about again.
    crew.github.fail_after_next_dispatch(10_000, 502);
    let plan = crew.approved_sample_plan(&server).await.plan.plan_id;
    wait_for_state(&crew.bus, plan, PlanState::Applying, &crew.agents).await;
    let requests: Vec<ApplyRequest> = messages_on(&crew.bus, subjects::APPLY_REQUEST).await;
    let genuine = requests.into_iter().find(|r| r.plan_id == plan).unwrap();

    // Someone with a bus credential but not the Conductor's key: Forge refuses the request,
    // and the Conductor does not take that refusal as the end of the apply.
    let mut forged = genuine.clone();
    forged.approvers = vec!["mallory".into()];
    forged.issued_at = chrono::Utc::now();
    crew.bus
        .publish(subjects::APPLY_REQUEST, &forged)
        .await
        .unwrap();
    // The Conductor's own request, expired (a copy that outwaited a Forge that was down):
    // it may carry on the apply that started in time, so it waits on that apply's lease.
    let mut expired = genuine.clone();
    expired.issued_at = chrono::Utc::now() - chrono::Duration::minutes(10);
    expired.expires_at = chrono::Utc::now() - chrono::Duration::minutes(5);
    let expired = expired.signed_by(&infracrew_e2e::conductor_key().0);
    crew.bus
        .publish(subjects::APPLY_REQUEST, &expired)
        .await
        .unwrap();
    crew.wait_until("the forged request's refusal set aside", || async {
        crew.agents.iter().any(|agent| {
            agent.name == "conductor"
                && agent.log().contains("a request the Conductor did not sign")
        }) && crew.agents.iter().any(|agent| {
            agent.name == "forge"
                && agent
                    .log()
                    .contains("another apply of this plan is under way")
        })
    })
    .await;
    let events: Vec<infracrew_protocol::OpsEvent> = messages_on(&crew.bus, subjects::OPS).await;
    let refusals: Vec<_> = events
        .iter()
        .filter(|event| event.kind == OpsEventKind::ApplyRefused)
        .collect();
    assert_eq!(refusals.len(), 1, "{refusals:#?}");
    assert_eq!(refusals[0].refused_by, Some(GateCheck::Signature));
    assert_eq!(refusals[0].request_issued_at, Some(forged.issued_at));

    crew.github.recover();
    let applied = wait_for_state(&crew.bus, plan, PlanState::Applied, &crew.agents).await;
    assert!(
        applied
            .history
            .iter()
            .all(|moved| moved.to != PlanState::Failed),
        "{:#?}",
        applied.history
    );
    assert_eq!(crew.github.dispatches("acme", "deploys").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_workflow_run_fails_the_plan_with_the_runs_address() {
    let (server, crew) = github_crew_with_forge(ci_dispatch_forge).await;
    crew.github.fail_runs_with("service", "social-intel");
    let plan = crew.approved_sample_plan(&server).await.plan.plan_id;
    let record = wait_for_state(&crew.bus, plan, PlanState::Failed, &crew.agents).await;
    let why = &record.history.last().unwrap().why;
    assert!(why.contains("/actions/runs/"), "{why}");
    assert!(why.contains("ended failure"), "{why}");
    // Nothing was rolled back: one dispatch only.
    assert_eq!(crew.github.dispatches("acme", "deploys").len(), 1);
}
