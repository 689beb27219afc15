//! The service catalog and the playbooks in `playbooks/`: their types, and a loader that
//! checks each file against a schema generated from those types and against the others.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use infracrew_protocol::{
    FieldError, HealthPaths, Intent, PlanStep, Resources, Strategy, check_document,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The services the crew deploys, and the environments it deploys to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// Every environment a goal may name, for example dev, staging, prod.
    #[schemars(length(min = 1))]
    pub environments: Vec<String>,
    pub services: BTreeMap<String, CatalogService>,
}

/// One deployable service and its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogService {
    #[serde(default)]
    pub description: String,
    /// Image repository without a tag; a goal's version is added to it.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9._/-]*(:[0-9]+)?[a-z0-9._/-]*$"))]
    pub image: String,
    /// The port the service listens on, published as the same port.
    #[schemars(range(min = 1))]
    pub port: u16,
    pub health: HealthPaths,
    /// Requests and limits unless an environment sets its own.
    pub resources: Resources,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Defaults per environment; every catalog environment must have an entry.
    pub environments: BTreeMap<String, EnvironmentDefaults>,
}

/// A service's defaults in one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentDefaults {
    #[schemars(range(min = 1, max = 100))]
    pub replicas: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// The goal fields a playbook may take.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Parameter {
    Version,
    Replicas,
    Strategy,
    Env,
}

impl Parameter {
    pub fn as_str(self) -> &'static str {
        match self {
            Parameter::Version => "version",
            Parameter::Replicas => "replicas",
            Parameter::Strategy => "strategy",
            Parameter::Env => "env",
        }
    }
}

impl fmt::Display for Parameter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The ordered steps for one intent, and what a goal may set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    /// Must match the file name.
    pub name: String,
    /// Recorded on every plan made from it.
    #[schemars(length(min = 1))]
    pub version: String,
    pub intent: Intent,
    #[serde(default)]
    pub description: String,
    /// Goal fields this playbook takes; a goal setting any other is refused.
    pub parameters: Vec<Parameter>,
    /// Goal fields it needs.
    #[serde(default)]
    pub required: Vec<Parameter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_strategy: Option<Strategy>,
    #[schemars(length(min = 1))]
    pub steps: Vec<PlanStep>,
}

/// Everything Atlas plans from: the catalog and one playbook per intent.
#[derive(Debug, Clone, PartialEq)]
pub struct Playbooks {
    pub catalog: Catalog,
    pub playbooks: BTreeMap<IntentKey, Playbook>,
    pub dir: PathBuf,
}

/// An intent as a map key (ordered by name).
pub type IntentKey = &'static str;

/// The name of an intent, as goal files and playbook files spell it.
pub fn intent_name(intent: Intent) -> &'static str {
    match intent {
        Intent::Deploy => "deploy",
        Intent::Scale => "scale",
        Intent::Rollback => "rollback",
        Intent::Decommission => "decommission",
    }
}

const INTENTS: [Intent; 4] = [
    Intent::Deploy,
    Intent::Scale,
    Intent::Rollback,
    Intent::Decommission,
];

/// A file that could not be used: which file, where in it, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    pub file: PathBuf,
    /// JSON pointer into the file's content (`""` for the whole file).
    pub path: String,
    pub reason: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(
                f,
                "{}: at {}: {}",
                self.file.display(),
                self.path,
                self.reason
            )
        }
    }
}

/// Every problem found while loading, so one run shows them all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} found:\n{}", plural(.0.len()), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
pub struct LoadErrors(pub Vec<LoadError>);

fn plural(count: usize) -> String {
    if count == 1 {
        "1 problem".to_owned()
    } else {
        format!("{count} problems")
    }
}

impl Playbooks {
    /// Loads `catalog.toml` and `<intent>.toml` for each intent from `dir`.
    pub fn load(dir: &Path) -> Result<Self, LoadErrors> {
        let mut errors = Vec::new();
        let catalog = read_checked::<Catalog>(&dir.join("catalog.toml"), &mut errors);
        let mut playbooks = BTreeMap::new();
        for intent in INTENTS {
            let name = intent_name(intent);
            let file = dir.join(format!("{name}.toml"));
            if let Some(playbook) = read_checked::<Playbook>(&file, &mut errors) {
                check_playbook(&file, name, intent, &playbook, &mut errors);
                playbooks.insert(name, playbook);
            }
        }
        if let Some(catalog) = &catalog {
            check_catalog(&dir.join("catalog.toml"), catalog, &mut errors);
        }
        match catalog {
            Some(catalog) if errors.is_empty() => Ok(Playbooks {
                catalog,
                playbooks,
                dir: dir.to_owned(),
            }),
            _ => Err(LoadErrors(errors)),
        }
    }

    /// The playbook for an intent.
    pub fn for_intent(&self, intent: Intent) -> Option<&Playbook> {
        self.playbooks.get(intent_name(intent))
    }
}

/// Reads one TOML file checked against `T`'s schema, with every problem named.
pub fn load_toml<T: JsonSchema + DeserializeOwned>(file: &Path) -> Result<T, LoadErrors> {
    let mut errors = Vec::new();
    read_checked(file, &mut errors).ok_or(LoadErrors(errors))
}

/// Reads a TOML file, checks it against `T`'s schema (every violation), then decodes it.
fn read_checked<T: JsonSchema + DeserializeOwned>(
    file: &Path,
    errors: &mut Vec<LoadError>,
) -> Option<T> {
    let error = |path: String, reason: String| LoadError {
        file: file.to_owned(),
        path,
        reason,
    };
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(reason) => {
            errors.push(error(String::new(), format!("cannot read it: {reason}")));
            return None;
        }
    };
    let document: serde_json::Value = match toml::from_str(&text) {
        Ok(document) => document,
        Err(reason) => {
            errors.push(error(
                String::new(),
                format!("not valid TOML: {}", reason.to_string().trim()),
            ));
            return None;
        }
    };
    let violations: Vec<FieldError> = check_document::<T>(&document);
    if !violations.is_empty() {
        errors.extend(violations.into_iter().map(|v| error(v.path, v.message)));
        return None;
    }
    match serde_json::from_value(document) {
        Ok(value) => Some(value),
        Err(reason) => {
            errors.push(error(String::new(), reason.to_string()));
            None
        }
    }
}

fn check_catalog(file: &Path, catalog: &Catalog, errors: &mut Vec<LoadError>) {
    let mut error = |path: String, reason: String| {
        errors.push(LoadError {
            file: file.to_owned(),
            path,
            reason,
        })
    };
    if catalog.services.is_empty() {
        error("/services".into(), "the catalog names no service".into());
    }
    for (name, service) in &catalog.services {
        for environment in &catalog.environments {
            if !service.environments.contains_key(environment) {
                error(
                    format!("/services/{name}/environments"),
                    format!("no defaults for environment {environment}"),
                );
            }
        }
        for environment in service.environments.keys() {
            if !catalog.environments.contains(environment) {
                error(
                    format!("/services/{name}/environments/{environment}"),
                    format!(
                        "{environment} is not a catalog environment (they are: {})",
                        catalog.environments.join(", ")
                    ),
                );
            }
        }
    }
}

fn check_playbook(
    file: &Path,
    name: &str,
    intent: Intent,
    playbook: &Playbook,
    errors: &mut Vec<LoadError>,
) {
    let mut error = |path: &str, reason: String| {
        errors.push(LoadError {
            file: file.to_owned(),
            path: path.to_owned(),
            reason,
        })
    };
    if playbook.name != name {
        error(
            "/name",
            format!("is {:?}, but the file is {name}.toml", playbook.name),
        );
    }
    if playbook.intent != intent {
        error(
            "/intent",
            format!("{name}.toml must be the playbook for the {name} intent"),
        );
    }
    for required in &playbook.required {
        if !playbook.parameters.contains(required) {
            error(
                "/required",
                format!("{required} is required but not among the parameters"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repository_playbooks() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn the_repository_catalog_and_playbooks_load() {
        let loaded = Playbooks::load(&repository_playbooks()).unwrap();
        let services: Vec<&str> = loaded.catalog.services.keys().map(String::as_str).collect();
        assert_eq!(
            services,
            [
                "alfred-bot",
                "financial-tax",
                "legal-compliance",
                "mission-control",
                "social-intel"
            ]
        );
        assert_eq!(loaded.catalog.services["social-intel"].port, 9000);
        assert_eq!(loaded.catalog.services["alfred-bot"].port, 8011);
        assert_eq!(loaded.playbooks.len(), 4);
        assert_eq!(
            loaded.for_intent(Intent::Deploy).unwrap().required,
            [Parameter::Version]
        );
    }

    /// The repository's playbooks in a temporary folder, with `file` replaced by `text`.
    fn copy_with(file: &str, text: &str) -> (tempfile::TempDir, LoadErrors) {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(repository_playbooks()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "toml") && !path.ends_with("Cargo.toml") {
                std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
            }
        }
        std::fs::write(dir.path().join(file), text).unwrap();
        let errors = Playbooks::load(dir.path()).unwrap_err();
        (dir, errors)
    }

    #[test]
    fn a_broken_catalog_names_the_file_the_path_and_the_reason() {
        let original =
            std::fs::read_to_string(repository_playbooks().join("catalog.toml")).unwrap();
        let typo = original.replacen("port = 9000", "prot = 9000", 1);
        let (_dir, errors) = copy_with("catalog.toml", &typo);
        let text = errors.to_string();
        assert!(
            text.contains("catalog.toml: at /services/social-intel/prot: unknown field"),
            "{text}"
        );
        assert!(
            text.contains("at /services/social-intel/port: missing required field"),
            "{text}"
        );

        let (_dir, errors) = copy_with("catalog.toml", "environments = [\"dev\"\nservices = 3");
        assert!(
            errors.to_string().contains("catalog.toml: not valid TOML"),
            "{errors}"
        );

        let no_prod = original.replacen(
            "environments.prod = { replicas = 2 }\n\n[services.financial-tax]",
            "\n[services.financial-tax]",
            1,
        );
        let (_dir, errors) = copy_with("catalog.toml", &no_prod);
        assert!(
            errors.to_string().contains(
                "at /services/legal-compliance/environments: no defaults for environment prod"
            ),
            "{errors}"
        );
    }

    #[test]
    fn a_broken_playbook_names_the_file_and_every_problem() {
        let broken = "name = \"scaling\"\nversion = \"1\"\nintent = \"scale\"\nparameters = [\"replicas\"]\nrequired = [\"version\"]\n[[steps]]\naction = \"teleport\"\ndescription = \"x\"\n";
        let (_dir, errors) = copy_with("scale.toml", broken);
        let text = errors.to_string();
        assert!(
            text.contains("scale.toml: at /steps/0/action: \"teleport\" is not one of"),
            "{text}"
        );

        let misnamed = broken.replace("teleport", "apply");
        let (_dir, errors) = copy_with("scale.toml", &misnamed);
        let text = errors.to_string();
        assert!(
            text.contains("scale.toml: at /name: is \"scaling\", but the file is scale.toml"),
            "{text}"
        );
        assert!(
            text.contains("at /required: version is required but not among the parameters"),
            "{text}"
        );
    }
}
