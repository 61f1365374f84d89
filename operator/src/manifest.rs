//! Reading manifests from YAML files: ProviderIntegrations to compile and
//! (for `sluice local`) Secrets. Errors name the file, the document and the
//! field path, and a document with several problems reports them all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::field_error::FieldError;
use crate::resource::{ProviderIntegration, SecretKeyRef};

pub const API_VERSION: &str = "sluice.dev/v1alpha1";
const GROUP: &str = "sluice.dev/";
const KINDS: [&str; 1] = ["ProviderIntegration"];

/// A `kind: Secret` document's keys and values (decoded). Values stay here;
/// they are never printed.
#[derive(Clone, Default)]
pub struct InlineSecret {
    pub data: BTreeMap<String, Vec<u8>>,
}

#[derive(Default)]
pub struct Manifests {
    pub integrations: Vec<(String, ProviderIntegration)>,
    pub secrets: BTreeMap<String, InlineSecret>,
    /// `kind: ConfigMap` documents' data by name, for contracts' `schemaFrom`.
    pub config_maps: crate::compile::ConfigMapData,
    /// Documents of other kinds, skipped (e.g. the app's Deployment).
    pub skipped: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    File { file: PathBuf, message: String },
    #[error("{file}: document {doc}: not YAML: {message}")]
    Yaml {
        file: PathBuf,
        doc: usize,
        message: String,
    },
    #[error("{location}: {path}: {message}")]
    Field {
        location: String,
        path: String,
        message: String,
    },
}

fn kind_of(value: &Value) -> (Option<&str>, Option<&str>) {
    (
        value.get("apiVersion").and_then(Value::as_str),
        value.get("kind").and_then(Value::as_str),
    )
}

impl Manifests {
    pub fn load(files: &[PathBuf]) -> Result<Self, Vec<ManifestError>> {
        let mut manifests = Manifests::default();
        let mut errors = Vec::new();
        for file in files {
            match std::fs::read_to_string(file) {
                Ok(text) => manifests.add(file, &text, &mut errors),
                Err(source) => errors.push(ManifestError::Read {
                    file: file.clone(),
                    source,
                }),
            }
        }
        if errors.is_empty() {
            Ok(manifests)
        } else {
            Err(errors)
        }
    }

    pub fn add(&mut self, file: &Path, text: &str, errors: &mut Vec<ManifestError>) {
        let mut documents = 0;
        for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let doc = index + 1;
            let value = match Value::deserialize(document) {
                Ok(Value::Null) => continue,
                Ok(value) => {
                    documents += 1;
                    value
                }
                Err(e) => {
                    errors.push(ManifestError::Yaml {
                        file: file.to_owned(),
                        doc,
                        message: e.to_string(),
                    });
                    // A syntax error ends the stream: later documents cannot be trusted.
                    return;
                }
            };
            let name = value
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("<unnamed>")
                .to_owned();
            let location =
                |kind: &str| format!("{} (document {doc}, {kind} {name})", file.display());
            match kind_of(&value) {
                (Some(API_VERSION), Some("ProviderIntegration")) => {
                    let location = location("ProviderIntegration");
                    match integration(&value) {
                        Ok(pi) => self.integrations.push((location, pi)),
                        Err(problems) => {
                            errors.extend(problems.into_iter().map(|e| ManifestError::Field {
                                location: location.clone(),
                                path: e.path,
                                message: e.message,
                            }))
                        }
                    }
                }
                (Some(version), Some("ProviderIntegration")) => errors.push(ManifestError::Field {
                    location: location("ProviderIntegration"),
                    path: "apiVersion".into(),
                    message: format!("{version:?} is not served; use {API_VERSION}"),
                }),
                (Some("v1"), Some("Secret")) => match secret_from(&value) {
                    Ok(secret) => {
                        self.secrets.insert(name, secret);
                    }
                    Err((path, message)) => errors.push(ManifestError::Field {
                        location: location("Secret"),
                        path,
                        message,
                    }),
                },
                (Some("v1"), Some("ConfigMap")) => match config_map_from(&value) {
                    Ok(data) => {
                        self.config_maps.insert(name, data);
                    }
                    Err((path, message)) => errors.push(ManifestError::Field {
                        location: location("ConfigMap"),
                        path,
                        message,
                    }),
                },
                (Some(version), Some(kind)) if version.starts_with(GROUP) => {
                    errors.push(ManifestError::Field {
                        location: location(kind),
                        path: "kind".into(),
                        message: unknown_kind(kind),
                    })
                }
                (_, Some(kind)) => self.skipped.push(location(kind)),
                (_, None) => errors.push(ManifestError::Field {
                    location: location("document"),
                    path: "kind".into(),
                    message: "is missing".into(),
                }),
            }
        }
        if documents == 0 {
            errors.push(ManifestError::File {
                file: file.to_owned(),
                message: "holds no YAML document".into(),
            });
        }
    }
}

/// A ProviderIntegration document, or every problem the API server would
/// find in it (the schema walk and the rule table), not just serde's first.
fn integration(value: &Value) -> Result<ProviderIntegration, Vec<FieldError>> {
    let json = serde_json::to_value(value).map_err(|e| {
        vec![FieldError::new(
            "",
            format!("not a JSON-compatible document: {e}"),
        )]
    })?;
    match serde_path_to_error::deserialize::<_, ProviderIntegration>(&json) {
        Ok(pi) => Ok(pi),
        Err(e) => {
            let problems = crate::validate::validate(&json);
            if problems.is_empty() {
                Err(vec![FieldError::new(
                    e.path().to_string(),
                    clean_serde_message(&e.inner().to_string()),
                )])
            } else {
                Err(problems)
            }
        }
    }
}

fn unknown_kind(kind: &str) -> String {
    let close = KINDS
        .iter()
        .find(|k| k.len().abs_diff(kind.len()) <= 2 && common_prefix(k, kind) * 2 >= k.len());
    match close {
        Some(k) => format!("{kind:?} is not a kind of {API_VERSION}; did you mean {k}?"),
        None => format!(
            "{kind:?} is not a kind of {API_VERSION} (it has {})",
            KINDS.join(", ")
        ),
    }
}

fn common_prefix(a: &str, b: &str) -> usize {
    a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count()
}

/// serde's messages name Rust types in places; say it in manifest terms.
fn clean_serde_message(message: &str) -> String {
    message
        .replace("u32", "a whole number")
        .replace("u16", "a port number")
        .replace("u64", "a whole number")
        .replace("f64", "a number")
}

fn config_map_from(value: &Value) -> Result<BTreeMap<String, String>, (String, String)> {
    let mut data = BTreeMap::new();
    if let Some(entries) = value.get("data").and_then(Value::as_mapping) {
        for (key, v) in entries {
            let key = key.as_str().unwrap_or_default().to_owned();
            let text = v
                .as_str()
                .ok_or_else(|| (format!("data.{key}"), "must be a string".to_owned()))?;
            data.insert(key, text.to_owned());
        }
    }
    Ok(data)
}

fn secret_from(value: &Value) -> Result<InlineSecret, (String, String)> {
    let mut secret = InlineSecret::default();
    if let Some(data) = value.get("data").and_then(Value::as_mapping) {
        for (key, v) in data {
            let key = key.as_str().unwrap_or_default().to_owned();
            let encoded = v
                .as_str()
                .ok_or_else(|| (format!("data.{key}"), "must be a base64 string".to_owned()))?;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| {
                    (
                        format!("data.{key}"),
                        "is not valid base64 (use stringData for plain text)".to_owned(),
                    )
                })?;
            secret.data.insert(key, decoded);
        }
    }
    if let Some(data) = value.get("stringData").and_then(Value::as_mapping) {
        for (key, v) in data {
            let key = key.as_str().unwrap_or_default().to_owned();
            let text = v
                .as_str()
                .ok_or_else(|| (format!("stringData.{key}"), "must be a string".to_owned()))?;
            secret.data.insert(key, text.as_bytes().to_vec());
        }
    }
    Ok(secret)
}

/// Secret files for `sluice local`: inline Secrets written to a private
/// directory, else `--secrets-dir`.
pub struct LocalSecrets {
    pub inline_root: Option<PathBuf>,
    pub inline: BTreeMap<String, InlineSecret>,
    pub dir: Option<PathBuf>,
}

impl crate::compile::SecretPaths for LocalSecrets {
    fn path_of(&self, reference: &SecretKeyRef) -> Option<PathBuf> {
        if let (Some(root), Some(secret)) = (&self.inline_root, self.inline.get(&reference.name)) {
            return secret
                .data
                .contains_key(&reference.key)
                .then(|| root.join(&reference.name).join(&reference.key));
        }
        let path = self
            .dir
            .as_ref()?
            .join(&reference.name)
            .join(&reference.key);
        path.is_file().then_some(path)
    }
}

impl LocalSecrets {
    /// Writes inline Secrets under a new directory only the current user can read.
    pub fn materialize(
        inline: BTreeMap<String, InlineSecret>,
        dir: Option<PathBuf>,
    ) -> std::io::Result<Self> {
        let inline_root = if inline.is_empty() {
            None
        } else {
            let root = std::env::temp_dir().join(format!(
                "sluice-local-{}-{:08x}",
                std::process::id(),
                rand_suffix()
            ));
            create_private_dir(&root)?;
            for (name, secret) in &inline {
                let secret_dir = root.join(name);
                create_private_dir(&secret_dir)?;
                for (key, value) in &secret.data {
                    std::fs::write(secret_dir.join(key), value)?;
                }
            }
            Some(root)
        };
        Ok(Self {
            inline_root,
            inline,
            dir,
        })
    }
}

impl Drop for LocalSecrets {
    fn drop(&mut self) {
        if let Some(root) = &self.inline_root {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

fn rand_suffix() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}
