//! Loading plugins: the only place that calls libloading.
//!
//! Plugins load once, at start-up, before the async runtime exists, and are never unloaded
//! (their code may be running on a blocking thread at any time). Everything a plugin declares
//! is checked before anything of it is called: the ABI major and minor, the struct sizes, the
//! kind, the name, and that no entry point is null. Any mismatch is an error naming the file
//! and what differs.
//!
//! Versioning: each struct carries its own minor. A struct is accepted when its major is ours,
//! its minor is not newer than ours, and its `struct_size` is at least the size that minor had
//! (`spilo_sdk::abi::struct_size_of`, the size table). The struct is then *copied* into a
//! zeroed host-sized struct, `min(struct_size, host size)` bytes of it: a field appended after
//! the plugin's minor reads as absent (null, zero), never as bytes past the plugin's struct.
//! The descriptor's `vtable` slot is read as the vtable of its `kind`.

use std::path::{Path, PathBuf};

use spilo_sdk::abi::{
    self, AbiHeader, AbiStruct, DcsVTable, LbVTable, PluginDescriptor, StorageVTable, Struct,
};

/// A plugin that passed every check.
#[derive(Clone, Debug)]
pub struct LoadedPlugin {
    /// Its declared name.
    pub name: String,
    /// Its declared version.
    pub version: String,
    /// Its kind (`dcs`, `storage`, `load_balancer`).
    pub kind: &'static str,
    /// The ABI it was built for: the major and the descriptor's minor.
    pub abi: (u32, u32),
    /// The minor of its vtable (which decides the wire formats of its calls).
    pub vtable_minor: u32,
    /// The file.
    pub path: PathBuf,
    /// Its DCS entry points (checked non-null), for a DCS plugin.
    pub dcs: Option<&'static DcsVTable>,
    /// Its storage entry points (checked non-null), for a storage plugin.
    pub storage: Option<&'static StorageVTable>,
    /// Its load-balancer entry points (checked non-null), for a load-balancer plugin.
    pub lb: Option<&'static LbVTable>,
}

impl LoadedPlugin {
    /// What `spiloctl plugin check` says about the kind: the vtable, its minor, and what that
    /// minor means for this host (lines `label: text`).
    pub fn describe_kind(&self) -> Vec<(&'static str, String)> {
        let minor = self.vtable_minor;
        match self.kind {
            "dcs" => vec![
                (
                    "vtable",
                    format!("DCS {}.{minor}: snapshot, keepalive, put_member, acquire/reattach/release_leader, put, delete, wait_changes, set_ttl, close", abi::ABI_MAJOR),
                ),
                (
                    "terms",
                    if minor >= 1 {
                        "yes: snapshot entries carry their creation counter; the leader key's is the leader term".to_string()
                    } else {
                        "unknown: a DCS plugin built for ABI 1.0 reports no creation counter, so the leader term is null and side effects that need a term are refused".to_string()
                    },
                ),
                (
                    "ttl",
                    if minor >= 1 {
                        "keep-alives report the granted session TTL".to_string()
                    } else {
                        "the granted session TTL is not reported (the configured ttl is used)".to_string()
                    },
                ),
            ],
            "storage" => vec![(
                "vtable",
                format!("storage {}.{minor}: put_open, put_write, put_finish, put_abort, get_open, get_read, get_close, head, list (paginated), delete", abi::ABI_MAJOR),
            )],
            _ => vec![(
                "vtable",
                format!("load balancer {}.{minor}: set_primary(member, term), set_replicas(members, term), describe; stale terms refused", abi::ABI_MAJOR),
            )],
        }
    }
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

/// Checks a header against the host's ABI and the size table: the major must be ours, the
/// minor not newer than ours (and one in which the struct existed), and `struct_size` at
/// least the size of the declared minor.
fn check_header(path: &Path, which: Struct, h: &AbiHeader) -> Result<(), LoadError> {
    let what = which.describe();
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
    let Some(needed) = abi::struct_size_of(which, h.abi_minor) else {
        return Err(refuse(
            path,
            format!(
                "{what} declares plugin ABI {}.{}, which has no such struct",
                h.abi_major, h.abi_minor
            ),
        ));
    };
    if (h.struct_size as usize) < needed {
        return Err(refuse(
            path,
            format!(
                "{what} declares struct_size {} bytes, smaller than the {needed} bytes of ABI {}.{}",
                h.struct_size, h.abi_major, h.abi_minor
            ),
        ));
    }
    Ok(())
}

/// Reads the struct at `ptr` (whose header passed [`check_header`]) into a zeroed host-sized
/// `T`, copying only the bytes the plugin's struct has; leaked, since plugins live forever.
///
/// # Safety
/// `ptr` must point to a readable struct of at least `header.struct_size` bytes, and an
/// all-zero `T` must be valid (true of every ABI struct: integers, nullable pointers,
/// `Option` of function pointers).
unsafe fn read_struct<T: AbiStruct>(ptr: *const T, header: &AbiHeader) -> &'static T {
    let size = std::mem::size_of::<T>();
    let n = (header.struct_size as usize).min(size);
    let mut out = Box::new(std::mem::MaybeUninit::<T>::zeroed());
    // SAFETY: `n` bytes are readable at `ptr` (per the caller) and writable in `out`; the two
    // do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(ptr as *const u8, out.as_mut_ptr() as *mut u8, n) };
    // The copy keeps the plugin's header (its minor and size); fields past `n` stay zero.
    // SAFETY: zeroed plus copied bytes form a valid `T` (per the caller).
    let value: &'static T = Box::leak(unsafe { Box::from_raw(Box::into_raw(out) as *mut T) });
    value
}

/// Checks the header at `ptr` and reads the struct (see [`read_struct`]).
///
/// # Safety
/// `ptr` must be null or point to static data of the loaded library starting with a header.
unsafe fn checked<T: AbiStruct>(
    path: &Path,
    ptr: *const T,
) -> Result<(&'static T, AbiHeader), LoadError> {
    if ptr.is_null() {
        return Err(refuse(path, format!("{} is NULL", T::WHICH.describe())));
    }
    // The header comes first in every ABI version: read it alone before trusting the rest.
    // SAFETY: a non-null struct pointer points to at least an AbiHeader.
    let header = unsafe { std::ptr::read(ptr as *const AbiHeader) };
    check_header(path, T::WHICH, &header)?;
    // SAFETY: the header vouches for `struct_size` bytes.
    Ok((unsafe { read_struct(ptr, &header) }, header))
}

/// Refuses a vtable with NULL entry points, naming them.
fn refuse_nulls(path: &Path, which: Struct, entries: &[(&str, bool)]) -> Result<(), LoadError> {
    let missing: Vec<&str> = entries
        .iter()
        .filter(|(_, is_null)| *is_null)
        .map(|(n, _)| *n)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(refuse(
            path,
            format!(
                "{} has NULL entry points: {}",
                which.describe(),
                missing.join(", ")
            ),
        ))
    }
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
    // SAFETY: non-null, static data of the never-unloaded library.
    unsafe { checked(path, desc_ptr) }
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
    let (mut dcs, mut storage, mut lb) = (None, None, None);
    let vtable_minor = match desc.kind {
        abi::KIND_DCS => {
            // SAFETY: for this kind the slot is a DCS vtable in the library's static data.
            let (vt, h) = unsafe { checked(path, desc.vtable as *const DcsVTable)? };
            refuse_nulls(
                path,
                Struct::Dcs,
                &[
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
                ],
            )?;
            dcs = Some(vt);
            h.abi_minor
        }
        abi::KIND_STORAGE => {
            // SAFETY: for this kind the slot is a storage vtable in the library's static data.
            let (vt, h) = unsafe { checked(path, desc.vtable as *const StorageVTable)? };
            refuse_nulls(
                path,
                Struct::Storage,
                &[
                    ("create", vt.create.is_none()),
                    ("destroy", vt.destroy.is_none()),
                    ("put_open", vt.put_open.is_none()),
                    ("put_write", vt.put_write.is_none()),
                    ("put_finish", vt.put_finish.is_none()),
                    ("put_abort", vt.put_abort.is_none()),
                    ("get_open", vt.get_open.is_none()),
                    ("get_read", vt.get_read.is_none()),
                    ("get_close", vt.get_close.is_none()),
                    ("head", vt.head.is_none()),
                    ("list", vt.list.is_none()),
                    ("delete", vt.delete.is_none()),
                    ("free_buf", vt.free_buf.is_none()),
                ],
            )?;
            storage = Some(vt);
            h.abi_minor
        }
        _ => {
            // SAFETY: for this kind the slot is a load-balancer vtable in static data.
            let (vt, h) = unsafe { checked(path, desc.vtable as *const LbVTable)? };
            refuse_nulls(
                path,
                Struct::LoadBalancer,
                &[
                    ("create", vt.create.is_none()),
                    ("destroy", vt.destroy.is_none()),
                    ("set_primary", vt.set_primary.is_none()),
                    ("set_replicas", vt.set_replicas.is_none()),
                    ("describe", vt.describe.is_none()),
                    ("free_buf", vt.free_buf.is_none()),
                ],
            )?;
            lb = Some(vt);
            h.abi_minor
        }
    };
    Ok(LoadedPlugin {
        name,
        version,
        kind,
        abi: (header.abi_major, header.abi_minor),
        vtable_minor,
        path: path.to_path_buf(),
        dcs,
        storage,
        lb,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn header(major: u32, minor: u32, size: usize) -> AbiHeader {
        AbiHeader {
            abi_major: major,
            abi_minor: minor,
            struct_size: size as u32,
        }
    }

    fn problem(which: Struct, h: AbiHeader) -> Option<String> {
        check_header(Path::new("/p.so"), which, &h)
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn a_struct_is_checked_against_the_size_of_the_minor_it_declares() {
        let dcs = std::mem::size_of::<DcsVTable>();
        // A 1.0 DCS vtable of 1.0's size loads on a 1.1 host.
        assert_eq!(problem(Struct::Dcs, header(1, 0, dcs)), None);
        // Larger than the declared minor's size is fine (a plugin may pad).
        assert_eq!(problem(Struct::Dcs, header(1, 1, dcs + 8)), None);
        let small = problem(Struct::Dcs, header(1, 0, dcs - 8)).expect("refused");
        assert!(small.contains("/p.so") && small.contains("smaller than the 128 bytes of ABI 1.0"));
        let newer = problem(Struct::Dcs, header(1, abi::ABI_MINOR + 1, dcs)).expect("refused");
        assert!(newer.contains("upgrade spilo"), "{newer}");
        let major = problem(Struct::Dcs, header(2, 0, dcs)).expect("refused");
        assert!(major.contains("major versions differ"), "{major}");
        // The storage and load-balancer kinds did not exist in 1.0.
        let lb = problem(Struct::LoadBalancer, header(1, 0, 4096)).expect("refused");
        assert!(lb.contains("has no such struct"), "{lb}");
    }

    #[test]
    fn fields_past_a_short_struct_read_as_absent() {
        // A plugin's vtable that (as an older minor would) stops after `destroy`: the copy
        // has `create` and `destroy`, and every later entry point is None, not stray bytes.
        unsafe extern "C" fn create(_: abi::Bytes, _: *mut abi::Handle, _: *mut abi::Buf) -> u32 {
            abi::STATUS_INVALID
        }
        unsafe extern "C" fn destroy(_: abi::Handle) {}
        unsafe extern "C" fn free_buf(_: abi::Buf) {}
        let full = LbVTable {
            header: AbiHeader::of::<LbVTable>(),
            create: Some(create),
            destroy: Some(destroy),
            set_primary: None,
            set_replicas: None,
            describe: None,
            free_buf: Some(free_buf),
        };
        let short = header(1, 1, 16 + 2 * 8);
        // SAFETY: `full` is a complete vtable, so `short.struct_size` bytes are readable.
        let read: &LbVTable = unsafe { read_struct(&full, &short) };
        assert!(read.create.is_some() && read.destroy.is_some());
        assert!(read.set_primary.is_none() && read.describe.is_none() && read.free_buf.is_none());
    }
}
