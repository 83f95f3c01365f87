//! The exported descriptor and vtable, called the way the host calls them (through the rlib,
//! which is the same code the cdylib exports).

mod common;

use std::time::{Duration, Instant};

use common::Etcd;
use spilo_plugin_etcd_gateway::spilo_plugin_descriptor;
use spilo_sdk::abi::{self, Buf, Bytes, DcsVTable, Handle};

/// Takes a buffer the plugin filled, frees it with the plugin's `free_buf`.
fn take(vtable: &DcsVTable, buf: Buf) -> Vec<u8> {
    let bytes = if buf.ptr.is_null() {
        Vec::new()
    } else {
        // SAFETY: the plugin filled `buf` with `len` bytes it owns until `free_buf`.
        unsafe { std::slice::from_raw_parts(buf.ptr, buf.len) }.to_vec()
    };
    let free = vtable.free_buf.expect("free_buf");
    // SAFETY: the buffer came from this plugin and is freed once.
    unsafe { free(buf) };
    bytes
}

fn config(host: &str) -> String {
    serde_json::json!({
        "spilo": {"prefix": "/service/abi/", "member": "n1", "ttl_ms": 5000,
                  "retry_timeout_ms": 2000, "watch": true, "session": true},
        "config": {"hosts": [host]},
    })
    .to_string()
}

#[test]
fn the_descriptor_names_the_plugin_and_its_vtable_works_end_to_end() {
    // SAFETY: the descriptor is static data.
    let descriptor = unsafe { &*spilo_plugin_descriptor() };
    assert_eq!(descriptor.header.abi_major, abi::ABI_MAJOR);
    assert_eq!(descriptor.kind, abi::KIND_DCS);
    // SAFETY: static strings.
    assert_eq!(unsafe { descriptor.name.as_slice() }, b"etcd-gateway");
    // SAFETY: the vtable is static data.
    let vtable = unsafe { &*(descriptor.vtable as *const abi::DcsVTable) };
    let create = vtable.create.expect("create");

    // Bad settings: an error naming the key, no handle.
    let mut handle: Handle = std::ptr::null_mut();
    let mut err = Buf::empty();
    let bad = serde_json::json!({
        "spilo": {"prefix": "/p/", "member": "n1", "ttl_ms": 5000, "retry_timeout_ms": 1000},
        "config": {"hosts": "no-port"},
    })
    .to_string();
    // SAFETY: valid pointers for the call.
    let status = unsafe { create(Bytes::of(bad.as_bytes()), &mut handle, &mut err) };
    assert_eq!(status, abi::STATUS_INVALID);
    assert!(String::from_utf8_lossy(&take(vtable, err)).starts_with("hosts: "));

    let etcd = Etcd::start();
    let good = config(&etcd.host());
    let mut err = Buf::empty();
    // SAFETY: valid pointers for the call.
    let status = unsafe { create(Bytes::of(good.as_bytes()), &mut handle, &mut err) };
    assert_eq!(
        status,
        abi::STATUS_OK,
        "{}",
        String::from_utf8_lossy(&take(vtable, err))
    );

    let (mut out, mut err, mut done) = (Buf::empty(), Buf::empty(), 0u8);
    // SAFETY: `handle` is live; valid pointers for the calls.
    unsafe {
        assert_eq!(
            (vtable.keepalive.expect("keepalive"))(handle, 2000, &mut out, &mut err),
            abi::STATUS_OK
        );
        let session =
            abi::decode_session(&take(vtable, out), abi::DCS_VTABLE_MINOR).expect("session");
        assert!(session.new_session);
        assert_eq!(
            (vtable.acquire_leader.expect("acquire"))(handle, 2000, &mut done, &mut err),
            abi::STATUS_OK
        );
        assert_eq!(done, 1);
        let mut out = Buf::empty();
        assert_eq!(
            (vtable.snapshot.expect("snapshot"))(handle, 2000, &mut out, &mut err),
            abi::STATUS_OK
        );
        let snapshot =
            abi::decode_snapshot(&take(vtable, out), abi::DCS_VTABLE_MINOR).expect("snapshot");
        let leader = snapshot.get("leader").expect("leader");
        assert!(leader.owned_by_us && leader.value == b"n1");
        // The acquisition bumped the counter (once the watch is up, which it may not be yet).
        let _ = (vtable.wait_changes.expect("wait"))(handle, 0, 500);
    }

    // Destroy stops the watch thread and revokes the lease, promptly.
    let started = Instant::now();
    // SAFETY: destroyed once, not used afterwards.
    unsafe { (vtable.destroy.expect("destroy"))(handle) };
    assert!(started.elapsed() < Duration::from_secs(3));

    let mut handle: Handle = std::ptr::null_mut();
    let mut err = Buf::empty();
    // SAFETY: valid pointers for the call.
    let status = unsafe { create(Bytes::of(good.as_bytes()), &mut handle, &mut err) };
    assert_eq!(status, abi::STATUS_OK);
    let (mut out, mut err) = (Buf::empty(), Buf::empty());
    // SAFETY: `handle` is live; valid pointers for the calls; destroyed once.
    unsafe {
        assert_eq!(
            (vtable.snapshot.expect("snapshot"))(handle, 2000, &mut out, &mut err),
            abi::STATUS_OK
        );
        let snapshot =
            abi::decode_snapshot(&take(vtable, out), abi::DCS_VTABLE_MINOR).expect("snapshot");
        assert!(
            snapshot.get("leader").is_none(),
            "destroy revoked the lease"
        );
        (vtable.destroy.expect("destroy"))(handle);
    }
}
