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

/// Lookup and administration of services.
#[derive(Debug, Clone)]
pub struct Catalog {
    storage: Arc<Storage>,
    /// Custom services already parsed, by name, with the TOML they were parsed from: a
    /// lookup still reads the stored text (another process may have edited it) but only
    /// parses it when it changed.
    parsed: Arc<Mutex<HashMap<String, (String, ServiceDef)>>>,
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
    fn parse(&self, name: &str, definition: &str) -> Result<ServiceDef, ConnectionError> {
        let mut parsed = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((text, def)) = parsed.get(name)
            && text == definition
        {
            return Ok(def.clone());
        }
        let def = ServiceDef::from_toml(definition)?;
        parsed.insert(name.to_string(), (definition.to_string(), def.clone()));
        Ok(def)
    }

    /// A service by name: custom first (names cannot collide with presets), then presets.
    pub fn get(&self, name: &str) -> Result<Option<CatalogEntry>, ConnectionError> {
        let row = self.storage.get_service(name)?;
        self.lookup(name, row.as_ref().map(|r| r.definition.as_str()))
    }

    /// `require` for a caller that already read the service's stored definition (`None`
    /// if there is no custom service of that name).
    pub fn require_stored(
        &self,
        name: &str,
        definition: Option<&str>,
    ) -> Result<CatalogEntry, ConnectionError> {
        self.lookup(name, definition)?
            .ok_or_else(|| ConnectionError::UnknownService(name.to_string()))
    }

    /// The custom service if it has a definition, else the preset.
    fn lookup(
        &self,
        name: &str,
        definition: Option<&str>,
    ) -> Result<Option<CatalogEntry>, ConnectionError> {
        if let Some(definition) = definition
            && !definition.is_empty()
        {
            let def = self.parse(name, definition)?;
            return Ok(Some(CatalogEntry {
                def,
                source: ServiceSource::Custom,
            }));
        }
        Ok(find_preset(name).map(|def| CatalogEntry {
            def: def.clone(),
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
                def: d.clone(),
                source: ServiceSource::Preset,
            })
            .collect();
        for row in self.storage.list_services()? {
            if !row.definition.is_empty() {
                let def = self.parse(&row.name, &row.definition)?;
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
