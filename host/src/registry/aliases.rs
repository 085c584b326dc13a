//! Aliases: named pointers to versions of a function or a model, besides the built-in `live`
//! (`tensorlet alias set classify stable 3f2a9c41d0be`). A request can call an alias directly
//! (`/fn/classify@stable/...`), a deploy can pin a model's alias (`--model orientation@stable`),
//! and a version an alias names is never pruned.

use std::collections::BTreeMap;

use super::{Registry, RegistryError, rules};
use crate::api;
use crate::key::{FunctionKey, ModelKey};
use crate::store::{self, Version, Versioned};

/// Alias names: like function names, starting with a letter, and never `live`.
fn check_alias(alias: &str) -> Result<(), RegistryError> {
    let ok = alias.len() <= 63
        && alias.starts_with(|c: char| c.is_ascii_lowercase())
        && alias
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if alias == "live" {
        return Err(RegistryError::invalid_request(
            "`live` is built in: move it with `rollback` (or a deploy)",
        ));
    }
    if !ok {
        return Err(RegistryError::invalid_request(format!(
            "`{}` is not a valid alias: use 1 to 63 characters of a-z, 0-9 and '-', starting with a letter",
            alias.escape_default()
        )));
    }
    Ok(())
}

/// Every alias of a record, `live` included, as short ids.
fn view<V: Version>(name: &str, r: &Versioned<V>) -> api::Aliases {
    let mut aliases: BTreeMap<String, String> = r
        .aliases
        .iter()
        .map(|(a, k)| (a.clone(), store::short_id(k).to_string()))
        .collect();
    aliases.insert("live".into(), store::short_id(&r.live).to_string());
    api::Aliases {
        name: name.to_string(),
        aliases,
    }
}

/// The key `to` names in `r`: `live`, another alias, or a version as `resolve` finds it.
fn target<V: Version>(
    r: &Versioned<V>,
    to: &str,
    resolve: impl FnOnce() -> Result<String, RegistryError>,
) -> Result<String, RegistryError> {
    match to {
        "live" => Ok(r.live.clone()),
        _ => match r.aliases.get(to) {
            Some(key) => Ok(key.clone()),
            None => resolve(),
        },
    }
}

impl Registry {
    /// A function's aliases.
    pub async fn function_aliases(
        &self,
        name: &FunctionKey,
    ) -> Result<api::Aliases, RegistryError> {
        let state = self.admin.lock().await;
        Ok(view(name.name(), rules::function(&state.meta, name)?))
    }

    /// Points a function's `alias` at `to`.
    pub async fn set_function_alias(
        &self,
        name: &FunctionKey,
        alias: &str,
        to: &str,
    ) -> Result<api::Aliases, RegistryError> {
        check_alias(alias)?;
        let mut state = self.admin.lock().await;
        let f = rules::function(&state.meta, name)?;
        let key = target(f, to, || {
            Ok(rules::resolve(name.name(), f, to)?.key().to_string())
        })?;
        if f.aliases.get(alias) != Some(&key) {
            self.commit(&mut state, |meta| {
                let f = rules::function_mut(meta, name)?;
                f.aliases.insert(alias.to_string(), key.clone());
                Ok(())
            })
            .await?;
        }
        Ok(view(name.name(), rules::function(&state.meta, name)?))
    }

    /// Removes a function's `alias`.
    pub async fn remove_function_alias(
        &self,
        name: &FunctionKey,
        alias: &str,
    ) -> Result<api::Aliases, RegistryError> {
        let mut state = self.admin.lock().await;
        if !rules::function(&state.meta, name)?
            .aliases
            .contains_key(alias)
        {
            return Err(RegistryError::AliasNotFound {
                name: name.name().to_string(),
                alias: alias.to_string(),
            });
        }
        self.commit(&mut state, |meta| {
            rules::function_mut(meta, name)?.aliases.remove(alias);
            Ok(())
        })
        .await?;
        Ok(view(name.name(), rules::function(&state.meta, name)?))
    }

    /// A model's aliases.
    pub async fn model_aliases(&self, name: &ModelKey) -> Result<api::Aliases, RegistryError> {
        let state = self.admin.lock().await;
        Ok(view(name.name(), rules::model(&state.meta, name)?))
    }

    /// Points a model's `alias` at `to`.
    pub async fn set_model_alias(
        &self,
        name: &ModelKey,
        alias: &str,
        to: &str,
    ) -> Result<api::Aliases, RegistryError> {
        check_alias(alias)?;
        let mut state = self.admin.lock().await;
        let m = rules::model(&state.meta, name)?;
        let key = target(m, to, || rules::resolve_model_version(name.name(), m, to))?;
        if m.aliases.get(alias) != Some(&key) {
            self.commit(&mut state, |meta| {
                let m = meta
                    .models
                    .get_mut(name)
                    .ok_or_else(|| RegistryError::model_not_found(name.name()))?;
                m.aliases.insert(alias.to_string(), key.clone());
                Ok(())
            })
            .await?;
        }
        Ok(view(name.name(), rules::model(&state.meta, name)?))
    }

    /// Removes a model's `alias`.
    pub async fn remove_model_alias(
        &self,
        name: &ModelKey,
        alias: &str,
    ) -> Result<api::Aliases, RegistryError> {
        let mut state = self.admin.lock().await;
        if !rules::model(&state.meta, name)?.aliases.contains_key(alias) {
            return Err(RegistryError::AliasNotFound {
                name: name.name().to_string(),
                alias: alias.to_string(),
            });
        }
        self.commit(&mut state, |meta| {
            if let Some(m) = meta.models.get_mut(name) {
                m.aliases.remove(alias);
            }
            Ok(())
        })
        .await?;
        Ok(view(name.name(), rules::model(&state.meta, name)?))
    }
}
