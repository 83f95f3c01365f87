/*
 * A spilo load-balancer plugin written in C against plugins/sdk/include/spilo_plugin.h: the
 * routes are kept in memory; a term older than the newest seen is refused with
 * SPILO_STATUS_STALE_TERM and changes nothing. It exists to prove the LB part of the C ABI:
 * every entry point, the names wire format, JSON out of describe, plugin-owned buffers.
 *
 * Build: cc -shared -fPIC -O2 -I plugins/sdk/include -I tests/plugins/c-common -o libspilo_memlb.so memlb.c -lpthread
 * -DMEMLB_NULL_DESCRIBE builds a variant with a NULL entry point, which spilo must refuse.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spilo_plugin.h"
#include "test_plugin_util.h"

#define MAX_REPLICAS 64
#define MAX_NAME 255

typedef struct {
    pthread_mutex_t lock;
    uint64_t term; /* newest seen; 0 = none */
    char primary[MAX_NAME + 1];
    int has_primary;
    char replicas[MAX_REPLICAS][MAX_NAME + 1];
    size_t replica_count;
} Lb;

static uint32_t create(SpiloBytes config_json, SpiloHandle *out, SpiloBuf *err) {
    (void)config_json;
    if (!out) return fail(err, SPILO_STATUS_INVALID, "memlb: null output handle");
    Lb *lb = calloc(1, sizeof(Lb));
    if (!lb) return fail(err, SPILO_STATUS_REFUSED, "memlb: out of memory");
    pthread_mutex_init(&lb->lock, NULL);
    *out = lb;
    return SPILO_STATUS_OK;
}

static void destroy(SpiloHandle h) {
    Lb *lb = h;
    pthread_mutex_destroy(&lb->lock);
    free(lb);
}

/* Admits term under the lock: 0 when stale (the caller unlocks and refuses). */
static int admit(Lb *lb, uint64_t term) {
    if (term < lb->term) return 0;
    lb->term = term;
    return 1;
}

static uint32_t stale(Lb *lb, SpiloBuf *err, uint64_t term) {
    char msg[128];
    snprintf(msg, sizeof msg, "memlb: stale term %llu: term %llu was already seen",
             (unsigned long long)term, (unsigned long long)lb->term);
    pthread_mutex_unlock(&lb->lock);
    return fail(err, SPILO_STATUS_STALE_TERM, msg);
}

static uint32_t set_primary(SpiloHandle h, SpiloBytes member, uint64_t term, uint64_t timeout_ms,
                            SpiloBuf *err) {
    (void)timeout_ms;
    Lb *lb = h;
    if (term == 0) return fail(err, SPILO_STATUS_INVALID, "memlb: term 0");
    if (member.len > MAX_NAME) return fail(err, SPILO_STATUS_INVALID, "memlb: name too long");
    pthread_mutex_lock(&lb->lock);
    if (!admit(lb, term)) return stale(lb, err, term);
    lb->has_primary = member.len > 0;
    if (member.len) memcpy(lb->primary, member.ptr, member.len);
    lb->primary[member.len] = 0;
    pthread_mutex_unlock(&lb->lock);
    return SPILO_STATUS_OK;
}

static uint32_t get_u32(const uint8_t **p, const uint8_t *end, uint32_t *v) {
    if (end - *p < 4) return 0;
    memcpy(v, *p, 4);
    *p += 4;
    return 1;
}

static uint32_t set_replicas(SpiloHandle h, SpiloBytes members, uint64_t term,
                             uint64_t timeout_ms, SpiloBuf *err) {
    (void)timeout_ms;
    Lb *lb = h;
    if (term == 0) return fail(err, SPILO_STATUS_INVALID, "memlb: term 0");
    /* Decode first, so a bad list changes nothing. */
    char names[MAX_REPLICAS][MAX_NAME + 1];
    const uint8_t *p = members.ptr, *end = members.ptr + members.len;
    uint32_t count;
    if (!get_u32(&p, end, &count) || count > MAX_REPLICAS)
        return fail(err, SPILO_STATUS_INVALID, "memlb: bad member list");
    for (uint32_t i = 0; i < count; i++) {
        uint32_t len;
        if (!get_u32(&p, end, &len) || len > MAX_NAME || (size_t)(end - p) < len)
            return fail(err, SPILO_STATUS_INVALID, "memlb: bad member list");
        memcpy(names[i], p, len);
        names[i][len] = 0;
        p += len;
    }
    if (p != end) return fail(err, SPILO_STATUS_INVALID, "memlb: trailing bytes in member list");
    pthread_mutex_lock(&lb->lock);
    if (!admit(lb, term)) return stale(lb, err, term);
    memcpy(lb->replicas, names, sizeof names);
    lb->replica_count = count;
    pthread_mutex_unlock(&lb->lock);
    return SPILO_STATUS_OK;
}

__attribute__((unused)) static uint32_t describe(SpiloHandle h, uint64_t timeout_ms, SpiloBuf *out, SpiloBuf *err) {
    (void)timeout_ms;
    Lb *lb = h;
    /* Names are plain member names; a real plugin would escape them for JSON. */
    size_t cap = 128 + (MAX_REPLICAS + 1) * (MAX_NAME + 4);
    char *json = malloc(cap);
    if (!json) return fail(err, SPILO_STATUS_REFUSED, "memlb: out of memory");
    pthread_mutex_lock(&lb->lock);
    size_t n = 0;
    if (lb->has_primary)
        n += (size_t)snprintf(json + n, cap - n, "{\"primary\":\"%s\",\"replicas\":[", lb->primary);
    else
        n += (size_t)snprintf(json + n, cap - n, "{\"primary\":null,\"replicas\":[");
    for (size_t i = 0; i < lb->replica_count; i++)
        n += (size_t)snprintf(json + n, cap - n, "%s\"%s\"", i ? "," : "", lb->replicas[i]);
    if (lb->term)
        n += (size_t)snprintf(json + n, cap - n, "],\"term\":%llu}", (unsigned long long)lb->term);
    else
        n += (size_t)snprintf(json + n, cap - n, "],\"term\":null}");
    pthread_mutex_unlock(&lb->lock);
    out->ptr = (uint8_t *)json;
    out->len = n;
    out->cap = cap;
    return SPILO_STATUS_OK;
}

static const SpiloLbVTable VTABLE = {
    {SPILO_ABI_MAJOR, SPILO_LB_VTABLE_MINOR, sizeof(SpiloLbVTable)},
    create, destroy, set_primary, set_replicas,
#ifdef MEMLB_NULL_DESCRIBE
    NULL,
#else
    describe,
#endif
    free_buf,
};

static const char NAME[] = "memlb";
static const char VERSION[] = "1.1-c";

static const SpiloPluginDescriptor DESCRIPTOR = {
    {SPILO_ABI_MAJOR, SPILO_DESCRIPTOR_MINOR, sizeof(SpiloPluginDescriptor)},
    SPILO_KIND_LOAD_BALANCER,
    {(const uint8_t *)NAME, sizeof NAME - 1},
    {(const uint8_t *)VERSION, sizeof VERSION - 1},
    &VTABLE,
};

const SpiloPluginDescriptor *spilo_plugin_descriptor(void) { return &DESCRIPTOR; }
