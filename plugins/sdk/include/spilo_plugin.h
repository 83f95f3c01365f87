/*
 * spilo plugin ABI, version 1.1 — the C view of plugins/sdk/src/abi.rs (kept by hand; the
 * layout is checked by tests/plugins/c-plugin and tests/plugins/c-lb, compiled against this
 * file).
 *
 * A plugin is a shared library exporting
 *     const SpiloPluginDescriptor *spilo_plugin_descriptor(void);
 * returning static data. Every struct starts with SpiloAbiHeader, which carries THAT struct's
 * minor (SPILO_*_MINOR below) and its sizeof. Only integers, byte slices, opaque handles and
 * function pointers cross. Results come back in buffers the plugin allocates (SpiloBuf) and
 * frees when the host passes them to free_buf. Every call that talks to the store gets
 * timeout_ms and must return by then. Nothing may unwind across the boundary.
 *
 * Versioning: within major 1 structs only grow by appending fields. The host accepts a struct
 * whose minor is not newer than its own and whose struct_size is at least the size that minor
 * had; fields appended after the plugin's minor read as absent. Wire formats inside buffers
 * follow the minor of the vtable whose call returns them.
 */
#ifndef SPILO_PLUGIN_H
#define SPILO_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#define SPILO_ABI_MAJOR 1u
#define SPILO_ABI_MINOR 1u

/* The minor each struct is built for by this header. */
#define SPILO_DESCRIPTOR_MINOR 1u
#define SPILO_DCS_VTABLE_MINOR 1u
#define SPILO_STORAGE_VTABLE_MINOR 1u /* the storage kind exists since 1.1 */
#define SPILO_LB_VTABLE_MINOR 1u      /* the load-balancer kind exists since 1.1 */

#define SPILO_STATUS_OK 0u
#define SPILO_STATUS_UNAVAILABLE 1u
#define SPILO_STATUS_TIMEOUT 2u
#define SPILO_STATUS_REFUSED 3u
#define SPILO_STATUS_INVALID 4u
#define SPILO_STATUS_PANIC 5u
#define SPILO_STATUS_NOT_FOUND 6u  /* 1.1: storage: no such object */
#define SPILO_STATUS_EXISTS 7u     /* 1.1: storage: put-if-absent found different content */
#define SPILO_STATUS_STALE_TERM 8u /* 1.1: the call carried an older term than one seen */

#define SPILO_KIND_DCS 1u
#define SPILO_KIND_STORAGE 2u
#define SPILO_KIND_LOAD_BALANCER 3u

#define SPILO_CAS_ANY 0u
#define SPILO_CAS_ABSENT 1u
#define SPILO_CAS_VERSION 2u

#define SPILO_PUT_OVERWRITE 0u
#define SPILO_PUT_IF_ABSENT 1u

typedef struct {
    uint32_t abi_major;
    uint32_t abi_minor;
    uint32_t struct_size; /* sizeof the struct this header starts */
} SpiloAbiHeader;

/* Borrowed bytes, valid for the call (or static, in the descriptor). */
typedef struct {
    const uint8_t *ptr;
    size_t len;
} SpiloBytes;

/* A buffer the plugin allocated; the host hands it back to free_buf. */
typedef struct {
    uint8_t *ptr;
    size_t len;
    size_t cap;
} SpiloBuf;

typedef void *SpiloHandle;

/*
 * Snapshot wire format (little-endian): int64 revision, uint32 count, then per entry
 * uint32 key_len, key, uint32 value_len, value, int64 version, uint8 owned_by_us, and since
 * DCS vtable minor 1: int64 created (the store's counter at the key's creation, 0 if unknown;
 * the leader key's is the leader term and must grow with every new leadership).
 * Session wire format: int64 id, uint8 new_session, and since minor 1: uint64 granted_ttl_ms
 * (the session TTL the store granted, 0 if unknown).
 */
typedef struct {
    SpiloAbiHeader header;
    uint32_t (*create)(SpiloBytes config_json, SpiloHandle *out, SpiloBuf *err);
    void (*destroy)(SpiloHandle h);
    uint32_t (*snapshot)(SpiloHandle h, uint64_t timeout_ms, SpiloBuf *out, SpiloBuf *err);
    uint32_t (*keepalive)(SpiloHandle h, uint64_t timeout_ms, SpiloBuf *out, SpiloBuf *err);
    uint32_t (*put_member)(SpiloHandle h, SpiloBytes value, uint64_t timeout_ms, SpiloBuf *err);
    uint32_t (*acquire_leader)(SpiloHandle h, uint64_t timeout_ms, uint8_t *done, SpiloBuf *err);
    uint32_t (*reattach_leader)(SpiloHandle h, uint64_t timeout_ms, uint8_t *done, SpiloBuf *err);
    uint32_t (*release_leader)(SpiloHandle h, uint64_t timeout_ms, uint8_t *done, SpiloBuf *err);
    uint32_t (*put)(SpiloHandle h, SpiloBytes key, SpiloBytes value, uint32_t cas, int64_t version,
                    uint64_t timeout_ms, uint8_t *done, SpiloBuf *err);
    uint32_t (*del)(SpiloHandle h, SpiloBytes key, uint32_t cas, int64_t version,
                    uint64_t timeout_ms, uint8_t *done, SpiloBuf *err);
    uint64_t (*wait_changes)(SpiloHandle h, uint64_t seen, uint64_t timeout_ms);
    void (*set_ttl)(SpiloHandle h, uint64_t ttl_ms);
    uint32_t (*close)(SpiloHandle h, uint64_t timeout_ms, SpiloBuf *err);
    void (*free_buf)(SpiloBuf buf);
} SpiloDcsVTable;

/*
 * Storage (1.1). A flat namespace of objects. Uploads: put_open, put_write*, then put_finish
 * (durable and visible atomically) or put_abort; downloads: get_open, get_read* (an empty
 * buffer is the end), get_close. list returns one page, encoded: uint32 count, per object
 * uint32 key_len, key, uint64 size; then uint8 more.
 */
typedef struct {
    SpiloAbiHeader header;
    uint32_t (*create)(SpiloBytes config_json, SpiloHandle *out, SpiloBuf *err);
    void (*destroy)(SpiloHandle h);
    uint32_t (*put_open)(SpiloHandle h, SpiloBytes key, uint32_t mode, uint64_t timeout_ms,
                         SpiloHandle *upload, SpiloBuf *err);
    uint32_t (*put_write)(SpiloHandle h, SpiloHandle upload, SpiloBytes chunk, uint64_t timeout_ms,
                          SpiloBuf *err);
    uint32_t (*put_finish)(SpiloHandle h, SpiloHandle upload, uint64_t timeout_ms, SpiloBuf *err);
    void (*put_abort)(SpiloHandle h, SpiloHandle upload);
    uint32_t (*get_open)(SpiloHandle h, SpiloBytes key, uint64_t timeout_ms, SpiloHandle *download,
                         uint64_t *size, SpiloBuf *err);
    uint32_t (*get_read)(SpiloHandle h, SpiloHandle download, uint64_t max, uint64_t timeout_ms,
                         SpiloBuf *out, SpiloBuf *err);
    void (*get_close)(SpiloHandle h, SpiloHandle download);
    uint32_t (*head)(SpiloHandle h, SpiloBytes key, uint64_t timeout_ms, uint64_t *size,
                     SpiloBuf *err);
    uint32_t (*list)(SpiloHandle h, SpiloBytes prefix, SpiloBytes start_after, uint32_t limit,
                     uint64_t timeout_ms, SpiloBuf *out, SpiloBuf *err);
    uint32_t (*del)(SpiloHandle h, SpiloBytes key, uint64_t timeout_ms, SpiloBuf *err);
    void (*free_buf)(SpiloBuf buf);
} SpiloStorageVTable;

/*
 * Load balancer (1.1). set_primary's member may be empty (route to nobody); set_replicas'
 * members are encoded: uint32 count, per name uint32 len, name. Both refuse a term older
 * than the newest seen with SPILO_STATUS_STALE_TERM (the same term again is fine); term 0
 * is never sent. describe returns JSON: {"primary": "n1"|null, "replicas": [...],
 * "term": N|null}.
 */
typedef struct {
    SpiloAbiHeader header;
    uint32_t (*create)(SpiloBytes config_json, SpiloHandle *out, SpiloBuf *err);
    void (*destroy)(SpiloHandle h);
    uint32_t (*set_primary)(SpiloHandle h, SpiloBytes member, uint64_t term, uint64_t timeout_ms,
                            SpiloBuf *err);
    uint32_t (*set_replicas)(SpiloHandle h, SpiloBytes members, uint64_t term,
                             uint64_t timeout_ms, SpiloBuf *err);
    uint32_t (*describe)(SpiloHandle h, uint64_t timeout_ms, SpiloBuf *out, SpiloBuf *err);
    void (*free_buf)(SpiloBuf buf);
} SpiloLbVTable;

typedef struct {
    SpiloAbiHeader header;
    uint32_t kind;        /* SPILO_KIND_* */
    SpiloBytes name;      /* must match the name in the node configuration */
    SpiloBytes version;   /* free text */
    /* Interpreted by kind: const SpiloDcsVTable * / SpiloStorageVTable * / SpiloLbVTable *.
       (1.0 called it `dcs`; same layout.) */
    const void *vtable;
} SpiloPluginDescriptor;

const SpiloPluginDescriptor *spilo_plugin_descriptor(void);

#endif
