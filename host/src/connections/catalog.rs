//! The services a connection can use: the compiled-in presets plus custom services an
//! admin defined (stored as TOML in the same schema).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::ConnectionError;
use crate::services::{ServiceDef, find_preset, presets, validate_name};
use crate::storage::Storage;

/// Where a service definition comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceSource {
    /// Shipped with keyhole.
    Preset,
    /// Defined by an admin.
    Custom,
}

/// A service with its source.
#[derive(Debug, Clone)]
pub struct CatalogEntry {
    /// The definition.
    pub def: ServiceDef,
    /// Preset or custom.
    pub source: ServiceSource,
}

/// A custom service's stored TOML and its parse.
#[derive(Debug)]
struct Parsed {
    text: String,
    def: Arc<ServiceDef>,
}

/// Lookup and administration of services.
#[derive(Debug, Clone)]
pub struct Catalog {
    storage: Arc<Storage>,
    /// Custom services already parsed, by name, with the TOML they were parsed from: a
    /// lookup still reads the stored text (another process may have edited it) but only
    /// parses it when it changed.
    parsed: Arc<Mutex<HashMap<String, Parsed>>>,
}

impl Catalog {
    /// A catalog over `storage`.
    pub fn new(storage: Arc<Storage>) -> Self {
        Self {
            storage,
            parsed: Arc::default(),
        }
    }

    /// Parse a stored definition, or reuse the parse of the same text.
    fn parse(&self, name: &str, definition: &str) -> Result<Arc<ServiceDef>, ConnectionError> {
        let mut parsed = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = parsed.get(name)
            && p.text == definition
        {
            return Ok(p.def.clone());
        }
        let def = Arc::new(ServiceDef::from_toml(definition)?);
        parsed.insert(
            name.to_string(),
            Parsed {
                text: definition.to_string(),
                def: def.clone(),
            },
        );
        Ok(def)
    }

    /// The custom service's definition, if `definition` (its stored text) is one.
    fn custom(
        &self,
        name: &str,
        definition: Option<&str>,
    ) -> Result<Option<Arc<ServiceDef>>, ConnectionError> {
        match definition {
            Some(text) if !text.is_empty() => self.parse(name, text).map(Some),
            _ => Ok(None),
        }
    }

    /// The definition a call uses, shared rather than copied: `definition` is the custom
    /// service's stored text as the caller read it (`None` if there is none).
    pub fn require_shared(
        &self,
        name: &str,
        definition: Option<&str>,
    ) -> Result<Arc<ServiceDef>, ConnectionError> {
        match self.custom(name, definition)? {
            Some(def) => Ok(def),
            None => find_preset(name)
                .cloned()
                .ok_or_else(|| ConnectionError::UnknownService(name.to_string())),
        }
    }

    /// A service by name: custom first (names cannot collide with presets), then presets.
    pub fn get(&self, name: &str) -> Result<Option<CatalogEntry>, ConnectionError> {
        let row = self.storage.get_service(name)?;
        self.lookup(name, row.as_ref().map(|r| r.definition.as_str()))
    }

    /// The custom service if it has a definition, else the preset.
    fn lookup(
        &self,
        name: &str,
        definition: Option<&str>,
    ) -> Result<Option<CatalogEntry>, ConnectionError> {
        if let Some(def) = self.custom(name, definition)? {
            return Ok(Some(CatalogEntry {
                def: Arc::unwrap_or_clone(def),
                source: ServiceSource::Custom,
            }));
        }
        Ok(find_preset(name).map(|def| CatalogEntry {
            def: ServiceDef::clone(def),
            source: ServiceSource::Preset,
        }))
    }

    /// A service by name, or a clear error naming how to find one.
    pub fn require(&self, name: &str) -> Result<CatalogEntry, ConnectionError> {
        self.get(name)?
            .ok_or_else(|| ConnectionError::UnknownService(name.to_string()))
    }

    /// Every service: presets then custom, each by name.
    pub fn list(&self) -> Result<Vec<CatalogEntry>, ConnectionError> {
        let mut out: Vec<CatalogEntry> = presets()
            .iter()
            .map(|d| CatalogEntry {
                def: ServiceDef::clone(d),
                source: ServiceSource::Preset,
            })
            .collect();
        for row in self.storage.list_services()? {
            if !row.definition.is_empty() {
                let def = Arc::unwrap_or_clone(self.parse(&row.name, &row.definition)?);
                out.push(CatalogEntry {
                    def,
                    source: ServiceSource::Custom,
                });
            }
        }
        out.sort_by(|a, b| a.def.name.cmp(&b.def.name));
        Ok(out)
    }

    /// Add a custom service.
    pub fn add(&self, def: &ServiceDef) -> Result<(), ConnectionError> {
        validate_name("service", &def.name)?;
        def.validate()?;
        if find_preset(&def.name).is_some() {
            return Err(ConnectionError::Invalid(format!(
                "{:?} is the name of a preset service; pick another name for your custom service",
                def.name
            )));
        }
        self.storage.insert_service(&def.name, &def.to_toml()?)?;
        Ok(())
    }

    /// Replace a custom service's definition (presets cannot be edited).
    pub fn edit(&self, def: &ServiceDef) -> Result<(), ConnectionError> {
        def.validate()?;
        if find_preset(&def.name).is_some() {
            return Err(ConnectionError::Invalid(format!(
                "{:?} is a preset and cannot be edited; add a custom service with another name instead",
                def.name
            )));
        }
        if !self.storage.update_service(&def.name, &def.to_toml()?)? {
            return Err(ConnectionError::UnknownService(def.name.clone()));
        }
        Ok(())
    }

    /// Delete a custom service; refused while a connection uses it.
    pub fn delete(&self, name: &str) -> Result<(), ConnectionError> {
        if find_preset(name).is_some() {
            return Err(ConnectionError::Invalid(format!(
                "{name:?} is a preset and cannot be deleted"
            )));
        }
        if !self.storage.delete_service(name)? {
            return Err(ConnectionError::UnknownService(name.to_string()));
        }
        self.parsed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::MINIMAL;

    fn catalog() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(&dir.path().join("t.db")).unwrap());
        (dir, Catalog::new(storage))
    }

    #[test]
    fn calls_share_one_definition_until_its_text_changes() {
        let (_dir, c) = catalog();
        let first = c.require_shared("acme", Some(MINIMAL)).unwrap();
        let again = c.require_shared("acme", Some(MINIMAL)).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "same text, same parse");
        assert_eq!(first.base_url, "https://api.acme.test");

        let edited = MINIMAL.replace("api.acme.test", "v2.acme.test");
        let changed = c.require_shared("acme", Some(&edited)).unwrap();
        assert!(!Arc::ptr_eq(&first, &changed), "an edit is parsed afresh");
        assert_eq!(changed.base_url, "https://v2.acme.test");
    }

    #[test]
    fn presets_are_shared_and_unknown_services_are_refused() {
        let (_dir, c) = catalog();
        let first = c.require_shared("github", None).unwrap();
        let again = c.require_shared("github", Some("")).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(*first, **find_preset("github").unwrap());
        assert!(matches!(
            c.require_shared("no-such-service", None),
            Err(ConnectionError::UnknownService(name)) if name == "no-such-service"
        ));
    }
}
