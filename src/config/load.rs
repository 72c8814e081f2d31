//! Loading: defaults in code → TOML file → `PIXGATE__SECTION__KEY` environment, each value
//! typed by its default, then deserialised into the sections with the failing key named.

use std::path::Path;

use super::Config;
use super::types::{ConfigError, ENV_PREFIX};
use crate::limits::config::PLAN_KEYS;

impl Config {
    /// Loads defaults, then `file` (if any), then the `PIXGATE__*` entries of `env`.
    /// Does not validate: call [`Config::validate`] (after dev secrets, if embedded).
    pub fn load<I>(file: Option<&Path>, env: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let defaults = toml::Value::try_from(Config::default())
            .map_err(|e| ConfigError::new("<defaults>", e.to_string()))?;
        let mut merged = defaults.clone();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new("<file>", format!("cannot read {}: {e}", path.display()))
            })?;
            let table: toml::Table = toml::from_str(&text)
                .map_err(|e| ConfigError::new("<file>", format!("{}: {e}", path.display())))?;
            merge(&mut merged, toml::Value::Table(table));
        }
        let mut env_seen = false;
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        // Deterministic order, so a failing key is reported the same way every time.
        overrides.sort();
        for (name, raw) in overrides {
            env_seen = true;
            let path: Vec<String> = name[ENV_PREFIX.len()..]
                .split("__")
                .map(str::to_lowercase)
                .collect();
            let key = path.join(".");
            if path.iter().any(String::is_empty) {
                return Err(ConfigError::new(&key, format!("malformed variable {name}")));
            }
            let value = typed_env_value(&defaults, &path, &raw)?;
            set_path(&mut merged, &path, value);
        }
        check_types(&defaults, &merged, &mut Vec::new())?;
        read_secret_files(&mut merged)?;
        let mut config = parse(merged)?;
        config.embedded = file.is_none() && !env_seen;
        Ok(config)
    }
}

/// Prefix of a secret value read from a file (`PIXGATE__AUTH__JWT_HS256_SECRET=file:/run/secrets/jwt`):
/// how Kubernetes and Docker hand secrets to a container.
pub const FILE_PREFIX: &str = "file:";

/// Keys whose values (or list entries) may be `file:/path`: the secrets, and the Redis URL
/// (which may carry a password).
pub(super) const FILE_KEYS: &[&str] = &[
    "signing.keys",
    "signing.salts",
    "auth.jwt_hs256_secret",
    "cdn.purge_headers",
    "redis.url",
    "redis.cluster_urls",
];

/// Largest secret file read (a secret is a key, a token or a URL, never megabytes).
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Replaces every `file:/path` value of [`FILE_KEYS`] with the file's content, one trailing
/// line break removed. Start-up code (blocking reads are fine). An unreadable file is an error
/// naming the key and the path, never the content.
fn read_secret_files(merged: &mut toml::Value) -> Result<(), ConfigError> {
    for key in FILE_KEYS {
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        let Some(value) = get_path(merged, &path).cloned() else {
            continue;
        };
        let resolved = match value {
            toml::Value::String(s) => toml::Value::String(secret_from(key, &s)?),
            toml::Value::Array(items) => toml::Value::Array(
                items
                    .into_iter()
                    .map(|v| match v {
                        toml::Value::String(s) => secret_from(key, &s).map(toml::Value::String),
                        other => Ok(other),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            other => other,
        };
        set_path(merged, &path, resolved);
    }
    Ok(())
}

/// `value` itself, or the content of the file it names.
fn secret_from(key: &str, value: &str) -> Result<String, ConfigError> {
    let Some(file) = value.strip_prefix(FILE_PREFIX) else {
        return Ok(value.to_owned());
    };
    use std::io::Read as _;
    let fail = |m: String| ConfigError::new(key, format!("secret file {file}: {m}"));
    let mut text = String::new();
    std::fs::File::open(file)
        .map_err(|e| fail(e.to_string()))?
        .take(MAX_SECRET_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| fail(e.to_string()))?;
    if text.len() as u64 > MAX_SECRET_FILE {
        return Err(fail(format!("larger than {MAX_SECRET_FILE} bytes")));
    }
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    Ok(text.to_owned())
}

/// Deserialises the merged document into the typed sections; a value that does not parse
/// (an address, an enum, a header) is reported with its key. A list entry is named by its
/// position only: entries may be secrets (`cdn.purge_headers`).
fn parse(merged: toml::Value) -> Result<Config, ConfigError> {
    serde_path_to_error::deserialize(merged).map_err(|e| {
        let mut key = Vec::new();
        let mut entry = None;
        for segment in e.path().iter() {
            match segment {
                serde_path_to_error::Segment::Map { key: k } => key.push(k.clone()),
                serde_path_to_error::Segment::Seq { index } => entry = Some(index + 1),
                _ => {}
            }
        }
        let key = if key.is_empty() {
            "<config>".to_owned()
        } else {
            key.join(".")
        };
        let message = e.into_inner().message().to_owned();
        match entry {
            Some(n) => ConfigError::new(&key, format!("entry {n}: {message}")),
            None => ConfigError::new(&key, message),
        }
    })
}

/// Deep-merges `overlay` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Value, overlay: toml::Value) {
    match (base, overlay) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

pub(super) fn get_path<'a>(v: &'a toml::Value, path: &[String]) -> Option<&'a toml::Value> {
    path.iter().try_fold(v, |cur, seg| cur.get(seg.as_str()))
}

pub(super) fn set_path(root: &mut toml::Value, path: &[String], value: toml::Value) {
    let mut cur = root;
    for (i, seg) in path.iter().enumerate() {
        let toml::Value::Table(t) = cur else { return };
        if i + 1 == path.len() {
            t.insert(seg.clone(), value);
            return;
        }
        cur = t
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
}

/// Checks every value of the merged configuration against the type of its default, so a
/// wrong type in the file is reported with its key (serde's message would not name it).
fn check_types(
    defaults: &toml::Value,
    merged: &toml::Value,
    path: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let toml::Value::Table(table) = merged else {
        return Ok(());
    };
    for (k, v) in table {
        path.push(k.clone());
        let key = path.join(".");
        // Free-form keys (preset and plan names, `sources.legacy` entries) are checked
        // apart, not against a default.
        if let Some(checked) = free_form(path, v, &key) {
            checked?;
            path.pop();
            continue;
        }
        let Some(default) = get_path(defaults, path) else {
            return Err(ConfigError::new(&key, "unknown configuration key"));
        };
        let expected = match (default, v) {
            (toml::Value::Table(_), toml::Value::Table(_)) => {
                check_types(defaults, v, &mut path.clone())?;
                None
            }
            (toml::Value::Table(_), _) => Some("a section"),
            (toml::Value::String(_), toml::Value::String(_)) => None,
            (toml::Value::String(_), _) => Some("a string"),
            (toml::Value::Integer(_), toml::Value::Integer(i)) if *i >= 0 => None,
            (toml::Value::Integer(_), _) => Some("a non-negative integer"),
            (toml::Value::Boolean(_), toml::Value::Boolean(_)) => None,
            (toml::Value::Boolean(_), _) => Some("true or false"),
            (toml::Value::Array(_), toml::Value::Array(items))
                if items.iter().all(toml::Value::is_str) =>
            {
                None
            }
            (toml::Value::Array(_), _) => Some("a list of strings"),
            _ => None,
        };
        if let Some(what) = expected {
            return Err(ConfigError::new(&key, format!("must be {what}")));
        }
        path.pop();
    }
    Ok(())
}

/// The keys whose names are free (`presets.<name>`, `limits.plans.<plan>.*`) or whose values
/// are not typed by a default (`sources.legacy`: tables in a file, strings from the
/// environment); `None` for every other key.
fn free_form(path: &[String], v: &toml::Value, key: &str) -> Option<Result<(), ConfigError>> {
    if path.len() == 2 && path[0] == "presets" {
        // `eager` lists preset names, every other key is an option string (checked against
        // the grammar by `validate`).
        let ok = if path[1] == crate::options::presets::EAGER_KEY {
            v.as_array()
                .is_some_and(|a| a.iter().all(toml::Value::is_str))
        } else {
            v.is_str()
        };
        let what = if path[1] == crate::options::presets::EAGER_KEY {
            "must be a list of preset names"
        } else {
            "must be an option string"
        };
        return Some(if ok {
            Ok(())
        } else {
            Err(ConfigError::new(key, what))
        });
    }
    if path.len() == 2 && path[0] == "sources" && path[1] == "legacy" {
        // Checked by `validate`.
        let ok = v
            .as_array()
            .is_some_and(|a| a.iter().all(|e| e.is_str() || e.is_table()));
        return Some(if ok {
            Ok(())
        } else {
            Err(ConfigError::new(key, "must be a list of tables or strings"))
        });
    }
    if path.len() == 3 && path[0] == "limits" && path[1] == "plans" {
        // Free-form plan names, each a table of known integer keys.
        let toml::Value::Table(plan) = v else {
            return Some(Err(ConfigError::new(key, "must be a table")));
        };
        for (k, pv) in plan {
            let full = format!("{key}.{k}");
            if !PLAN_KEYS.contains(&k.as_str()) {
                return Some(Err(ConfigError::new(&full, "unknown configuration key")));
            }
            if !matches!(pv, toml::Value::Integer(i) if *i >= 0) {
                return Some(Err(ConfigError::new(
                    &full,
                    "must be a non-negative integer",
                )));
            }
        }
        return Some(Ok(()));
    }
    None
}

/// Converts an environment string to the type of the key's default.
fn typed_env_value(
    defaults: &toml::Value,
    path: &[String],
    raw: &str,
) -> Result<toml::Value, ConfigError> {
    let key = path.join(".");
    if path.len() == 2 && path[0] == "presets" {
        return Ok(if path[1] == "eager" {
            toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            )
        } else {
            toml::Value::String(raw.to_owned())
        });
    }
    if path.len() == 4 && path[0] == "limits" && path[1] == "plans" {
        if !PLAN_KEYS.contains(&path[3].as_str()) {
            return Err(ConfigError::new(&key, "unknown configuration key"));
        }
        return raw
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|v| i64::try_from(v).ok())
            .map(toml::Value::Integer)
            .ok_or_else(|| {
                ConfigError::new(&key, format!("`{raw}` is not a non-negative integer"))
            });
    }
    let Some(default) = get_path(defaults, path) else {
        return Err(ConfigError::new(&key, "unknown configuration key"));
    };
    let bad = |what: &str| ConfigError::new(&key, format!("`{raw}` is not {what}"));
    Ok(match default {
        toml::Value::String(_) => toml::Value::String(raw.to_owned()),
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.trim()
                .parse::<u64>()
                .ok()
                .and_then(|v| i64::try_from(v).ok())
                .ok_or_else(|| bad("a non-negative integer"))?,
        ),
        toml::Value::Float(_) => {
            toml::Value::Float(raw.trim().parse().map_err(|_| bad("a number"))?)
        }
        toml::Value::Boolean(_) => toml::Value::Boolean(match raw.trim() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err(bad("true or false")),
        }),
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        toml::Value::Table(_) => return Err(ConfigError::new(&key, "is a section, not a key")),
        toml::Value::Datetime(_) => toml::Value::String(raw.to_owned()),
    })
}
