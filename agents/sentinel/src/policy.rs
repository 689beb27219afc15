//! The policy engine: Rego policies from a folder, compiled and evaluated in-process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use infracrew_protocol::Enforcement;
use regorus::{Engine, Value};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Every policy package lives under this prefix; the segment after it is the policy's name.
const PACKAGE_PREFIX: &str = "data.infracrew.policy.";

/// A compiled set of policies loaded from a folder.
///
/// Cloning is cheap: compiled policies are shared, not copied.
#[derive(Debug, Clone)]
pub struct PolicySet {
    version: String,
    rules: Vec<RuleInfo>,
    policies: Vec<Policy>,
}

/// One compiled policy file.
#[derive(Debug, Clone)]
struct Policy {
    name: String,
    file: String,
    /// Already analysed by a first evaluation, so clones skip straight to evaluating.
    engine: Engine,
    violations_path: String,
    enforcement: BTreeMap<String, Enforcement>,
}

/// A rule a policy declares in its `rules` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    /// The policy's name: the last segment of its package, `infracrew.policy.<name>`.
    pub policy: String,
    /// The rule's name, as violations report it.
    pub rule: String,
    /// How hard a violation of this rule blocks a change.
    pub enforcement: Enforcement,
    /// What the rule requires, for people.
    pub description: String,
}

/// One breach of a declared rule by one resource (or by the plan as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The policy that reported it.
    pub policy: String,
    /// The declared rule it breaks.
    pub rule: String,
    /// What breaks it: `service/<env>/<name>` for a resource, `plan/<plan_id>` for the plan.
    pub resource: String,
    /// The rule's declared enforcement level, never one the violation chose itself.
    pub enforcement: Enforcement,
    /// What is wrong, the value found and what is expected.
    pub message: String,
}

/// Why policies could not be loaded or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The folder or one of its files could not be read.
    #[error("cannot read policies from {}: {source}", path.display())]
    Io {
        /// The folder or file that failed.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// There was nothing to load.
    #[error("no *.rego policy found in {location}")]
    NoPolicies {
        /// The folder searched, or a description of the in-memory sources.
        location: String,
    },
    /// Two in-memory sources share a file name, so the version would be ambiguous.
    #[error("policy file {file} is given twice")]
    DuplicateFile {
        /// The repeated file name.
        file: String,
    },
    /// The Rego compiler rejected a file.
    #[error("policy {file} does not compile{}: {reason}", at_line(.line))]
    Compile {
        /// The file that failed.
        file: String,
        /// The 1-based line the compiler points at, when it gives one.
        line: Option<u32>,
        /// The compiler's message.
        reason: String,
    },
    /// A file's package is not `infracrew.policy.<name>`.
    #[error("policy {file} declares package {package}; expected infracrew.policy.<name>")]
    Package {
        /// The file with the wrong package.
        file: String,
        /// The package it declares.
        package: String,
    },
    /// Two files declare the same package, which would merge their rules silently.
    #[error("policy {policy} is declared by both {first} and {second}")]
    DuplicatePolicy {
        /// The policy name both declare.
        policy: String,
        /// The file loaded first.
        first: String,
        /// The file loaded second.
        second: String,
    },
    /// A file lacks one of the two declarations every policy needs.
    #[error(
        "policy {file} declares no `{declaration}`; every policy declares `rules` and `violations`"
    )]
    Missing {
        /// The incomplete file.
        file: String,
        /// `rules` or `violations`.
        declaration: &'static str,
    },
    /// A file's `rules` is not an object of `{"enforcement": ..., "description": ...}` objects.
    #[error("policy {file} has an invalid `rules` declaration: {reason}")]
    InvalidRules {
        /// The file with the bad declaration.
        file: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A declared rule names an enforcement level that does not exist.
    #[error(
        "policy {file} declares rule {rule} with unknown enforcement {level:?}; expected advisory, soft-mandatory or hard-mandatory"
    )]
    UnknownEnforcement {
        /// The file declaring the rule.
        file: String,
        /// The rule.
        rule: String,
        /// The level it names.
        level: String,
    },
    /// The input document could not be handed to the engine.
    #[error("the policy input cannot be evaluated: {reason}")]
    Input {
        /// Why it was refused.
        reason: String,
    },
    /// A policy failed while evaluating an input: a policy bug or an input it does not expect
    /// (regorus fails on a built-in given the wrong type, where OPA would be undefined).
    #[error("policy {file} failed to evaluate{}: {reason}", at_line(.line))]
    Evaluation {
        /// The failing file.
        file: String,
        /// The 1-based line the engine points at, when it gives one.
        line: Option<u32>,
        /// The engine's message.
        reason: String,
    },
    /// A policy reported a violation without a string `rule`, `resource` and `message`.
    #[error("policy {file} reported a malformed violation: {reason}")]
    MalformedViolation {
        /// The reporting file.
        file: String,
        /// What is missing.
        reason: String,
    },
    /// A policy reported a violation of a rule its `rules` does not declare, so it has no level.
    #[error(
        "policy {file} reported a violation of rule {rule}, which package {policy} does not declare in `rules`"
    )]
    UndeclaredRule {
        /// The reporting file.
        file: String,
        /// The policy name.
        policy: String,
        /// The undeclared rule.
        rule: String,
    },
}

/// Renders an optional line for error messages: " at line 7", or nothing.
fn at_line(line: &Option<u32>) -> String {
    line.map(|line| format!(" at line {line}"))
        .unwrap_or_default()
}

/// A rule's entry in a policy's `rules` object.
#[derive(Deserialize)]
struct DeclaredRule {
    enforcement: String,
    description: String,
}

impl PolicySet {
    /// Loads every `*.rego` file directly in `dir` (sorted by name), compiles them, and reads each
    /// package's `rules` declarations. Fails with the file, the line and the compiler's message
    /// when a file does not compile; with the file when a package declares no `rules` or a rule
    /// with an unknown enforcement level; and when the folder holds no policy.
    pub fn load(dir: &Path) -> Result<PolicySet, PolicyError> {
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PolicyError::Io { path, source }
        };
        let mut sources = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
            let path = entry.map_err(io_error(dir))?.path();
            if path.extension().is_some_and(|ext| ext == "rego") && path.is_file() {
                let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
                let name = path
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default();
                sources.push((name, text));
            }
        }
        if sources.is_empty() {
            return Err(PolicyError::NoPolicies {
                location: dir.display().to_string(),
            });
        }
        Self::build(sources, Some(dir))
    }

    /// Loads from in-memory (file name, text) pairs, same checks (used by tests and load()).
    pub fn from_sources(sources: Vec<(String, String)>) -> Result<PolicySet, PolicyError> {
        Self::build(sources, None)
    }

    /// "sha256:<64 hex>" over the sorted file names and contents: which policy set judged a change.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Every declared rule with its policy (package short name), rule name and declared enforcement.
    pub fn rules(&self) -> &[RuleInfo] {
        &self.rules
    }

    /// Evaluates the input document against every policy; returns the violations, each with its
    /// declared enforcement level. A violation naming an undeclared rule is an error (a policy bug).
    ///
    /// Violations come in policy file order, then by resource, rule and message within a policy.
    pub fn evaluate(&self, input: &serde_json::Value) -> Result<Vec<Violation>, PolicyError> {
        let input = Value::deserialize(input).map_err(|err| PolicyError::Input {
            reason: err.to_string(),
        })?;
        let mut violations = Vec::new();
        for policy in &self.policies {
            policy.evaluate(input.clone(), &mut violations)?;
        }
        Ok(violations)
    }

    /// Compiles the sources; `dir` only makes error messages name the file's full path, so the
    /// version stays the same wherever the folder lives.
    fn build(
        mut sources: Vec<(String, String)>,
        dir: Option<&Path>,
    ) -> Result<PolicySet, PolicyError> {
        if sources.is_empty() {
            return Err(PolicyError::NoPolicies {
                location: "the given sources".to_owned(),
            });
        }
        sources.sort();
        if let Some(pair) = sources.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(PolicyError::DuplicateFile {
                file: pair[0].0.clone(),
            });
        }

        let mut hasher = Sha256::new();
        for (name, text) in &sources {
            // Length prefixes keep ("ab", "c") and ("a", "bc") from hashing alike.
            hasher.update((name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            hasher.update((text.len() as u64).to_le_bytes());
            hasher.update(text.as_bytes());
        }
        let version = format!("sha256:{}", infracrew_protocol::hex(&hasher.finalize()));

        let mut policies: Vec<Policy> = Vec::with_capacity(sources.len());
        let mut rules = Vec::new();
        for (name, text) in sources {
            let file = match dir {
                Some(dir) => dir.join(&name).display().to_string(),
                None => name,
            };
            let (policy, declared) = Policy::compile(file, text)?;
            if let Some(first) = policies.iter().find(|p| p.name == policy.name) {
                return Err(PolicyError::DuplicatePolicy {
                    policy: policy.name,
                    first: first.file.clone(),
                    second: policy.file,
                });
            }
            rules.extend(declared);
            policies.push(policy);
        }
        Ok(PolicySet {
            version,
            rules,
            policies,
        })
    }
}

impl Policy {
    /// Compiles one file on its own engine, so an error always names the file it comes from and
    /// no policy can read another's rules.
    fn compile(file: String, text: String) -> Result<(Policy, Vec<RuleInfo>), PolicyError> {
        let mut engine = Engine::new();
        let package = engine
            .add_policy(file.clone(), text)
            .map_err(|err| compile_error(&file, err))?;
        let name = match package.strip_prefix(PACKAGE_PREFIX) {
            Some(name) if !name.is_empty() && !name.contains('.') => name.to_owned(),
            _ => {
                let package = package.strip_prefix("data.").unwrap_or(&package).to_owned();
                return Err(PolicyError::Package { file, package });
            }
        };
        for declaration in ["rules", "violations"] {
            let declared = engine
                .has_declared_rule_rooted_at(&file, declaration)
                .map_err(|err| compile_error(&file, err))?;
            if !declared {
                return Err(PolicyError::Missing { file, declaration });
            }
        }

        // The first evaluation also runs regorus's analysis, which reports errors the parser does
        // not (unsafe variables, conflicting rules), so those surface here with their line.
        let value = engine
            .eval_rule(format!("{package}.rules"))
            .map_err(|err| compile_error(&file, err))?;
        if value == Value::Undefined {
            return Err(PolicyError::Missing {
                file,
                declaration: "rules",
            });
        }
        let invalid = |reason: String| PolicyError::InvalidRules {
            file: file.clone(),
            reason,
        };
        let declared: BTreeMap<String, serde_json::Value> = serde_json::to_value(&value)
            .and_then(serde_json::from_value)
            .map_err(|_| {
                invalid(format!(
                    "expected an object keyed by rule name, found {value}"
                ))
            })?;
        if declared.is_empty() {
            return Err(PolicyError::Missing {
                file,
                declaration: "rules",
            });
        }

        let mut infos = Vec::with_capacity(declared.len());
        for (rule, entry) in declared {
            let Ok(DeclaredRule {
                enforcement,
                description,
            }) = serde_json::from_value(entry.clone())
            else {
                return Err(invalid(format!(
                    "rule {rule} is {entry}, expected {{\"enforcement\": <level>, \"description\": <text>}}"
                )));
            };
            let Ok(level) = serde_json::from_value(serde_json::Value::String(enforcement.clone()))
            else {
                return Err(PolicyError::UnknownEnforcement {
                    file,
                    rule,
                    level: enforcement,
                });
            };
            infos.push(RuleInfo {
                policy: name.clone(),
                rule,
                enforcement: level,
                description,
            });
        }
        let policy = Policy {
            enforcement: infos
                .iter()
                .map(|info| (info.rule.clone(), info.enforcement))
                .collect(),
            name,
            file,
            engine,
            violations_path: format!("{package}.violations"),
        };
        Ok((policy, infos))
    }

    /// Appends this policy's violations of `input` to `out`.
    fn evaluate(&self, input: Value, out: &mut Vec<Violation>) -> Result<(), PolicyError> {
        let mut engine = self.engine.clone();
        engine.set_input(input);
        let found = engine
            .eval_rule(self.violations_path.clone())
            .map_err(|err| {
                let (line, reason) = diagnostic(err);
                PolicyError::Evaluation {
                    file: self.file.clone(),
                    line,
                    reason,
                }
            })?;
        let found = match &found {
            Value::Undefined => return Ok(()),
            Value::Set(found) => found,
            other => {
                return Err(self.malformed(format!("`violations` is {other}, expected a set")));
            }
        };
        let first = out.len();
        for item in found.iter() {
            let field = |key: &str| match &item[key] {
                Value::String(text) => Ok(text.to_string()),
                _ => Err(self.malformed(format!("{item} has no string `{key}`"))),
            };
            let rule = field("rule")?;
            let Some(&enforcement) = self.enforcement.get(&rule) else {
                return Err(PolicyError::UndeclaredRule {
                    file: self.file.clone(),
                    policy: self.name.clone(),
                    rule,
                });
            };
            out.push(Violation {
                policy: self.name.clone(),
                rule,
                resource: field("resource")?,
                enforcement,
                message: field("message")?,
            });
        }
        // regorus orders a set by its members' content, which puts the message first; people
        // read violations by resource.
        out[first..].sort_by(|a, b| {
            (&a.resource, &a.rule, &a.message).cmp(&(&b.resource, &b.rule, &b.message))
        });
        Ok(())
    }

    /// A malformed-violation error for this policy's file.
    fn malformed(&self, reason: String) -> PolicyError {
        PolicyError::MalformedViolation {
            file: self.file.clone(),
            reason,
        }
    }
}

/// A compiler failure in `file`, at the line regorus points at.
fn compile_error(file: &str, err: impl std::fmt::Display) -> PolicyError {
    let (line, reason) = diagnostic(err);
    PolicyError::Compile {
        file: file.to_owned(),
        line,
        reason,
    }
}

/// Splits a regorus diagnostic (`--> file:line:col`, a source excerpt, then `error: reason`) into
/// the line and the reason alone.
fn diagnostic(err: impl std::fmt::Display) -> (Option<u32>, String) {
    let text = format!("{err:#}");
    let line = text.split_once("--> ").and_then(|(_, rest)| {
        let location = rest.lines().next()?;
        let mut parts = location.rsplitn(3, ':');
        let _column = parts.next()?;
        parts.next()?.parse().ok()
    });
    let reason = match text.rfind("\nerror: ") {
        Some(at) => text[at + "\nerror: ".len()..].trim().to_owned(),
        None => text.trim().to_owned(),
    };
    (line, reason)
}
