//! A GitHub REST API simulator for tests, speaking GitHub's wire format: the endpoints the
//! crew uses (commit statuses, issue comments, pull requests, their files and contents) with
//! token checks, real-shaped answers that octocrab deserializes, and failures on demand
//! (HTTP 5xx, a primary rate limit with its headers). GitHub Actions too, for deployments
//! that dispatch a workflow: workflows, `workflow_dispatch` events, and the runs they start,
//! which advance one step each time they are read so a poller sees them queue, run and
//! conclude. Beside it, the signing and payloads of the webhooks GitHub sends, so tests
//! deliver `issue_comment` and `pull_request_review` events exactly as GitHub does.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine;
use http_body_util::Full;
use serde_json::{Map, Value, json};

/// The login the simulator's token belongs to: the creator of every status and the author of
/// every comment it records, as a GitHub App's installation token would be.
pub const BOT_LOGIN: &str = "infracrew[bot]";

/// Where GitHub's own API lives, for the URLs of webhook payloads (which know no simulator).
const GITHUB_API: &str = "https://api.github.com";
const DOCS: &str = "https://docs.github.com/rest";
/// GitHub's limits, so tests see the 422 a too long text gets.
const MAX_STATUS_DESCRIPTION: usize = 140;
const MAX_COMMENT_BODY: usize = 65_536;

/// A commit status as it was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedStatus {
    /// `pending`, `success`, `failure` or `error`.
    pub state: String,
    /// `default` when the request named none, as on GitHub.
    pub context: String,
    pub description: Option<String>,
    pub target_url: Option<String>,
}

/// An issue comment as it stands now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedComment {
    pub id: u64,
    pub body: String,
    /// How many times it was updated.
    pub edits: usize,
}

/// A `workflow_dispatch` event as it was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedDispatch {
    /// The workflow's file name (`deploy.yml`), whether the request named it so or by id.
    pub workflow: String,
    /// The git ref as the request gave it.
    pub r#ref: String,
    /// The inputs, every value a string (GitHub refuses others); empty when none were sent.
    pub inputs: Map<String, Value>,
}

/// A failure the simulator gives instead of the next API answer.
#[derive(Debug, Clone, Copy)]
enum Failure {
    Status(u16),
    RateLimited,
}

#[derive(Debug, Clone)]
struct PullRequest {
    owner: String,
    repo: String,
    number: u64,
    head_sha: String,
    author: String,
    files: Vec<(String, String)>,
    created_at: String,
}

/// The files of a commit, kept after a pull request moves on so old heads stay readable.
#[derive(Debug, Clone)]
struct Tree {
    owner: String,
    repo: String,
    sha: String,
    files: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
struct Comment {
    owner: String,
    repo: String,
    number: u64,
    id: u64,
    body: String,
    edits: usize,
    created_at: String,
    updated_at: String,
}

#[derive(Debug, Clone)]
struct Status {
    owner: String,
    repo: String,
    sha: String,
    recorded: RecordedStatus,
}

#[derive(Debug, Clone)]
struct Workflow {
    owner: String,
    repo: String,
    id: u64,
    /// The file name under `.github/workflows/`, by which the API also finds it.
    file: String,
    created_at: String,
}

/// A workflow run started by a dispatch. It moves only when read with `GET
/// /actions/runs/{id}`, so a test decides how far it has got by how often it polls, and
/// never waits on a clock.
#[derive(Debug, Clone)]
struct WorkflowRun {
    owner: String,
    repo: String,
    id: u64,
    workflow_id: u64,
    run_number: u64,
    check_suite_id: u64,
    job_id: u64,
    head_branch: String,
    head_sha: String,
    dispatch: RecordedDispatch,
    created_at: String,
    /// When each read that moved the run happened: the first started its job and the job's
    /// first step, each later one finished a step and started the next, and the one after
    /// the last step completed the run. Their number is how far the run has got.
    moments: Vec<String>,
    /// Whether the deploy step failed, decided when it finishes.
    failed: bool,
}

#[derive(Debug, Default)]
struct Github {
    token: String,
    /// The simulator's own address: the API URLs in its answers lead back to it.
    api: String,
    failures: VecDeque<Failure>,
    /// Failures that begin once the next dispatch is accepted.
    failures_after_dispatch: Vec<Failure>,
    requests: Vec<(String, String)>,
    statuses: Vec<Status>,
    comments: Vec<Comment>,
    pulls: Vec<PullRequest>,
    trees: Vec<Tree>,
    /// The default branch's files, by (owner, repo, path).
    base_files: Vec<(String, String, String, String)>,
    workflows: Vec<Workflow>,
    /// Every run, oldest first; each is one accepted dispatch.
    runs: Vec<WorkflowRun>,
    /// `(input, value)` pairs: a run dispatched with any of them fails its deploy step.
    failing_inputs: Vec<(String, String)>,
}

impl Github {
    fn fails(&self, inputs: &Map<String, Value>) -> bool {
        self.failing_inputs
            .iter()
            .any(|(name, value)| inputs.get(name).and_then(Value::as_str) == Some(value))
    }
}

type Shared = Arc<Mutex<Github>>;

/// A running simulator, stopped when dropped.
#[derive(Debug)]
pub struct GithubSimulator {
    address: SocketAddr,
    github: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for GithubSimulator {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl GithubSimulator {
    /// Starts on a free loopback port; every call must carry `Bearer {token}` or
    /// `token {token}`.
    pub async fn start(token: &str) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let github = Arc::new(Mutex::new(Github {
            token: token.to_owned(),
            api: format!("http://{address}"),
            ..Github::default()
        }));
        let routes = Router::new()
            .route("/repos/{owner}/{repo}/statuses/{sha}", post(create_status))
            .route(
                "/repos/{owner}/{repo}/issues/{number}/comments",
                get(list_comments).post(create_comment),
            )
            // GitHub documents PATCH; octocrab's update_comment sends POST, which GitHub
            // also accepts.
            .route(
                "/repos/{owner}/{repo}/issues/comments/{comment_id}",
                post(update_comment).patch(update_comment),
            )
            .route("/repos/{owner}/{repo}/pulls/{number}", get(get_pull))
            .route(
                "/repos/{owner}/{repo}/pulls/{number}/files",
                get(list_files),
            )
            .route("/repos/{owner}/{repo}/contents/{*path}", get(get_content))
            .route(
                "/repos/{owner}/{repo}/actions/workflows/{workflow_id}",
                get(get_workflow),
            )
            .route(
                "/repos/{owner}/{repo}/actions/workflows/{workflow_id}/dispatches",
                post(dispatch_workflow),
            )
            .route(
                "/repos/{owner}/{repo}/actions/workflows/{workflow_id}/runs",
                get(list_workflow_runs),
            )
            .route("/repos/{owner}/{repo}/actions/runs/{run_id}", get(get_run))
            .route(
                "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs",
                get(list_run_jobs),
            )
            // GitHub answers an unknown route, or a known one with the wrong method, 404.
            .fallback(unknown)
            .method_not_allowed_fallback(unknown)
            .layer(middleware::from_fn_with_state(github.clone(), gate))
            .with_state(github.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, routes).await;
        });
        Ok(GithubSimulator {
            address,
            github,
            server,
        })
    }

    /// `http://127.0.0.1:PORT`, for `Octocrab::builder().base_uri(..)`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops serving and waits until the listener is closed; open connections close too.
    pub async fn shutdown(mut self) {
        self.server.abort();
        let _ = (&mut self.server).await;
    }

    /// Opens (or, for a known number, pushes to) pull request `number` of `owner/repo`: its
    /// head is `head_sha` on branch `change-{number}` into `main`, by `author_login`, and
    /// `files` are the `(path, contents)` it changes. A file also added with
    /// [`GithubSimulator::add_base_file`] is `modified`, any other `added`.
    pub fn add_pull_request<P, C>(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
        head_sha: &str,
        author_login: &str,
        files: impl IntoIterator<Item = (P, C)>,
    ) where
        P: Into<String>,
        C: Into<String>,
    {
        let files: Vec<(String, String)> = files
            .into_iter()
            .map(|(path, contents)| (path.into(), contents.into()))
            .collect();
        let mut github = self.lock();
        github.trees.push(Tree {
            owner: owner.to_owned(),
            repo: repo.to_owned(),
            sha: head_sha.to_owned(),
            files: files.clone(),
        });
        let created_at = github
            .pulls
            .iter()
            .find(|pr| same_repo(&pr.owner, &pr.repo, owner, repo) && pr.number == number)
            .map_or_else(now, |pr| pr.created_at.clone());
        github
            .pulls
            .retain(|pr| !(same_repo(&pr.owner, &pr.repo, owner, repo) && pr.number == number));
        github.pulls.push(PullRequest {
            owner: owner.to_owned(),
            repo: repo.to_owned(),
            number,
            head_sha: head_sha.to_owned(),
            author: author_login.to_owned(),
            files,
            created_at,
        });
    }

    /// Puts a file on `owner/repo`'s default branch `main`: served for `ref=main` (or no ref)
    /// and diffed against by the pull requests that change it.
    pub fn add_base_file(&self, owner: &str, repo: &str, path: &str, contents: &str) {
        let mut github = self.lock();
        github
            .base_files
            .retain(|(o, r, p, _)| !(same_repo(o, r, owner, repo) && p == path));
        github.base_files.push((
            owner.to_owned(),
            repo.to_owned(),
            path.to_owned(),
            contents.to_owned(),
        ));
    }

    /// The next `n` API calls answer `status` (a 5xx: GitHub is down) with GitHub's error
    /// JSON.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.lock()
            .failures
            .extend(std::iter::repeat_n(Failure::Status(status), n));
    }

    /// Once the next `workflow_dispatch` is accepted, the `n` API calls after it answer
    /// `status`: GitHub goes down while the run it started is followed.
    pub fn fail_after_next_dispatch(&self, n: usize, status: u16) {
        self.lock()
            .failures_after_dispatch
            .extend(std::iter::repeat_n(Failure::Status(status), n));
    }

    /// GitHub is back: the injected failures not given yet are dropped.
    pub fn recover(&self) {
        let mut github = self.lock();
        github.failures.clear();
        github.failures_after_dispatch.clear();
    }

    /// The next `n` API calls answer 403 with GitHub's primary rate limit message and
    /// headers (`x-ratelimit-remaining: 0`, a reset a second ahead, `retry-after: 1`).
    pub fn rate_limit_next(&self, n: usize) {
        self.lock()
            .failures
            .extend(std::iter::repeat_n(Failure::RateLimited, n));
    }

    /// The statuses created on `sha` of `owner/repo`, oldest first.
    pub fn statuses(&self, owner: &str, repo: &str, sha: &str) -> Vec<RecordedStatus> {
        self.lock()
            .statuses
            .iter()
            .filter(|status| same_repo(&status.owner, &status.repo, owner, repo))
            .filter(|status| status.sha == sha)
            .map(|status| status.recorded.clone())
            .collect()
    }

    /// The comments on issue or pull request `number` of `owner/repo`, oldest first.
    pub fn comments(&self, owner: &str, repo: &str, number: u64) -> Vec<RecordedComment> {
        self.lock()
            .comments
            .iter()
            .filter(|comment| same_repo(&comment.owner, &comment.repo, owner, repo))
            .filter(|comment| comment.number == number)
            .map(|comment| RecordedComment {
                id: comment.id,
                body: comment.body.clone(),
                edits: comment.edits,
            })
            .collect()
    }

    /// Registers the workflow `.github/workflows/{workflow_file}` of `owner/repo`, active and
    /// named after its file (`deploy.yml` is `deploy`), and returns its numeric id. The API
    /// finds it by file name or by that id; adding a known file again keeps it as it is.
    pub fn add_workflow(&self, owner: &str, repo: &str, workflow_file: &str) -> u64 {
        let mut github = self.lock();
        if let Some(known) = github
            .workflows
            .iter()
            .find(|w| same_repo(&w.owner, &w.repo, owner, repo) && w.file == workflow_file)
        {
            return known.id;
        }
        let id = next_id();
        github.workflows.push(Workflow {
            owner: owner.to_owned(),
            repo: repo.to_owned(),
            id,
            file: workflow_file.to_owned(),
            created_at: now(),
        });
        id
    }

    /// Runs dispatched with input `input_name` set to `input_value` fail: their deploy step
    /// concludes `failure`, the health check after it is skipped, and the run concludes
    /// `failure`. Decided when the deploy step finishes, so it also holds for runs already
    /// dispatched but not that far yet.
    pub fn fail_runs_with(&self, input_name: &str, input_value: &str) {
        self.lock()
            .failing_inputs
            .push((input_name.to_owned(), input_value.to_owned()));
    }

    /// The `workflow_dispatch` events `owner/repo` accepted, oldest first.
    pub fn dispatches(&self, owner: &str, repo: &str) -> Vec<RecordedDispatch> {
        self.lock()
            .runs
            .iter()
            .filter(|run| same_repo(&run.owner, &run.repo, owner, repo))
            .map(|run| run.dispatch.clone())
            .collect()
    }

    /// Every call so far as `(method, path)`, including the refused and failed ones.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Github> {
        lock(&self.github)
    }
}

fn lock(github: &Mutex<Github>) -> MutexGuard<'_, Github> {
    github
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Records every call, then gives an injected failure or refuses a wrong token before any
/// endpoint runs.
async fn gate(State(github): State<Shared>, request: Request, next: Next) -> Response {
    let refusal = {
        let mut github = lock(&github);
        github.requests.push((
            request.method().to_string(),
            request.uri().path().to_owned(),
        ));
        if let Some(failure) = github.failures.pop_front() {
            Some(failure_response(failure))
        } else if !authorized(&github.token, request.headers()) {
            Some(github_error(
                StatusCode::UNAUTHORIZED,
                "Bad credentials",
                DOCS,
            ))
        } else {
            None
        }
    };
    match refusal {
        Some(response) => response,
        None => next.run(request).await,
    }
}

fn authorized(token: &str, headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .is_some_and(|(scheme, credential)| {
            (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
                && credential.trim() == token
        })
}

fn failure_response(failure: Failure) -> Response {
    match failure {
        Failure::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let message = status.canonical_reason().unwrap_or("Server Error");
            github_error(status, message, DOCS)
        }
        Failure::RateLimited => {
            let reset = chrono::Utc::now().timestamp() + 1;
            (
                StatusCode::FORBIDDEN,
                [
                    ("x-ratelimit-limit", "5000".to_owned()),
                    ("x-ratelimit-remaining", "0".to_owned()),
                    ("x-ratelimit-used", "5000".to_owned()),
                    ("x-ratelimit-resource", "core".to_owned()),
                    ("x-ratelimit-reset", reset.to_string()),
                    ("retry-after", "1".to_owned()),
                ],
                Json(json!({
                    "message": format!("API rate limit exceeded for user ID {}.", user_id(BOT_LOGIN)),
                    "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
                })),
            )
                .into_response()
        }
    }
}

/// GitHub's error body: a message and where the documentation is.
fn github_error(status: StatusCode, message: &str, documentation_url: &str) -> Response {
    (
        status,
        Json(json!({"message": message, "documentation_url": documentation_url})),
    )
        .into_response()
}

fn not_found(documentation_url: &str) -> Response {
    github_error(StatusCode::NOT_FOUND, "Not Found", documentation_url)
}

/// GitHub's 422 for a field whose value it refuses.
fn validation_failed(resource: &str, field: &str, message: &str, docs: &str) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({
            "message": "Validation Failed",
            "errors": [{"resource": resource, "code": "custom", "field": field, "message": message}],
            "documentation_url": docs,
        })),
    )
        .into_response()
}

/// GitHub's 422 for a required field that is missing.
fn not_supplied(field: &str, docs: &str) -> Response {
    github_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        &format!("Invalid request.\n\n\"{field}\" wasn't supplied."),
        docs,
    )
}

/// The JSON object of a request body, or GitHub's 400 for anything else (boxed: a response
/// is large beside the `Ok` value).
fn json_object(body: &Bytes, docs: &str) -> Result<Map<String, Value>, Box<Response>> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(object)) => Ok(object),
        _ => Err(Box::new(github_error(
            StatusCode::BAD_REQUEST,
            "Problems parsing JSON",
            docs,
        ))),
    }
}

async fn unknown() -> Response {
    not_found(DOCS)
}

async fn create_status(
    State(github): State<Shared>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    const STATUS_DOCS: &str =
        "https://docs.github.com/rest/commits/statuses#create-a-commit-status";
    let request = match json_object(&body, STATUS_DOCS) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let Some(state) = request.get("state").and_then(Value::as_str) else {
        return not_supplied("state", STATUS_DOCS);
    };
    if !["pending", "success", "failure", "error"].contains(&state) {
        return validation_failed(
            "Status",
            "state",
            "state is not included in the list",
            STATUS_DOCS,
        );
    }
    let text = |field: &str| {
        request
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let description = text("description");
    if description
        .as_deref()
        .is_some_and(|description| description.chars().count() > MAX_STATUS_DESCRIPTION)
    {
        return validation_failed(
            "Status",
            "description",
            "description is too long (maximum is 140 characters)",
            STATUS_DOCS,
        );
    }
    let recorded = RecordedStatus {
        state: state.to_owned(),
        context: text("context").unwrap_or_else(|| "default".to_owned()),
        description,
        target_url: text("target_url"),
    };
    let mut github = lock(&github);
    let id = next_id();
    let at = now();
    let answer = json!({
        "url": format!("{}/repos/{owner}/{repo}/statuses/{sha}", github.api),
        "avatar_url": avatar_url(BOT_LOGIN),
        "id": id,
        "node_id": format!("SC_sim{id}"),
        "state": recorded.state,
        "description": recorded.description,
        "target_url": recorded.target_url,
        "context": recorded.context,
        "created_at": at,
        "updated_at": at,
        "creator": user(&github.api, BOT_LOGIN),
    });
    github.statuses.push(Status {
        owner,
        repo,
        sha,
        recorded,
    });
    (StatusCode::CREATED, Json(answer)).into_response()
}

/// The comment's body from a create or update request, or GitHub's 4xx.
fn comment_body(body: &Bytes, docs: &str) -> Result<String, Box<Response>> {
    let request = json_object(body, docs)?;
    let Some(text) = request.get("body").and_then(Value::as_str) else {
        return Err(Box::new(not_supplied("body", docs)));
    };
    if text.chars().count() > MAX_COMMENT_BODY {
        return Err(Box::new(validation_failed(
            "IssueComment",
            "body",
            "body is too long (maximum is 65536 characters)",
            docs,
        )));
    }
    Ok(text.to_owned())
}

async fn create_comment(
    State(github): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    const DOCS: &str = "https://docs.github.com/rest/issues/comments#create-an-issue-comment";
    let Ok(number) = number.parse::<u64>() else {
        return not_found(DOCS);
    };
    let body = match comment_body(&body, DOCS) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let mut github = lock(&github);
    let at = now();
    let comment = Comment {
        owner,
        repo,
        number,
        id: next_id(),
        body,
        edits: 0,
        created_at: at.clone(),
        updated_at: at,
    };
    let answer = comment_json(&github, &comment);
    github.comments.push(comment);
    (StatusCode::CREATED, Json(answer)).into_response()
}

async fn update_comment(
    State(github): State<Shared>,
    Path((owner, repo, comment_id)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    const DOCS: &str = "https://docs.github.com/rest/issues/comments#update-an-issue-comment";
    let body = match comment_body(&body, DOCS) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let mut github = lock(&github);
    let Some(comment) = github.comments.iter_mut().find(|comment| {
        same_repo(&comment.owner, &comment.repo, &owner, &repo)
            && comment.id.to_string() == comment_id
    }) else {
        return not_found(DOCS);
    };
    comment.body = body;
    comment.edits += 1;
    comment.updated_at = now();
    let comment = comment.clone();
    Json(comment_json(&github, &comment)).into_response()
}

async fn list_comments(
    State(github): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Ok(number) = number.parse::<u64>() else {
        return not_found("https://docs.github.com/rest/issues/comments#list-issue-comments");
    };
    let github = lock(&github);
    let comments: Vec<Value> = github
        .comments
        .iter()
        .filter(|comment| same_repo(&comment.owner, &comment.repo, &owner, &repo))
        .filter(|comment| comment.number == number)
        .map(|comment| comment_json(&github, comment))
        .collect();
    let url = format!(
        "{}/repos/{owner}/{repo}/issues/{number}/comments",
        github.api
    );
    paginated(comments, &query, &url)
}

async fn get_pull(
    State(github): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, String)>,
) -> Response {
    let github = lock(&github);
    match find_pull(&github, &owner, &repo, &number) {
        Some(pr) => Json(pull_request_json(&github, pr)).into_response(),
        None => not_found("https://docs.github.com/rest/pulls/pulls#get-a-pull-request"),
    }
}

async fn list_files(
    State(github): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let github = lock(&github);
    let Some(pr) = find_pull(&github, &owner, &repo, &number) else {
        return not_found("https://docs.github.com/rest/pulls/pulls#list-pull-requests-files");
    };
    let files: Vec<Value> = pr
        .files
        .iter()
        .map(|(path, contents)| diff_entry(&github, pr, path, contents))
        .collect();
    let url = format!(
        "{}/repos/{owner}/{repo}/pulls/{}/files",
        github.api, pr.number
    );
    paginated(files, &query, &url)
}

async fn get_content(
    State(github): State<Shared>,
    Path((owner, repo, path)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let github = lock(&github);
    let reference = query.get("ref").map(String::as_str);
    let on_main = reference
        .is_none_or(|reference| reference == "main" || reference == base_sha(&owner, &repo));
    let in_tree = reference.and_then(|reference| {
        let sha = github
            .pulls
            .iter()
            .find(|pr| {
                same_repo(&pr.owner, &pr.repo, &owner, &repo) && head_ref(pr.number) == reference
            })
            .map_or(reference, |pr| pr.head_sha.as_str());
        github
            .trees
            .iter()
            .rev()
            .filter(|tree| same_repo(&tree.owner, &tree.repo, &owner, &repo) && tree.sha == sha)
            .find_map(|tree| tree.files.iter().find(|(p, _)| *p == path))
            .map(|(_, contents)| contents.clone())
    });
    let on_base = || {
        github
            .base_files
            .iter()
            .find(|(o, r, p, _)| same_repo(o, r, &owner, &repo) && *p == path)
            .map(|(_, _, _, contents)| contents.clone())
    };
    let contents = in_tree.or_else(|| on_main.then(on_base).flatten());
    let Some(contents) = contents else {
        return not_found("https://docs.github.com/rest/repos/contents#get-repository-content");
    };
    let reference = reference.unwrap_or("main");
    let blob = blob_sha(&contents);
    let url = format!(
        "{}/repos/{owner}/{repo}/contents/{path}?ref={reference}",
        github.api
    );
    let git_url = format!("{}/repos/{owner}/{repo}/git/blobs/{blob}", github.api);
    let html_url = format!("https://github.com/{owner}/{repo}/blob/{reference}/{path}");
    Json(json!({
        "type": "file",
        "encoding": "base64",
        "size": contents.len(),
        "name": path.rsplit('/').next().unwrap_or(&path),
        "path": path,
        "content": wrapped_base64(contents.as_bytes()),
        "sha": blob,
        "url": url,
        "git_url": git_url,
        "html_url": html_url,
        "download_url": format!("https://raw.githubusercontent.com/{owner}/{repo}/{reference}/{path}"),
        "_links": {"self": url, "git": git_url, "html": html_url},
    }))
    .into_response()
}

const WORKFLOW_DOCS: &str = "https://docs.github.com/rest/actions/workflows#get-a-workflow";
const DISPATCH_DOCS: &str =
    "https://docs.github.com/rest/actions/workflows#create-a-workflow-dispatch-event";
const RUNS_DOCS: &str =
    "https://docs.github.com/rest/actions/workflow-runs#list-workflow-runs-for-a-workflow";
const RUN_DOCS: &str = "https://docs.github.com/rest/actions/workflow-runs#get-a-workflow-run";
const JOBS_DOCS: &str =
    "https://docs.github.com/rest/actions/workflow-jobs#list-jobs-for-a-workflow-run";

/// The steps of the one job every run has, in order; the deploy step (the second) is the
/// one a failing run fails.
const STEP_COUNT: usize = 3;
const DEPLOY_STEP: usize = 2;

async fn get_workflow(
    State(github): State<Shared>,
    Path((owner, repo, workflow_id)): Path<(String, String, String)>,
) -> Response {
    let github = lock(&github);
    match find_workflow(&github, &owner, &repo, &workflow_id) {
        Some(workflow) => Json(workflow_json(&github.api, workflow)).into_response(),
        None => not_found(WORKFLOW_DOCS),
    }
}

async fn dispatch_workflow(
    State(github): State<Shared>,
    Path((owner, repo, workflow_id)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let mut github = lock(&github);
    let Some(workflow) = find_workflow(&github, &owner, &repo, &workflow_id).cloned() else {
        return not_found(DISPATCH_DOCS);
    };
    let request = match json_object(&body, DISPATCH_DOCS) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let reference = match request.get("ref") {
        None | Some(Value::Null) => return not_supplied("ref", DISPATCH_DOCS),
        Some(Value::String(reference)) => reference.clone(),
        Some(other) => return invalid_property("ref", other, "a string"),
    };
    let inputs = match request.get("inputs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(inputs)) => inputs.clone(),
        Some(other) => return invalid_property("inputs", other, "an object"),
    };
    if let Some((name, value)) = inputs.iter().find(|(_, value)| !value.is_string()) {
        return invalid_property(name, value, "a string");
    }
    let branch = reference
        .strip_prefix("refs/heads/")
        .unwrap_or(&reference)
        .to_owned();
    let head_sha = ref_sha(&github, &owner, &repo, &branch);
    let run_number = 1 + github
        .runs
        .iter()
        .filter(|run| run.workflow_id == workflow.id)
        .count() as u64;
    let run = WorkflowRun {
        owner,
        repo,
        id: next_id(),
        workflow_id: workflow.id,
        run_number,
        check_suite_id: next_id(),
        job_id: next_id(),
        head_branch: branch,
        head_sha,
        dispatch: RecordedDispatch {
            workflow: workflow.file,
            r#ref: reference,
            inputs,
        },
        created_at: now(),
        moments: Vec::new(),
        failed: false,
    };
    github.runs.push(run);
    let armed = std::mem::take(&mut github.failures_after_dispatch);
    github.failures.extend(armed);
    StatusCode::NO_CONTENT.into_response()
}

/// GitHub's 422 for a request property of the wrong type, as its schema check words it.
fn invalid_property(name: &str, value: &Value, expected: &str) -> Response {
    github_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        &format!("Invalid request.\n\nFor 'properties/{name}', {value} is not {expected}."),
        DISPATCH_DOCS,
    )
}

/// The commit a dispatch on `branch` runs: `main`'s head, a pull request's head for its
/// branch, a full commit id as itself, or a stable made-up commit for any other branch.
fn ref_sha(github: &Github, owner: &str, repo: &str, branch: &str) -> String {
    if branch == "main" {
        return base_sha(owner, repo);
    }
    if let Some(pr) = github
        .pulls
        .iter()
        .find(|pr| same_repo(&pr.owner, &pr.repo, owner, repo) && head_ref(pr.number) == branch)
    {
        return pr.head_sha.clone();
    }
    if branch.len() == 40 && branch.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return branch.to_owned();
    }
    fake_sha(&format!("{branch} of {owner}/{repo}"))
}

/// The runs of a workflow, newest first. Listing does not move them: only reading a run
/// does. Filters as GitHub's: `event`, `branch`, `actor`, `status` (a status or a
/// conclusion), `head_sha` and `created` (`>=`, `>`, `<=`, `<`, `from..to` or one day, in
/// dates or RFC 3339 times).
async fn list_workflow_runs(
    State(github): State<Shared>,
    Path((owner, repo, workflow_id)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let github = lock(&github);
    let Some(workflow) = find_workflow(&github, &owner, &repo, &workflow_id) else {
        return not_found(RUNS_DOCS);
    };
    let wanted = |name: &str, value: &str| query.get(name).is_none_or(|wanted| wanted == value);
    let runs: Vec<Value> = github
        .runs
        .iter()
        .rev()
        .filter(|run| run.workflow_id == workflow.id)
        .filter(|_| wanted("event", "workflow_dispatch"))
        .filter(|run| wanted("branch", &run.head_branch))
        .filter(|run| wanted("head_sha", &run.head_sha))
        .filter(|_| {
            query
                .get("actor")
                .is_none_or(|actor| actor.eq_ignore_ascii_case(BOT_LOGIN))
        })
        .filter(|run| {
            let (status, conclusion) = run_state(run);
            query
                .get("status")
                .is_none_or(|wanted| wanted == status || Some(wanted.as_str()) == conclusion)
        })
        .filter(|run| {
            query
                .get("created")
                .is_none_or(|created| created_matches(created, &run.created_at))
        })
        .map(|run| run_json(&github.api, run))
        .collect();
    let url = format!(
        "{}/repos/{owner}/{repo}/actions/workflows/{workflow_id}/runs",
        github.api
    );
    paginated_object("workflow_runs", runs, &query, &url)
}

/// Whether a run created at `created_at` matches GitHub's `created` filter; one the
/// simulator cannot read matches nothing, so a wrong filter shows as a missing run.
fn created_matches(filter: &str, created_at: &str) -> bool {
    use chrono::{DateTime, NaiveDate, Utc};
    /// A time, or a day's first (or, for an upper bound, last) second.
    fn bound(text: &str, end_of_day: bool) -> Option<DateTime<Utc>> {
        if let Ok(time) = DateTime::parse_from_rfc3339(text) {
            return Some(time.with_timezone(&Utc));
        }
        let day = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
        let time = if end_of_day {
            day.and_hms_opt(23, 59, 59)?
        } else {
            day.and_hms_opt(0, 0, 0)?
        };
        Some(time.and_utc())
    }
    let Ok(at) = DateTime::parse_from_rfc3339(created_at) else {
        return false;
    };
    let at = at.with_timezone(&Utc);
    let from = |text: &str| {
        (text == "*")
            .then_some(true)
            .or_else(|| bound(text, false).map(|b| at >= b))
    };
    let to = |text: &str| {
        (text == "*")
            .then_some(true)
            .or_else(|| bound(text, true).map(|b| at <= b))
    };
    let matched = if let Some(text) = filter.strip_prefix(">=") {
        from(text)
    } else if let Some(text) = filter.strip_prefix('>') {
        bound(text, true).map(|b| at > b)
    } else if let Some(text) = filter.strip_prefix("<=") {
        to(text)
    } else if let Some(text) = filter.strip_prefix('<') {
        bound(text, false).map(|b| at < b)
    } else if let Some((start, end)) = filter.split_once("..") {
        from(start)
            .zip(to(end))
            .map(|(after, before)| after && before)
    } else {
        from(filter)
            .zip(to(filter))
            .map(|(after, before)| after && before)
    };
    matched.unwrap_or(false)
}

/// Answers a run after moving it one step, as a poller would see it progress.
async fn get_run(
    State(github): State<Shared>,
    Path((owner, repo, run_id)): Path<(String, String, String)>,
) -> Response {
    let mut github = lock(&github);
    let Some(index) = find_run(&github, &owner, &repo, &run_id) else {
        return not_found(RUN_DOCS);
    };
    let failing = github.fails(&github.runs[index].dispatch.inputs);
    let run = &mut github.runs[index];
    advance(run, failing);
    let run = &github.runs[index];
    Json(run_json(&github.api, run)).into_response()
}

/// The run's one job, `deploy`; reading it does not move the run.
async fn list_run_jobs(
    State(github): State<Shared>,
    Path((owner, repo, run_id)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let github = lock(&github);
    let Some(index) = find_run(&github, &owner, &repo, &run_id) else {
        return not_found(JOBS_DOCS);
    };
    let run = &github.runs[index];
    let url = format!(
        "{}/repos/{owner}/{repo}/actions/runs/{}/jobs",
        github.api, run.id
    );
    paginated_object("jobs", vec![job_json(&github.api, run)], &query, &url)
}

/// A run moves one step: its job starts, then each read finishes a step and starts the next,
/// and the read after the last step completes it. A failing run's deploy step fails and the
/// health check after it is skipped, but the run still completes a read later, as GitHub's
/// job wraps up after its last step.
fn advance(run: &mut WorkflowRun, failing: bool) {
    if run.moments.len() > STEP_COUNT {
        return;
    }
    run.moments.push(now());
    if finished_steps(run) == DEPLOY_STEP {
        run.failed = failing;
    }
}

fn finished_steps(run: &WorkflowRun) -> usize {
    run.moments.len().saturating_sub(1)
}

/// The run's `status` and `conclusion`.
fn run_state(run: &WorkflowRun) -> (&'static str, Option<&'static str>) {
    match run.moments.len() {
        0 => ("queued", None),
        moved if moved > STEP_COUNT => (
            "completed",
            Some(if run.failed { "failure" } else { "success" }),
        ),
        _ => ("in_progress", None),
    }
}

fn find_workflow<'a>(
    github: &'a Github,
    owner: &str,
    repo: &str,
    workflow_id: &str,
) -> Option<&'a Workflow> {
    github.workflows.iter().find(|workflow| {
        same_repo(&workflow.owner, &workflow.repo, owner, repo)
            && (workflow.file == workflow_id || workflow.id.to_string() == workflow_id)
    })
}

fn find_run(github: &Github, owner: &str, repo: &str, run_id: &str) -> Option<usize> {
    github.runs.iter().position(|run| {
        same_repo(&run.owner, &run.repo, owner, repo) && run.id.to_string() == run_id
    })
}

/// A workflow's name when its file sets none: GitHub shows the file name; the simulator
/// drops the extension, so `deploy.yml` is `deploy`.
fn workflow_name(file: &str) -> &str {
    file.rsplit_once('.').map_or(file, |(stem, _)| stem)
}

fn workflow_json(api: &str, workflow: &Workflow) -> Value {
    let Workflow {
        owner,
        repo,
        id,
        file,
        created_at,
    } = workflow;
    let name = workflow_name(file);
    json!({
        "id": id,
        "node_id": format!("W_sim{id}"),
        "name": name,
        "path": format!(".github/workflows/{file}"),
        "state": "active",
        "created_at": created_at,
        "updated_at": created_at,
        "url": format!("{api}/repos/{owner}/{repo}/actions/workflows/{id}"),
        "html_url": format!("https://github.com/{owner}/{repo}/blob/main/.github/workflows/{file}"),
        "badge_url": format!("https://github.com/{owner}/{repo}/workflows/{name}/badge.svg"),
    })
}

/// A run as GitHub gives it. Its `display_title` is what the workflow's `run-name: deploy
/// ${{ inputs.plan_id }}` makes of the dispatch, by which a dispatcher finds its own run
/// among the others of the workflow (GitHub's dispatch answers 204 without the run).
fn run_json(api: &str, run: &WorkflowRun) -> Value {
    let WorkflowRun {
        owner,
        repo,
        id,
        head_sha,
        ..
    } = run;
    let name = workflow_name(&run.dispatch.workflow);
    let display_title = match run.dispatch.inputs.get("plan_id").and_then(Value::as_str) {
        Some(plan_id) => format!("deploy {plan_id}"),
        None => name.to_owned(),
    };
    let (status, conclusion) = run_state(run);
    let url = format!("{api}/repos/{owner}/{repo}/actions/runs/{id}");
    let check_suite_url = format!(
        "{api}/repos/{owner}/{repo}/check-suites/{}",
        run.check_suite_id
    );
    let repository = repository(api, owner, repo);
    json!({
        "id": id,
        "name": name,
        "node_id": format!("WFR_sim{id}"),
        "head_branch": run.head_branch,
        "head_sha": head_sha,
        "path": format!(".github/workflows/{}", run.dispatch.workflow),
        "display_title": display_title,
        "run_number": run.run_number,
        "event": "workflow_dispatch",
        "status": status,
        "conclusion": conclusion,
        "workflow_id": run.workflow_id,
        "check_suite_id": run.check_suite_id,
        "check_suite_node_id": format!("CS_sim{}", run.check_suite_id),
        "url": url,
        "html_url": format!("https://github.com/{owner}/{repo}/actions/runs/{id}"),
        "pull_requests": [],
        "created_at": run.created_at,
        "updated_at": run.moments.last().unwrap_or(&run.created_at),
        "actor": user(api, BOT_LOGIN),
        "triggering_actor": user(api, BOT_LOGIN),
        "run_attempt": 1,
        "referenced_workflows": [],
        "run_started_at": run.created_at,
        "jobs_url": format!("{url}/jobs"),
        "logs_url": format!("{url}/logs"),
        "check_suite_url": check_suite_url,
        "artifacts_url": format!("{url}/artifacts"),
        "cancel_url": format!("{url}/cancel"),
        "rerun_url": format!("{url}/rerun"),
        "previous_attempt_url": null,
        "workflow_url": format!("{api}/repos/{owner}/{repo}/actions/workflows/{}", run.workflow_id),
        "head_commit": {
            "id": head_sha,
            "tree_id": fake_sha(&format!("tree of {head_sha}")),
            "message": format!("Update {}", run.head_branch),
            "timestamp": run.created_at,
            "author": {"name": owner, "email": format!("{owner}@users.noreply.github.com")},
            "committer": {"name": "GitHub", "email": "noreply@github.com"},
        },
        "repository": repository,
        "head_repository": repository,
    })
}

/// The run's job `deploy`, whose steps show how far the run has got.
fn job_json(api: &str, run: &WorkflowRun) -> Value {
    let WorkflowRun {
        owner,
        repo,
        id: run_id,
        job_id,
        ..
    } = run;
    let (status, conclusion) = run_state(run);
    let started = !run.moments.is_empty();
    let service = run
        .dispatch
        .inputs
        .get("service")
        .and_then(Value::as_str)
        .unwrap_or("service");
    let names = [
        "Set up job".to_owned(),
        format!("Deploy {service}"),
        "Check health".to_owned(),
    ];
    let steps: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(index, name)| step_json(run, index + 1, name))
        .collect();
    json!({
        "id": job_id,
        "run_id": run_id,
        "workflow_name": workflow_name(&run.dispatch.workflow),
        "head_branch": run.head_branch,
        "run_url": format!("{api}/repos/{owner}/{repo}/actions/runs/{run_id}"),
        "run_attempt": 1,
        "node_id": format!("CR_sim{job_id}"),
        "head_sha": run.head_sha,
        "url": format!("{api}/repos/{owner}/{repo}/actions/jobs/{job_id}"),
        "html_url": format!("https://github.com/{owner}/{repo}/actions/runs/{run_id}/job/{job_id}"),
        "status": status,
        "conclusion": conclusion,
        "created_at": run.created_at,
        // GitHub gives a queued job its creation time as its start.
        "started_at": run.moments.first().unwrap_or(&run.created_at),
        "completed_at": conclusion.and(run.moments.last()),
        "name": "deploy",
        "steps": steps,
        "check_run_url": format!("{api}/repos/{owner}/{repo}/check-runs/{job_id}"),
        "labels": ["ubuntu-latest"],
        "runner_id": started.then_some(1),
        "runner_name": started.then_some("GitHub Actions 1"),
        "runner_group_id": started.then_some(0),
        "runner_group_name": started.then_some("GitHub Actions"),
    })
}

/// Step `number` (from 1): finished once later reads moved past it, running while the run
/// is at it, queued before; after a failed deploy step, the rest are skipped at once.
fn step_json(run: &WorkflowRun, number: usize, name: &str) -> Value {
    let finished = finished_steps(run);
    let moment = |index: usize| run.moments.get(index).cloned();
    let (status, conclusion, started_at, completed_at) =
        if number <= finished && !(run.failed && number > DEPLOY_STEP) {
            let failed = run.failed && number == DEPLOY_STEP;
            let conclusion = if failed { "failure" } else { "success" };
            (
                "completed",
                Some(conclusion),
                moment(number - 1),
                moment(number),
            )
        } else if run.failed && number > DEPLOY_STEP {
            let skipped_at = moment(DEPLOY_STEP);
            ("completed", Some("skipped"), skipped_at.clone(), skipped_at)
        } else if number == run.moments.len() {
            ("in_progress", None, moment(number - 1), None)
        } else {
            ("queued", None, None, None)
        };
    json!({
        "name": name,
        "status": status,
        "conclusion": conclusion,
        "number": number,
        "started_at": started_at,
        "completed_at": completed_at,
    })
}

fn find_pull<'a>(
    github: &'a Github,
    owner: &str,
    repo: &str,
    number: &str,
) -> Option<&'a PullRequest> {
    let number = number.parse::<u64>().ok()?;
    github
        .pulls
        .iter()
        .find(|pr| same_repo(&pr.owner, &pr.repo, owner, repo) && pr.number == number)
}

/// One page of `items` as GitHub pages most lists: a bare array (see [`page_of`]).
fn paginated(items: Vec<Value>, query: &HashMap<String, String>, url: &str) -> Response {
    let (items, links) = page_of(items, query, url);
    with_links(Json(Value::Array(items)).into_response(), &links)
}

/// One page of `items` as the Actions API pages a list: an object with the number of all
/// matches in `total_count` and the page under `key` (`workflow_runs`, `jobs`), which is
/// where octocrab's `Page` looks for them.
fn paginated_object(
    key: &str,
    items: Vec<Value>,
    query: &HashMap<String, String>,
    url: &str,
) -> Response {
    let total_count = items.len();
    let (items, links) = page_of(items, query, url);
    let mut answer = Map::new();
    answer.insert("total_count".to_owned(), total_count.into());
    answer.insert(key.to_owned(), Value::Array(items));
    with_links(Json(Value::Object(answer)).into_response(), &links)
}

/// The page of `items` a query asks for as GitHub pages a list: `per_page` (30 unless
/// asked, at most 100), `page` from 1, and the `Link` header's entries to the neighbours,
/// which keep the query's filters so the next page is of the same list.
fn page_of(
    items: Vec<Value>,
    query: &HashMap<String, String>,
    url: &str,
) -> (Vec<Value>, Vec<String>) {
    let number = |name: &str, default: usize| {
        query
            .get(name)
            .and_then(|value| value.parse::<usize>().ok())
            .filter(|value| *value > 0)
            .unwrap_or(default)
    };
    let per_page = number("per_page", 30).min(100);
    let page = number("page", 1);
    let last = items.len().div_ceil(per_page).max(1);
    let mut filters: Vec<(&String, &String)> = query
        .iter()
        .filter(|(name, _)| *name != "page" && *name != "per_page")
        .collect();
    filters.sort();
    let filters = match serde_urlencoded::to_string(&filters) {
        Ok(filters) if !filters.is_empty() => filters + "&",
        _ => String::new(),
    };
    let link = |page: usize, rel: &str| {
        format!("<{url}?{filters}per_page={per_page}&page={page}>; rel=\"{rel}\"")
    };
    let mut links = Vec::new();
    if page < last {
        links.push(link(page + 1, "next"));
        links.push(link(last, "last"));
    }
    if page > 1 {
        links.push(link(1, "first"));
        links.push(link(page.min(last + 1) - 1, "prev"));
    }
    let items = items
        .into_iter()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .collect();
    (items, links)
}

fn with_links(mut response: Response, links: &[String]) -> Response {
    if let Ok(value) = HeaderValue::from_str(&links.join(", "))
        && !links.is_empty()
    {
        response.headers_mut().insert(header::LINK, value);
    }
    response
}

fn comment_json(github: &Github, comment: &Comment) -> Value {
    let Comment {
        owner,
        repo,
        number,
        id,
        ..
    } = comment;
    let is_pull = github
        .pulls
        .iter()
        .any(|pr| same_repo(&pr.owner, &pr.repo, owner, repo) && pr.number == *number);
    let kind = if is_pull { "pull" } else { "issues" };
    json!({
        "url": format!("{}/repos/{owner}/{repo}/issues/comments/{id}", github.api),
        "html_url": format!("https://github.com/{owner}/{repo}/{kind}/{number}#issuecomment-{id}"),
        "issue_url": format!("{}/repos/{owner}/{repo}/issues/{number}", github.api),
        "id": id,
        "node_id": format!("IC_sim{id}"),
        "user": user(&github.api, BOT_LOGIN),
        "created_at": comment.created_at,
        "updated_at": comment.updated_at,
        "author_association": "NONE",
        "body": comment.body,
        "reactions": reactions(&format!("{}/repos/{owner}/{repo}/issues/comments/{id}/reactions", github.api)),
        "performed_via_github_app": null,
    })
}

fn reactions(url: &str) -> Value {
    json!({
        "url": url, "total_count": 0, "+1": 0, "-1": 0, "laugh": 0, "hooray": 0,
        "confused": 0, "heart": 0, "rocket": 0, "eyes": 0,
    })
}

fn pull_request_json(github: &Github, pr: &PullRequest) -> Value {
    let PullRequest {
        owner,
        repo,
        number,
        ..
    } = pr;
    let api = &github.api;
    let url = format!("{api}/repos/{owner}/{repo}/pulls/{number}");
    let html_url = format!("https://github.com/{owner}/{repo}/pull/{number}");
    let issue_url = format!("{api}/repos/{owner}/{repo}/issues/{number}");
    let statuses_url = format!("{api}/repos/{owner}/{repo}/statuses/{}", pr.head_sha);
    let (additions, deletions) = pr
        .files
        .iter()
        .map(|(path, contents)| line_changes(base_file(github, pr, path), contents))
        .fold((0, 0), |(a, d), (add, del)| (a + add, d + del));
    let comments = github
        .comments
        .iter()
        .filter(|comment| same_repo(&comment.owner, &comment.repo, owner, repo))
        .filter(|comment| comment.number == *number)
        .count();
    let mut answer = pull_request_core(api, owner, repo, *number, &pr.author, &pr.head_sha);
    let extra = json!({
        "diff_url": format!("{html_url}.diff"),
        "patch_url": format!("{html_url}.patch"),
        "issue_url": issue_url,
        "commits_url": format!("{url}/commits"),
        "review_comments_url": format!("{url}/comments"),
        "review_comment_url": format!("{api}/repos/{owner}/{repo}/pulls/comments{{/number}}"),
        "comments_url": format!("{issue_url}/comments"),
        "statuses_url": statuses_url,
        "body": null,
        "labels": [],
        "milestone": null,
        "active_lock_reason": null,
        "created_at": pr.created_at,
        "updated_at": pr.created_at,
        "closed_at": null,
        "merged_at": null,
        "merge_commit_sha": null,
        "assignee": null,
        "assignees": [],
        "requested_reviewers": [],
        "requested_teams": [],
        "_links": {
            "self": {"href": url},
            "html": {"href": html_url},
            "issue": {"href": issue_url},
            "comments": {"href": format!("{issue_url}/comments")},
            "review_comments": {"href": format!("{url}/comments")},
            "review_comment": {"href": format!("{api}/repos/{owner}/{repo}/pulls/comments{{/number}}")},
            "commits": {"href": format!("{url}/commits")},
            "statuses": {"href": statuses_url},
        },
        "author_association": "CONTRIBUTOR",
        "auto_merge": null,
        "draft": false,
        "merged": false,
        "mergeable": true,
        "rebaseable": true,
        "mergeable_state": "clean",
        "merged_by": null,
        "comments": comments,
        "review_comments": 0,
        "maintainer_can_modify": false,
        "commits": 1,
        "additions": additions,
        "deletions": deletions,
        "changed_files": pr.files.len(),
    });
    if let (Some(answer), Value::Object(extra)) = (answer.as_object_mut(), extra) {
        answer.extend(extra);
    }
    answer
}

/// The pull request fields a webhook carries too.
fn pull_request_core(
    api: &str,
    owner: &str,
    repo: &str,
    number: u64,
    author: &str,
    head_sha: &str,
) -> Value {
    let id = 1_000_000 + number;
    let repository = repository(api, owner, repo);
    json!({
        "url": format!("{api}/repos/{owner}/{repo}/pulls/{number}"),
        "id": id,
        "node_id": format!("PR_sim{id}"),
        "html_url": format!("https://github.com/{owner}/{repo}/pull/{number}"),
        "number": number,
        "state": "open",
        "locked": false,
        "title": pull_request_title(number),
        "user": user(api, author),
        "head": {
            "label": format!("{owner}:{}", head_ref(number)),
            "ref": head_ref(number),
            "sha": head_sha,
            "user": user(api, owner),
            "repo": repository,
        },
        "base": {
            "label": format!("{owner}:main"),
            "ref": "main",
            "sha": base_sha(owner, repo),
            "user": user(api, owner),
            "repo": repository,
        },
    })
}

fn base_file<'a>(github: &'a Github, pr: &PullRequest, path: &str) -> Option<&'a str> {
    github
        .base_files
        .iter()
        .find(|(o, r, p, _)| same_repo(o, r, &pr.owner, &pr.repo) && p == path)
        .map(|(_, _, _, contents)| contents.as_str())
}

/// A changed file as GitHub lists it; the patch replaces the whole old file, a valid if not
/// minimal unified diff.
fn diff_entry(github: &Github, pr: &PullRequest, path: &str, contents: &str) -> Value {
    let PullRequest {
        owner,
        repo,
        head_sha,
        ..
    } = pr;
    let old = base_file(github, pr, path);
    let (additions, deletions) = line_changes(old, contents);
    json!({
        "sha": blob_sha(contents),
        "filename": path,
        "status": if old.is_some() { "modified" } else { "added" },
        "additions": additions,
        "deletions": deletions,
        "changes": additions + deletions,
        "blob_url": format!("https://github.com/{owner}/{repo}/blob/{head_sha}/{path}"),
        "raw_url": format!("https://github.com/{owner}/{repo}/raw/{head_sha}/{path}"),
        "contents_url": format!("{}/repos/{owner}/{repo}/contents/{path}?ref={head_sha}", github.api),
        "patch": patch(old.unwrap_or_default(), contents),
    })
}

fn line_changes(old: Option<&str>, new: &str) -> (usize, usize) {
    (new.lines().count(), old.unwrap_or_default().lines().count())
}

/// A unified diff hunk that removes every line of `old` and adds every line of `new`.
fn patch(old: &str, new: &str) -> String {
    let range = |text: &str| match text.lines().count() {
        0 => "0,0".to_owned(),
        count => format!("1,{count}"),
    };
    let mut patch = format!("@@ -{} +{} @@", range(old), range(new));
    for (sign, text) in [('-', old), ('+', new)] {
        for line in text.lines() {
            patch.push('\n');
            patch.push(sign);
            patch.push_str(line);
        }
        if !text.is_empty() && !text.ends_with('\n') {
            patch.push_str("\n\\ No newline at end of file");
        }
    }
    patch
}

/// Base64 as GitHub's contents API gives it: lines of 60 characters, each ending in `\n`.
fn wrapped_base64(bytes: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut wrapped = String::with_capacity(encoded.len() + encoded.len() / 60 + 1);
    for chunk in encoded.as_bytes().chunks(60) {
        wrapped.push_str(&String::from_utf8_lossy(chunk));
        wrapped.push('\n');
    }
    wrapped
}

/// GitHub treats owner and repository names without regard to case.
fn same_repo(owner: &str, repo: &str, other_owner: &str, other_repo: &str) -> bool {
    owner.eq_ignore_ascii_case(other_owner) && repo.eq_ignore_ascii_case(other_repo)
}

/// The branch of pull request `number`.
fn head_ref(number: u64) -> String {
    format!("change-{number}")
}

fn pull_request_title(number: u64) -> String {
    format!("Infrastructure change #{number}")
}

/// A 40-hex id derived from `seed`: stable, and shaped like a git object id.
fn fake_sha(seed: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(seed.as_bytes())
        .iter()
        .take(20)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The head commit of `owner/repo`'s `main`.
fn base_sha(owner: &str, repo: &str) -> String {
    fake_sha(&format!("main of {owner}/{repo}"))
}

fn blob_sha(contents: &str) -> String {
    fake_sha(&format!("blob {}\0{contents}", contents.len()))
}

/// A unique id for a status, comment or review, as GitHub's are unique across repositories.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1_000_001);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A stable numeric id for `login`, so the same user has the same id everywhere.
fn user_id(login: &str) -> u64 {
    let hash = login.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    10_000_000 + hash % 90_000_000
}

fn avatar_url(login: &str) -> String {
    format!(
        "https://avatars.githubusercontent.com/u/{}?v=4",
        user_id(login)
    )
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A user as GitHub embeds one; a login ending in `[bot]` is a GitHub App's bot.
fn user(api: &str, login: &str) -> Value {
    let id = user_id(login);
    let (kind, html_url) = match login.strip_suffix("[bot]") {
        Some(app) => ("Bot", format!("https://github.com/apps/{app}")),
        None => ("User", format!("https://github.com/{login}")),
    };
    let url = format!("{api}/users/{login}");
    json!({
        "login": login,
        "id": id,
        "node_id": format!("U_sim{id}"),
        "avatar_url": avatar_url(login),
        "gravatar_id": "",
        "url": url,
        "html_url": html_url,
        "followers_url": format!("{url}/followers"),
        "following_url": format!("{url}/following{{/other_user}}"),
        "gists_url": format!("{url}/gists{{/gist_id}}"),
        "starred_url": format!("{url}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{url}/subscriptions"),
        "organizations_url": format!("{url}/orgs"),
        "repos_url": format!("{url}/repos"),
        "events_url": format!("{url}/events{{/privacy}}"),
        "received_events_url": format!("{url}/received_events"),
        "type": kind,
        "user_view_type": "public",
        "site_admin": false,
    })
}

fn repository(api: &str, owner: &str, repo: &str) -> Value {
    let id = user_id(&format!("{owner}/{repo}"));
    let url = format!("{api}/repos/{owner}/{repo}");
    json!({
        "id": id,
        "node_id": format!("R_sim{id}"),
        "name": repo,
        "full_name": format!("{owner}/{repo}"),
        "private": false,
        "owner": user(api, owner),
        "html_url": format!("https://github.com/{owner}/{repo}"),
        "description": null,
        "fork": false,
        "url": url,
        "pulls_url": format!("{url}/pulls{{/number}}"),
        "issues_url": format!("{url}/issues{{/number}}"),
        "statuses_url": format!("{url}/statuses/{{sha}}"),
        "contents_url": format!("{url}/contents/{{+path}}"),
        "clone_url": format!("https://github.com/{owner}/{repo}.git"),
        "default_branch": "main",
        "visibility": "public",
        "archived": false,
        "disabled": false,
    })
}

/// The payload of an `issue_comment` webhook: `login` commented `body` on pull request
/// `pr_number`. The issue's author is given as the repository owner, since only the REST
/// API knows the pull request's real author.
pub fn issue_comment_event(
    owner: &str,
    repo: &str,
    pr_number: u64,
    login: &str,
    body: &str,
) -> Value {
    let api = GITHUB_API;
    let id = next_id();
    let at = now();
    let issue_url = format!("{api}/repos/{owner}/{repo}/issues/{pr_number}");
    let html_url = format!("https://github.com/{owner}/{repo}/pull/{pr_number}");
    json!({
        "action": "created",
        "issue": {
            "url": issue_url,
            "html_url": html_url,
            "comments_url": format!("{issue_url}/comments"),
            "id": 2_000_000 + pr_number,
            "node_id": format!("PR_sim{pr_number}"),
            "number": pr_number,
            "title": pull_request_title(pr_number),
            "user": user(api, owner),
            "labels": [],
            "state": "open",
            "locked": false,
            "assignee": null,
            "assignees": [],
            "comments": 0,
            "created_at": at,
            "updated_at": at,
            "closed_at": null,
            "author_association": "OWNER",
            "body": null,
            "pull_request": {
                "url": format!("{api}/repos/{owner}/{repo}/pulls/{pr_number}"),
                "html_url": html_url,
                "diff_url": format!("{html_url}.diff"),
                "patch_url": format!("{html_url}.patch"),
                "merged_at": null,
            },
        },
        "comment": {
            "url": format!("{api}/repos/{owner}/{repo}/issues/comments/{id}"),
            "html_url": format!("{html_url}#issuecomment-{id}"),
            "issue_url": issue_url,
            "id": id,
            "node_id": format!("IC_sim{id}"),
            "user": user(api, login),
            "created_at": at,
            "updated_at": at,
            "author_association": "MEMBER",
            "body": body,
            "reactions": reactions(&format!("{api}/repos/{owner}/{repo}/issues/comments/{id}/reactions")),
            "performed_via_github_app": null,
        },
        "repository": repository(api, owner, repo),
        "sender": user(api, login),
    })
}

/// The payload of a `pull_request_review` webhook: `login` submitted a review in `state`
/// (`approved`, `changes_requested` or `commented`, lower case as webhooks give it) of
/// pull request `pr_number` at `head_sha`.
pub fn pull_request_review_event(
    owner: &str,
    repo: &str,
    pr_number: u64,
    login: &str,
    state: &str,
    head_sha: &str,
) -> Value {
    let api = GITHUB_API;
    let id = next_id();
    let pull_url = format!("{api}/repos/{owner}/{repo}/pulls/{pr_number}");
    let html_url = format!("https://github.com/{owner}/{repo}/pull/{pr_number}");
    // GitHub requires a body for every review but an approval.
    let body = (state != "approved").then_some("Please take another look.");
    json!({
        "action": "submitted",
        "review": {
            "id": id,
            "node_id": format!("PRR_sim{id}"),
            "user": user(api, login),
            "body": body,
            "commit_id": head_sha,
            "submitted_at": now(),
            "state": state,
            "html_url": format!("{html_url}#pullrequestreview-{id}"),
            "pull_request_url": pull_url,
            "author_association": "MEMBER",
            "_links": {
                "html": {"href": format!("{html_url}#pullrequestreview-{id}")},
                "pull_request": {"href": pull_url},
            },
        },
        "pull_request": pull_request_core(api, owner, repo, pr_number, owner, head_sha),
        "repository": repository(api, owner, repo),
        "sender": user(api, login),
    })
}

/// The `X-Hub-Signature-256` GitHub sends with a webhook: `sha256=` and the lowercase hex
/// HMAC-SHA256 of the raw body, keyed with the webhook's secret.
pub fn sign_webhook(secret: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// POSTs `payload` to `url` as GitHub delivers a webhook of type `event`, signed with
/// `secret`, and returns the status and body of the answer.
pub async fn deliver_webhook(
    url: &str,
    event: &str,
    secret: &[u8],
    payload: &Value,
) -> Result<(u16, String), String> {
    let body = payload.to_string();
    let signature = sign_webhook(secret, body.as_bytes());
    send_webhook(url, event, &signature, body).await
}

/// POSTs `payload` as [`deliver_webhook`] does but with the given `X-Hub-Signature-256`
/// (for forged or stale deliveries).
pub async fn deliver_webhook_with_signature(
    url: &str,
    event: &str,
    signature: &str,
    payload: &Value,
) -> Result<(u16, String), String> {
    send_webhook(url, event, signature, payload.to_string()).await
}

async fn send_webhook(
    url: &str,
    event: &str,
    signature: &str,
    body: String,
) -> Result<(u16, String), String> {
    let request = axum::http::Request::post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, "GitHub-Hookshot/sim")
        .header("x-github-event", event)
        .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
        .header("x-github-hook-id", "1")
        .header("x-hub-signature-256", signature)
        .body(Full::new(Bytes::from(body)))
        .map_err(|error| format!("{url}: {error}"))?;
    crate::http::send(request).await
}
