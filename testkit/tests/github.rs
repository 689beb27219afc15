//! The GitHub simulator answers in shapes octocrab reads, refuses and fails as GitHub does,
//! and signs webhooks as GitHub documents.
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what a test should do

use std::sync::{Arc, Mutex};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Request},
    routing::post,
};
use http_body_util::Full;
use infracrew_testkit::github::{
    self, BOT_LOGIN, GithubSimulator, RecordedComment, RecordedDispatch, RecordedStatus,
};
use octocrab::{
    Octocrab,
    models::{
        CommentId, RunId, StatusState,
        repos::DiffEntryStatus,
        workflows::{Conclusion, Run, Status},
    },
};
use serde_json::{Value, json};

const TOKEN: &str = "ghs_simulated";
const HEAD: &str = "0123456789abcdef0123456789abcdef01234567";

fn client(simulator: &GithubSimulator, token: &str) -> Octocrab {
    Octocrab::builder()
        .base_uri(simulator.url())
        .unwrap()
        .personal_token(token.to_owned())
        .build()
        .unwrap()
}

fn github_error(error: octocrab::Error) -> octocrab::GitHubError {
    match error {
        octocrab::Error::GitHub { source, .. } => *source,
        other => panic!("expected GitHub's error, got {other:?}"),
    }
}

#[tokio::test]
async fn octocrab_reads_every_answer() {
    let simulator = GithubSimulator::start(TOKEN).await.unwrap();
    let octocrab = client(&simulator, TOKEN);
    let long_file = "resource \"null_resource\" \"x\" {}\n".repeat(10);
    simulator.add_base_file("acme", "infra", "main.tf", "# old\n");
    simulator.add_pull_request(
        "acme",
        "infra",
        7,
        HEAD,
        "alice",
        vec![
            ("main.tf", "# new\nterraform {}\n"),
            ("modules/x.tf", &long_file),
        ],
    );

    let status = octocrab
        .repos("acme", "infra")
        .create_status(HEAD.to_owned(), StatusState::Pending)
        .context("infracrew/plan".to_owned())
        .description("planning".to_owned())
        .target("https://example.test/runs/1".to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(status.state, StatusState::Pending);
    assert_eq!(status.creator.unwrap().login, BOT_LOGIN);
    octocrab
        .repos("acme", "infra")
        .create_status(HEAD.to_owned(), StatusState::Success)
        .send()
        .await
        .unwrap();
    assert_eq!(
        simulator.statuses("acme", "infra", HEAD),
        vec![
            RecordedStatus {
                state: "pending".into(),
                context: "infracrew/plan".into(),
                description: Some("planning".into()),
                target_url: Some("https://example.test/runs/1".into()),
            },
            RecordedStatus {
                state: "success".into(),
                context: "default".into(),
                description: None,
                target_url: None,
            },
        ]
    );

    let issues = octocrab.issues("acme", "infra");
    let first = issues.create_comment(7, "plan: running").await.unwrap();
    assert_eq!(first.body.as_deref(), Some("plan: running"));
    assert_eq!(first.user.login, BOT_LOGIN);
    assert!(
        first
            .html_url
            .as_str()
            .ends_with(&format!("/pull/7#issuecomment-{}", first.id))
    );
    let second = issues.create_comment(7, "second").await.unwrap();
    let updated = issues
        .update_comment(CommentId(first.id.0), "plan: 1 to add")
        .await
        .unwrap();
    assert_eq!(updated.id, first.id);
    assert_eq!(updated.body.as_deref(), Some("plan: 1 to add"));
    let listed = issues.list_comments(7).send().await.unwrap();
    let bodies: Vec<_> = listed
        .items
        .iter()
        .map(|c| c.body.clone().unwrap())
        .collect();
    assert_eq!(bodies, ["plan: 1 to add", "second"]);
    assert!(
        issues
            .list_comments(8)
            .send()
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        simulator.comments("acme", "infra", 7),
        vec![
            RecordedComment {
                id: first.id.0,
                body: "plan: 1 to add".into(),
                edits: 1
            },
            RecordedComment {
                id: second.id.0,
                body: "second".into(),
                edits: 0
            },
        ]
    );

    let pull = octocrab.pulls("acme", "infra").get(7).await.unwrap();
    assert_eq!(pull.number, 7);
    assert_eq!(pull.head.sha, HEAD);
    assert_eq!(pull.head.ref_field, "change-7");
    assert_eq!(pull.base.ref_field, "main");
    assert_eq!(pull.user.unwrap().login, "alice");
    assert_eq!(
        pull.html_url.unwrap().as_str(),
        "https://github.com/acme/infra/pull/7"
    );
    assert_eq!(pull.comments, Some(2));

    let files = octocrab.pulls("acme", "infra").list_files(7).await.unwrap();
    assert_eq!(files.items.len(), 2);
    let main = &files.items[0];
    assert_eq!(main.filename, "main.tf");
    assert_eq!(main.status, DiffEntryStatus::Modified);
    assert_eq!((main.additions, main.deletions, main.changes), (2, 1, 3));
    assert_eq!(
        main.patch.as_deref(),
        Some("@@ -1,1 +1,2 @@\n-# old\n+# new\n+terraform {}")
    );
    assert_eq!(files.items[1].status, DiffEntryStatus::Added);

    let mut content = octocrab
        .repos("acme", "infra")
        .get_content()
        .path("modules/x.tf")
        .r#ref(HEAD)
        .send()
        .await
        .unwrap();
    let items = content.take_items();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].encoding.as_deref(), Some("base64"));
    let encoded = items[0].content.clone().unwrap();
    assert!(encoded.lines().all(|line| line.len() <= 60) && encoded.lines().count() > 1);
    assert_eq!(items[0].decoded_content().unwrap(), long_file);
    let base = octocrab
        .repos("acme", "infra")
        .get_content()
        .path("main.tf")
        .r#ref("main")
        .send()
        .await
        .unwrap();
    assert_eq!(base.items[0].decoded_content().unwrap(), "# old\n");

    let requests = simulator.requests();
    assert_eq!(
        requests[0],
        (
            "POST".to_owned(),
            format!("/repos/acme/infra/statuses/{HEAD}")
        )
    );
    assert!(requests.contains(&(
        "GET".to_owned(),
        "/repos/acme/infra/pulls/7/files".to_owned()
    )));
    simulator.shutdown().await;
}

#[tokio::test]
async fn refuses_and_fails_as_github_does() {
    let simulator = GithubSimulator::start(TOKEN).await.unwrap();
    let octocrab = client(&simulator, TOKEN);

    let error = github_error(
        client(&simulator, "wrong")
            .issues("acme", "infra")
            .create_comment(1, "hi")
            .await
            .unwrap_err(),
    );
    assert_eq!(error.status_code, 401);
    assert!(error.message.contains("Bad credentials"), "{error}");

    let missing = github_error(octocrab.pulls("acme", "infra").get(99).await.unwrap_err());
    assert_eq!(
        (missing.status_code.as_u16(), missing.message.as_str()),
        (404, "Not Found")
    );
    let missing = github_error(
        octocrab
            .issues("acme", "infra")
            .update_comment(CommentId(424242), "x")
            .await
            .unwrap_err(),
    );
    assert_eq!(missing.status_code, 404);
    let missing = octocrab
        .repos("acme", "infra")
        .get_content()
        .path("main.tf")
        .r#ref(HEAD)
        .send()
        .await
        .unwrap_err();
    assert_eq!(github_error(missing).status_code, 404);

    // octocrab retries a 5xx three times by default: four failures reach the caller.
    let before = simulator.requests().len();
    simulator.fail_next(4, 503);
    let error = github_error(
        octocrab
            .issues("acme", "infra")
            .create_comment(1, "hi")
            .await
            .unwrap_err(),
    );
    assert_eq!(error.status_code, 503);
    assert_eq!(simulator.requests().len() - before, 4);
    assert!(simulator.comments("acme", "infra", 1).is_empty());
    simulator.fail_next(1, 502);
    octocrab
        .issues("acme", "infra")
        .create_comment(1, "after a retry")
        .await
        .unwrap();
    assert_eq!(simulator.comments("acme", "infra", 1).len(), 1);

    simulator.rate_limit_next(1);
    let limited = github_error(
        octocrab
            .repos("acme", "infra")
            .create_status(HEAD.to_owned(), StatusState::Error)
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(limited.status_code, 403);
    assert!(
        limited.message.starts_with("API rate limit exceeded"),
        "{limited}"
    );
    assert!(limited.rate_limit_reset.unwrap() > 0);
    let headers = limited.headers.unwrap();
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    assert_eq!(headers["retry-after"], "1");
    assert!(simulator.statuses("acme", "infra", HEAD).is_empty());

    let bad_state = Request::post(format!(
        "{}/repos/acme/infra/statuses/{HEAD}",
        simulator.url()
    ))
    .header("authorization", format!("token {TOKEN}"))
    .body(Full::new(Bytes::from(r#"{"state":"done"}"#)))
    .unwrap();
    let (status, body) = infracrew_testkit::http::send(bad_state).await.unwrap();
    assert_eq!(status, 422);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["message"], "Validation Failed");
    assert_eq!(body["errors"][0]["field"], "state");

    let (status, body) =
        infracrew_testkit::http::get(&format!("{}/repos/acme/infra/pulls/1", simulator.url()))
            .await
            .unwrap();
    assert_eq!(status, 401);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"})
    );
}

#[tokio::test]
async fn webhooks_are_signed_and_shaped_as_github_sends_them() {
    assert_eq!(
        github::sign_webhook(b"It's a Secret to Everybody", b"Hello, World!"),
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    );

    let comment = github::issue_comment_event("acme", "infra", 7, "bob", "/approve");
    assert_eq!(comment["action"], "created");
    assert_eq!(comment["issue"]["number"], 7);
    assert!(comment["issue"]["pull_request"]["url"].is_string());
    assert_eq!(comment["comment"]["body"], "/approve");
    assert_eq!(comment["comment"]["user"]["login"], "bob");
    assert_eq!(comment["comment"]["user"]["type"], "User");
    assert_eq!(comment["repository"]["full_name"], "acme/infra");
    assert_eq!(comment["repository"]["owner"]["login"], "acme");
    assert_eq!(comment["sender"]["login"], "bob");

    let review = github::pull_request_review_event("acme", "infra", 7, "carol", "approved", HEAD);
    assert_eq!(review["action"], "submitted");
    assert_eq!(review["review"]["state"], "approved");
    assert_eq!(review["review"]["commit_id"], HEAD);
    assert_eq!(review["review"]["user"]["login"], "carol");
    assert_eq!(review["pull_request"]["number"], 7);
    assert_eq!(review["pull_request"]["head"]["sha"], HEAD);
    assert_eq!(review["pull_request"]["head"]["ref"], "change-7");
    assert_eq!(review["pull_request"]["base"]["ref"], "main");

    // A receiver that keeps what arrives, to check the delivery against the signature.
    type Deliveries = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;
    let deliveries = Deliveries::default();
    let routes = Router::new()
        .route(
            "/hooks",
            post(
                |State(kept): State<Deliveries>, headers: HeaderMap, body: Bytes| async move {
                    kept.lock().unwrap().push((headers, body));
                    "thanks"
                },
            ),
        )
        .with_state(deliveries.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, routes).await });

    let secret = b"hook secret";
    for payload in [&comment, &review] {
        let event = if payload == &comment {
            "issue_comment"
        } else {
            "pull_request_review"
        };
        assert_eq!(
            github::deliver_webhook(&url, event, secret, payload)
                .await
                .unwrap(),
            (200, "thanks".to_owned())
        );
    }
    let forged = github::deliver_webhook_with_signature(&url, "ping", "sha256=00", &comment);
    assert_eq!(forged.await.unwrap().0, 200);

    let deliveries = deliveries.lock().unwrap().clone();
    assert_eq!(deliveries.len(), 3);
    let (headers, body) = &deliveries[0];
    assert_eq!(headers["x-github-event"], "issue_comment");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["user-agent"], "GitHub-Hookshot/sim");
    assert_eq!(
        headers["x-hub-signature-256"],
        github::sign_webhook(secret, body).as_str()
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(body).unwrap(),
        comment
    );
    assert_eq!(deliveries[1].0["x-github-event"], "pull_request_review");
    assert_ne!(
        deliveries[0].0["x-github-delivery"],
        deliveries[1].0["x-github-delivery"]
    );
    assert_eq!(deliveries[2].0["x-hub-signature-256"], "sha256=00");
}

/// The `display_title`s of the workflow's runs, newest first: octocrab's `Run` has no such
/// field, so a dispatcher reads the list as JSON to find its own run.
async fn display_titles(octocrab: &Octocrab, query: &[(&str, &str)]) -> Vec<(u64, String)> {
    let runs: Value = octocrab
        .get(
            "/repos/acme/infra/actions/workflows/deploy.yml/runs",
            Some(query),
        )
        .await
        .unwrap();
    runs["workflow_runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| {
            (
                run["id"].as_u64().unwrap(),
                run["display_title"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Reads the run until it completes, returning every status seen and the last answer.
async fn poll(octocrab: &Octocrab, run: RunId) -> (Vec<String>, Run) {
    let mut seen = Vec::new();
    for _ in 0..10 {
        let answer = octocrab.workflows("acme", "infra").get(run).await.unwrap();
        seen.push(answer.status.clone());
        if answer.status == "completed" {
            return (seen, answer);
        }
    }
    panic!("run {run} never completed: {seen:?}");
}

fn step_states(job: &octocrab::models::workflows::Job) -> Vec<(Status, Option<Conclusion>)> {
    job.steps
        .iter()
        .map(|step| (step.status.clone(), step.conclusion.clone()))
        .collect()
}

#[tokio::test]
async fn dispatched_workflow_runs_advance_as_they_are_read() {
    let simulator = GithubSimulator::start(TOKEN).await.unwrap();
    let octocrab = client(&simulator, TOKEN);
    let workflow_id = simulator.add_workflow("acme", "infra", "deploy.yml");
    assert_eq!(
        simulator.add_workflow("acme", "infra", "deploy.yml"),
        workflow_id
    );

    let workflows = octocrab.workflows("acme", "infra");
    let workflow = workflows.get_workflow("deploy.yml").await.unwrap();
    assert_eq!(workflow.id.0, workflow_id);
    assert_eq!(workflow.name, "deploy");
    assert_eq!(workflow.path, ".github/workflows/deploy.yml");
    assert_eq!(workflow.state, "active");
    assert_eq!(
        workflows
            .get_workflow(workflow_id.to_string())
            .await
            .unwrap(),
        workflow
    );

    simulator.fail_runs_with("service", "legal-compliance");
    for (plan, service) in [("plan-1", "billing"), ("plan-2", "legal-compliance")] {
        octocrab
            .actions()
            .create_workflow_dispatch("acme", "infra", "deploy.yml", "main")
            .inputs(json!({"plan_id": plan, "service": service}))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(
        simulator.dispatches("acme", "infra"),
        vec![
            RecordedDispatch {
                workflow: "deploy.yml".into(),
                r#ref: "main".into(),
                inputs: json!({"plan_id": "plan-1", "service": "billing"})
                    .as_object()
                    .unwrap()
                    .clone(),
            },
            RecordedDispatch {
                workflow: "deploy.yml".into(),
                r#ref: "main".into(),
                inputs: json!({"plan_id": "plan-2", "service": "legal-compliance"})
                    .as_object()
                    .unwrap()
                    .clone(),
            },
        ]
    );

    let listed = workflows
        .list_runs("deploy.yml")
        .event("workflow_dispatch")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.total_count, Some(2));
    assert_eq!(listed.items.len(), 2);
    for run in &listed.items {
        assert_eq!(run.workflow_id.0, workflow_id);
        assert_eq!(run.name, "deploy");
        assert_eq!(run.event, "workflow_dispatch");
        assert_eq!(run.status, "queued");
        assert_eq!(run.conclusion, None);
        assert_eq!(run.head_branch, "main");
        assert_eq!(run.head_sha.len(), 40);
        assert_eq!(run.repository.full_name.as_deref(), Some("acme/infra"));
        assert_eq!(
            run.html_url.as_str(),
            format!("https://github.com/acme/infra/actions/runs/{}", run.id)
        );
    }
    assert_eq!(
        listed
            .items
            .iter()
            .map(|run| run.run_number)
            .collect::<Vec<_>>(),
        [2, 1],
        "newest first"
    );
    let titles = display_titles(&octocrab, &[("event", "workflow_dispatch")]).await;
    let titled: Vec<_> = titles.iter().map(|(_, title)| title.as_str()).collect();
    assert_eq!(titled, ["deploy plan-2", "deploy plan-1"]);
    let own = |plan: &str| {
        RunId(
            titles
                .iter()
                .find(|(_, title)| *title == format!("deploy {plan}"))
                .unwrap()
                .0,
        )
    };
    let (succeeding, failing) = (own("plan-1"), own("plan-2"));
    assert!(
        workflows
            .list_runs("deploy.yml")
            .event("push")
            .send()
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        display_titles(&octocrab, &[("created", "<2000-01-01")])
            .await
            .is_empty()
    );
    assert_eq!(
        display_titles(&octocrab, &[("created", ">=2000-01-01")])
            .await
            .len(),
        2
    );
    let first_page = workflows
        .list_runs(workflow_id.to_string())
        .event("workflow_dispatch")
        .per_page(1)
        .send()
        .await
        .unwrap();
    assert_eq!(first_page.items.len(), 1);
    let next = first_page.next.unwrap().to_string();
    assert!(
        next.contains("event=workflow_dispatch") && next.contains("page=2"),
        "{next}"
    );

    let jobs = workflows.list_jobs(succeeding).send().await.unwrap();
    assert_eq!(jobs.total_count, Some(1));
    assert_eq!(jobs.items[0].name, "deploy");
    assert_eq!(jobs.items[0].status, Status::Queued);
    assert_eq!(
        step_states(&jobs.items[0]),
        vec![
            (Status::Queued, None),
            (Status::Queued, None),
            (Status::Queued, None)
        ]
    );

    let first = workflows.get(succeeding).await.unwrap();
    assert_eq!(
        (first.status.as_str(), first.conclusion.as_deref()),
        ("in_progress", None)
    );
    let job = workflows
        .list_jobs(succeeding)
        .send()
        .await
        .unwrap()
        .items
        .remove(0);
    assert_eq!(job.run_id, succeeding);
    assert_eq!(job.status, Status::InProgress);
    let names: Vec<_> = job.steps.iter().map(|step| step.name.as_str()).collect();
    assert_eq!(names, ["Set up job", "Deploy billing", "Check health"]);
    assert_eq!(
        step_states(&job),
        vec![
            (Status::InProgress, None),
            (Status::Queued, None),
            (Status::Queued, None)
        ]
    );
    assert!(job.steps[0].started_at.is_some() && job.steps[1].started_at.is_none());

    let (seen, done) = poll(&octocrab, succeeding).await;
    assert_eq!(seen, ["in_progress", "in_progress", "completed"]);
    assert_eq!(done.conclusion.as_deref(), Some("success"));
    let again = workflows.get(succeeding).await.unwrap();
    assert_eq!(
        (again.status.as_str(), again.conclusion.as_deref()),
        ("completed", Some("success"))
    );
    let job = workflows
        .list_jobs(succeeding)
        .send()
        .await
        .unwrap()
        .items
        .remove(0);
    assert_eq!(
        (job.status.clone(), job.conclusion.clone()),
        (Status::Completed, Some(Conclusion::Success))
    );
    assert!(job.completed_at.is_some());
    assert_eq!(
        step_states(&job),
        vec![(Status::Completed, Some(Conclusion::Success)); 3]
    );

    let (seen, done) = poll(&octocrab, failing).await;
    assert_eq!(
        seen,
        ["in_progress", "in_progress", "in_progress", "completed"]
    );
    assert_eq!(done.conclusion.as_deref(), Some("failure"));
    let job = workflows
        .list_jobs(failing)
        .send()
        .await
        .unwrap()
        .items
        .remove(0);
    assert_eq!(job.conclusion, Some(Conclusion::Failure));
    assert_eq!(job.steps[1].name, "Deploy legal-compliance");
    assert_eq!(
        step_states(&job),
        vec![
            (Status::Completed, Some(Conclusion::Success)),
            (Status::Completed, Some(Conclusion::Failure)),
            (Status::Completed, Some(Conclusion::Skipped)),
        ]
    );
    simulator.shutdown().await;
}

#[tokio::test]
async fn refuses_dispatches_as_github_does() {
    let simulator = GithubSimulator::start(TOKEN).await.unwrap();
    let octocrab = client(&simulator, TOKEN);
    simulator.add_workflow("acme", "infra", "deploy.yml");
    let workflows = octocrab.workflows("acme", "infra");

    let missing = github_error(workflows.get_workflow("other.yml").await.unwrap_err());
    assert_eq!(missing.status_code, 404);
    let missing = octocrab
        .actions()
        .create_workflow_dispatch("acme", "infra", "other.yml", "main")
        .send()
        .await
        .unwrap_err();
    assert_eq!(github_error(missing).status_code, 404);
    let not_text = octocrab
        .actions()
        .create_workflow_dispatch("acme", "infra", "deploy.yml", "main")
        .inputs(json!({"plan_id": 7}))
        .send()
        .await
        .unwrap_err();
    let not_text = github_error(not_text);
    assert_eq!(not_text.status_code, 422);
    assert!(
        not_text
            .message
            .contains("'properties/plan_id', 7 is not a string"),
        "{not_text}"
    );

    let no_ref = Request::post(format!(
        "{}/repos/acme/infra/actions/workflows/deploy.yml/dispatches",
        simulator.url()
    ))
    .header("authorization", format!("Bearer {TOKEN}"))
    .body(Full::new(Bytes::from(r#"{"inputs":{"plan_id":"p"}}"#)))
    .unwrap();
    let (status, body) = infracrew_testkit::http::send(no_ref).await.unwrap();
    assert_eq!(status, 422);
    assert!(body.contains(r#"\"ref\" wasn't supplied"#), "{body}");
    assert!(simulator.dispatches("acme", "infra").is_empty());

    let missing = github_error(workflows.get(RunId(424242)).await.unwrap_err());
    assert_eq!(missing.status_code, 404);
    let missing = workflows.list_jobs(RunId(424242)).send().await.unwrap_err();
    assert_eq!(github_error(missing).status_code, 404);
    let missing = workflows.list_runs("other.yml").send().await.unwrap_err();
    assert_eq!(github_error(missing).status_code, 404);

    // Without inputs, the run is titled after its workflow.
    octocrab
        .actions()
        .create_workflow_dispatch("acme", "infra", "deploy.yml", "refs/heads/main")
        .send()
        .await
        .unwrap();
    assert_eq!(
        simulator.dispatches("acme", "infra")[0].r#ref,
        "refs/heads/main"
    );
    let titles = display_titles(&octocrab, &[]).await;
    assert_eq!(titles.len(), 1);
    assert_eq!(titles[0].1, "deploy");
    simulator.shutdown().await;
}
