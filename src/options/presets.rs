//! `[presets]`: named option strings (`presets.thumb = "rs:fill:300:300"`) and the list of
//! them rendered at upload (`presets.eager = ["thumb"]`). In TOML one flat table; in memory
//! the two parts, checked by the URL parser's own rules.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::types::{ConfigError, valid_name};

/// The key under `[presets]` that lists the eager presets rather than naming one.
pub const EAGER_KEY: &str = "eager";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presets {
    /// `presets.<name>` → option string.
    pub named: BTreeMap<String, String>,
    /// `presets.eager`: names rendered in the background after each upload.
    pub eager: Vec<String>,
}

impl Presets {
    /// Every name well formed, every option string valid under `max_dimension`, every eager
    /// name a preset.
    pub fn validate(&self, max_dimension: u32) -> Result<(), ConfigError> {
        // Keys in order, `eager` among them, so the first problem reported is the first key.
        let mut eager_checked = false;
        for (name, options) in &self.named {
            if !eager_checked && name.as_str() > EAGER_KEY {
                self.validate_eager()?;
                eager_checked = true;
            }
            let key = format!("presets.{name}");
            if !valid_name(name) {
                return Err(ConfigError::new(&key, "preset names are [A-Za-z0-9_-]"));
            }
            super::validate_preset(name, options, max_dimension)
                .map_err(|e| ConfigError::new(&key, e.to_string()))?;
        }
        if !eager_checked {
            self.validate_eager()?;
        }
        Ok(())
    }

    fn validate_eager(&self) -> Result<(), ConfigError> {
        for name in &self.eager {
            if !self.named.contains_key(name) {
                return Err(ConfigError::new(
                    "presets.eager",
                    format!("\"{name}\" is not a preset"),
                ));
            }
        }
        Ok(())
    }
}

impl Serialize for Presets {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.named.len() + 1))?;
        for (name, options) in &self.named {
            map.serialize_entry(name, options)?;
        }
        if !self.eager.is_empty() {
            map.serialize_entry(EAGER_KEY, &self.eager)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Presets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Entry {
            Options(String),
            Names(Vec<String>),
        }
        let mut presets = Presets::default();
        for (name, entry) in BTreeMap::<String, Entry>::deserialize(d)? {
            match (name == EAGER_KEY, entry) {
                (true, Entry::Names(names)) => presets.eager = names,
                (false, Entry::Options(options)) => {
                    presets.named.insert(name, options);
                }
                (true, Entry::Options(_)) => {
                    return Err(D::Error::custom(
                        "presets.eager must be a list of preset names",
                    ));
                }
                (false, Entry::Names(_)) => {
                    return Err(D::Error::custom(format!(
                        "presets.{name} must be an option string"
                    )));
                }
            }
        }
        Ok(presets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_flat_table_round_trips_into_named_and_eager() {
        let p: Presets =
            toml::from_str("thumb = \"rs:fill:300:300\"\neager = [\"thumb\"]").unwrap();
        assert_eq!(p.named["thumb"], "rs:fill:300:300");
        assert_eq!(p.eager, vec!["thumb"]);
        assert!(p.validate(16_383).is_ok());
        let back: Presets = toml::Value::try_from(&p).unwrap().try_into().unwrap();
        assert_eq!(back, p);
        assert!(toml::from_str::<Presets>("eager = \"thumb\"").is_err());
        assert!(toml::from_str::<Presets>("thumb = [\"x\"]").is_err());
    }

    #[test]
    fn validate_names_the_preset_at_fault() {
        let bad = |text: &str| {
            toml::from_str::<Presets>(text)
                .unwrap()
                .validate(16_383)
                .unwrap_err()
                .key
        };
        assert_eq!(bad("thumb = \"zz:1\""), "presets.thumb");
        assert_eq!(bad("default = \"f:webp\""), "presets.default");
        assert_eq!(bad("eager = [\"nothing\"]"), "presets.eager");
        assert_eq!(bad("\"bad name\" = \"q:1\""), "presets.bad name");
        assert_eq!(bad("big = \"w:20000\""), "presets.big");
        // The first key in order is reported, `eager` among the others.
        assert_eq!(bad("a = \"zz:1\"\neager = [\"nope\"]"), "presets.a");
        assert_eq!(bad("z = \"zz:1\"\neager = [\"nope\"]"), "presets.eager");
    }
}
