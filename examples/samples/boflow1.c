#include <stdio.h>
#include <string.h>

/* Copies its first argument into a fixed buffer: a classic stack overflow. */
void greet(const char *name) {
    char buffer[16];
    strcpy(buffer, name);
    printf("hello %s\n", buffer);
}

int main(int argc, char **argv) {
    if (argc > 1) {
        greet(argv[1]);
    }
    return 0;
}
