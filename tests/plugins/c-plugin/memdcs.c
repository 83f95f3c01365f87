/*
 * A spilo DCS plugin written in C against plugins/sdk/include/spilo_plugin.h: a store kept in
 * the daemon's own memory, for a single node (a "standalone" cluster). It exists to prove the
 * C ABI: every entry point, byte slices both ways, plugin-owned buffers, the wire formats.
 *
 * Build: cc -shared -fPIC -O2 -I plugins/sdk/include -I tests/plugins/c-common -o libspilo_memdcs.so memdcs.c -lpthread
 * -DMEMDCS_ABI_MAJOR=N / -DMEMDCS_ABI_MINOR=N build deliberately mismatched variants, which
 * spilo must refuse.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "spilo_plugin.h"
#include "test_plugin_util.h"

#ifndef MEMDCS_ABI_MAJOR
#define MEMDCS_ABI_MAJOR SPILO_ABI_MAJOR
#endif
#ifndef MEMDCS_ABI_MINOR
#define MEMDCS_ABI_MINOR SPILO_ABI_MINOR
#endif

#define MAX_KEYS 256

typedef struct {
    char *key;      /* relative to the prefix */
    uint8_t *value;
    size_t len;
    int64_t version;
    int64_t created; /* revision at creation: the leader key's is the term (ABI 1.1) */
    int ephemeral;  /* bound to the session */
} Entry;

typedef struct {
    pthread_mutex_t lock;
    Entry entries[MAX_KEYS];
    size_t count;
    int64_t revision;
    uint64_t changes;
    int64_t session;
    int session_new;
    char member[256];
} Store;

static Entry *find(Store *s, const char *key, size_t klen) {
    for (size_t i = 0; i < s->count; i++) {
        if (strlen(s->entries[i].key) == klen && memcmp(s->entries[i].key, key, klen) == 0)
            return &s->entries[i];
    }
    return NULL;
}

static int watched(const char *key) {
    return !strcmp(key, "leader") || !strcmp(key, "config") || !strcmp(key, "failover") ||
           !strcmp(key, "initialize");
}

/* Sets key to value; returns 0 when the store is full. */
static int set(Store *s, const char *key, size_t klen, const uint8_t *v, size_t vlen, int eph) {
    Entry *e = find(s, key, klen);
    if (!e) {
        if (s->count == MAX_KEYS) return 0;
        e = &s->entries[s->count++];
        e->key = calloc(1, klen + 1);
        memcpy(e->key, key, klen);
        e->value = NULL;
        e->created = s->revision + 1;
    }
    free(e->value);
    e->value = malloc(vlen ? vlen : 1);
    if (vlen) memcpy(e->value, v, vlen);
    e->len = vlen;
    e->version = ++s->revision;
    e->ephemeral = eph;
    if (watched(e->key)) s->changes++;
    return 1;
}

static void del(Store *s, Entry *e) {
    if (watched(e->key)) s->changes++;
    free(e->key);
    free(e->value);
    *e = s->entries[--s->count];
    s->revision++;
}

static uint32_t create(SpiloBytes config, SpiloHandle *out, SpiloBuf *err) {
    /* The JSON carries "member":"<name>"; a real plugin would parse it properly. */
    const char *needle = "\"member\":\"";
    char *json = calloc(1, config.len + 1);
    if (!json) return fail(err, SPILO_STATUS_INVALID, "out of memory");
    memcpy(json, config.ptr, config.len);
    char *m = strstr(json, needle);
    if (!m) {
        free(json);
        return fail(err, SPILO_STATUS_INVALID, "memdcs: no spilo.member in the configuration");
    }
    m += strlen(needle);
    char *end = strchr(m, '"');
    if (!end || (size_t)(end - m) >= 256) {
        free(json);
        return fail(err, SPILO_STATUS_INVALID, "memdcs: bad spilo.member");
    }
    Store *s = calloc(1, sizeof(Store));
    pthread_mutex_init(&s->lock, NULL);
    memcpy(s->member, m, (size_t)(end - m));
    free(json);
    *out = s;
    return SPILO_STATUS_OK;
}

static void destroy(SpiloHandle h) {
    Store *s = h;
    while (s->count) del(s, &s->entries[0]);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

static void put_u32(uint8_t **p, uint32_t v) { memcpy(*p, &v, 4); *p += 4; }
static void put_i64(uint8_t **p, int64_t v) { memcpy(*p, &v, 8); *p += 8; }

static uint32_t snapshot(SpiloHandle h, uint64_t timeout_ms, SpiloBuf *out, SpiloBuf *err) {
    (void)timeout_ms;
    (void)err;
    Store *s = h;
    pthread_mutex_lock(&s->lock);
    size_t size = 12;
    for (size_t i = 0; i < s->count; i++)
        size += 4 + strlen(s->entries[i].key) + 4 + s->entries[i].len + 9 + (MEMDCS_ABI_MINOR >= 1 ? 8 : 0);
    uint8_t *buf = malloc(size), *p = buf;
    put_i64(&p, s->revision);
    put_u32(&p, (uint32_t)s->count);
    for (size_t i = 0; i < s->count; i++) {
        Entry *e = &s->entries[i];
        size_t kl = strlen(e->key);
        put_u32(&p, (uint32_t)kl);
        memcpy(p, e->key, kl); p += kl;
        put_u32(&p, (uint32_t)e->len);
        memcpy(p, e->value, e->len); p += e->len;
        put_i64(&p, e->version);
        *p++ = (uint8_t)(e->ephemeral ? 1 : 0);
        if (MEMDCS_ABI_MINOR >= 1) put_i64(&p, e->created);
    }
    pthread_mutex_unlock(&s->lock);
    out->ptr = buf;
    out->len = size;
    out->cap = size;
    return SPILO_STATUS_OK;
}

static uint32_t keepalive(SpiloHandle h, uint64_t timeout_ms, SpiloBuf *out, SpiloBuf *err) {
    (void)timeout_ms;
    (void)err;
    Store *s = h;
    uint8_t b[17];
    pthread_mutex_lock(&s->lock);
    int fresh = s->session == 0;
    if (fresh) s->session = 1;
    memcpy(b, &s->session, 8);
    pthread_mutex_unlock(&s->lock);
    b[8] = (uint8_t)fresh;
    uint64_t granted_ms = 0; /* an in-memory store grants whatever was asked: not reported */
    memcpy(b + 9, &granted_ms, 8);
    *out = make_buf(b, MEMDCS_ABI_MINOR >= 1 ? 17 : 9);
    return SPILO_STATUS_OK;
}

static uint32_t put_member(SpiloHandle h, SpiloBytes value, uint64_t timeout_ms, SpiloBuf *err) {
    (void)timeout_ms;
    Store *s = h;
    char key[300];
    snprintf(key, sizeof key, "members/%s", s->member);
    pthread_mutex_lock(&s->lock);
    int ok = set(s, key, strlen(key), value.ptr, value.len, 1);
    pthread_mutex_unlock(&s->lock);
    return ok ? SPILO_STATUS_OK : fail(err, SPILO_STATUS_REFUSED, "memdcs: store full");
}

static uint32_t leader_op(SpiloHandle h, int op, uint8_t *done, SpiloBuf *err) {
    Store *s = h;
    size_t ml = strlen(s->member);
    pthread_mutex_lock(&s->lock);
    Entry *e = find(s, "leader", 6);
    int mine = e && e->len == ml && memcmp(e->value, s->member, ml) == 0;
    int ok = 1;
    switch (op) {
    case 0: /* acquire */
        *done = !e;
        if (!e) ok = set(s, "leader", 6, (const uint8_t *)s->member, ml, 1);
        break;
    case 1: /* reattach */
        *done = !e || mine;
        if (*done) ok = set(s, "leader", 6, (const uint8_t *)s->member, ml, 1);
        break;
    default: /* release */
        *done = mine;
        if (mine) del(s, e);
    }
    pthread_mutex_unlock(&s->lock);
    return ok ? SPILO_STATUS_OK : fail(err, SPILO_STATUS_REFUSED, "memdcs: store full");
}

static uint32_t acquire(SpiloHandle h, uint64_t t, uint8_t *d, SpiloBuf *e) { (void)t; return leader_op(h, 0, d, e); }
static uint32_t reattach(SpiloHandle h, uint64_t t, uint8_t *d, SpiloBuf *e) { (void)t; return leader_op(h, 1, d, e); }
static uint32_t release_(SpiloHandle h, uint64_t t, uint8_t *d, SpiloBuf *e) { (void)t; return leader_op(h, 2, d, e); }

static int cas_ok(Entry *e, uint32_t cas, int64_t version) {
    if (cas == SPILO_CAS_ABSENT) return e == NULL;
    if (cas == SPILO_CAS_VERSION) return e != NULL && e->version == version;
    return 1;
}

static uint32_t put(SpiloHandle h, SpiloBytes key, SpiloBytes value, uint32_t cas, int64_t version,
                    uint64_t timeout_ms, uint8_t *done, SpiloBuf *err) {
    (void)timeout_ms;
    Store *s = h;
    if (cas > SPILO_CAS_VERSION) return fail(err, SPILO_STATUS_INVALID, "memdcs: unknown CAS kind");
    pthread_mutex_lock(&s->lock);
    Entry *e = find(s, (const char *)key.ptr, key.len);
    int ok = 1;
    *done = (uint8_t)cas_ok(e, cas, version);
    if (*done) ok = set(s, (const char *)key.ptr, key.len, value.ptr, value.len, 0);
    pthread_mutex_unlock(&s->lock);
    return ok ? SPILO_STATUS_OK : fail(err, SPILO_STATUS_REFUSED, "memdcs: store full");
}

static uint32_t delete_(SpiloHandle h, SpiloBytes key, uint32_t cas, int64_t version,
                        uint64_t timeout_ms, uint8_t *done, SpiloBuf *err) {
    (void)timeout_ms;
    Store *s = h;
    if (cas > SPILO_CAS_VERSION) return fail(err, SPILO_STATUS_INVALID, "memdcs: unknown CAS kind");
    pthread_mutex_lock(&s->lock);
    Entry *e = find(s, (const char *)key.ptr, key.len);
    *done = (uint8_t)(e != NULL && cas_ok(e, cas, version));
    if (*done) del(s, e);
    pthread_mutex_unlock(&s->lock);
    return SPILO_STATUS_OK;
}

static uint64_t wait_changes(SpiloHandle h, uint64_t seen, uint64_t timeout_ms) {
    Store *s = h;
    struct timespec nap = {0, 50 * 1000 * 1000};
    for (uint64_t waited = 0;; waited += 50) {
        pthread_mutex_lock(&s->lock);
        uint64_t now = s->changes;
        pthread_mutex_unlock(&s->lock);
        if (now != seen || waited >= timeout_ms) return now;
        nanosleep(&nap, NULL);
    }
}

static void set_ttl(SpiloHandle h, uint64_t ttl_ms) { (void)h; (void)ttl_ms; }

static uint32_t close_(SpiloHandle h, uint64_t timeout_ms, SpiloBuf *err) {
    (void)timeout_ms;
    (void)err;
    Store *s = h;
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->count;) {
        if (s->entries[i].ephemeral) del(s, &s->entries[i]);
        else i++;
    }
    s->session = 0;
    pthread_mutex_unlock(&s->lock);
    return SPILO_STATUS_OK;
}

static const SpiloDcsVTable VTABLE = {
    {MEMDCS_ABI_MAJOR, MEMDCS_ABI_MINOR, sizeof(SpiloDcsVTable)},
    create, destroy, snapshot, keepalive, put_member, acquire, reattach, release_,
    put, delete_, wait_changes, set_ttl, close_, free_buf,
};

static const char NAME[] = "memdcs";
static const char VERSION[] = "1.0-c";

static const SpiloPluginDescriptor DESCRIPTOR = {
    {MEMDCS_ABI_MAJOR, MEMDCS_ABI_MINOR, sizeof(SpiloPluginDescriptor)},
    SPILO_KIND_DCS,
    {(const uint8_t *)NAME, sizeof NAME - 1},
    {(const uint8_t *)VERSION, sizeof VERSION - 1},
    &VTABLE,
};

const SpiloPluginDescriptor *spilo_plugin_descriptor(void) { return &DESCRIPTOR; }
