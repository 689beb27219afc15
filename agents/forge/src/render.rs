//! Rendering a plan against what runs: the exact change (whose digest approvals bind to) and
//! the diff as a reviewer reads it.

use std::fmt::Write as _;

use infracrew_protocol::{
    ChangeAction, ChangeSet, DesiredState, PlanSpec, ResourceChange, ServiceState,
};
use serde_json::Value;

use crate::driver::{Driver, DriverError};

/// Why a plan cannot be rendered against the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("{resource}: nothing runs, so there is nothing to scale; deploy it first")]
    NothingToScale { resource: String },
    #[error("{resource}: no earlier revision is recorded, so there is nothing to roll back to")]
    NoPreviousRevision { resource: String },
    #[error(transparent)]
    Driver(#[from] DriverError),
}

impl RenderError {
    /// The resource the error is about, for a finding.
    pub fn resource(&self) -> &str {
        match self {
            RenderError::NothingToScale { resource }
            | RenderError::NoPreviousRevision { resource } => resource,
            RenderError::Driver(_) => "driver",
        }
    }
}

/// The resource name of a service in an environment.
pub fn resource_name(environment: &str, service: &str) -> String {
    format!("service/{environment}/{service}")
}

/// The environment and service a resource name names.
pub fn parse_resource_name(resource: &str) -> Option<(&str, &str)> {
    let mut parts = resource.strip_prefix("service/")?.splitn(2, '/');
    Some((parts.next()?, parts.next()?))
}

/// Renders every service the plan touches against what `driver` reads as running.
pub async fn render<D: Driver>(plan: &PlanSpec, driver: &D) -> Result<ChangeSet, RenderError> {
    let mut resources = Vec::with_capacity(plan.desired.len());
    for desired in &plan.desired {
        let resource = resource_name(&desired.environment, &desired.service);
        let current = driver
            .current(&desired.environment, &desired.service)
            .await?;
        let after = match &desired.state {
            DesiredState::Running(spec) => Some(ServiceState::from_spec(spec)),
            DesiredState::Scaled { replicas } => match &current {
                Some(running) => Some(ServiceState {
                    replicas: *replicas,
                    ..running.clone()
                }),
                None => return Err(RenderError::NothingToScale { resource }),
            },
            DesiredState::PreviousRevision => {
                match driver
                    .previous(&desired.environment, &desired.service)
                    .await?
                {
                    Some(previous) => Some(previous),
                    None => return Err(RenderError::NoPreviousRevision { resource }),
                }
            }
            DesiredState::Absent => None,
        };
        resources.push(resource_change(resource, current, after));
    }
    Ok(ChangeSet {
        plan_id: plan.plan_id,
        driver: driver.name().to_owned(),
        resources,
    })
}

fn resource_change(
    resource: String,
    before: Option<ServiceState>,
    after: Option<ServiceState>,
) -> ResourceChange {
    let before = before.and_then(|state| serde_json::to_value(state).ok());
    let after = after.and_then(|state| serde_json::to_value(state).ok());
    let (action, changed_fields) = match (&before, &after) {
        (None, None) => (ChangeAction::Unchanged, Vec::new()),
        (None, Some(_)) => (ChangeAction::Create, Vec::new()),
        (Some(_), None) => (ChangeAction::Delete, Vec::new()),
        (Some(old), Some(new)) => {
            let changed = changed_fields(old, new);
            let action = if changed.is_empty() {
                ChangeAction::Unchanged
            } else {
                ChangeAction::Update
            };
            (action, changed)
        }
    };
    ResourceChange {
        resource,
        action,
        before,
        after,
        changed_fields,
    }
}

/// Top-level fields whose values differ, in the order of the new state.
fn changed_fields(before: &Value, after: &Value) -> Vec<String> {
    let (Some(old), Some(new)) = (before.as_object(), after.as_object()) else {
        return vec![String::new()];
    };
    let mut fields: Vec<String> = new
        .iter()
        .filter(|(key, value)| old.get(*key) != Some(value))
        .map(|(key, _)| key.clone())
        .collect();
    fields.extend(old.keys().filter(|key| !new.contains_key(*key)).cloned());
    fields
}

/// The change as a reviewer reads it, like a terraform plan summary.
pub fn diff_text(change: &ChangeSet) -> String {
    let mut text = String::new();
    for resource in &change.resources {
        let (mark, label) = match resource.action {
            ChangeAction::Create => ('+', "create"),
            ChangeAction::Update => ('~', "change"),
            ChangeAction::Delete => ('-', "remove"),
            ChangeAction::Unchanged => ('=', "unchanged"),
        };
        let _ = writeln!(text, "{mark} {} ({label})", resource.resource);
        match (resource.action, &resource.before, &resource.after) {
            (ChangeAction::Create, _, Some(after)) => {
                for (field, value) in after.as_object().into_iter().flatten() {
                    let _ = writeln!(text, "    {field}: {}", show(value));
                }
            }
            (ChangeAction::Update, Some(before), Some(after)) => {
                for field in &resource.changed_fields {
                    let _ = writeln!(
                        text,
                        "    {field}: {} -> {}",
                        show(before.get(field).unwrap_or(&Value::Null)),
                        show(after.get(field).unwrap_or(&Value::Null))
                    );
                }
            }
            (ChangeAction::Delete, Some(before), _) => {
                let replicas = before
                    .get("replicas")
                    .map_or_else(|| "every".to_owned(), show);
                let _ = writeln!(text, "    {replicas} replica(s) stopped and removed");
            }
            _ => {}
        }
    }
    let summary = change.summary();
    let _ = write!(
        text,
        "Plan: {} to create, {} to change, {} to remove, {} unchanged.",
        summary.create, summary.update, summary.delete, summary.unchanged
    );
    text
}

fn show(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "(none)".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Mutex};

    use infracrew_protocol::{Intent, examples};

    use super::*;

    /// Records per `env.service`, newest last.
    #[derive(Default)]
    struct FakeDriver(Mutex<HashMap<String, Vec<ServiceState>>>);

    impl FakeDriver {
        fn running(self, environment: &str, service: &str, states: Vec<ServiceState>) -> Self {
            self.0
                .lock()
                .unwrap()
                .insert(format!("{environment}.{service}"), states);
            self
        }
    }

    impl Driver for FakeDriver {
        fn name(&self) -> &'static str {
            "fake"
        }

        async fn current(
            &self,
            environment: &str,
            service: &str,
        ) -> Result<Option<ServiceState>, DriverError> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .get(&format!("{environment}.{service}"))
                .and_then(|s| s.last().cloned()))
        }

        async fn previous(
            &self,
            environment: &str,
            service: &str,
        ) -> Result<Option<ServiceState>, DriverError> {
            let records = self.0.lock().unwrap();
            let states = records.get(&format!("{environment}.{service}"));
            Ok(states.and_then(|s| s.len().checked_sub(2).map(|i| s[i].clone())))
        }
    }

    fn running_spec(image: &str, replicas: u32) -> ServiceState {
        let DesiredState::Running(spec) = &examples::plan_spec().desired[0].state else {
            unreachable!()
        };
        ServiceState {
            image: image.into(),
            replicas,
            ..ServiceState::from_spec(spec)
        }
    }

    #[tokio::test]
    async fn a_first_deploy_creates_and_an_upgrade_changes_only_the_image() {
        let plan = examples::plan_spec();
        let change = render(&plan, &FakeDriver::default()).await.unwrap();
        assert_eq!(change.resources[0].action, ChangeAction::Create);
        assert!(
            diff_text(&change).starts_with("+ service/staging/social-intel (create)\n"),
            "{}",
            diff_text(&change)
        );
        assert!(
            diff_text(&change)
                .ends_with("Plan: 1 to create, 0 to change, 0 to remove, 0 unchanged.")
        );

        let driver = FakeDriver::default().running(
            "staging",
            "social-intel",
            vec![running_spec("infracrew/social-intel:1.3.2", 2)],
        );
        let change = render(&plan, &driver).await.unwrap();
        assert_eq!(change.resources[0].action, ChangeAction::Update);
        assert_eq!(change.resources[0].changed_fields, ["image"]);
        assert!(
            diff_text(&change).contains(
                "    image: infracrew/social-intel:1.3.2 -> infracrew/social-intel:1.4.0\n"
            ),
            "{}",
            diff_text(&change)
        );
        let same = FakeDriver::default().running(
            "staging",
            "social-intel",
            vec![running_spec("infracrew/social-intel:1.4.0", 2)],
        );
        let change = render(&plan, &same).await.unwrap();
        assert!(change.summary().is_empty(), "nothing to change");
    }

    #[tokio::test]
    async fn scale_rollback_and_decommission_are_relative_to_what_runs() {
        let mut plan = examples::plan_spec();
        plan.intent = Intent::Scale;
        plan.desired[0].state = DesiredState::Scaled { replicas: 4 };
        let error = render(&plan, &FakeDriver::default()).await.unwrap_err();
        assert_eq!(
            error,
            RenderError::NothingToScale {
                resource: "service/staging/social-intel".into()
            }
        );

        let history = vec![
            running_spec("infracrew/social-intel:1.3.2", 2),
            running_spec("infracrew/social-intel:1.4.0", 2),
        ];
        let driver = FakeDriver::default().running("staging", "social-intel", history);
        let change = render(&plan, &driver).await.unwrap();
        assert_eq!(change.resources[0].changed_fields, ["replicas"]);
        assert!(diff_text(&change).contains("    replicas: 2 -> 4\n"));

        plan.desired[0].state = DesiredState::PreviousRevision;
        let change = render(&plan, &driver).await.unwrap();
        assert!(
            diff_text(&change)
                .contains("image: infracrew/social-intel:1.4.0 -> infracrew/social-intel:1.3.2")
        );

        plan.desired[0].state = DesiredState::Absent;
        let change = render(&plan, &driver).await.unwrap();
        assert_eq!(change.resources[0].action, ChangeAction::Delete);
        assert!(diff_text(&change).contains("2 replica(s) stopped and removed"));
        let change = render(&plan, &FakeDriver::default()).await.unwrap();
        assert!(
            change.summary().is_empty(),
            "removing what does not run changes nothing"
        );
    }
}
