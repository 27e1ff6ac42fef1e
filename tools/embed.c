/* Build-time tool: turns a binary file into a C source defining
 * `const unsigned char NAME[]` and `const unsigned long NAME_len`. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s INPUT SYMBOL OUTPUT.c\n", argv[0]);
        return 2;
    }
    FILE *in = fopen(argv[1], "rb");
    if (!in) { perror(argv[1]); return 1; }
    FILE *out = fopen(argv[3], "w");
    if (!out) { perror(argv[3]); fclose(in); return 1; }
    fprintf(out, "/* generated from %s; do not edit */\nconst unsigned char %s[] = {\n", argv[1], argv[2]);
    unsigned long n = 0;
    int c;
    while ((c = fgetc(in)) != EOF) {
        fprintf(out, "%u,%s", (unsigned)c, (++n % 24) ? "" : "\n");
    }
    fprintf(out, "};\nconst unsigned long %s_len = %luUL;\n", argv[2], n);
    int bad = ferror(in) || ferror(out);
    fclose(in);
    if (fclose(out) != 0) bad = 1;
    if (bad) { fprintf(stderr, "embed: I/O error\n"); return 1; }
    return 0;
}
