#include <stdio.h>

/* Reads a line with gets(), which cannot know the buffer's size. */
int read_command(void) {
    char line[32];
    gets(line);
    return line[0] == 'q';
}

int main(void) {
    while (!read_command()) {
    }
    return 0;
}
