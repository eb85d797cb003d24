#include <stdio.h>
#include <string.h>

/* Builds a path with sprintf() and strcat() into fixed buffers. */
void open_report(const char *dir, const char *name) {
    char path[64];
    sprintf(path, "%s/", dir);
    strcat(path, name);
    printf("opening %s\n", path);
}

int main(int argc, char **argv) {
    if (argc > 2) {
        open_report(argv[1], argv[2]);
    }
    return 0;
}
