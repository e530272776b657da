//! The views of `ctl config` (an application's settings) and `model-config`.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;
use starling_proto::controller::ApplicationConfig;

use crate::render::{structured, table, Format};

/// One setting in `ctl config APP`.
#[derive(Debug, Serialize)]
pub struct ConfigSetting {
    /// The effective value.
    pub value: String,
    /// `default` (the charm's) or `user` (set).
    pub source: String,
}

/// `ctl config APP`.
#[derive(Debug, Serialize)]
pub struct AppConfigView {
    /// The application.
    pub application: String,
    /// Settings by key.
    pub settings: BTreeMap<String, ConfigSetting>,
}

impl AppConfigView {
    /// The view of `config` of `application`.
    pub fn new(application: &str, config: &ApplicationConfig) -> Self {
        let settings = config
            .values
            .iter()
            .map(|(k, v)| {
                let source = if config.defaults.contains(k) {
                    "default"
                } else {
                    "user"
                };
                let setting = ConfigSetting {
                    value: v.clone(),
                    source: source.to_string(),
                };
                (k.clone(), setting)
            })
            .collect();
        Self {
            application: application.to_string(),
            settings,
        }
    }

    /// Renders in `format`.
    pub fn render(&self, format: Format) -> Result<String> {
        if let Some(text) = structured(format, self)? {
            return Ok(text);
        }
        if self.settings.is_empty() {
            return Ok(format!(
                "Application \"{}\" has no config.\n",
                self.application
            ));
        }
        let rows: Vec<Vec<String>> = self
            .settings
            .iter()
            .map(|(k, s)| vec![k.clone(), s.value.clone(), s.source.clone()])
            .collect();
        Ok(table(&["Key", "Value", "Source"], &rows, &[]))
    }
}

/// `ctl model-config` with no key: every key of a model's config. YAML and JSON are the bare
/// map of keys to values; the table has one row per key, in key order.
#[derive(Debug)]
pub struct ModelConfigView {
    /// The qualified model name, for the empty-config line.
    pub model: String,
    /// The values by key.
    pub values: BTreeMap<String, String>,
}

impl ModelConfigView {
    /// Renders in `format`.
    pub fn render(&self, format: Format) -> Result<String> {
        if let Some(text) = structured(format, &self.values)? {
            return Ok(text);
        }
        if self.values.is_empty() {
            return Ok(format!("Model \"{}\" has no config.\n", self.model));
        }
        let rows: Vec<Vec<String>> = self
            .values
            .iter()
            .map(|(k, v)| vec![k.clone(), v.clone()])
            .collect();
        Ok(table(&["Key", "Value"], &rows, &[]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::model_views::fixtures::*;

    fn model_config(values: &[(&str, &str)]) -> ModelConfigView {
        ModelConfigView {
            model: "admin/web".into(),
            values: values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn model_config_formats() {
        let view = model_config(&[
            ("owner", "ops-team"),
            ("backup.window", "02:00-04:00"),
            ("cost-centre", "a=b c"),
        ]);
        assert_eq!(
            view.render(Format::Tabular).unwrap(),
            "Key            Value\n\
             backup.window  02:00-04:00\n\
             cost-centre    a=b c\n\
             owner          ops-team\n"
        );
        assert_eq!(
            view.render(Format::Json).unwrap(),
            "{\n  \"backup.window\": \"02:00-04:00\",\n  \"cost-centre\": \"a=b c\",\n  \
             \"owner\": \"ops-team\"\n}\n"
        );
        let yaml: BTreeMap<String, String> =
            serde_saphyr::from_str(&view.render(Format::Yaml).unwrap()).unwrap();
        assert_eq!(yaml, view.values);
    }

    #[test]
    fn empty_model_config() {
        let view = model_config(&[]);
        assert_eq!(
            view.render(Format::Tabular).unwrap(),
            "Model \"admin/web\" has no config.\n"
        );
        assert_eq!(view.render(Format::Json).unwrap(), "{}\n");
    }
}
