//! Loading plugins: the only place that calls libloading.
//!
//! Plugins load once, at start-up, before the async runtime exists, and are never unloaded
//! (their code may be running on a blocking thread at any time). Everything a plugin declares
//! is checked before anything of it is called: the ABI major and minor, the struct sizes, the
//! kind, the name, and that no entry point is null. Any mismatch is an error naming the file
//! and what differs.

use std::path::{Path, PathBuf};

use spilo_sdk::abi::{self, AbiHeader, DcsVTable, PluginDescriptor};

/// A plugin that passed every check.
#[derive(Clone, Debug)]
pub struct LoadedPlugin {
    /// Its declared name.
    pub name: String,
    /// Its declared version.
    pub version: String,
    /// Its kind (`dcs`).
    pub kind: &'static str,
    /// The ABI it was built for.
    pub abi: (u32, u32),
    /// The file.
    pub path: PathBuf,
    /// Its DCS entry points (static, checked non-null).
    pub dcs: Option<&'static DcsVTable>,
}

/// Why a plugin was refused.
#[derive(Debug, thiserror::Error)]
#[error("plugin {path}: {problem}")]
pub struct LoadError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub problem: String,
}

/// An error and its chain of sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    crate::error_chain(e)
}

fn refuse(path: &Path, problem: impl Into<String>) -> LoadError {
    LoadError {
        path: path.display().to_string(),
        problem: problem.into(),
    }
}

fn kind_name(kind: u32) -> Option<&'static str> {
    match kind {
        abi::KIND_DCS => Some("dcs"),
        abi::KIND_STORAGE => Some("storage"),
        abi::KIND_LOAD_BALANCER => Some("load_balancer"),
        _ => None,
    }
}

/// Checks a header against the host's ABI and the size of the fields the host reads.
fn check_header(path: &Path, what: &str, h: &AbiHeader, needed: usize) -> Result<(), LoadError> {
    if h.abi_major != abi::ABI_MAJOR {
        return Err(refuse(
            path,
            format!(
                "{what} is built for plugin ABI {}.{}, this spilo speaks {}.{} (major versions differ)",
                h.abi_major,
                h.abi_minor,
                abi::ABI_MAJOR,
                abi::ABI_MINOR
            ),
        ));
    }
    if h.abi_minor > abi::ABI_MINOR {
        return Err(refuse(
            path,
            format!(
                "{what} needs plugin ABI {}.{}, newer than this spilo's {}.{}; upgrade spilo",
                h.abi_major,
                h.abi_minor,
                abi::ABI_MAJOR,
                abi::ABI_MINOR
            ),
        ));
    }
    if (h.struct_size as usize) < needed {
        return Err(refuse(
            path,
            format!(
                "{what} declares struct_size {} bytes, smaller than the {needed} bytes of ABI {}.{}",
                h.struct_size,
                abi::ABI_MAJOR,
                h.abi_minor
            ),
        ));
    }
    Ok(())
}

/// Text from a descriptor's byte slice (UTF-8, at most 256 bytes).
///
/// # Safety
/// `b` must point to static bytes in the loaded library.
unsafe fn text(path: &Path, what: &str, b: abi::Bytes) -> Result<String, LoadError> {
    if b.len > 256 {
        return Err(refuse(path, format!("{what} is {} bytes long", b.len)));
    }
    // SAFETY: the caller guarantees the bytes live in the (never unloaded) library.
    let bytes = unsafe { b.as_slice() };
    String::from_utf8(bytes.to_vec()).map_err(|_| refuse(path, format!("{what} is not UTF-8")))
}

/// Loads `path` (never to be unloaded), calls its descriptor function and checks the header:
/// the steps every use of a plugin file starts with.
fn open_descriptor(path: &Path) -> Result<(&'static PluginDescriptor, AbiHeader), LoadError> {
    if !path.is_file() {
        return Err(refuse(path, "no such file"));
    }
    // SAFETY: loading a library runs its initialisers; the operator named this file as a spilo
    // plugin. This is the one place spilo does it.
    #[allow(clippy::disallowed_methods)] // the plugin loader
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| refuse(path, format!("cannot load: {}", chain(&e))))?;
    // SAFETY: the symbol's type is fixed by the ABI (`const SpiloPluginDescriptor *(void)`).
    let entry = unsafe {
        lib.get::<unsafe extern "C" fn() -> *const PluginDescriptor>(abi::DESCRIPTOR_SYMBOL)
    }
    .map_err(|_| {
        refuse(
            path,
            format!(
                "no '{}' symbol: not a spilo plugin",
                String::from_utf8_lossy(abi::DESCRIPTOR_SYMBOL)
            ),
        )
    })?;
    // SAFETY: calling the descriptor function has no preconditions.
    let desc_ptr = unsafe { entry() };
    // Never unloaded: the descriptor, its strings and its code stay valid forever.
    std::mem::forget(lib);
    if desc_ptr.is_null() {
        return Err(refuse(path, "spilo_plugin_descriptor returned NULL"));
    }
    // The header comes first in every ABI version: read it alone before trusting the rest.
    // SAFETY: a non-null descriptor points to at least an AbiHeader.
    let header = unsafe { std::ptr::read(desc_ptr as *const AbiHeader) };
    check_header(
        path,
        "the descriptor",
        &header,
        std::mem::size_of::<PluginDescriptor>(),
    )?;
    // SAFETY: the header says the struct is at least as large as this ABI's descriptor.
    Ok((unsafe { &*desc_ptr }, header))
}

/// Loads `path` and checks it. `expect_name` and `expect_kind` come from the configuration.
pub fn load(path: &Path, expect_name: &str, expect_kind: &str) -> Result<LoadedPlugin, LoadError> {
    let (desc, header) = open_descriptor(path)?;
    let kind = kind_name(desc.kind)
        .ok_or_else(|| refuse(path, format!("unknown plugin kind {}", desc.kind)))?;
    // SAFETY: the strings are static data of the library.
    let name = unsafe { text(path, "the plugin name", desc.name)? };
    // SAFETY: as above.
    let version = unsafe { text(path, "the plugin version", desc.version)? };
    if name != expect_name {
        return Err(refuse(
            path,
            format!("declares the name '{name}', the configuration says '{expect_name}'"),
        ));
    }
    if kind != expect_kind {
        return Err(refuse(
            path,
            format!("is a {kind} plugin, the configuration says {expect_kind}"),
        ));
    }
    let dcs = if desc.kind == abi::KIND_DCS {
        if desc.dcs.is_null() {
            return Err(refuse(path, "a dcs plugin without a DCS vtable"));
        }
        // SAFETY: non-null, static in the library; read the header alone first.
        let vh = unsafe { std::ptr::read(desc.dcs as *const AbiHeader) };
        check_header(
            path,
            "the DCS vtable",
            &vh,
            std::mem::size_of::<DcsVTable>(),
        )?;
        // SAFETY: the header vouches for the size.
        let vt: &'static DcsVTable = unsafe { &*desc.dcs };
        let missing: Vec<&str> = [
            ("create", vt.create.is_none()),
            ("destroy", vt.destroy.is_none()),
            ("snapshot", vt.snapshot.is_none()),
            ("keepalive", vt.keepalive.is_none()),
            ("put_member", vt.put_member.is_none()),
            ("acquire_leader", vt.acquire_leader.is_none()),
            ("reattach_leader", vt.reattach_leader.is_none()),
            ("release_leader", vt.release_leader.is_none()),
            ("put", vt.put.is_none()),
            ("delete", vt.delete.is_none()),
            ("wait_changes", vt.wait_changes.is_none()),
            ("set_ttl", vt.set_ttl.is_none()),
            ("close", vt.close.is_none()),
            ("free_buf", vt.free_buf.is_none()),
        ]
        .into_iter()
        .filter(|(_, m)| *m)
        .map(|(n, _)| n)
        .collect();
        if !missing.is_empty() {
            return Err(refuse(
                path,
                format!(
                    "the DCS vtable has NULL entry points: {}",
                    missing.join(", ")
                ),
            ));
        }
        Some(vt)
    } else {
        None
    };
    Ok(LoadedPlugin {
        name,
        version,
        kind,
        abi: (header.abi_major, header.abi_minor),
        path: path.to_path_buf(),
        dcs,
    })
}

/// What `spiloctl plugin check` prints: what the file declares and whether this spilo accepts
/// it. Loads the file without expectations about its name or kind.
pub fn inspect(path: &Path) -> Result<LoadedPlugin, LoadError> {
    let (desc, _) = open_descriptor(path)?;
    // SAFETY: the strings are static data of the (never unloaded) library.
    let name = unsafe { text(path, "the plugin name", desc.name)? };
    let kind = kind_name(desc.kind)
        .ok_or_else(|| refuse(path, format!("unknown plugin kind {}", desc.kind)))?;
    load(path, &name, kind)
}
