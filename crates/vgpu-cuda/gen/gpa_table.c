/* Derives the cuGetProcAddress table of vgpu's guest libcuda from NVIDIA's real driver.
 *
 * For every exported function of the real libcuda and every base name those exports imply
 * (the name without `_ptds`, `_ptsz` and `_vN` suffixes), asks the real cuGetProcAddress_v2 at
 * every CUDA version from 1.0 to 13.10 (steps of 0.01) with each flag (0 default, 1 legacy
 * stream, 2 per-thread default stream), maps the returned pointer back to the export(s) at that
 * address and prints one row each time the answer changes as the version grows:
 *     symbol <TAB> flags <TAB> from_version <TAB> rc <TAB> status <TAB> export[,alias...]|-
 * Then rows starting with `#` showing how the v1 entry point, a NULL status pointer, invalid
 * flags and invalid arguments behave.
 *
 * Usage: gpa_table /path/to/libcuda.so.1 exports.txt   (exports.txt: one function name a line,
 * e.g. `nm -D --defined-only libcuda.so.1 | awk '$2=="T"{print $3}'`). Needs no GPU context:
 * cuGetProcAddress answers before cuInit. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef int (*gpa2_t)(const char *, void **, int, unsigned long long, int *);
typedef int (*gpa1_t)(const char *, void **, int, unsigned long long);
typedef int (*drv_version_t)(int *);

struct export_sym {
    char *name;
    void *addr;
};

static struct export_sym *exports;
static size_t n_exports;

static void die(const char *what) {
    fprintf(stderr, "gpa_table: %s\n", what);
    exit(1);
}

/* Every export at `addr`, comma-separated, into buf ("-" for NULL). */
static void names_at(void *addr, char *buf, size_t len) {
    buf[0] = 0;
    if (!addr) {
        snprintf(buf, len, "-");
        return;
    }
    for (size_t i = 0; i < n_exports; i++) {
        if (exports[i].addr == addr) {
            if (buf[0]) strncat(buf, ",", len - strlen(buf) - 1);
            strncat(buf, exports[i].name, len - strlen(buf) - 1);
        }
    }
    if (!buf[0]) snprintf(buf, len, "UNEXPORTED");
}

static const char *ptr_state(void *p) {
    return p == NULL ? "null" : (p == (void *)1 ? "untouched" : "set");
}

static int has_suffix(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a > b && strcmp(s + a - b, suf) == 0;
}

/* Strips one variant suffix in place; returns 1 if one was stripped. */
static int strip_one(char *s) {
    static const char *fixed[] = {"_ptds", "_ptsz"};
    for (int i = 0; i < 2; i++) {
        if (has_suffix(s, fixed[i])) {
            s[strlen(s) - strlen(fixed[i])] = 0;
            return 1;
        }
    }
    size_t n = strlen(s), j = n;
    while (j > 0 && s[j - 1] >= '0' && s[j - 1] <= '9') j--;
    if (j < n && j >= 2 && s[j - 1] == 'v' && s[j - 2] == '_') {
        s[j - 2] = 0;
        return 1;
    }
    return 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv) {
    if (argc != 3) die("usage: gpa_table LIBCUDA EXPORTS_TXT");
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) die(dlerror());
    gpa2_t gpa2 = (gpa2_t)dlsym(lib, "cuGetProcAddress_v2");
    gpa1_t gpa1 = (gpa1_t)dlsym(lib, "cuGetProcAddress");
    drv_version_t drv = (drv_version_t)dlsym(lib, "cuDriverGetVersion");
    if (!gpa2 || !gpa1 || !drv) die("the driver lacks cuGetProcAddress(_v2) or cuDriverGetVersion");

    FILE *f = fopen(argv[2], "r");
    if (!f) die("cannot open the exports list");
    size_t cap = 1024;
    exports = calloc(cap, sizeof *exports);
    char line[512];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n \t")] = 0;
        if (!line[0]) continue;
        void *a = dlsym(lib, line);
        if (!a) continue;
        if (n_exports == cap) exports = realloc(exports, (cap *= 2) * sizeof *exports);
        exports[n_exports].name = strdup(line);
        exports[n_exports].addr = a;
        n_exports++;
    }
    fclose(f);
    if (!n_exports) die("no exports resolved");

    /* Candidate symbols: every export and every base name it implies. */
    size_t n_cand = 0;
    char **cand = calloc(n_exports * 4 + 8, sizeof *cand);
    for (size_t i = 0; i < n_exports; i++) {
        char buf[512];
        snprintf(buf, sizeof buf, "%s", exports[i].name);
        cand[n_cand++] = strdup(buf);
        while (strip_one(buf)) cand[n_cand++] = strdup(buf);
    }
    qsort(cand, n_cand, sizeof *cand, cmp_str);
    size_t u = 0;
    for (size_t i = 0; i < n_cand; i++)
        if (u == 0 || strcmp(cand[u - 1], cand[i]) != 0) cand[u++] = cand[i];
    n_cand = u;

    int version = 0;
    drv(&version);
    printf("# cuGetProcAddress_v2 of %s (cuDriverGetVersion %d), %zu exports, %zu symbols\n",
           argv[1], version, n_exports, n_cand);
    printf("# symbol\tflags\tfrom_version\trc\tstatus\texport\n");
    char names[4096], prev[4096];
    for (size_t c = 0; c < n_cand; c++) {
        for (unsigned long long flags = 0; flags <= 2; flags++) {
            int prc = -1, pstatus = -1;
            prev[0] = 0;
            for (int v = 1000; v <= 13100; v += 10) {
                void *pfn = (void *)1;
                int status = -1;
                int rc = gpa2(cand[c], &pfn, v, flags, &status);
                names_at(rc == 0 ? pfn : NULL, names, sizeof names);
                if (rc != prc || status != pstatus || strcmp(names, prev) != 0) {
                    printf("%s\t%llu\t%d\t%d\t%d\t%s\n", cand[c], flags, v, rc, status, names);
                    prc = rc;
                    pstatus = status;
                    snprintf(prev, sizeof prev, "%s", names);
                }
            }
        }
    }

    /* The edges: the v1 entry point, a NULL status pointer, invalid flags (3, 4). */
    static const char *probe_syms[] = {"", "cuInit", "cuNoSuchFunction", "cuMemcpyHtoD",
                                       "cuLaunchKernel", "cuMemcpyHtoD_v2"};
    static const int probe_versions[] = {2000, 11030, 12000, 13000, 13010};
    printf("# kind\tsymbol\tflags\tversion\trc\tpfn\t(status or export)\n");
    for (size_t s = 0; s < sizeof probe_syms / sizeof *probe_syms; s++) {
        for (size_t k = 0; k < sizeof probe_versions / sizeof *probe_versions; k++) {
            for (unsigned long long flags = 0; flags <= 4; flags++) {
                const char *sym = probe_syms[s];
                int v = probe_versions[k];
                void *pfn = (void *)1;
                int rc = gpa1(sym, &pfn, v, flags);
                names_at(rc == 0 ? pfn : NULL, names, sizeof names);
                printf("#v1\t%s\t%llu\t%d\t%d\t%s\t%s\n", sym, flags, v, rc, ptr_state(pfn), names);
                pfn = (void *)1;
                rc = gpa2(sym, &pfn, v, flags, NULL);
                names_at(rc == 0 ? pfn : NULL, names, sizeof names);
                printf("#v2null\t%s\t%llu\t%d\t%d\t%s\t%s\n", sym, flags, v, rc, ptr_state(pfn), names);
                int status = -1;
                pfn = (void *)1;
                rc = gpa2(sym, &pfn, v, flags, &status);
                printf("#v2\t%s\t%llu\t%d\t%d\t%s\t%d\n", sym, flags, v, rc, ptr_state(pfn), status);
            }
        }
    }

    /* Calls that may crash a driver run in a child each; a crash is reported as such. */
    static const char *what[] = {"null-symbol", "null-pfn", "version0", "version-1"};
    for (int which = 0; which < 4; which++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            void *pfn = (void *)1;
            int status = -1, rc = -1;
            if (which == 0) rc = gpa2(NULL, &pfn, 13000, 0, &status);
            if (which == 1) rc = gpa2("cuInit", NULL, 13000, 0, &status);
            if (which == 2) rc = gpa2("cuInit", &pfn, 0, 0, &status);
            if (which == 3) rc = gpa2("cuInit", &pfn, -1, 0, &status);
            printf("#%s\trc=%d\tstatus=%d\t%s\n", what[which], rc, status, ptr_state(pfn));
            fflush(stdout);
            _exit(0);
        }
        int ws = 0;
        waitpid(pid, &ws, 0);
        if (!WIFEXITED(ws)) printf("#%s\tcrashed (signal %d)\n", what[which], WTERMSIG(ws));
    }
    return 0;
}
