//! Third-party backends in shared libraries (see `spilo_sdk::abi` for the contract).
//!
//! [`load_configured`] loads every plugin the configuration lists, once, before the async
//! runtime starts; the DCS registry then finds a DCS plugin by name and wraps it in
//! [`dcs::PluginDcs`], which implements the same trait as the built-in backends. Storage and
//! load-balancer plugins are wrapped by [`storage::PluginStorage`] and [`lb::PluginLb`]; all
//! three call their plugin through the one blocking-call mechanism of [`adapter`].

pub mod adapter;
pub mod dcs;
pub mod lb;
pub mod loader;
pub mod storage;

use std::sync::{Mutex, OnceLock};

pub use loader::{LoadError, LoadedPlugin};

static LOADED: OnceLock<Mutex<Vec<LoadedPlugin>>> = OnceLock::new();

fn loaded() -> &'static Mutex<Vec<LoadedPlugin>> {
    LOADED.get_or_init(|| Mutex::new(Vec::new()))
}

/// Loads every plugin in `cfg.plugins` (a plugin already loaded from the same file is kept).
/// The first refusal is returned, naming the file and what differs.
pub fn load_configured(cfg: &crate::config::Config) -> Result<Vec<LoadedPlugin>, LoadError> {
    let mut out = Vec::new();
    for spec in &cfg.plugins {
        if let Some(p) = get(&spec.name).filter(|p| p.path == spec.path) {
            out.push(p);
            continue;
        }
        let p = loader::load(&spec.path, &spec.name, &spec.kind)?;
        tracing::info!(
            plugin = %p.name,
            version = %p.version,
            path = %p.path.display(),
            "plugin loaded (ABI {}.{})",
            p.abi.0,
            p.abi.1
        );
        if let Ok(mut l) = loaded().lock() {
            l.retain(|q| q.name != p.name);
            l.push(p.clone());
        }
        out.push(p);
    }
    Ok(out)
}

/// The loaded plugin called `name`.
pub fn get(name: &str) -> Option<LoadedPlugin> {
    loaded()
        .lock()
        .ok()
        .and_then(|l| l.iter().find(|p| p.name == name).cloned())
}

/// Where a plugin shipped with spilo (`libspilo_storage_s3_plugin.so`,
/// `libspilo_lb_elb_plugin.so`) is looked for, in order: next to the running binary, in
/// `../lib/spilo` from it, `/usr/local/lib/spilo`, `/usr/lib/spilo`.
pub fn bundled_candidates(file: &str) -> Vec<std::path::PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|p| p.to_path_buf()))
    {
        dirs.push(d.join(file));
        dirs.push(d.join("../lib/spilo").join(file));
    }
    for d in ["/usr/local/lib/spilo", "/usr/lib/spilo"] {
        dirs.push(std::path::Path::new(d).join(file));
    }
    dirs
}

/// Why a plugin shipped with spilo could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BundledError {
    /// The library is in none of the places looked in.
    #[error("{what} {file} is in none of {places}")]
    NotFound {
        /// What it is (`storage type s3: the S3 plugin`).
        what: String,
        /// The library's file name.
        file: String,
        /// Every place looked in, comma-separated.
        places: String,
    },
    /// It was found and refused.
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Loads a plugin shipped with spilo: `file`, from the first of [`bundled_candidates`] that
/// exists, as the plugin `name` of `kind`. `what` names it in the error (`storage type s3: the
/// S3 plugin`), which lists every place looked in when none has it.
pub fn load_bundled(
    file: &str,
    name: &str,
    kind: &str,
    what: &str,
) -> Result<LoadedPlugin, BundledError> {
    let candidates = bundled_candidates(file);
    let path = candidates
        .iter()
        .find(|p| p.exists())
        .ok_or_else(|| BundledError::NotFound {
            what: what.to_string(),
            file: file.to_string(),
            places: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    Ok(loader::load(path, name, kind)?)
}
