/* libFuzzer harness for prompt text: A1111's attention syntax
 * (zl_prompt_parse_attention) and the tokenizer's chunking with and without it
 * (zl_tokenize_chunks_weighted), which read prompts and prompt files users give.
 * Invariants: the spans are never empty as a list, hold no more text than the
 * input, and merge equal neighbours; chunks tile the ids in order, none longer
 * than 75 tokens; every id is in the CLIP vocabulary or a placeholder of one of
 * the two textual-inversion embeddings registered (a 3-vector "catdog" and a
 * 75-vector "embx"), whose vectors are never split between chunks; without emphasis every
 * weight is 1; a refusal (text that is not UTF-8) leaves nothing allocated and
 * says why. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ziplora/text.h"

static void check(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "fuzz_prompt: invariant broken: %s\n", what);
        abort();
    }
}

static zl_tokenizer *g_tok;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 4096) return 0; /* prompts, not books: the BPE is quadratic in a word's length */
    if (!g_tok) {
        check(zl_tokenizer_new(&g_tok) == ZL_OK, "tokenizer");
        check(zl_tokenizer_add_embedding(g_tok, "catdog", 3, NULL) == ZL_OK, "embedding catdog");
        check(zl_tokenizer_add_embedding(g_tok, "embx", 75, NULL) == ZL_OK, "embedding embx");
    }
    char *text = malloc(size + 1);
    check(text != NULL, "malloc");
    memcpy(text, data, size);
    text[size] = 0;
    const size_t len = strlen(text);

    zl_prompt_span *sp = NULL;
    int n = -1;
    check(zl_prompt_parse_attention(text, &sp, &n) == ZL_OK, "parse failed");
    check(n >= 1 && sp != NULL, "no spans");
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        check(sp[i].text != NULL, "NULL span");
        total += strlen(sp[i].text);
        if (i > 0) check(sp[i].weight != sp[i - 1].weight || sp[i].weight != sp[i].weight, "equal neighbours not merged");
    }
    check(total <= len, "spans hold more text than the prompt");
    zl_prompt_spans_free(sp, n);

    for (int emphasis = 0; emphasis < 2; emphasis++) {
        int32_t *ids = NULL;
        float *w = NULL;
        int *b = NULL, k = -1;
        int rc = zl_tokenize_chunks_weighted(g_tok, text, emphasis, &ids, &w, &b, &k);
        if (rc) {
            check(!ids && !w && !b && k == 0, "failed chunking returned data");
            check(zl_errmsg()[0] != 0, "failure without a message");
            continue;
        }
        check(k >= 1 && b != NULL && w != NULL && b[0] == 0, "chunks");
        for (int c = 0; c < k; c++) check(b[c + 1] >= b[c] && b[c + 1] - b[c] <= ZL_CLIP_MAX_TOKENS, "chunk bounds");
        for (int i = 0; i < b[k]; i++) {
            check(ids[i] >= 0 && ids[i] < ZL_CLIP_VOCAB + 78, "id outside the vocabulary and the embeddings");
            if (!emphasis) check(w[i] == 1.0f, "a weight without emphasis");
        }
        /* placeholders: catdog's 3 (VOCAB + 0..2), embx's 75 (VOCAB + 3..77), each run whole in one chunk */
        for (int c = 0; c < k; c++)
            for (int i = b[c]; i < b[c + 1]; i++) {
                if (ids[i] != ZL_CLIP_VOCAB && ids[i] != ZL_CLIP_VOCAB + 3) continue;
                int rows = ids[i] == ZL_CLIP_VOCAB ? 3 : 75;
                check(i + rows <= b[c + 1], "an embedding split between chunks");
                for (int r = 1; r < rows; r++) check(ids[i + r] == ids[i] + r, "an embedding's vectors out of order");
            }
        free(ids);
        free(w);
        free(b);
    }
    free(text);
    return 0;
}
