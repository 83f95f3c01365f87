/*
 * Helpers the C test plugins (tests/plugins/c-plugin, tests/plugins/c-lb) share: buffers the
 * plugin allocates and spilo hands back through the vtable's free_buf, and error replies.
 * Compiled into each plugin (static functions); the harness adds this directory to the
 * include path (tests/harness/bins.rs, build_c_plugin).
 */
#ifndef SPILO_TEST_PLUGIN_UTIL_H
#define SPILO_TEST_PLUGIN_UTIL_H

#include <stdlib.h>
#include <string.h>

#include "spilo_plugin.h"

/* A plugin-owned copy of len bytes (an empty buffer for none, or when out of memory). */
static SpiloBuf make_buf(const void *data, size_t len) {
    SpiloBuf b = {0, 0, 0};
    if (len == 0) return b;
    b.ptr = malloc(len);
    if (!b.ptr) return b;
    memcpy(b.ptr, data, len);
    b.len = len;
    b.cap = len;
    return b;
}

/* Puts msg into *err (when given) and returns status. */
static uint32_t fail(SpiloBuf *err, uint32_t status, const char *msg) {
    if (err) *err = make_buf(msg, strlen(msg));
    return status;
}

/* The vtable's free_buf: releases a buffer made by make_buf. */
static void free_buf(SpiloBuf b) { free(b.ptr); }

#endif
