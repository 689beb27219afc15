//! The service catalog and the playbooks in `playbooks/`: their types, and a loader that
//! checks each file against a schema generated from those types and against the others.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use infracrew_protocol::{
    DocumentSchema, FieldError, HealthPaths, Intent, PlanStep, Resources, Strategy,
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
    /// Services may also each have a file of their own, `services/<name>.toml`.
    #[serde(default)]
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

/// The folder beside `catalog.toml` where a service may have a file of its own.
pub const SERVICES_DIR: &str = "services";

impl Playbooks {
    /// Loads `catalog.toml` with the services in `services/*.toml`, and `<intent>.toml` for
    /// each intent, from `dir`.
    pub fn load(dir: &Path) -> Result<Self, LoadErrors> {
        let mut errors = Vec::new();
        let catalog_file = dir.join("catalog.toml");
        let catalog =
            read_checked::<Catalog>(&catalog_file, &DocumentSchema::of::<Catalog>(), &mut errors);
        let service_files = read_service_files(&dir.join(SERVICES_DIR), &mut errors);
        let playbook_schema = DocumentSchema::of::<Playbook>();
        let mut playbooks = BTreeMap::new();
        for intent in INTENTS {
            let name = intent_name(intent);
            let file = dir.join(format!("{name}.toml"));
            if let Some(playbook) = read_checked::<Playbook>(&file, &playbook_schema, &mut errors) {
                check_playbook(&file, name, intent, &playbook, &mut errors);
                playbooks.insert(name, playbook);
            }
        }
        let catalog = catalog.map(|catalog| {
            let catalog = with_service_files(&catalog_file, catalog, service_files, &mut errors);
            check_catalog(&catalog_file, &catalog, &mut errors);
            catalog.catalog
        });
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
    read_checked(file, &DocumentSchema::of::<T>(), &mut errors).ok_or(LoadErrors(errors))
}

/// Reads a TOML file, checks it against `schema`, `T`'s (every violation), then decodes it.
fn read_checked<T: DeserializeOwned>(
    file: &Path,
    schema: &DocumentSchema,
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
    let violations: Vec<FieldError> = schema.check(&document);
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

/// A service's own file, `services/<name>.toml`, read and checked.
struct ServiceFile {
    name: String,
    file: PathBuf,
    service: CatalogService,
}

/// Reads every `*.toml` in `dir` (none if there is no such folder), in name order: each a
/// service named by its file. A large catalog costs less this way: parsing TOML takes about
/// 36 times the file's size while it runs, so one file per service keeps that to a few KB.
fn read_service_files(dir: &Path, errors: &mut Vec<LoadError>) -> Vec<ServiceFile> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(reason) => {
            errors.push(LoadError {
                file: dir.to_owned(),
                path: String::new(),
                reason: format!("cannot read the folder: {reason}"),
            });
            return Vec::new();
        }
    };
    // Hidden files (an editor's lock or swap file, say) are no services.
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| !name.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    let schema = DocumentSchema::of::<CatalogService>();
    files
        .into_iter()
        .filter_map(|file| {
            let Some(name) = file
                .file_stem()
                .and_then(|stem| stem.to_str())
                .filter(|name| is_service_name(name))
            else {
                errors.push(LoadError {
                    file: file.clone(),
                    path: String::new(),
                    reason: "the file's name is the service's, which a goal names: a lowercase \
                             letter, then up to 62 lowercase letters, digits or '-'"
                        .to_owned(),
                });
                return None;
            };
            let name = name.to_owned();
            let service = read_checked::<CatalogService>(&file, &schema, errors)?;
            Some(ServiceFile {
                name,
                file,
                service,
            })
        })
        .collect()
}

/// A name a goal can give as its service (GoalStatement's `service`), and so a lock's key
/// part with no dot in it.
fn is_service_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|first| first.is_ascii_lowercase())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The catalog with its services' own files added, and those services' files, for the errors
/// found later (any other service is in `catalog.toml`).
struct LocatedCatalog {
    catalog: Catalog,
    service_files: BTreeMap<String, PathBuf>,
}

fn with_service_files(
    catalog_file: &Path,
    mut catalog: Catalog,
    service_files: Vec<ServiceFile>,
    errors: &mut Vec<LoadError>,
) -> LocatedCatalog {
    let mut files = BTreeMap::new();
    for ServiceFile {
        name,
        file,
        service,
    } in service_files
    {
        if catalog.services.contains_key(&name) {
            errors.push(LoadError {
                file,
                path: String::new(),
                reason: format!(
                    "{name} is in {} as well; define it in one place",
                    catalog_file.display()
                ),
            });
            continue;
        }
        files.insert(name.clone(), file);
        catalog.services.insert(name, service);
    }
    LocatedCatalog {
        catalog,
        service_files: files,
    }
}

fn check_catalog(catalog_file: &Path, located: &LocatedCatalog, errors: &mut Vec<LoadError>) {
    let catalog = &located.catalog;
    if catalog.services.is_empty() {
        errors.push(LoadError {
            file: catalog_file.to_owned(),
            path: "/services".into(),
            reason: format!("the catalog names no service, here or in {SERVICES_DIR}/*.toml"),
        });
    }
    for (name, service) in &catalog.services {
        let (file, entry) = match located.service_files.get(name) {
            Some(file) => (file.as_path(), String::new()),
            None => (catalog_file, format!("/services/{name}")),
        };
        let mut error = |path: String, reason: String| {
            errors.push(LoadError {
                file: file.to_owned(),
                path: format!("{entry}{path}"),
                reason,
            })
        };
        for environment in &catalog.environments {
            if !service.environments.contains_key(environment) {
                error(
                    "/environments".into(),
                    format!("no defaults for environment {environment}"),
                );
            }
        }
        for environment in service.environments.keys() {
            if !catalog.environments.contains(environment) {
                error(
                    format!("/environments/{environment}"),
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

    /// The repository's playbooks in a temporary folder.
    fn repository_copy() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(repository_playbooks()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "toml") && !path.ends_with("Cargo.toml") {
                std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
            }
        }
        dir
    }

    /// The repository's playbooks in a temporary folder, with `file` replaced by `text`.
    fn copy_with(file: &str, text: &str) -> (tempfile::TempDir, LoadErrors) {
        let dir = repository_copy();
        std::fs::write(dir.path().join(file), text).unwrap();
        let errors = Playbooks::load(dir.path()).unwrap_err();
        (dir, errors)
    }

    #[test]
    fn services_in_files_of_their_own_join_the_catalog_and_a_problem_names_the_file() {
        let dir = repository_copy();
        let services = dir.path().join(SERVICES_DIR);
        std::fs::create_dir(&services).unwrap();
        let hermes = "image = \"infracrew/hermes\"\nport = 9100\nhealth = { live = \"/live\", ready = \"/ready\" }\nresources = { cpu_request_millis = 10, cpu_limit_millis = 20, memory_request_mib = 16, memory_limit_mib = 32 }\nenvironments.dev = { replicas = 1 }\nenvironments.staging = { replicas = 1 }\nenvironments.prod = { replicas = 2 }\n";
        std::fs::write(services.join("hermes.toml"), hermes).unwrap();
        std::fs::write(services.join("README.md"), "not a service").unwrap();
        std::fs::write(services.join(".#hermes.toml"), "an editor's lock file").unwrap();
        let loaded = Playbooks::load(dir.path()).unwrap();
        assert_eq!(loaded.catalog.services.len(), 6);
        assert_eq!(loaded.catalog.services["hermes"].port, 9100);
        assert_eq!(
            loaded.catalog.services["hermes"].environments["prod"].replicas,
            2
        );

        let typo = hermes.replace("port = 9100", "prot = 9100");
        std::fs::write(services.join("hermes.toml"), typo).unwrap();
        let no_prod = hermes.replace("environments.prod = { replicas = 2 }\n", "");
        std::fs::write(services.join("iris.toml"), no_prod).unwrap();
        std::fs::write(services.join("social-intel.toml"), hermes).unwrap();
        std::fs::write(services.join("Hermes.v2.toml"), hermes).unwrap();
        let errors = Playbooks::load(dir.path()).unwrap_err().to_string();
        for expected in [
            "Hermes.v2.toml: the file's name is the service's",
            "hermes.toml: at /prot: unknown field",
            "iris.toml: at /environments: no defaults for environment prod",
            "social-intel.toml: social-intel is in ",
        ] {
            assert!(errors.contains(expected), "{expected:?} in {errors}");
        }
        assert!(
            errors.contains("catalog.toml as well; define it in one place"),
            "{errors}"
        );
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
