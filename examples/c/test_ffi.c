/*
 * test_ffi: the C ABI's contract, tested from C (run under valgrind by run.sh).
 *
 *   test_ffi BAD_SIGNATURE_CONFIG.json HOOKS_CONFIG.json POWER_CUT_CONFIG.json \
 *            LAUNCHER_CONFIG.json ROUNDS_CONFIG.json
 *
 * BAD_SIGNATURE_CONFIG trusts a key that did not sign the repository. HOOKS_CONFIG and
 * POWER_CUT_CONFIG (two devices) have a plain directory as their server and dir slots;
 * this program serves it through its own transport (stdio) and boots through its own
 * selectors, as firmware would. LAUNCHER_CONFIG (a device of its own) is read through the
 * library's own file transport and `current` symlink. ROUNDS_CONFIG (a fresh device,
 * served through this program's transport) is checked and downloaded for round after
 * round on one updater.
 * Needs a library built with the fault-injection feature (for evg_debug_panic).
 */
#define _POSIX_C_SOURCE 200809L /* pthreads and clock_gettime under -std=c99 */
#define EVG_FAULT_INJECTION 1
#include "evergreen.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

static int failures = 0;

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            const char *m_ = evg_last_error_message();                                   \
            fprintf(stderr, "FAIL %s:%d: %s (last error: %s)\n", __FILE__, __LINE__,    \
                    #cond, m_ ? m_ : "none");                                            \
            failures++;                                                                  \
        }                                                                                \
    } while (0)

#define CHECK_STATUS(call, expected)                                                     \
    do {                                                                                 \
        evg_status s_ = (call);                                                          \
        if (s_ != (expected)) {                                                          \
            const char *m_ = evg_last_error_message();                                   \
            fprintf(stderr, "FAIL %s:%d: %s = %s, expected %s (last error: %s)\n",        \
                    __FILE__, __LINE__, #call, evg_status_name(s_),                      \
                    evg_status_name(expected), m_ ? m_ : "none");                        \
            failures++;                                                                  \
        }                                                                                \
    } while (0)

static int contains(const char *haystack, const char *needle) {
    return haystack && strstr(haystack, needle) != NULL;
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    char *text = NULL;
    long len;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        text = malloc((size_t)len + 1);
        if (text && fread(text, 1, (size_t)len, f) == (size_t)len) {
            text[len] = '\0';
        } else {
            free(text);
            text = NULL;
        }
    }
    fclose(f);
    return text;
}

/* ---- a host transport over stdio: URLs are file paths ---- */

struct transport {
    int gets;
    int range_gets;
    int lie; /* read claims one byte more than it was asked for */
    int busy; /* answer 429 with Retry-After: 3600 */
    int open; /* bodies handed out and not closed yet */
};

struct body {
    FILE *file;
    char content_range[96];
};

static int t_get(void *user, const char *url, int64_t range_from, const char *if_none_match,
                 evg_response *out) {
    struct transport *t = user;
    struct body *b;
    FILE *f;
    long len;
    (void)if_none_match; /* no entity tags: every poll is a full 200 */
    t->gets++;
    /* The library says how big its evg_response is: every field of this header fits. */
    if (!EVG_RESPONSE_HAS(out, date)) {
        return EVG_NETWORK;
    }
    if (t->busy) {
        out->status = 429;
        out->retry_after = "3600";
        return 0;
    }
    if (!(f = fopen(url, "rb"))) {
        out->status = 404;
        out->content_length = 0;
        return 0;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0) {
        fclose(f);
        return EVG_NETWORK;
    }
    if (range_from >= 0) {
        t->range_gets++;
        if (range_from >= len) {
            fclose(f);
            out->status = 416;
            out->content_length = 0;
            return 0;
        }
    }
    if (!(b = malloc(sizeof *b))) {
        fclose(f);
        return EVG_NETWORK;
    }
    b->file = f;
    fseek(f, range_from >= 0 ? (long)range_from : 0, SEEK_SET);
    if (range_from >= 0) {
        snprintf(b->content_range, sizeof b->content_range, "bytes %lld-%ld/%ld",
                 (long long)range_from, len - 1, len);
        out->status = 206;
        out->content_range = b->content_range;
        out->content_length = len - range_from;
    } else {
        out->status = 200;
        out->content_length = len;
    }
    out->body = b;
    t->open++;
    return 0;
}

static int t_read(void *user, void *body, uint8_t *buf, size_t len, size_t *n) {
    struct transport *t = user;
    struct body *b = body;
    *n = fread(buf, 1, len, b->file);
    if (ferror(b->file)) return EVG_NETWORK;
    if (t->lie) *n = len + 1;
    return 0;
}

static void t_close(void *user, void *body) {
    struct transport *t = user;
    struct body *b = body;
    t->open--;
    fclose(b->file);
    free(b);
}

/* ---- a host boot selector: remembers what it was told ---- */

struct selector {
    evg_slot booted, next;
    int disables, activates, confirms, fall_backs;
    uint32_t tries;
    evg_updater *ask; /* call evg_status_json on it from inside s_booted, once */
    evg_status asked;
};

static int s_disable(void *user, evg_slot slot) {
    struct selector *s = user;
    (void)slot;
    s->disables++;
    return 0;
}

static int s_activate(void *user, evg_slot slot, uint32_t tries) {
    struct selector *s = user;
    s->activates++;
    s->next = slot;
    s->tries = tries;
    return 0;
}

static int s_confirm(void *user, evg_slot slot) {
    struct selector *s = user;
    (void)slot;
    s->confirms++;
    return 0;
}

static int s_fall_back(void *user, evg_slot good, evg_slot bad) {
    struct selector *s = user;
    (void)bad;
    s->fall_backs++;
    s->next = good;
    return 0;
}

static int s_booted(void *user, evg_slot *out) {
    struct selector *s = user;
    if (s->ask) {
        char *json = NULL;
        evg_updater *up = s->ask;
        s->ask = NULL;
        s->asked = evg_status_json(up, &json);
        evg_string_free(json);
    }
    *out = s->booted;
    return 0;
}

/* ---- a bootloader that counts tries itself, as U-Boot does (BOOT_<slot>_LEFT) ---- */

struct bootloader {
    evg_slot preferred, booted;
    uint32_t left[2]; /* attempts left, by slot (EVG_SLOT_A is 0, EVG_SLOT_B is 1) */
    evg_slot asked;   /* the slot activate was last called with */
    int activates;
    int cut_power;    /* activate's write is lost: the power went before it reached the disk */
};

static evg_slot other_slot(evg_slot slot) {
    return slot == EVG_SLOT_A ? EVG_SLOT_B : EVG_SLOT_A;
}

static int b_disable(void *user, evg_slot slot) {
    struct bootloader *b = user;
    b->left[slot] = 0;
    return 0;
}

static int b_activate(void *user, evg_slot slot, uint32_t tries) {
    struct bootloader *b = user;
    b->activates++;
    b->asked = slot;
    if (b->cut_power) return 0; /* written, but never reached the disk */
    b->preferred = slot;
    b->left[slot] = tries;
    return 0;
}

static int b_confirm(void *user, evg_slot slot) {
    struct bootloader *b = user;
    b->left[slot] = 3; /* a good slot gets its attempts back */
    return 0;
}

static int b_fall_back(void *user, evg_slot good, evg_slot bad) {
    struct bootloader *b = user;
    b->preferred = good;
    b->left[bad] = 0;
    return 0;
}

static int b_booted(void *user, evg_slot *out) {
    struct bootloader *b = user;
    *out = b->booted;
    return 0;
}

static int b_plan(void *user, evg_boot_plan *out) {
    struct bootloader *b = user;
    evg_slot other = other_slot(b->preferred);
    out->preferred = b->preferred;
    out->preferred_left = b->left[b->preferred];
    out->preferred_spent = b->left[b->preferred] == 0;
    out->next = !out->preferred_spent ? b->preferred : b->left[other] ? other : EVG_SLOT_NONE;
    return 0;
}

/* Power on: the preferred slot while it has attempts (spending one), else the other. */
static void b_power_on(struct bootloader *b) {
    if (b->left[b->preferred] > 0) {
        b->left[b->preferred]--;
        b->booted = b->preferred;
    } else {
        b->booted = other_slot(b->preferred);
    }
}

/* ---- callbacks ---- */

struct events {
    int count;
    int confirmed;
    int panic_inside; /* provoke a panic from inside the callback chain */
    evg_status inner_status;
    evg_updater *confirm_inside; /* confirm from inside the trial_boot event */
    evg_status confirm_status;
};

static void on_event(void *user, const char *event_json) {
    struct events *e = user;
    e->count++;
    if (contains(event_json, "\"event\":\"confirmed\"")) e->confirmed++;
    if (e->confirm_inside && contains(event_json, "\"event\":\"trial_boot\"")) {
        e->confirm_status = evg_confirm(e->confirm_inside);
        e->confirm_inside = NULL;
    }
    if (e->panic_inside) {
        e->panic_inside = 0;
        e->inner_status = evg_debug_panic("deliberate panic inside an event callback");
    }
}

struct progress {
    int calls;
    int cancel_at_half, cancel_at_end;
    uint64_t first_done, last_done, total;
};

static int on_progress(void *user, uint64_t done, uint64_t total) {
    struct progress *p = user;
    if (p->calls++ == 0) p->first_done = done;
    p->last_done = done;
    p->total = total;
    return (p->cancel_at_half && done >= total / 2) || (p->cancel_at_end && done == total);
}

/* Frees an updater from inside a callback of a call running on it, then counts the
   callbacks that still arrive. */
struct freer {
    evg_updater *updater; /* freed at the first callback */
    int freed;
    int after;        /* callbacks after the free */
    evg_status reuse; /* a call on the freed updater, from the same callback */
};

static void free_now(struct freer *f) {
    char *json = NULL;
    if (f->freed) {
        f->after++;
        return;
    }
    f->freed = 1;
    evg_updater_free(f->updater);
    f->reuse = evg_status_json(f->updater, &json); /* refused, not a use after free */
    evg_updater_free(f->updater);                  /* a second free does nothing more */
}

static void free_on_event(void *user, const char *event_json) {
    (void)event_json;
    free_now(user);
}

static int free_on_progress(void *user, uint64_t done, uint64_t total) {
    (void)done;
    (void)total;
    free_now(user);
    return 0;
}

/* hooks with a transport and a selector (each may be NULL), nothing else */
static void set_hooks(evg_hooks *hooks, evg_transport *transport, evg_selector *selector) {
    memset(hooks, 0, sizeof *hooks);
    hooks->struct_size = sizeof *hooks;
    hooks->transport = transport;
    hooks->selector = selector;
}

/* ---- tests ---- */

static void test_names(void) {
    CHECK(strcmp(evg_status_name(EVG_OK), "ok") == 0);
    CHECK(strcmp(evg_status_name(EVG_HASH_MISMATCH), "hash_mismatch") == 0);
    CHECK(strcmp(evg_status_name(EVG_CANCELLED), "cancelled") == 0);
    CHECK(strcmp(evg_status_name(EVG_PANIC), "panic") == 0);
    CHECK(strcmp(evg_status_name(42), "unknown") == 0);
    CHECK(EVG_CONFIG == 1 && EVG_CANCELLED == 21 && EVG_PANIC == 100);
    CHECK(strlen(evg_version()) > 0);
}

static void test_bad_config(void) {
    evg_updater *up = (evg_updater *)&failures; /* a sentinel: must stay untouched */
    CHECK_STATUS(evg_updater_new("{\"product\": ", &up), EVG_CONFIG);
    CHECK(up == (evg_updater *)&failures);
    CHECK(contains(evg_last_error_message(), "config"));
    CHECK_STATUS(evg_updater_new("{\"product\": \"x\"}", &up), EVG_CONFIG);
    CHECK(evg_last_error_message() && strlen(evg_last_error_message()) > 10);
    CHECK_STATUS(evg_updater_new("{\"product\": \"\xff\xfe\"}", &up), EVG_CONFIG);
    CHECK(contains(evg_last_error_message(), "UTF-8"));
    CHECK(up == (evg_updater *)&failures);
}

static void test_null_arguments(void) {
    evg_updater *up = NULL;
    evg_offer *offer = NULL;
    char *json = NULL;
    CHECK_STATUS(evg_updater_new(NULL, &up), EVG_CONFIG);
    CHECK(contains(evg_last_error_message(), "config_json"));
    CHECK_STATUS(evg_updater_new("{}", NULL), EVG_CONFIG);
    CHECK(contains(evg_last_error_message(), "out"));
    CHECK_STATUS(evg_check(NULL, &offer), EVG_CONFIG);
    CHECK(contains(evg_last_error_message(), "updater"));
    CHECK_STATUS(evg_confirm(NULL), EVG_CONFIG);
    CHECK_STATUS(evg_download(NULL, NULL, NULL, NULL), EVG_CONFIG);
    CHECK_STATUS(evg_status_json(NULL, &json), EVG_CONFIG);
    CHECK_STATUS(evg_offer_json(NULL, &json), EVG_CONFIG);
    CHECK(json == NULL && offer == NULL && up == NULL);
    CHECK(evg_offer_version(NULL) == NULL);
    CHECK(contains(evg_last_error_message(), "offer"));
    CHECK(evg_offer_component_count(NULL) == 0);
    CHECK(!evg_offer_critical(NULL));
    /* _free(NULL) is a no-op */
    evg_updater_free(NULL);
    evg_offer_free(NULL);
    evg_string_free(NULL);
}

static void test_bad_signature(const char *config_path) {
    char *config = read_file(config_path);
    evg_updater *up = NULL;
    evg_offer *offer = (evg_offer *)&failures;
    CHECK(config != NULL);
    if (!config) return;
    CHECK_STATUS(evg_updater_new(config, &up), EVG_OK);
    free(config);
    CHECK_STATUS(evg_check(up, &offer), EVG_SIGNATURE);
    CHECK(contains(evg_last_error_message(), "signature"));
    CHECK(offer == (evg_offer *)&failures);
    evg_updater_free(up);
}

static void test_hook_validation(const char *config, struct transport *t) {
    evg_transport transport = {sizeof(evg_transport), NULL, t_get, t_read, t_close};
    evg_hooks hooks;
    evg_updater *up = NULL;
    set_hooks(&hooks, &transport, NULL);
    transport.user = t;
    transport.read = NULL;
    CHECK_STATUS(evg_updater_new_with_hooks(config, &hooks, &up), EVG_CONFIG);
    CHECK(contains(evg_last_error_message(), "evg_transport.read"));
    transport.read = t_read;
    hooks.struct_size = 8;
    CHECK_STATUS(evg_updater_new_with_hooks(config, &hooks, &up), EVG_CONFIG);
    CHECK(contains(evg_last_error_message(), "struct_size"));
    CHECK(up == NULL);

    /* a selector built against the first header, which ended before boot_plan, is
       accepted; one smaller than that is not */
    {
        struct selector s;
        evg_selector selector = {offsetof(evg_selector, boot_plan), &s, s_disable, s_activate,
                                 s_confirm, s_fall_back, s_booted, 0, NULL};
        memset(&s, 0, sizeof s);
        hooks.struct_size = sizeof hooks;
        hooks.transport = NULL;
        hooks.selector = &selector;
        CHECK_STATUS(evg_updater_new_with_hooks(config, &hooks, &up), EVG_OK);
        evg_updater_free(up);
        up = NULL;
        selector.struct_size -= 1;
        CHECK_STATUS(evg_updater_new_with_hooks(config, &hooks, &up), EVG_CONFIG);
        CHECK(contains(evg_last_error_message(), "evg_selector.struct_size"));
        CHECK(up == NULL);
    }
}

/* An updater freed from inside a callback of a call running on it is released when that
   call returns (valgrind finds no use after free and no leak); from the free on, it calls
   the host back no more, cancels its download, and refuses new calls. */
static void test_free_inside_callbacks(evg_updater *up, const char *config,
                                       const evg_hooks *hooks) {
    struct freer f;
    evg_updater *doomed = NULL;
    evg_offer *older = NULL, *none = (evg_offer *)&failures;

    /* from the check's event: the check still completes */
    memset(&f, 0, sizeof f);
    CHECK_STATUS(evg_updater_new_with_hooks(config, hooks, &doomed), EVG_OK);
    f.updater = doomed;
    CHECK_STATUS(evg_set_event_callback(doomed, free_on_event, &f), EVG_OK);
    CHECK_STATUS(evg_check(doomed, &none), EVG_OK);
    CHECK(none == NULL && f.freed && f.after == 0 && f.reuse == EVG_INVALID_STATE);

    /* from the progress of a download: cancelled, with no progress or event after it
       (a download of this size reports its end, then emits a "downloading" event) */
    memset(&f, 0, sizeof f);
    CHECK_STATUS(evg_updater_new_with_hooks(config, hooks, &doomed), EVG_OK);
    /* an offer is only taken by the updater whose check made it */
    CHECK_STATUS(evg_check_version(up, NULL, "1.0.0", &older), EVG_OK);
    CHECK(older != NULL);
    if (!older) return;
    CHECK_STATUS(evg_download(doomed, older, NULL, NULL), EVG_INVALID_STATE);
    CHECK(contains(evg_last_error_message(), "made by another updater"));
    evg_offer_free(older);
    older = NULL;
    CHECK_STATUS(evg_check_version(doomed, NULL, "1.0.0", &older), EVG_OK);
    CHECK(older != NULL);
    if (!older) return;
    f.updater = doomed;
    CHECK_STATUS(evg_set_event_callback(doomed, free_on_event, &f), EVG_OK);
    CHECK_STATUS(evg_download(doomed, older, free_on_progress, &f), EVG_CANCELLED);
    CHECK(contains(evg_last_error_message(), "freed"));
    CHECK(f.freed && f.after == 0 && f.reuse == EVG_INVALID_STATE);
    evg_offer_free(older);
}

static void test_update_through_hooks(const char *config_path) {
    char *config = read_file(config_path), *json = NULL;
    struct transport t = {0, 0, 0, 0, 0};
    struct selector s;
    struct events ev = {0, 0, 0, EVG_OK, NULL, EVG_OK};
    struct progress p;
    evg_transport transport = {sizeof(evg_transport), NULL, t_get, t_read, t_close};
    evg_selector selector = {sizeof(evg_selector), NULL, s_disable, s_activate, s_confirm,
                             s_fall_back, s_booted, 0, NULL};
    evg_hooks hooks;
    evg_updater *up = NULL;
    evg_offer *offer = NULL, *none = (evg_offer *)&failures;
    evg_component c;
    evg_activation act;
    evg_startup_result start;
    int ranged;

    CHECK(config != NULL);
    if (!config) return;
    memset(&s, 0, sizeof s);
    s.booted = EVG_SLOT_A;
    s.next = EVG_SLOT_A;
    transport.user = &t;
    selector.user = &s;
    set_hooks(&hooks, &transport, &selector);
    hooks.on_event = on_event;
    hooks.event_user = &ev;

    test_hook_validation(config, &t);
    CHECK_STATUS(evg_updater_new_with_hooks(config, &hooks, &up), EVG_OK);
    CHECK(evg_last_error_message() == NULL); /* a success clears the last error */
    if (!up) goto out;

    /* check: the newest release, with its diff */
    CHECK_STATUS(evg_check(up, &offer), EVG_OK);
    CHECK(offer != NULL);
    if (!offer) goto out;
    CHECK(t.gets >= 2); /* root/2.json (404) and the channel */
    CHECK(strcmp(evg_offer_version(offer), "1.1.0") == 0);
    CHECK(evg_offer_current(offer) == NULL);
    CHECK(evg_offer_component_count(offer) == 2);
    CHECK_STATUS(evg_offer_component(offer, 0, &c), EVG_OK);
    CHECK(strcmp(c.name, "app") == 0 && c.op == EVG_COMPONENT_ADDED && c.from == NULL);
    CHECK(c.to && strcmp(c.to, "1.1.0") == 0);
    CHECK_STATUS(evg_offer_component(offer, 2, &c), EVG_CONFIG);
    CHECK(contains(evg_last_error_message(), "index"));
    CHECK_STATUS(evg_offer_json(offer, &json), EVG_OK);
    CHECK(contains(json, "\"version\":\"1.1.0\""));
    evg_string_free(json);

    /* pins: a version the channel lacks, and one that is no version */
    CHECK_STATUS(evg_check_version(up, NULL, "9.9.9", &none), EVG_NO_SUCH_VERSION);
    CHECK_STATUS(evg_check_version(up, NULL, "nine", &none), EVG_CONFIG);
    CHECK_STATUS(evg_check_version(up, "lab", NULL, &none), EVG_NOT_FOUND);
    CHECK(none == (evg_offer *)&failures);

    /* a download cancelled half way keeps its .part; the next one resumes it */
    memset(&p, 0, sizeof p);
    p.cancel_at_half = 1;
    CHECK_STATUS(evg_download(up, offer, on_progress, &p), EVG_CANCELLED);
    CHECK(p.calls >= 1 && p.last_done < p.total);
    ranged = t.range_gets;
    /* ... and a cancel from its last progress call is a cancel too (a host's "stop" is
       never answered with EVG_OK); the finished blob is kept for the next call */
    memset(&p, 0, sizeof p);
    p.cancel_at_end = 1;
    CHECK_STATUS(evg_download(up, offer, on_progress, &p), EVG_CANCELLED);
    CHECK(t.range_gets > ranged);
    CHECK(p.total > 0 && p.last_done == p.total);
    CHECK(p.first_done > p.total / 2); /* resumed, not restarted */
    ranged = t.range_gets;
    CHECK_STATUS(evg_download(up, offer, NULL, NULL), EVG_OK);
    CHECK(t.range_gets == ranged);

    /* install, activate on trial, "restart", count the start, confirm */
    CHECK_STATUS(evg_install(up, offer), EVG_OK);
    CHECK(s.disables == 1);
    CHECK_STATUS(evg_activate(up, 1, &act), EVG_OK);
    CHECK(act.activated && act.slot == s.next && s.activates == 1 && s.tries == 3);
    s.booted = s.next;
    /* a call that changes the state, made from inside an event of a call that holds the
       state's lock, is refused instead of waiting for itself; the outer call finishes */
    ev.confirm_inside = up;
    CHECK_STATUS(evg_startup(up, &start), EVG_OK);
    CHECK(start.kind == EVG_STARTUP_TRIAL && start.slot == s.booted && start.tries_left == 2);
    CHECK(ev.confirm_inside == NULL && ev.confirm_status == EVG_INVALID_STATE);
    CHECK(s.confirms == 0);
    CHECK_STATUS(evg_confirm(up), EVG_OK);
    CHECK(s.confirms == 1 && ev.confirmed == 1 && ev.count >= 5);
    CHECK_STATUS(evg_confirm(up), EVG_OK); /* already good: nothing to do */
    /* the selector calling its own updater back is refused instead of waiting for itself */
    s.ask = up;
    CHECK_STATUS(evg_status_json(up, &json), EVG_OK);
    CHECK(s.ask == NULL && s.asked == EVG_INVALID_STATE);
    CHECK(contains(json, "\"good\"") && contains(json, "1.1.0"));
    evg_string_free(json);
    CHECK_STATUS(evg_check(up, &none), EVG_OK);
    CHECK(none == NULL); /* up to date */

    /* error paths on a live handle */
    CHECK_STATUS(evg_rollback(up, NULL), EVG_INVALID_STATE); /* the fallback is empty */
    CHECK_STATUS(evg_set_channel(up, "../etc"), EVG_CONFIG);
    CHECK_STATUS(evg_skip(up, "1.2.0"), EVG_OK);
    CHECK_STATUS(evg_status_json(up, &json), EVG_OK);
    CHECK(contains(json, "\"skipped\":[\"1.2.0\"]"));
    evg_string_free(json);
    {
        bool was_skipped = false;
        CHECK_STATUS(evg_unskip(up, "1.2.0", &was_skipped), EVG_OK);
        CHECK(was_skipped);
        CHECK_STATUS(evg_unskip(up, "1.2.0", &was_skipped), EVG_OK);
        CHECK(!was_skipped);
        CHECK_STATUS(evg_unskip(up, "1.2.0", NULL), EVG_OK);
        CHECK_STATUS(evg_unskip(up, "1.2", NULL), EVG_CONFIG);
        CHECK_STATUS(evg_unskip(NULL, "1.2.0", NULL), EVG_CONFIG);
    }
    CHECK_STATUS(evg_status_json(up, &json), EVG_OK);
    CHECK(contains(json, "\"skipped\":[]"));
    evg_string_free(json);
    CHECK_STATUS(evg_skip(up, "1.2.0"), EVG_OK);
    CHECK_STATUS(evg_activate(up, 1, &act), EVG_INVALID_STATE);

    /* a transport that claims more bytes than it was given room for: an error, no crash */
    t.lie = 1;
    CHECK_STATUS(evg_check(up, &none), EVG_NETWORK);
    CHECK(contains(evg_last_error_message(), "host transport read"));
    t.lie = 0;

    /* a busy answer's Retry-After reaches the retry loop: an hour is more than a check
       waits, so the base is not asked again in this check */
    t.busy = 1;
    ranged = t.gets;
    CHECK_STATUS(evg_check(up, &none), EVG_HTTP_STATUS);
    CHECK(contains(evg_last_error_message(), "429 (Retry-After: 3600)"));
    CHECK(t.gets == ranged + 1);
    t.busy = 0;

    /* a panic inside the callback chain comes back as EVG_PANIC to the callback, and
       the outer call still completes */
    ev.panic_inside = 1;
    CHECK_STATUS(evg_set_channel(up, "stable"), EVG_OK); /* emits nothing */
    CHECK_STATUS(evg_reinstall(up, NULL, NULL), EVG_OK); /* emits events */
    CHECK(ev.inner_status == EVG_PANIC);

    /* events can be switched off and on at any time */
    CHECK_STATUS(evg_set_event_callback(up, NULL, NULL), EVG_OK);

    test_free_inside_callbacks(up, config, &hooks);

out:
    free(config);
    evg_offer_free(offer);
    evg_updater_free(up);
}

/* One thread downloads; the other frees the updater while the download waits in its
   progress callback. */
struct cross {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    evg_updater *up;
    evg_offer *offer;
    int in_progress, freeing, first_returned, after;
    evg_status status;
    int says_freed; /* the download's error message names the free */
};

/* `ms` milliseconds from now, for pthread_cond_timedwait. */
static struct timespec in_ms(long ms) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

/* The first progress call stays until the other thread is about to free the updater,
   and a while longer: the free must wait for it to return. */
static int cross_progress(void *user, uint64_t done, uint64_t total) {
    struct cross *x = user;
    struct timespec deadline = in_ms(20000); /* bounded */
    (void)done;
    (void)total;
    pthread_mutex_lock(&x->lock);
    if (!x->in_progress) {
        x->in_progress = 1;
        pthread_cond_broadcast(&x->changed);
        while (!x->freeing && pthread_cond_timedwait(&x->changed, &x->lock, &deadline) == 0) {
        }
        deadline = in_ms(100); /* the free is under way now, or will be */
        while (pthread_cond_timedwait(&x->changed, &x->lock, &deadline) == 0) {
        }
        x->first_returned = 1;
    } else {
        x->after++;
    }
    pthread_mutex_unlock(&x->lock);
    return 0;
}

static void *cross_download(void *arg) {
    struct cross *x = arg;
    const char *message;
    x->status = evg_download(x->up, x->offer, cross_progress, x);
    message = evg_last_error_message(); /* this thread's */
    x->says_freed = message && contains(message, "freed by the host");
    return NULL;
}

/* The updater freed on another thread while a download runs on it: the free waits for
   the progress callback running there to return, and no callback runs after it; the
   updater is released when the download returns, which it does as cancelled. */
static void test_free_from_another_thread(const char *config_path, const evg_hooks *hooks) {
    char *config = read_file(config_path);
    struct cross x;
    pthread_t thread;
    struct timespec deadline = in_ms(20000); /* bounded: a download that never reports fails */
    int waited = 0;

    CHECK(config != NULL);
    if (!config) return;
    memset(&x, 0, sizeof x);
    pthread_mutex_init(&x.lock, NULL);
    pthread_cond_init(&x.changed, NULL);
    CHECK_STATUS(evg_updater_new_with_hooks(config, hooks, &x.up), EVG_OK);
    free(config);
    if (!x.up) return;
    CHECK_STATUS(evg_check_version(x.up, NULL, "1.0.0", &x.offer), EVG_OK);
    if (!x.offer) {
        evg_updater_free(x.up);
        return;
    }
    CHECK(pthread_create(&thread, NULL, cross_download, &x) == 0);
    pthread_mutex_lock(&x.lock);
    while (!x.in_progress && waited == 0)
        waited = pthread_cond_timedwait(&x.changed, &x.lock, &deadline);
    x.freeing = 1;
    pthread_cond_broadcast(&x.changed);
    pthread_mutex_unlock(&x.lock);
    CHECK(x.in_progress);
    if (x.in_progress) {
        evg_updater_free(x.up);
        pthread_mutex_lock(&x.lock);
        CHECK(x.first_returned); /* the free waited for the running callback */
        pthread_mutex_unlock(&x.lock);
    }
    pthread_join(thread, NULL);
    CHECK(x.status == EVG_CANCELLED && x.after == 0 && x.says_freed);
    if (!x.in_progress) evg_updater_free(x.up);
    evg_offer_free(x.offer);
    pthread_cond_destroy(&x.changed);
    pthread_mutex_destroy(&x.lock);
}

/* Another process holds the work lock (a cron `evergreen update` downloading a big
   image): a host shutting down frees the updater while one of its calls waits for that
   lock (a check, a download, an install, a repair), and the call returns cancelled at
   once, not when the other process is done. The same for the startup step behind a
   process stopped while it holds the state lock. */
enum locked_call { LOCKED_CHECK, LOCKED_DOWNLOAD, LOCKED_INSTALL, LOCKED_REINSTALL, LOCKED_STARTUP };

struct locked_out {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    evg_updater *up;
    evg_offer *offer;
    enum locked_call call;
    int waiting, returned;
    evg_status status;
    int says_freed;
};

static void note_waiting(void *user, const char *event_json) {
    struct locked_out *l = user;
    const char *lock = l->call == LOCKED_STARTUP ? "\"lock\":\"state\"" : "\"lock\":\"work\"";
    if (!contains(event_json, lock)) return;
    pthread_mutex_lock(&l->lock);
    l->waiting = 1;
    pthread_cond_broadcast(&l->changed);
    pthread_mutex_unlock(&l->lock);
}

static void *locked_out_call(void *arg) {
    struct locked_out *l = arg;
    evg_offer *checked = NULL;
    evg_startup_result started;
    evg_status status = EVG_OK;
    switch (l->call) {
    case LOCKED_CHECK: status = evg_check(l->up, &checked); break;
    case LOCKED_DOWNLOAD: status = evg_download(l->up, l->offer, NULL, NULL); break;
    case LOCKED_INSTALL: status = evg_install(l->up, l->offer); break;
    case LOCKED_REINSTALL: status = evg_reinstall(l->up, NULL, NULL); break;
    case LOCKED_STARTUP: status = evg_startup(l->up, &started); break;
    }
    evg_offer_free(checked);
    const char *message = evg_last_error_message(); /* this thread's */
    pthread_mutex_lock(&l->lock);
    l->status = status;
    l->says_freed = message && contains(message, "freed by the host");
    l->returned = 1;
    pthread_cond_broadcast(&l->changed);
    pthread_mutex_unlock(&l->lock);
    return NULL;
}

static void free_while_waiting_for_the_work_lock(const char *config_path,
                                                 const evg_hooks *hooks, enum locked_call call) {
    char *config = read_file(config_path), *dir, *end, path[4096];
    struct locked_out l;
    pthread_t thread;
    struct timespec deadline = in_ms(20000); /* bounded: the download may never wait */
    int held = -1, waited = 0;

    CHECK(config != NULL);
    if (!config) return;
    /* the state directory's work lock, taken as the other process would */
    dir = strstr(config, "\"state_dir\": \"");
    end = dir ? strchr(dir + 14, '"') : NULL;
    CHECK(end != NULL);
    if (end) {
        snprintf(path, sizeof path, "%.*s/%s", (int)(end - dir - 14), dir + 14,
                 call == LOCKED_STARTUP ? "lock" : "work.lock");
        held = open(path, O_RDWR | O_CREAT, 0644);
    }
    memset(&l, 0, sizeof l);
    l.call = call;
    pthread_mutex_init(&l.lock, NULL);
    pthread_cond_init(&l.changed, NULL);
    CHECK_STATUS(evg_updater_new_with_hooks(config, hooks, &l.up), EVG_OK);
    free(config);
    if (l.up) CHECK_STATUS(evg_check_version(l.up, NULL, "1.0.0", &l.offer), EVG_OK);
    CHECK(held >= 0 && flock(held, LOCK_EX) == 0); /* after the check, which takes it too */
    if (held < 0 || !l.up || !l.offer) {
        evg_updater_free(l.up);
        evg_offer_free(l.offer);
        if (held >= 0) close(held);
        return;
    }
    CHECK_STATUS(evg_set_event_callback(l.up, note_waiting, &l), EVG_OK);
    CHECK(pthread_create(&thread, NULL, locked_out_call, &l) == 0);
    pthread_mutex_lock(&l.lock);
    while (!l.waiting && waited == 0)
        waited = pthread_cond_timedwait(&l.changed, &l.lock, &deadline);
    pthread_mutex_unlock(&l.lock);
    CHECK(l.waiting);
    evg_updater_free(l.up);
    /* the download returns while the lock is still held, or the wait was not cut short */
    deadline = in_ms(5000);
    waited = 0;
    pthread_mutex_lock(&l.lock);
    while (!l.returned && waited == 0)
        waited = pthread_cond_timedwait(&l.changed, &l.lock, &deadline);
    CHECK(l.returned && l.status == EVG_CANCELLED && l.says_freed);
    if (!(l.returned && l.status == EVG_CANCELLED && l.says_freed))
        fprintf(stderr, "  (call %d waiting for a lock, freed)\n", (int)call);
    pthread_mutex_unlock(&l.lock);
    close(held);
    pthread_join(thread, NULL);
    evg_offer_free(l.offer);
    pthread_cond_destroy(&l.changed);
    pthread_mutex_destroy(&l.lock);
}

/* A server being restarted: once `unavailable` is set, every request is answered 503, so
   a call waits between its retries (1 + 2 + 4 s here) and makes no callback meanwhile. A
   host shutting down frees the updater then, from its main thread: the call returns
   cancelled at once and asks nothing more, rather than retrying for the whole back-off. */
struct restarting {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    struct transport files; /* what it serves while available */
    int unavailable, refused, refused_after_free, freed, returned, says_freed;
    evg_updater *up;
    evg_offer *offer;
    int download; /* else a check */
    evg_status status;
};

static int r_get(void *user, const char *url, int64_t range_from, const char *if_none_match,
                 evg_response *out) {
    struct restarting *r = user;
    int unavailable;
    pthread_mutex_lock(&r->lock);
    unavailable = r->unavailable;
    if (unavailable) {
        r->refused++;
        r->refused_after_free += r->freed;
        pthread_cond_broadcast(&r->changed);
    }
    pthread_mutex_unlock(&r->lock);
    if (!unavailable) return t_get(&r->files, url, range_from, if_none_match, out);
    out->status = 503;
    out->content_length = 0;
    return 0;
}

static int r_read(void *user, void *body, uint8_t *buf, size_t len, size_t *n) {
    return t_read(&((struct restarting *)user)->files, body, buf, len, n);
}

static void r_close(void *user, void *body) { t_close(&((struct restarting *)user)->files, body); }

static void *restarting_call(void *arg) {
    struct restarting *r = arg;
    evg_offer *checked = NULL;
    evg_status status = r->download ? evg_download(r->up, r->offer, NULL, NULL)
                                    : evg_check(r->up, &checked);
    const char *message = evg_last_error_message(); /* this thread's */
    evg_offer_free(checked);
    pthread_mutex_lock(&r->lock);
    r->status = status;
    r->says_freed = message && contains(message, "freed by the host");
    r->returned = 1;
    pthread_cond_broadcast(&r->changed);
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

/* Removes what the device at `config_path` has downloaded (its state's downloads). */
static void forget_downloads(const char *config_path) {
    char *config = read_file(config_path), *dir, *end, path[4096], file[4400];
    DIR *d;
    struct dirent *e;
    dir = config ? strstr(config, "\"state_dir\": \"") : NULL;
    end = dir ? strchr(dir + 14, '"') : NULL;
    CHECK(end != NULL);
    if (end) {
        snprintf(path, sizeof path, "%.*s/downloads", (int)(end - dir - 14), dir + 14);
        if ((d = opendir(path))) {
            while ((e = readdir(d)))
                if (e->d_name[0] != '.') {
                    snprintf(file, sizeof file, "%s/%s", path, e->d_name);
                    unlink(file);
                }
            closedir(d);
        }
    }
    free(config);
}

/* `text` with its first `from` replaced by `to` (malloc'd), or NULL when absent. */
static char *replaced(const char *text, const char *from, const char *to) {
    const char *at = text ? strstr(text, from) : NULL;
    char *out;
    if (!at) return NULL;
    out = malloc(strlen(text) - strlen(from) + strlen(to) + 1);
    if (!out) return NULL;
    sprintf(out, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
    return out;
}

static void free_while_waiting_to_retry(const char *config_path, const evg_hooks *hooks,
                                        int download) {
    char *file = read_file(config_path);
    char *slower = replaced(file, "\"retries\": 1", "\"retries\": 3");
    char *config = replaced(slower, "\"retry_backoff_ms\": 10", "\"retry_backoff_ms\": 1000");
    struct restarting r;
    evg_transport transport = {sizeof(evg_transport), NULL, r_get, r_read, r_close};
    evg_hooks mine = *hooks;
    pthread_t thread;
    struct timespec deadline = in_ms(20000), freed_at, returned_at, pause = {0, 200000000L};
    int waited = 0;
    long took_ms;

    free(file);
    free(slower);
    CHECK(config != NULL);
    if (!config) return;
    memset(&r, 0, sizeof r);
    r.download = download;
    pthread_mutex_init(&r.lock, NULL);
    pthread_cond_init(&r.changed, NULL);
    transport.user = &r;
    mine.transport = &transport;
    CHECK_STATUS(evg_updater_new_with_hooks(config, &mine, &r.up), EVG_OK);
    free(config);
    if (r.up) CHECK_STATUS(evg_check_version(r.up, NULL, "1.0.0", &r.offer), EVG_OK);
    if (download) forget_downloads(config_path); /* so that it has something to fetch */
    if (!r.up || !r.offer) {
        evg_updater_free(r.up);
        goto out;
    }
    r.unavailable = 1; /* no other thread yet */
    CHECK(pthread_create(&thread, NULL, restarting_call, &r) == 0);
    pthread_mutex_lock(&r.lock);
    while (r.refused == 0 && waited == 0)
        waited = pthread_cond_timedwait(&r.changed, &r.lock, &deadline);
    pthread_mutex_unlock(&r.lock);
    CHECK(r.refused > 0);
    nanosleep(&pause, NULL); /* inside the first back-off (1 s) */
    pthread_mutex_lock(&r.lock);
    r.freed = 1;
    pthread_mutex_unlock(&r.lock);
    clock_gettime(CLOCK_MONOTONIC, &freed_at);
    evg_updater_free(r.up);
    deadline = in_ms(20000);
    waited = 0;
    pthread_mutex_lock(&r.lock);
    while (!r.returned && waited == 0)
        waited = pthread_cond_timedwait(&r.changed, &r.lock, &deadline);
    pthread_mutex_unlock(&r.lock);
    clock_gettime(CLOCK_MONOTONIC, &returned_at);
    pthread_join(thread, NULL);
    took_ms = (returned_at.tv_sec - freed_at.tv_sec) * 1000L +
              (returned_at.tv_nsec - freed_at.tv_nsec) / 1000000L;
    CHECK(r.returned && took_ms < 1000);
    CHECK(r.status == EVG_CANCELLED);
    CHECK(r.refused_after_free == 0);
    if (download) CHECK(r.says_freed);
    if (!(r.returned && took_ms < 1000 && r.status == EVG_CANCELLED && r.refused_after_free == 0))
        fprintf(stderr, "  (%s freed while waiting to retry: returned %s %ld ms after the free,"
                        " %d request(s) after it)\n",
                download ? "download" : "check", evg_status_name(r.status), took_ms,
                r.refused_after_free);
out:
    evg_offer_free(r.offer);
    pthread_cond_destroy(&r.changed);
    pthread_mutex_destroy(&r.lock);
}

/* The power goes after Evergreen commits a trial and before the host's bootloader
   environment learns of it. At the restart the bootloader starts the old slot again; with
   the selector's boot plan the startup step sees that the trial never started and tells
   the bootloader now, instead of rolling back (and banning) a release that never ran. */
/* The entries of a /proc/self directory: the process's open descriptors or threads. */
static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    if (!d) return -1;
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

/* A host that keeps one updater for weeks: round after round of checks (an offer, a
   busy server, a transport that fails mid-body) and downloads (failing mid-body, refused
   by a busy server) on one handle, each offer and string freed. Every body the transport handed out is closed
   when the call returns, and the process holds as many descriptors and threads at the
   end as after the first round (valgrind finds what was allocated and never freed).
   Ten rounds: one descriptor or thread kept per round already changes the count, and
   valgrind reports a leak of a single round; more rounds only cost time under valgrind
   (100 rounds took 390 s of a CI run). */
static void test_many_rounds_on_one_updater(const char *config_path) {
    enum { ROUNDS = 10 };
    char *config = read_file(config_path), *json = NULL;
    struct transport t = {0, 0, 0, 0, 0};
    evg_transport transport = {sizeof(evg_transport), NULL, t_get, t_read, t_close};
    evg_hooks hooks;
    evg_updater *up = NULL;
    evg_offer *offer = NULL;
    int round, fds = -1, threads = -1, open_after_call = 0;

    CHECK(config != NULL);
    if (!config) return;
    transport.user = &t;
    set_hooks(&hooks, &transport, NULL);
    CHECK_STATUS(evg_updater_new_with_hooks(config, &hooks, &up), EVG_OK);
    if (!up) goto out;
    for (round = 0; round <= ROUNDS; round++) {
        if (round == 1) {
            fds = count_entries("/proc/self/fd");
            threads = count_entries("/proc/self/task");
        }
        CHECK_STATUS(evg_check(up, &offer), EVG_OK);
        CHECK(offer != NULL); /* 1.1.0 */
        evg_offer_free(offer);
        offer = NULL;
        CHECK_STATUS(evg_status_json(up, &json), EVG_OK);
        evg_string_free(json);
        json = NULL;
        t.busy = 1;
        CHECK_STATUS(evg_check(up, &offer), EVG_HTTP_STATUS);
        t.busy = 0;
        t.lie = 1;
        CHECK_STATUS(evg_check(up, &offer), EVG_NETWORK);
        open_after_call |= t.open;
        t.lie = 0;
        CHECK_STATUS(evg_check_version(up, NULL, "1.0.0", &offer), EVG_OK);
        if (!offer) goto out;
        CHECK_STATUS(evg_offer_json(offer, &json), EVG_OK);
        evg_string_free(json);
        json = NULL;
        /* (not finished: a download that finishes has nothing to fetch the next round) */
        t.lie = 1;
        CHECK_STATUS(evg_download(up, offer, NULL, NULL), EVG_NETWORK);
        open_after_call |= t.open;
        t.lie = 0;
        t.busy = 1;
        CHECK_STATUS(evg_download(up, offer, NULL, NULL), EVG_HTTP_STATUS);
        t.busy = 0;
        evg_offer_free(offer);
        offer = NULL;
    }
    CHECK(open_after_call == 0 && t.open == 0);
    CHECK(fds > 0 && count_entries("/proc/self/fd") == fds);
    CHECK(threads > 0 && count_entries("/proc/self/task") == threads);

out:
    free(config);
    evg_offer_free(offer);
    evg_updater_free(up);
}

static void test_power_cut_before_the_bootloader_learns(const char *config_path) {
    char *config = read_file(config_path), *json = NULL;
    struct transport t = {0, 0, 0, 0, 0};
    struct bootloader b;
    evg_transport transport = {sizeof(evg_transport), NULL, t_get, t_read, t_close};
    evg_selector selector = {sizeof(evg_selector), NULL, b_disable, b_activate, b_confirm,
                             b_fall_back, b_booted, 1, b_plan};
    evg_hooks hooks;
    evg_updater *up = NULL;
    evg_offer *offer = NULL;
    evg_activation act;
    evg_startup_result start;

    CHECK(config != NULL);
    if (!config) return;
    memset(&b, 0, sizeof b);
    b.preferred = b.booted = EVG_SLOT_A;
    b.left[EVG_SLOT_A] = 3;
    transport.user = &t;
    selector.user = &b;
    set_hooks(&hooks, &transport, &selector);

    CHECK_STATUS(evg_updater_new_with_hooks(config, &hooks, &up), EVG_OK);
    if (!up) goto out;
    CHECK_STATUS(evg_startup(up, &start), EVG_OK);
    CHECK_STATUS(evg_check(up, &offer), EVG_OK);
    CHECK(offer != NULL);
    if (!offer) goto out;
    CHECK_STATUS(evg_download(up, offer, NULL, NULL), EVG_OK);
    CHECK_STATUS(evg_install(up, offer), EVG_OK);
    /* (A selector that returns an error instead gets the state from before back: the
       caller hears that nothing changed. A power cut leaves no one to restore it.) */
    b.cut_power = 1;
    CHECK_STATUS(evg_activate(up, 1, &act), EVG_OK);
    CHECK(b.activates == 1 && b.preferred == EVG_SLOT_A);
    evg_updater_free(up); /* the process is gone */

    /* the restart: the bootloader never heard of the trial and starts the old slot */
    b.cut_power = 0;
    b_power_on(&b);
    CHECK(b.booted == EVG_SLOT_A);
    CHECK_STATUS(evg_updater_new_with_hooks(config, &hooks, &up), EVG_OK);
    if (!up) goto out;
    CHECK_STATUS(evg_startup(up, &start), EVG_OK);
    CHECK(start.kind == EVG_STARTUP_NORMAL); /* not EVG_STARTUP_ROLLED_BACK */
    CHECK(b.activates == 2 && b.preferred == b.asked && b.left[b.asked] == 3);
    CHECK_STATUS(evg_status_json(up, &json), EVG_OK);
    CHECK(json && contains(json, "\"trial\":{") && !contains(json, "\"bad\""));
    evg_string_free(json);

    /* the next boot starts the trial; its starts left are the bootloader's count */
    b_power_on(&b);
    CHECK(b.booted == b.asked);
    CHECK_STATUS(evg_startup(up, &start), EVG_OK);
    CHECK(start.kind == EVG_STARTUP_TRIAL && start.slot == b.asked && start.tries_left == 2);
    CHECK_STATUS(evg_confirm(up), EVG_OK);

    /* this device has never downloaded 1.0.0: a download for the next test to cut short */
    test_free_from_another_thread(config_path, &hooks);
    free_while_waiting_for_the_work_lock(config_path, &hooks, LOCKED_CHECK);
    free_while_waiting_for_the_work_lock(config_path, &hooks, LOCKED_DOWNLOAD);
    free_while_waiting_for_the_work_lock(config_path, &hooks, LOCKED_INSTALL);
    free_while_waiting_for_the_work_lock(config_path, &hooks, LOCKED_REINSTALL);
    free_while_waiting_for_the_work_lock(config_path, &hooks, LOCKED_STARTUP);
    free_while_waiting_to_retry(config_path, &hooks, 0);
    free_while_waiting_to_retry(config_path, &hooks, 1);

out:
    free(config);
    evg_offer_free(offer);
    evg_updater_free(up);
}

/* A host asks before a download meant for an install: while the running release is on
   trial (started, starts left) the install of the next one would be refused at its end,
   so evg_check_install refuses it now with the trial's status and message, and the host
   downloads nothing; once the trial is confirmed the same offer passes. `up` runs
   CONFIG_PATH's device, whose running slot is on trial; it leaves it so. */
static void test_check_install_during_a_trial(evg_updater *up, const char *config_path) {
    char downloads[4096];
    const char *slash = strrchr(config_path, '/');
    evg_offer *offer = NULL;
    int before;

    CHECK(slash != NULL);
    if (!slash) return;
    snprintf(downloads, sizeof downloads, "%.*s/state/downloads", (int)(slash - config_path),
             config_path);
    CHECK_STATUS(evg_check_install(NULL, NULL), EVG_CONFIG);
    CHECK(contains(evg_last_error_message(), "updater"));
    CHECK_STATUS(evg_check_install(up, NULL), EVG_CONFIG);
    CHECK(contains(evg_last_error_message(), "offer"));
    CHECK_STATUS(evg_check_version(up, NULL, "1.1.0", &offer), EVG_OK);
    CHECK(offer != NULL);
    if (!offer) return;
    before = count_entries(downloads);
    CHECK(before > 2); /* the running release's own download is kept */
    /* the host's sequence: ask, and download only when the install would go ahead */
    if (evg_check_install(up, offer) == EVG_OK)
        evg_download(up, offer, NULL, NULL);
    CHECK_STATUS(evg_check_install(up, offer), EVG_INVALID_STATE);
    CHECK(contains(evg_last_error_message(), "is on trial; confirm or roll back"));
    CHECK(count_entries(downloads) == before); /* nothing downloaded */
    CHECK_STATUS(evg_install(up, offer), EVG_INVALID_STATE); /* what it foretold */
    evg_offer_free(offer);
}

/* Where `current` points, relative to the slots' root ("slots/a"), or "" when unreadable. */
static void read_current(const char *current, char *out, size_t size) {
    ssize_t n = readlink(current, out, size - 1);
    out[n > 0 ? (size_t)n : 0] = '\0';
}

/* The power goes after an activation commits its trial and before it points `current` at
   the trial slot: the restart starts the old slot's launcher. A launcher runs the step and
   then starts what `current` names; evg_startup_for_launcher repairs the switch and counts
   this start as the trial's, so the release on trial confirms itself on its first start.
   (evg_startup would count it as the old slot's: EVG_STARTUP_NORMAL, and the trial's
   evg_confirm refused.) LAUNCHER_CONFIG has dir slots under app/ beside it. */
static void test_launcher_after_an_activation_cut_short(const char *config_path) {
    char *config = read_file(config_path);
    char current[4096], old[256], trial[256], now[256];
    const char *slash = strrchr(config_path, '/');
    evg_updater *up = NULL;
    evg_offer *offer = NULL;
    evg_activation act;
    evg_startup_result start;

    CHECK(config != NULL && slash != NULL);
    if (!config || !slash) goto out;
    snprintf(current, sizeof current, "%.*s/app/current", (int)(slash - config_path),
             config_path);
    CHECK_STATUS(evg_updater_new(config, &up), EVG_OK);
    if (!up) goto out;
    CHECK_STATUS(evg_check_version(up, NULL, "1.0.0", &offer), EVG_OK);
    if (!offer) goto out;
    CHECK_STATUS(evg_download(up, offer, NULL, NULL), EVG_OK);
    CHECK_STATUS(evg_install(up, offer), EVG_OK);
    CHECK_STATUS(evg_activate(up, 1, &act), EVG_OK);
    CHECK_STATUS(evg_startup_for_launcher(up, &start), EVG_OK);
    CHECK(start.kind == EVG_STARTUP_TRIAL);
    evg_offer_free(offer);
    offer = NULL;
    test_check_install_during_a_trial(up, config_path);
    CHECK_STATUS(evg_confirm(up), EVG_OK);
    read_current(current, old, sizeof old);

    CHECK_STATUS(evg_check(up, &offer), EVG_OK);
    if (!offer) goto out;
    CHECK(strcmp(evg_offer_version(offer), "1.1.0") == 0);
    CHECK_STATUS(evg_check_install(up, offer), EVG_OK); /* confirmed: no trial under way */
    CHECK_STATUS(evg_download(up, offer, NULL, NULL), EVG_OK);
    CHECK_STATUS(evg_install(up, offer), EVG_OK);
    CHECK_STATUS(evg_activate(up, 1, &act), EVG_OK);
    read_current(current, trial, sizeof trial);
    CHECK(old[0] != '\0' && trial[0] != '\0' && strcmp(old, trial) != 0);
    evg_updater_free(up); /* the process is gone ... */
    up = NULL;
    /* ... before `current` reached the disk */
    CHECK(unlink(current) == 0 && symlink(old, current) == 0);

    CHECK_STATUS(evg_updater_new(config, &up), EVG_OK);
    if (!up) goto out;
    CHECK_STATUS(evg_startup_for_launcher(up, &start), EVG_OK);
    CHECK(start.kind == EVG_STARTUP_TRIAL && start.slot == act.slot && start.tries_left == 2);
    read_current(current, now, sizeof now);
    CHECK(strcmp(now, trial) == 0); /* what the launcher starts next */
    CHECK_STATUS(evg_confirm(up), EVG_OK);
    CHECK_STATUS(evg_startup_for_launcher(NULL, &start), EVG_CONFIG);
    CHECK_STATUS(evg_startup_for_launcher(up, NULL), EVG_CONFIG);

out:
    free(config);
    evg_offer_free(offer);
    evg_updater_free(up);
}

/* The host timer's calls: a device that never checked is due, and checks (the server asked,
   an offer); right after, it is not due (the poll interval, 6 h ± 25 % by default): no
   request, no offer, `checked` false; a failed check moves the schedule too (badsig). */
static void test_check_if_due(const char *config_path, const char *badsig_path) {
    char *config = read_file(config_path);
    struct transport t = {0, 0, 0, 0, 0};
    evg_transport transport = {sizeof(evg_transport), NULL, t_get, t_read, t_close};
    evg_hooks hooks;
    evg_updater *up = NULL;
    evg_offer *offer = NULL, *none = (evg_offer *)&failures;
    bool checked = false;
    int64_t due = -1, again = -1;
    int gets;
    time_t now = time(NULL);

    CHECK(config != NULL);
    if (!config) return;
    transport.user = &t;
    set_hooks(&hooks, &transport, NULL);
    CHECK_STATUS(evg_updater_new_with_hooks(config, &hooks, &up), EVG_OK);
    free(config);
    if (!up) return;

    CHECK_STATUS(evg_next_check(up, &due), EVG_OK);
    CHECK(due <= (int64_t)time(NULL)); /* never checked: due now */
    CHECK_STATUS(evg_check_if_due(up, &offer, &checked), EVG_OK);
    CHECK(checked && t.gets >= 2 && offer != NULL);
    CHECK(offer && strcmp(evg_offer_version(offer), "1.1.0") == 0);
    evg_offer_free(offer);

    CHECK_STATUS(evg_next_check(up, &due), EVG_OK);
    CHECK(due >= (int64_t)now + 4 * 3600 && due <= (int64_t)time(NULL) + 8 * 3600);
    gets = t.gets;
    offer = (evg_offer *)&failures;
    CHECK_STATUS(evg_check_if_due(up, &offer, &checked), EVG_OK);
    CHECK(!checked && offer == NULL && t.gets == gets); /* not due: nothing asked */
    CHECK_STATUS(evg_check_if_due(up, &offer, NULL), EVG_OK); /* `checked` is optional */
    CHECK(offer == NULL && t.gets == gets);
    CHECK_STATUS(evg_next_check(up, &again), EVG_OK);
    CHECK(again == due); /* the same answer until a check moves it */

    /* arguments */
    CHECK_STATUS(evg_check_if_due(NULL, &none, NULL), EVG_CONFIG);
    CHECK(contains(evg_last_error_message(), "updater"));
    CHECK_STATUS(evg_check_if_due(up, NULL, &checked), EVG_CONFIG);
    CHECK(contains(evg_last_error_message(), "out"));
    CHECK_STATUS(evg_next_check(up, NULL), EVG_CONFIG);
    CHECK_STATUS(evg_next_check(NULL, &due), EVG_CONFIG);
    CHECK(none == (evg_offer *)&failures && t.gets == gets);
    evg_updater_free(up);

    /* A check that failed (a stranger's signature, test_bad_signature) backs off. */
    config = read_file(badsig_path);
    CHECK(config != NULL);
    if (!config) return;
    up = NULL;
    CHECK_STATUS(evg_updater_new(config, &up), EVG_OK);
    free(config);
    CHECK_STATUS(evg_next_check(up, &due), EVG_OK);
    CHECK(due > (int64_t)time(NULL));
    checked = true;
    CHECK_STATUS(evg_check_if_due(up, &none, &checked), EVG_OK);
    CHECK(!checked && none == NULL);
    evg_updater_free(up);
}

/* `config` (a JSON object's text) with `extra` (`"key": value`) added as its last member;
   freed by the caller. */
static char *with_member(const char *config, const char *extra) {
    const char *end = strrchr(config, '}');
    size_t head = end ? (size_t)(end - config) : 0;
    char *out = end ? malloc(head + strlen(extra) + 4) : NULL;
    if (out) {
        memcpy(out, config, head);
        sprintf(out + head, ",%s}", extra);
    }
    return out;
}

/* A host timer's activation: nothing staged, nothing done; a release staged under an `at`
   time years away is deferred until it; under the default policy it goes ahead, once. */
static void test_activate_if_due(const char *config_path) {
    char *config = read_file(config_path), *later = NULL;
    evg_updater *up = NULL;
    evg_offer *offer = NULL;
    evg_activation act;
    bool staged = true;

    CHECK(config != NULL);
    if (!config) return;
    later = with_member(config, "\"deploy\": {\"policy\": \"at\", \"at\": \"2099-01-01T00:00:00Z\"}");
    CHECK(later != NULL);
    if (!later) goto out;
    CHECK_STATUS(evg_updater_new(later, &up), EVG_OK);
    if (!up) goto out;
    CHECK_STATUS(evg_activate_if_due(up, &act, &staged), EVG_OK);
    CHECK(!staged && !act.activated && act.slot == EVG_SLOT_NONE && act.deferred_until == -1);
    CHECK_STATUS(evg_check(up, &offer), EVG_OK);
    CHECK(offer != NULL);
    if (!offer) goto out;
    CHECK_STATUS(evg_download(up, offer, NULL, NULL), EVG_OK);
    CHECK_STATUS(evg_install(up, offer), EVG_OK);
    CHECK_STATUS(evg_activate_if_due(up, &act, &staged), EVG_OK);
    CHECK(staged && !act.activated && act.deferred_until == 4070908800); /* 2099-01-01 */
    CHECK_STATUS(evg_activate_if_due(up, NULL, NULL), EVG_CONFIG);
    CHECK(contains(evg_last_error_message(), "out"));
    evg_updater_free(up);

    up = NULL;
    CHECK_STATUS(evg_updater_new(config, &up), EVG_OK);
    if (!up) goto out;
    CHECK_STATUS(evg_activate_if_due(up, &act, NULL), EVG_OK);
    CHECK(act.activated && act.slot != EVG_SLOT_NONE && act.deferred_until == 0);
    CHECK_STATUS(evg_activate_if_due(up, &act, &staged), EVG_OK);
    CHECK(!staged && !act.activated); /* activated once: nothing staged now */
out:
    evg_offer_free(offer);
    evg_updater_free(up);
    free(later);
    free(config);
}

static void test_panic(void) {
    CHECK_STATUS(evg_debug_panic("deliberate panic"), EVG_PANIC);
    CHECK(contains(evg_last_error_message(), "deliberate panic"));
    CHECK_STATUS(evg_debug_panic(NULL), EVG_CONFIG);
    CHECK(strcmp(evg_status_name(EVG_OK), "ok") == 0);
}

/* Hosts free their updater from an atexit handler or a C++ static's destructor, which run
   after the exiting thread's locals are gone. Every call there must still work (or fail
   with a status), never abort the process: run.sh checks the exit status. */
static evg_updater *at_exit_updater;

static void calls_at_exit(void) {
    evg_updater *up = NULL;
    char *status = NULL;
    if (evg_updater_new("{\"product\": ", &up) != EVG_CONFIG)
        _exit(3);
    (void)evg_last_error_message(); /* NULL or the message: either is fine here */
    if (evg_status_json(at_exit_updater, &status) != EVG_OK)
        _exit(4);
    evg_string_free(status);
    evg_updater_free(at_exit_updater);
}

static void test_calls_at_exit(const char *config_path) {
    char *config = read_file(config_path);
    CHECK(config != NULL);
    if (config == NULL)
        return;
    CHECK_STATUS(evg_updater_new(config, &at_exit_updater), EVG_OK);
    free(config);
    CHECK(atexit(calls_at_exit) == 0);
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr,
                "usage: %s BAD_SIGNATURE_CONFIG.json HOOKS_CONFIG.json POWER_CUT_CONFIG.json "
                "LAUNCHER_CONFIG.json ROUNDS_CONFIG.json DUE_CONFIG.json\n",
                argv[0]);
        return 2;
    }
    test_names();
    test_bad_config();
    test_null_arguments();
    test_bad_signature(argv[1]);
    test_check_if_due(argv[6], argv[1]);
    test_activate_if_due(argv[6]);
    test_update_through_hooks(argv[2]);
    test_power_cut_before_the_bootloader_learns(argv[3]);
    test_launcher_after_an_activation_cut_short(argv[4]);
    test_panic();
    test_many_rounds_on_one_updater(argv[5]);
    test_calls_at_exit(argv[1]);
    if (failures) {
        fprintf(stderr, "test_ffi: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_ffi: all checks passed\n");
    return 0;
}
