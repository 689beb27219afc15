//! A GitHub REST API simulator for tests, speaking GitHub's wire format: the endpoints the
//! crew uses (commit statuses, issue comments, pull requests, their files and contents) with
//! token checks, real-shaped answers that octocrab deserializes, and failures on demand
//! (HTTP 5xx, a primary rate limit with its headers). Beside it, the signing and payloads of
//! the webhooks GitHub sends, so tests deliver `issue_comment` and `pull_request_review`
//! events exactly as GitHub does.

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

#[derive(Debug, Default)]
struct Github {
    token: String,
    /// The simulator's own address: the API URLs in its answers lead back to it.
    api: String,
    failures: VecDeque<Failure>,
    requests: Vec<(String, String)>,
    statuses: Vec<Status>,
    comments: Vec<Comment>,
    pulls: Vec<PullRequest>,
    trees: Vec<Tree>,
    /// The default branch's files, by (owner, repo, path).
    base_files: Vec<(String, String, String, String)>,
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

/// One page of `items` as GitHub pages a list: `per_page` (30 unless asked, at most 100),
/// `page` from 1, and a `Link` header to the neighbours.
fn paginated(items: Vec<Value>, query: &HashMap<String, String>, url: &str) -> Response {
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
    let link =
        |page: usize, rel: &str| format!("<{url}?per_page={per_page}&page={page}>; rel=\"{rel}\"");
    let mut links = Vec::new();
    if page < last {
        links.push(link(page + 1, "next"));
        links.push(link(last, "last"));
    }
    if page > 1 {
        links.push(link(1, "first"));
        links.push(link(page.min(last + 1) - 1, "prev"));
    }
    let items: Vec<Value> = items
        .into_iter()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .collect();
    let mut response = Json(Value::Array(items)).into_response();
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
