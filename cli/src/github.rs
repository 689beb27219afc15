//! `crew submit --from-github OWNER/REPO#PR`: the goal files a pull request changes, read at
//! its head commit and submitted with that source, so the Conductor reports each plan on the
//! pull request and takes approvals from it.

use std::str::FromStr;

use base64::Engine;
use infracrew_protocol::{GoalSource, GoalStatement, MAX_MESSAGE_BYTES, decode};
use octocrab::{Octocrab, models::repos::DiffEntryStatus};

/// A pull request named `OWNER/REPO#NUMBER`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestRef {
    pub owner: String,
    pub repo: String,
    pub number: u64,
}

impl FromStr for PullRequestRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wrong = |what: &str| format!("{text:?} is not OWNER/REPO#NUMBER: {what}");
        let (repository, number) = text
            .split_once('#')
            .ok_or_else(|| wrong("no # before the pull request's number"))?;
        let (owner, repo) = repository
            .split_once('/')
            .filter(|(owner, repo)| !owner.is_empty() && !repo.is_empty() && !repo.contains('/'))
            .ok_or_else(|| wrong("the repository is not OWNER/REPO"))?;
        let number = number
            .parse::<u64>()
            .ok()
            .filter(|number| *number > 0)
            .ok_or_else(|| wrong("the pull request's number is not a positive integer"))?;
        Ok(PullRequestRef {
            owner: owner.to_owned(),
            repo: repo.to_owned(),
            number,
        })
    }
}

impl std::fmt::Display for PullRequestRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}#{}", self.owner, self.repo, self.number)
    }
}

/// Where the goals are read from.
#[derive(Debug, Clone)]
pub struct GoalsFromGithub {
    pub api_url: String,
    pub token: Option<String>,
    pub pull_request: PullRequestRef,
    /// Only `.json` files under this folder are goals.
    pub under: String,
}

/// Reads every goal file the pull request adds or changes under `under`, each checked as
/// `crew submit` checks a file and given the pull request as its source. Nothing is returned
/// unless every one is valid: a pull request's goals go in together or not at all.
pub async fn goals_of(from: &GoalsFromGithub) -> Result<Vec<(String, GoalStatement)>, String> {
    let pull = &from.pull_request;
    let github = |error: octocrab::Error| {
        format!(
            "reading {pull}: {}",
            infracrew_forge::ci_dispatch::github_error_text(&error)
        )
    };
    let mut client = Octocrab::builder()
        .base_uri(from.api_url.as_str())
        .map_err(|error| format!("--github-api-url {} is not a URL: {error}", from.api_url))?;
    if let Some(token) = &from.token {
        client = client.personal_token(token.clone());
    }
    let client = client.build().map_err(github)?;
    let pulls = client.pulls(&pull.owner, &pull.repo);
    let head = pulls.get(pull.number).await.map_err(github)?.head.sha;
    let first = pulls.list_files(pull.number).await.map_err(github)?;
    let files = client.all_pages(first).await.map_err(github)?;
    let paths: Vec<String> = files
        .into_iter()
        .filter(|file| {
            !matches!(file.status, DiffEntryStatus::Removed)
                && file.filename.starts_with(&from.under)
                && file.filename.ends_with(".json")
        })
        .map(|file| file.filename)
        .collect();
    if paths.is_empty() {
        return Err(format!(
            "{pull} adds or changes no goal file (a .json file under {}); nothing was sent",
            from.under
        ));
    }
    let mut goals = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        let at = format!("{pull} {path} at {}", &head[..head.len().min(12)]);
        let content = client
            .repos(&pull.owner, &pull.repo)
            .get_content()
            .path(&path)
            .r#ref(&head)
            .send()
            .await
            .map_err(github)?
            .take_items()
            .into_iter()
            .next()
            .and_then(|item| item.content);
        let Some(content) = content else {
            problems.push(format!("{at}: GitHub gave no content (is it a file?)"));
            continue;
        };
        let compact: Vec<u8> = content
            .bytes()
            .filter(|byte| !byte.is_ascii_whitespace())
            .collect();
        let bytes = match base64::engine::general_purpose::STANDARD.decode(compact) {
            Ok(bytes) => bytes,
            Err(error) => {
                problems.push(format!("{at}: the content is not base64: {error}"));
                continue;
            }
        };
        if bytes.len() > MAX_MESSAGE_BYTES {
            problems.push(format!(
                "{at}: {} bytes, over the {MAX_MESSAGE_BYTES} bytes a message on the bus may have",
                bytes.len()
            ));
            continue;
        }
        match decode::<GoalStatement>(&bytes) {
            Ok(mut goal) => {
                goal.source = Some(GoalSource {
                    repository: format!("{}/{}", pull.owner, pull.repo),
                    commit: head.clone(),
                    pull_request: Some(pull.number),
                    path: Some(path.clone()),
                });
                goals.push((path, goal));
            }
            Err(error) => problems.push(format!("{at}: {error}")),
        }
    }
    if problems.is_empty() {
        Ok(goals)
    } else {
        Err(format!(
            "{} of the pull request's goal files are invalid; nothing was sent:\n  {}",
            problems.len(),
            problems.join("\n  ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_request_names_parse_and_mistakes_are_named() {
        assert_eq!(
            "acme/infra#42".parse(),
            Ok(PullRequestRef {
                owner: "acme".into(),
                repo: "infra".into(),
                number: 42
            })
        );
        for (text, why) in [
            ("acme/infra", "no #"),
            ("acme#42", "not OWNER/REPO"),
            ("acme/infra/x#42", "not OWNER/REPO"),
            ("acme/infra#0", "positive integer"),
            ("acme/infra#x", "positive integer"),
        ] {
            let error = text.parse::<PullRequestRef>().unwrap_err();
            assert!(error.contains(why), "{text}: {error}");
        }
    }
}
