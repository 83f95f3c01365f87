/*
 * spilo plugin ABI, version 1.0 — the C view of plugins/sdk/src/abi.rs (kept by hand; the
 * layout is checked by tests/plugins/c-plugin, compiled against this file).
 *
 * A plugin is a shared library exporting
 *     const SpiloPluginDescriptor *spilo_plugin_descriptor(void);
 * returning static data. Every struct starts with SpiloAbiHeader. Only integers, byte
 * slices, opaque handles and function pointers cross. Results come back in buffers the plugin
 * allocates (SpiloBuf) and frees when the host passes them to free_buf. Every call that talks
 * to the store gets timeout_ms and must return by then. Nothing may unwind across the
 * boundary.
 */
#ifndef SPILO_PLUGIN_H
#define SPILO_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#define SPILO_ABI_MAJOR 1u
#define SPILO_ABI_MINOR 0u

#define SPILO_STATUS_OK 0u
#define SPILO_STATUS_UNAVAILABLE 1u
#define SPILO_STATUS_TIMEOUT 2u
#define SPILO_STATUS_REFUSED 3u
#define SPILO_STATUS_INVALID 4u
#define SPILO_STATUS_PANIC 5u

#define SPILO_KIND_DCS 1u
#define SPILO_KIND_STORAGE 2u
#define SPILO_KIND_LOAD_BALANCER 3u

#define SPILO_CAS_ANY 0u
#define SPILO_CAS_ABSENT 1u
#define SPILO_CAS_VERSION 2u

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
 * uint32 key_len, key, uint32 value_len, value, int64 version, uint8 owned_by_us.
 * Session wire format: int64 id, uint8 new_session.
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

typedef struct {
    SpiloAbiHeader header;
    uint32_t kind;        /* SPILO_KIND_* */
    SpiloBytes name;      /* must match the name in the node configuration */
    SpiloBytes version;   /* free text */
    const SpiloDcsVTable *dcs; /* when kind == SPILO_KIND_DCS, else NULL */
} SpiloPluginDescriptor;

const SpiloPluginDescriptor *spilo_plugin_descriptor(void);

#endif
