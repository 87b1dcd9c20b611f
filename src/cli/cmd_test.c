/* cmd_test.c - `patchbay test CONFIG...`: the test files next to each
 * configuration (<name>.test.yaml, patchbay.test.yaml, tests/ *.yaml), run
 * case by case (tk_case.c), one line per case, a report under a failing
 * one, exit 1 when any failed; --watch runs them again whenever a file in
 * the configuration's folder changes (inotify).
 *
 * Nothing connects anywhere and nothing is written: the configuration is
 * loaded like lint loads it (no HTTP client, no state store, no listener),
 * with every processor given the mocked answers of the case (pb_mock).
 *
 * Single-threaded. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/testkit.h"
#include "core/mock.h"
#include "patchbay/pb_log.h"

#define TEST_FILES_MAX 256
#define WATCHES_MAX 128
#define SETTLE_MS 150

static const char usage_text[] =
    "usage: patchbay test [--watch] [--run TEXT] [--verbose] [--color|--no-color] CONFIG...\n";

struct opts {
    bool watch;
    const char *filter;
    struct tk_opts tk;
};

static char *dir_of(const char *path)
{
    char *d = strdup(path);
    if (!d)
        return NULL;
    char *slash = strrchr(d, '/');
    if (!slash) {
        free(d);
        return strdup(".");
    }
    if (slash == d)
        slash[1] = 0;
    else
        *slash = 0;
    return d;
}

static bool is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* The test files of config, in the order they run. */
static size_t find_tests(const char *config, char **out, size_t max)
{
    size_t n = 0;
    char *dir = dir_of(config);
    if (!dir)
        return 0;
    const char *base = strrchr(config, '/') ? strrchr(config, '/') + 1 : config;
    char stem[NAME_MAX + 1], path[PATH_MAX];
    snprintf(stem, sizeof(stem), "%s", base);
    char *dot = strrchr(stem, '.');
    if (dot && (!strcmp(dot, ".yaml") || !strcmp(dot, ".yml")))
        *dot = 0;
    static const char *const exts[] = {".test.yaml", ".test.yml"};
    for (size_t i = 0; i < 2 && n < max; i++) {
        snprintf(path, sizeof(path), "%s/%s%s", dir, stem, exts[i]);
        if (is_file(path))
            out[n++] = strdup(path);
    }
    if (strcmp(stem, "patchbay") != 0) {
        snprintf(path, sizeof(path), "%s/patchbay.test.yaml", dir);
        if (n < max && is_file(path))
            out[n++] = strdup(path);
    }
    snprintf(path, sizeof(path), "%s/tests", dir);
    DIR *d = opendir(path);
    size_t first = n;
    for (struct dirent *e; d && (e = readdir(d)) && n < max;) {
        if (e->d_name[0] == '.' || !(ends_with(e->d_name, ".yaml") || ends_with(e->d_name, ".yml")))
            continue;
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/tests/%s", dir, e->d_name);
        if (is_file(p))
            out[n++] = strdup(p);
    }
    if (d)
        closedir(d);
    qsort(out + first, n - first, sizeof(*out), cmp_str);
    free(dir);
    return n;
}

/* Does the test file's `config:` (if any) name this configuration? */
static bool for_config(const struct tk_file *tf, const char *config)
{
    const struct pb_node *c = pb_node_get(pb_conf_root(tf->doc), "config");
    if (!c || c->type != PB_NODE_SCALAR)
        return true;
    char want[PATH_MAX], a[PATH_MAX], b[PATH_MAX];
    if (c->str[0] == '/')
        snprintf(want, sizeof(want), "%s", c->str);
    else
        snprintf(want, sizeof(want), "%s/%s", tf->dir, c->str);
    return realpath(want, a) && realpath(config, b) && strcmp(a, b) == 0;
}

struct saved_env {
    char *name;
    char *old; /* NULL: was unset */
};

static int run_one_file(const char *config, const char *path, struct pb_mock *mock,
                        const struct opts *o, int *passed, int *failed, bool *used)
{
    struct pb_err err = {0};
    char ebuf[1024];
    struct tk_file tf = {.path = (char *)path};
    struct saved_env saved[64];
    size_t nsaved = 0;
    struct pb_config *c = NULL;
    int rc = 0;

    tf.doc = pb_conf_load_file(path, &err);
    if (!tf.doc) {
        printf("FAIL %s\n    %s\n", path, pb_err_format(&err, ebuf, sizeof(ebuf)));
        (*failed)++;
        return 1;
    }
    tf.dir = dir_of(path);
    const struct pb_node *root = pb_conf_root(tf.doc);
    if (!tf.dir || !root || root->type != PB_NODE_MAP) {
        printf("FAIL %s\n    %s:1:1: a test file is a map: config, env, cases\n", path, path);
        (*failed)++;
        rc = 1;
        goto out;
    }
    for (size_t i = 0; i < root->n; i++) {
        const char *k = root->keys[i]->str;
        if (strcmp(k, "config") && strcmp(k, "env") && strcmp(k, "cases")) {
            printf("FAIL %s\n    %s:%d:%d: unknown key \"%s\" (config, env, cases)\n", path,
                   root->keys[i]->file, root->keys[i]->line, root->keys[i]->col, k);
            (*failed)++;
            rc = 1;
            goto out;
        }
    }
    if (!for_config(&tf, config))
        goto out;
    *used = true;
    tf.cases = pb_node_get(root, "cases");
    if (!tf.cases || tf.cases->type != PB_NODE_SEQ) {
        const struct pb_node *at = tf.cases ? tf.cases : root;
        printf("FAIL %s\n    %s:%d:%d: cases is a list of test cases\n", path, at->file, at->line,
               at->col);
        (*failed)++;
        rc = 1;
        goto out;
    }
    /* env: applied while the configuration loads, then put back. */
    const struct pb_node *env = pb_node_get(root, "env");
    if (env && env->type != PB_NODE_MAP) {
        printf("FAIL %s\n    %s:%d:%d: env is a map of variable names to values\n", path, env->file,
               env->line, env->col);
        (*failed)++;
        rc = 1;
        goto out;
    }
    for (size_t i = 0; env && i < env->n && nsaved < 64; i++) {
        const char *name = env->keys[i]->str, *old = getenv(name);
        const struct pb_node *v = env->vals[i];
        saved[nsaved].name = strdup(name);
        saved[nsaved].old = old ? strdup(old) : NULL;
        nsaved++;
        setenv(name, v->type == PB_NODE_SCALAR ? v->str : "", 1);
    }
    struct pb_diag diag = {0};
    c = pb_config_load_test(config, mock, &diag, &err);
    for (size_t i = 0; i < nsaved; i++) {
        if (saved[i].old)
            setenv(saved[i].name, saved[i].old, 1);
        else
            unsetenv(saved[i].name);
        free(saved[i].name);
        free(saved[i].old);
    }
    if (!c) {
        printf("FAIL %s: the configuration does not load\n", path);
        for (size_t i = 0; i < diag.nerr; i++)
            printf("    %s\n", diag.err[i]);
        if (diag.nerr == 0)
            printf("    %s\n", pb_err_format(&err, ebuf, sizeof(ebuf)));
        pb_diag_free(&diag);
        (*failed)++;
        rc = 1;
        goto out;
    }
    pb_diag_free(&diag);
    tk_run_file(c, mock, &tf, o->filter, &o->tk, stdout, passed, failed);
out:
    pb_config_destroy(c);
    pb_conf_doc_destroy(tf.doc);
    free(tf.dir);
    return rc;
}

/* One pass over every configuration: 0 when every case passed. */
static int run_all(char **configs, int n, const struct opts *o)
{
    int passed = 0, failed = 0;
    struct pb_mock *mock = pb_mock_create();
    if (!mock) {
        fprintf(stderr, "patchbay test: out of memory\n");
        return 1;
    }
    for (int i = 0; i < n; i++) {
        char *files[TEST_FILES_MAX];
        size_t nf = find_tests(configs[i], files, TEST_FILES_MAX);
        bool used = false;
        if (!is_file(configs[i])) {
            printf("FAIL %s: no such file\n", configs[i]);
            failed++;
        }
        for (size_t k = 0; k < nf; k++) {
            if (is_file(configs[i]))
                run_one_file(configs[i], files[k], mock, o, &passed, &failed, &used);
            free(files[k]);
        }
        if (!used && is_file(configs[i])) {
            printf("FAIL %s: no test cases (looked for a .test.yaml next to it and tests/*.yaml)\n",
                   configs[i]);
            failed++;
        }
    }
    pb_mock_destroy(mock);
    const char *col = !o->tk.color ? "" : failed ? "\033[31m" : "\033[32m";
    printf("%s%d passed, %d failed%s\n", col, passed, failed, o->tk.color ? "\033[0m" : "");
    fflush(stdout);
    return failed || passed == 0 ? 1 : 0;
}

/* ---- --watch ------------------------------------------------------------------------------ */

static volatile sig_atomic_t stop_watch;

static void on_signal(int sig)
{
    (void)sig;
    stop_watch = 1;
}

static void add_watches(int fd, const char *dir, int depth, int *n)
{
    if (*n >= WATCHES_MAX)
        return;
    if (inotify_add_watch(
            fd, dir, IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE) >= 0)
        (*n)++;
    if (depth == 0)
        return;
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (e->d_name[0] == '.' || !strcmp(e->d_name, "patchbay-data") ||
            !strcmp(e->d_name, "node_modules"))
            continue;
        char p[PATH_MAX];
        struct stat st;
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        if (stat(p, &st) == 0 && S_ISDIR(st.st_mode))
            add_watches(fd, p, depth - 1, n);
    }
    if (d)
        closedir(d);
}

/* Does a change to name matter (not an editor's swap file, not a store)? */
static bool relevant(const char *name)
{
    if (!name[0] || name[0] == '.' || ends_with(name, "~") || ends_with(name, ".swp") ||
        ends_with(name, ".swx") || ends_with(name, ".tmp") || strstr(name, ".db"))
        return false;
    return true;
}

/* Read what inotify says; true when something relevant changed. */
static bool drain(int fd, char *what, size_t len)
{
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    bool hit = false;
    for (;;) {
        ssize_t r = read(fd, buf, sizeof(buf));
        if (r <= 0)
            return hit;
        for (char *p = buf; p < buf + r;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            if (ev->len && relevant(ev->name)) {
                if (!hit)
                    snprintf(what, len, "%s", ev->name);
                hit = true;
            }
            p += sizeof(*ev) + ev->len;
        }
    }
}

static int watch(char **configs, int n, const struct opts *o)
{
    int status = run_all(configs, n, o);
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "patchbay test: --watch: inotify: %s\n", strerror(errno));
        return 1;
    }
    int nw = 0;
    for (int i = 0; i < n; i++) {
        char *dir = dir_of(configs[i]);
        if (dir)
            add_watches(fd, dir, 2, &nw);
        free(dir);
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    while (!stop_watch) {
        printf("watching %d folder%s for changes (Ctrl-C stops)\n", nw, nw == 1 ? "" : "s");
        fflush(stdout);
        char what[NAME_MAX + 1] = "";
        bool changed = false;
        while (!stop_watch && !changed) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (poll(&p, 1, -1) > 0)
                changed = drain(fd, what, sizeof(what));
        }
        if (stop_watch)
            break;
        /* Let an editor finish writing (several events for one save). */
        for (;;) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            char more[NAME_MAX + 1];
            if (poll(&p, 1, SETTLE_MS) <= 0)
                break;
            drain(fd, more, sizeof(more));
        }
        printf("\n%s changed: running again\n", what);
        status = run_all(configs, n, o);
    }
    close(fd);
    return status;
}

int pb_cmd_test(int argc, char **argv)
{
    struct opts o = {.tk.color = isatty(STDOUT_FILENO)};
    char **configs = calloc((size_t)argc + 1, sizeof(*configs));
    int n = 0;
    if (!configs)
        return 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--watch"))
            o.watch = true;
        else if (!strcmp(a, "--verbose") || !strcmp(a, "-v"))
            o.tk.verbose = true;
        else if (!strcmp(a, "--color"))
            o.tk.color = true;
        else if (!strcmp(a, "--no-color"))
            o.tk.color = false;
        else if (!strcmp(a, "--run") && i + 1 < argc)
            o.filter = argv[++i];
        else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "patchbay test: unknown option %s\n%s", a, usage_text);
            free(configs);
            return 2;
        } else
            configs[n++] = argv[i];
    }
    if (n == 0) {
        fputs(usage_text, stderr);
        free(configs);
        return 2;
    }
    /* Plugins' init may log; a test run shows only what went wrong. */
    if (pb_log_level_min < PB_LOG_WARN)
        pb_log_setup(PB_LOG_WARN, PB_LOG_HUMAN);
    int rc = o.watch ? watch(configs, n, &o) : run_all(configs, n, &o);
    free(configs);
    return rc;
}
