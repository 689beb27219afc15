//! Who may publish and subscribe where on the crew's NATS server: one user per agent and one
//! for the CLI. This table is the source of `deploy/nats/users.conf` (a test keeps the two
//! equal) and of the server configuration `crew up` writes.

use infracrew_protocol::{AgentRole, subjects};

use crate::buckets;

/// JetStream plumbing every agent uses: provisioning what is missing (never deleting or
/// purging a stream or consumer, and changing one only to move an older store's new plans to
/// their own consumer), its consumers, reads, acks and flow control.
const AGENT_JETSTREAM: [&str; 15] = [
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.>",
    "$JS.API.STREAM.NAMES",
    "$JS.API.STREAM.LIST",
    "$JS.API.STREAM.CREATE.>",
    "$JS.API.STREAM.MSG.GET.>",
    "$JS.API.DIRECT.GET.>",
    "$JS.API.CONSUMER.CREATE.>",
    "$JS.API.CONSUMER.DURABLE.CREATE.>",
    "$JS.API.CONSUMER.INFO.>",
    "$JS.API.CONSUMER.NAMES.>",
    "$JS.API.CONSUMER.LIST.>",
    "$JS.API.CONSUMER.MSG.NEXT.>",
    "$JS.ACK.>",
    "$JS.FC.>",
];

/// What the CLI needs to read the crew: stream and consumer information, direct reads, and
/// the short-lived consumers `crew watch` and `crew status` make.
const READER_JETSTREAM: [&str; 10] = [
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.>",
    "$JS.API.STREAM.NAMES",
    "$JS.API.STREAM.LIST",
    "$JS.API.STREAM.MSG.GET.>",
    "$JS.API.DIRECT.GET.>",
    "$JS.API.CONSUMER.CREATE.>",
    "$JS.API.CONSUMER.INFO.>",
    "$JS.API.CONSUMER.MSG.NEXT.>",
    "$JS.FC.>",
];

/// One NATS user and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrewUser {
    pub name: &'static str,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// May answer requests sent to it (the Conductor's decision service).
    pub allow_responses: bool,
}

impl CrewUser {
    /// The variable its password is read from: `INFRACREW_<NAME>_PASSWORD`.
    pub fn password_variable(&self) -> String {
        format!("INFRACREW_{}_PASSWORD", self.name.to_uppercase())
    }
}

fn kv(bucket: &str) -> String {
    format!("$KV.{bucket}.>")
}

/// The crew's users, the agents in role order and then `cli`.
pub fn crew_users() -> Vec<CrewUser> {
    let agent = |role: AgentRole, own: &[String], subscribe: &[&str]| CrewUser {
        name: role.as_str(),
        publish: AGENT_JETSTREAM
            .iter()
            .map(|s| s.to_string())
            .chain(own.iter().cloned())
            .chain([subjects::heartbeat(role), subjects::DEAD_LETTERS.to_owned()])
            .collect(),
        subscribe: ["_INBOX.>"]
            .iter()
            .chain(subscribe)
            .map(|s| s.to_string())
            .collect(),
        allow_responses: role == AgentRole::Conductor,
    };
    let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        agent(
            AgentRole::Atlas,
            &owned(&[subjects::PLAN_PENDING, subjects::GOAL_REJECTED]),
            &[],
        ),
        agent(
            AgentRole::Forge,
            &[
                subjects::VALIDATE_PENDING.to_owned(),
                subjects::BUILD_STATUS.to_owned(),
                subjects::OPS_EVENT.to_owned(),
                subjects::OPS_STEP.to_owned(),
                kv(buckets::BUILDS),
                kv(buckets::DRY_RUN),
            ],
            &[],
        ),
        agent(
            AgentRole::Sentinel,
            &owned(&[subjects::VALIDATE_RESULT]),
            &[],
        ),
        agent(
            AgentRole::Conductor,
            &[
                subjects::PLAN_STATE.to_owned(),
                subjects::PLAN_ROUTED.to_owned(),
                subjects::APPROVAL_DECIDED.to_owned(),
                subjects::APPLY_REQUEST.to_owned(),
                kv(buckets::PLANS),
                kv(buckets::LOCKS),
                kv(buckets::REVIEWS),
                kv(buckets::REQUESTS_SEEN),
            ],
            &[subjects::APPROVAL_REQUEST],
        ),
        CrewUser {
            name: "cli",
            publish: READER_JETSTREAM
                .iter()
                .map(|s| s.to_string())
                .chain([
                    subjects::GOAL_SUBMITTED.to_owned(),
                    subjects::APPROVAL_REQUEST.to_owned(),
                ])
                .collect(),
            subscribe: vec!["_INBOX.>".to_owned(), "crew.>".to_owned()],
            allow_responses: false,
        },
    ]
}

fn quoted(list: &[String]) -> String {
    list.iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `authorization` block for nats-server, passwords taken from variables (defined in the
/// including file, or in the server's environment).
pub fn users_conf() -> String {
    let mut text = String::from(
        "# The crew's NATS users, generated from bus/src/permissions.rs by `crew nats-users`\n\
         # (a test checks they are equal): one user per agent and one for the CLI, each allowed\n\
         # to publish and subscribe only where its role needs. Passwords come from the variables\n\
         # named below, set in the including file or in nats-server's environment.\n\
         \nauthorization {\n  users: [\n",
    );
    for user in crew_users() {
        text.push_str(&format!(
            "    {{\n      user: \"{}\"\n      password: ${}\n      permissions: {{\n        publish: {{ allow: [{}] }}\n        subscribe: {{ allow: [{}] }}\n",
            user.name,
            user.password_variable(),
            quoted(&user.publish),
            quoted(&user.subscribe),
        ));
        if user.allow_responses {
            text.push_str("        allow_responses: true\n");
        }
        text.push_str("      }\n    }\n");
    }
    text.push_str("  ]\n}\n");
    text
}

/// A server configuration with the users and their passwords in one file, as `crew up` and
/// the tests run nats-server: `passwords` by user name.
pub fn users_conf_with_passwords(passwords: &dyn Fn(&CrewUser) -> String) -> String {
    let mut text = String::new();
    for user in crew_users() {
        text.push_str(&format!(
            "{}: \"{}\"\n",
            user.password_variable(),
            passwords(&user)
        ));
    }
    text + &users_conf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repositorys_users_conf_is_this_table() {
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/users.conf");
        let committed = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            committed == users_conf(),
            "{} differs from bus/src/permissions.rs: run `make nats-users` and commit it",
            file.display()
        );
    }

    #[test]
    fn only_the_conductor_may_publish_apply_requests_and_only_forge_ops_events_and_builds() {
        let users = crew_users();
        let may_publish = |subject: &str| -> Vec<&str> {
            users
                .iter()
                .filter(|user| user.publish.iter().any(|s| s == subject))
                .map(|user| user.name)
                .collect()
        };
        assert_eq!(may_publish(subjects::APPLY_REQUEST), ["conductor"]);
        assert_eq!(may_publish(subjects::OPS_EVENT), ["forge"]);
        assert_eq!(may_publish(subjects::OPS_STEP), ["forge"]);
        assert_eq!(may_publish(subjects::BUILD_STATUS), ["forge"]);
        assert_eq!(may_publish(subjects::GOAL_SUBMITTED), ["cli"]);
        assert!(users.iter().all(|user| {
            !user.publish.iter().any(|s| {
                s.contains("DELETE") || s.contains("PURGE") || s == ">" || s == "$JS.API.>"
            })
        }));
    }
}
