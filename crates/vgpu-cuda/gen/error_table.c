/* Lists every CUresult NVIDIA's driver names, with its name and description:
 *     code <TAB> name <TAB> description
 * Usage: error_table /path/to/libcuda.so.1 */
#include <dlfcn.h>
#include <stdio.h>

typedef int (*get_str_t)(int, const char **);

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) return 1;
    get_str_t name = (get_str_t)dlsym(lib, "cuGetErrorName");
    get_str_t desc = (get_str_t)dlsym(lib, "cuGetErrorString");
    if (!name || !desc) return 1;
    for (int code = 0; code < 1200; code++) {
        const char *n = NULL, *d = NULL;
        if (name(code, &n) != 0 || !n) continue;
        if (desc(code, &d) != 0 || !d) d = "";
        printf("%d\t%s\t%s\n", code, n, d);
    }
    return 0;
}
