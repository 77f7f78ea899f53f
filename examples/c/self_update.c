/*
 * self_update: a complete C host that updates itself with Evergreen.
 *
 *   self_update CONFIG.json
 *
 * check -> print the offer and its component diff -> download with a progress bar ->
 * install into the inactive slot -> activate it on trial -> (a real program restarts
 * here) the startup step -> confirm the new slot once healthy.
 *
 * Exit status: 0 updated or already up to date, 1 on any error (printed with its stable
 * kind name and the library's message).
 */
#include "evergreen.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Prints "error[<kind>]: <what>: <message>" and returns 1, as the evergreen CLI does. */
static int fail(const char *what, evg_status status) {
    const char *message = evg_last_error_message();
    fprintf(stderr, "error[%s]: %s: %s\n", evg_status_name(status), what,
            message ? message : "(no message)");
    return 1;
}

/* Reads a whole file into a NUL-terminated buffer the caller frees. */
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

static const char *op_name(evg_component_op op) {
    switch (op) {
    case EVG_COMPONENT_ADDED: return "added";
    case EVG_COMPONENT_REMOVED: return "removed";
    case EVG_COMPONENT_MODIFIED: return "modified";
    case EVG_COMPONENT_UNCHANGED: return "unchanged";
    }
    return "?";
}

static void print_offer(const evg_offer *offer) {
    const char *current = evg_offer_current(offer);
    size_t i, n = evg_offer_component_count(offer);
    printf("update available: %s -> %s (channel %s%s%s)\n", current ? current : "nothing",
           evg_offer_version(offer), evg_offer_channel(offer),
           evg_offer_critical(offer) ? ", critical" : "",
           evg_offer_downgrade(offer) ? ", downgrade" : "");
    if (*evg_offer_notes(offer)) printf("notes: %s\n", evg_offer_notes(offer));
    for (i = 0; i < n; i++) {
        evg_component c;
        if (evg_offer_component(offer, i, &c) != EVG_OK) continue;
        printf("  %-10s %-9s %s -> %s\n", c.name, op_name(c.op), c.from ? c.from : "-",
               c.to ? c.to : "-");
    }
    printf("download: %llu bytes\n", (unsigned long long)evg_offer_download_size(offer));
}

/* A text progress bar; runs on this thread, between chunks. Returning 0 goes on. */
static int progress_bar(void *user, uint64_t done, uint64_t total) {
    int *last = user;
    int percent = total ? (int)(done * 100 / total) : 100;
    if (percent != *last) {
        int filled = percent / 5;
        *last = percent;
        printf("\r[%.*s%*s] %3d%%", filled, "####################", 20 - filled, "", percent);
        if (done == total) printf("\n");
        fflush(stdout);
    }
    return 0;
}

static void log_event(void *user, const char *event_json) {
    (void)user;
    fprintf(stderr, "event: %s\n", event_json);
}

static int update(evg_updater *up) {
    evg_offer *offer = NULL;
    evg_activation activation;
    evg_startup_result startup;
    evg_status st;
    int last = -1;

    if ((st = evg_check(up, &offer)) != EVG_OK) return fail("check", st);
    if (!offer) {
        printf("up to date\n");
        return 0;
    }
    print_offer(offer);
    /* Refused now what the install would refuse at its end (a trial under way, a release
       below the security floor): nothing is downloaded for it. */
    st = evg_check_install(up, offer);
    if (st == EVG_OK) st = evg_download(up, offer, progress_bar, &last);
    if (st == EVG_OK) st = evg_install(up, offer);
    evg_offer_free(offer); /* the _free functions leave the last error for fail() */
    if (st != EVG_OK) return fail("download and install", st);
    if ((st = evg_activate(up, 0, &activation)) != EVG_OK) return fail("activate", st);
    if (!activation.activated) {
        printf("installed; the deploy policy defers activation until %lld\n",
               (long long)activation.deferred_until);
        return 0;
    }
    printf("slot %s activated on trial; restarting into it\n",
           activation.slot == EVG_SLOT_A ? "a" : "b");

    /* A real program execs itself here; the new process runs the startup step first. */
    if ((st = evg_startup(up, &startup)) != EVG_OK) return fail("startup", st);
    if (startup.kind == EVG_STARTUP_ROLLED_BACK) {
        printf("the new slot failed; rolled back\n");
        return 1;
    }
    if (startup.kind == EVG_STARTUP_TRIAL) {
        printf("on trial, %u start(s) left; health check passed\n", startup.tries_left);
        if ((st = evg_confirm(up)) != EVG_OK) return fail("confirm", st);
        printf("confirmed\n");
    }
    return 0;
}

int main(int argc, char **argv) {
    evg_updater *up = NULL;
    char *config, *status_json = NULL;
    evg_status st;
    int rc;

    if (argc != 2) {
        fprintf(stderr, "usage: %s CONFIG.json\n", argv[0]);
        return 2;
    }
    if (!(config = read_file(argv[1]))) {
        fprintf(stderr, "error[io]: cannot read %s\n", argv[1]);
        return 1;
    }
    printf("evergreen %s\n", evg_version());
    st = evg_updater_new(config, &up);
    free(config);
    if (st != EVG_OK) return fail("config", st);
    evg_set_event_callback(up, log_event, NULL);

    rc = update(up);
    if (rc == 0 && evg_status_json(up, &status_json) == EVG_OK) {
        printf("status: %s\n", status_json);
        evg_string_free(status_json);
    }
    evg_updater_free(up);
    return rc;
}
