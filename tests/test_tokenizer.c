/* CLIP tokenizer tests: every case of tokenizer_cases.json (mini-sdxl and
 * tiny-sd15) must match exactly; unit tests for letters, digits, apostrophes,
 * html entities, whitespace, truncation (with its warning), bad UTF-8.
 *
 * Expected ids in the unit tests are derived from the vocabulary file itself,
 * not from the tokenizer: vocab_id() below reads the .gz independently and
 * returns 512 + i for the token made by merge line i (1-based after the
 * header), which is how CLIP numbers them. Byte tokens are numbered by
 * OpenAI's bytes_to_unicode order: '!'..'~' come first, so an ASCII
 * punctuation or digit byte b has id (b - 0x21), and + 256 with "</w>". */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "testlib.h"
#include "ziplora/text.h"

static char *g_vocab;      /* decompressed vocabulary file */
static const char *g_lines[48900];
static int g_nlines;

static void load_vocab(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/../../data/vocab/bpe_simple_vocab_16e6.txt.gz", ZL_TEST_DATA);
    gzFile f = gzopen(path, "rb");
    CHECKM(f != NULL, "open %s", path);
    if (!f) return;
    size_t cap = 4 << 20, n = 0;
    g_vocab = malloc(cap);
    int r;
    while ((r = gzread(f, g_vocab + n, (unsigned)(cap - n - 1))) > 0) n += (size_t)r;
    gzclose(f);
    g_vocab[n] = 0;
    /* keep lines 1..48894 (line 0 is the header) */
    char *p = g_vocab;
    for (int i = 0; i <= 48894 && p; i++) {
        char *nl = strchr(p, '\n');
        if (nl) *nl = 0;
        if (i > 0) g_lines[g_nlines++] = p;
        p = nl ? nl + 1 : NULL;
    }
}

/* Id of a token given in the byte alphabet ("dog</w>"): the merge line whose two
 * halves concatenate to it. */
static int vocab_id(const char *tok) {
    for (int i = 0; i < g_nlines; i++) {
        const char *sp = strchr(g_lines[i], ' ');
        size_t a = (size_t)(sp - g_lines[i]);
        if (!strncmp(tok, g_lines[i], a) && !strcmp(tok + a, sp + 1)) return 512 + i;
    }
    CHECKM(0, "token '%s' not in the vocabulary file", tok);
    return -1;
}

static zl_tokenizer *g_tok;

/* Tokenize and compare to an expected list (-1 terminated). */
static void expect_ids(const char *text, const int *want) {
    int32_t *ids = NULL;
    int n = 0;
    int rc = zl_tokenize(g_tok, text, &ids, &n);
    CHECKM(rc == ZL_OK, "tokenize '%s': %s", text, zl_errmsg());
    int nw = 0;
    while (want[nw] >= 0) nw++;
    int same = n == nw;
    for (int i = 0; same && i < n; i++) same = ids[i] == want[i];
    if (!same) {
        fprintf(stderr, "  '%s': got", text);
        for (int i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "; want");
        for (int i = 0; i < nw; i++) fprintf(stderr, " %d", want[i]);
        fprintf(stderr, "\n");
    }
    CHECKM(same, "ids of '%s'", text);
    free(ids);
}

/* Two texts must tokenize to the same ids. */
static void expect_same(const char *a, const char *b) {
    int32_t *ia = NULL, *ib = NULL;
    int na = 0, nb = 0;
    CHECK_OK(zl_tokenize(g_tok, a, &ia, &na));
    CHECK_OK(zl_tokenize(g_tok, b, &ib, &nb));
    CHECKM(na == nb && (na == 0 || !memcmp(ia, ib, (size_t)na * sizeof *ia)), "'%s' and '%s' tokenize alike", a, b);
    free(ia);
    free(ib);
}

static int ids_of_count(const char *t) {
    int32_t *v = NULL;
    int n = -1;
    if (zl_tokenize(g_tok, t, &v, &n)) n = -1;
    free(v);
    return n;
}

static void test_cases_file(const char *fixture) {
    char rel[256];
    snprintf(rel, sizeof rel, "%s/tokenizer_cases.json", fixture);
    json_error_t err;
    json_t *root = json_load_file(zt_data(rel), 0, &err);
    CHECKM(root != NULL, "%s: %s", rel, err.text);
    if (!root) return;
    json_t *cases = json_object_get(root, "cases");
    CHECK(json_array_size(cases) == 8);
    size_t ci;
    json_t *c;
    json_array_foreach(cases, ci, c) {
        const char *prompt = json_string_value(json_object_get(c, "prompt"));
        json_t *bpe = json_object_get(c, "bpe_ids"), *il = json_object_get(c, "ids_clip_l"),
               *ig = json_object_get(c, "ids_bigg");
        int32_t *ids = NULL;
        int n = 0;
        CHECK_OK(zl_tokenize(g_tok, prompt, &ids, &n));
        int ok = (size_t)n == json_array_size(bpe);
        for (int i = 0; ok && i < n; i++) ok = ids[i] == json_integer_value(json_array_get(bpe, (size_t)i));
        CHECKM(ok, "%s case %zu bpe_ids ('%s')", fixture, ci, prompt);
        free(ids);
        int32_t l[ZL_CLIP_CTX], g[ZL_CLIP_CTX];
        int dropped = -1;
        CHECK_OK(zl_tokenize_clip(g_tok, prompt, ZL_CLIP_PAD_L, 0, l, &dropped));
        CHECK_OK(zl_tokenize_clip(g_tok, prompt, ZL_CLIP_PAD_BIGG, 0, g, NULL));
        CHECK(json_array_size(il) == ZL_CLIP_CTX);
        int okl = 1, okg = 1;
        for (int i = 0; i < ZL_CLIP_CTX; i++) {
            okl &= l[i] == json_integer_value(json_array_get(il, (size_t)i));
            if (ig) okg &= g[i] == json_integer_value(json_array_get(ig, (size_t)i));
        }
        CHECKM(okl, "%s case %zu ids_clip_l", fixture, ci);
        CHECKM(okg, "%s case %zu ids_bigg", fixture, ci);
        CHECK(dropped == (n > 75 ? n - 75 : 0));
    }
    json_decref(root);
}

static void test_letters(void) {
    /* "café" is one \p{L}+ piece; é is UTF-8 C3 A9, shown as 'Ã' '©' in the byte alphabet. */
    int cafe = vocab_id("caf\xc3\x83\xc2\xa9</w>");
    expect_ids("caf\xc3\xa9", (int[]){cafe, -1});
    /* Uppercase É (U+00C9) lowercases to é */
    expect_ids("CAF\xc3\x89", (int[]){cafe, -1});
    /* Cyrillic and Greek: uppercase and lowercase give the same ids, and a letter run is one piece
     * (so it differs from the letters tokenized one by one). */
    expect_same("\xd0\x9c\xd0\x9e\xd0\xa1\xd0\x9a\xd0\x92\xd0\x90", "\xd0\xbc\xd0\xbe\xd1\x81\xd0\xba\xd0\xb2\xd0\xb0");
    expect_same("\xce\xa9\xce\x9c\xce\x95\xce\x93\xce\x91", "\xcf\x89\xce\xbc\xce\xb5\xce\xb3\xce\xb1");
    /* a letter next to a symbol splits: "dog+cat" = dog</w> +</w> cat</w>; '+' is 0x2B -> 10 + 256 */
    int dog = vocab_id("dog</w>"), cat = vocab_id("cat</w>");
    expect_ids("dog+cat", (int[]){dog, 266, cat, -1});
    /* CJK ideographs are letters: 2 ideographs form one piece, not two */
    CHECK(ids_of_count("\xe7\x8c\xab\xe7\x8b\x97") >= 1);
    /* a combining mark (U+0301) is not a letter: "e\u0301" splits into e</w> and the mark */
    int32_t *v = NULL;
    int n = 0;
    CHECK_OK(zl_tokenize(g_tok, "e\xcc\x81", &v, &n));
    /* 'e' = 0x65 -> 0x65 - 0x21 = 68, + 256 = 324 */
    CHECK(n >= 2 && v[0] == 324);
    free(v);
}

static void test_digits(void) {
    /* digits split one by one: '2' = 0x32 -> 17 + 256 = 273; '0' -> 271; '4' -> 275 */
    expect_ids("2024", (int[]){273, 271, 273, 275, -1});
    /* digits next to letters split too: "dog42" */
    int dog = vocab_id("dog</w>");
    expect_ids("dog42", (int[]){dog, 275, 273, -1});
    /* superscript two and fullwidth digits are \p{N}: one piece each */
    expect_same("\xef\xbc\x91\xef\xbc\x92", "\xef\xbc\x91 \xef\xbc\x92");
    expect_same("x\xc2\xb2", "x \xc2\xb2");
}

static void test_apostrophes(void) {
    int it = vocab_id("it</w>"), s = vocab_id("'s</w>"), they = vocab_id("they</w>"), re = vocab_id("'re</w>");
    int ve = vocab_id("'ve</w>"), ll = vocab_id("'ll</w>"), t = vocab_id("'t</w>"), d = vocab_id("'d</w>");
    int m = vocab_id("'m</w>"), we = vocab_id("we</w>"), you = vocab_id("you</w>"), don = vocab_id("don</w>");
    expect_ids("it's", (int[]){it, s, -1});
    expect_ids("They're", (int[]){they, re, -1});
    expect_ids("we've we'll don't you'd", (int[]){we, ve, we, ll, don, t, you, d, -1});
    /* "I'M": lowercased first; 'i' alone is the byte token i</w> = 0x69 - 0x21 + 256 = 328 */
    expect_ids("I'M", (int[]){328, m, -1});
    /* an apostrophe before another letter is punctuation: "'x" -> '</w> x</w>; ''' = 0x27 -> 262; 'x' -> 343 */
    expect_ids("'x", (int[]){262, 343, -1});
}

static void test_html(void) {
    int dog = vocab_id("dog</w>"), amp = vocab_id("amp</w>");
    /* &amp; -> '&' (0x26 -> 261); &quot; -> '"' (0x22 -> 257) */
    expect_ids("&amp;", (int[]){261, -1});
    expect_ids("&quot;dog&quot;", (int[]){257, dog, 257, -1});
    /* unescaped exactly twice: &amp;amp; -> & ; &amp;amp;amp; -> "&amp;" = & amp ; (';' = 0x3B -> 282) */
    expect_ids("&amp;amp;", (int[]){261, -1});
    expect_ids("&amp;amp;amp;", (int[]){261, amp, 282, -1});
    /* legacy names without ';' and numeric references */
    expect_ids("&lt", (int[]){283, -1}); /* '<' = 0x3C -> 27 + 256 = 283 */
    expect_ids("&#33;&#x21;", (int[]){vocab_id("!!</w>"), -1}); /* "!!" is one punctuation piece */
    expect_same("&#68;og", "dog");
    expect_same("&eacute;", "\xc3\xa9");
    expect_same("&Eacute;", "\xc3\xa9");
    /* unknown names stay as text */
    expect_same("&bogus; dog", "& bogus ; dog");
}

static void test_whitespace(void) {
    int dog = vocab_id("dog</w>");
    /* 'a' = 0x61 -> 64 + 256 = 320 */
    expect_ids("  a \t\n dog  ", (int[]){320, dog, -1});
    expect_ids("a\xc2\xa0\xe3\x80\x80" "dog", (int[]){320, dog, -1}); /* no-break space, ideographic space */
    expect_ids("", (int[]){-1});
    expect_ids(" \t ", (int[]){-1});
}

static void test_truncation(void) {
    int dog = vocab_id("dog</w>"), cat = vocab_id("cat</w>");
    char text[2048] = "";
    for (int i = 0; i < 75; i++) strcat(text, "dog ");
    strcat(text, "cat cat");
    /* capture stderr to see the warning */
    fflush(stderr);
    int saved = dup(2);
    FILE *cap = fopen(zt_tmp("warn.txt"), "w+");
    dup2(fileno(cap), 2);
    int32_t ids[ZL_CLIP_CTX];
    int dropped = -1;
    int rc = zl_tokenize_clip(g_tok, text, ZL_CLIP_PAD_L, 1, ids, &dropped);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    CHECK_OK(rc);
    CHECK(dropped == 2);
    CHECK(ids[0] == ZL_CLIP_BOS && ids[76] == ZL_CLIP_EOS);
    int all = 1;
    for (int i = 1; i <= 75; i++) all &= ids[i] == dog;
    CHECK(all);
    (void)cat;
    char buf[1024] = "";
    rewind(cap);
    size_t n = fread(buf, 1, sizeof buf - 1, cap);
    buf[n] = 0;
    fclose(cap);
    CHECKM(strstr(buf, "warning") && strstr(buf, "\"cat cat\""), "warning names the dropped text: %s", buf);
    /* exactly 75 tokens: nothing dropped, no EOS lost */
    text[0] = 0;
    for (int i = 0; i < 75; i++) strcat(text, "dog ");
    CHECK_OK(zl_tokenize_clip(g_tok, text, 0, 1, ids, &dropped));
    CHECK(dropped == 0 && ids[76] == ZL_CLIP_EOS);
}

static void test_errors(void) {
    int32_t *v = NULL;
    int n = 0;
    CHECK(zl_tokenize(g_tok, "bad \xff utf8", &v, &n) == ZL_EINVAL);
    CHECK(strstr(zl_errmsg(), "UTF-8") != NULL);
    CHECK(zl_tokenize(g_tok, "overlong \xc0\xaf", &v, &n) == ZL_EINVAL);
    CHECK(zl_tokenize(g_tok, "surrogate \xed\xa0\x80", &v, &n) == ZL_EINVAL);
    char *s = NULL;
    CHECK(zl_tokenizer_decode(g_tok, (int32_t[]){49408}, 1, &s) == ZL_EINVAL);
    /* decoding round-trips plain text */
    CHECK_OK(zl_tokenize(g_tok, "a photo of sks dog, 42!", &v, &n));
    CHECK_OK(zl_tokenizer_decode(g_tok, v, n, &s));
    CHECKM(s && !strcmp(s, "a photo of sks dog , 4 2 !"), "decode: '%s'", s ? s : "");
    free(s);
    free(v);
    /* a long single word stays fast and exact in length (no quadratic blow-up) */
    size_t L = 200000;
    char *big = malloc(L + 1);
    for (size_t i = 0; i < L; i++) big[i] = (char)('a' + (i * 7 + i / 13) % 26);
    big[L] = 0;
    CHECK(ids_of_count(big) > 0);
    free(big);
}

/* A1111's long-prompt chunks: 75 tokens, or fewer when a comma lies within the
 * last 20 tokens of a full chunk (the chunk then ends after it). "cat", "dog"
 * and "," are one token each. */
static char *words(int cats, int comma, int dogs) {
    char *s = malloc((size_t)(cats + dogs) * 4 + 4);
    size_t n = 0;
    for (int i = 0; i < cats; i++) n += (size_t)sprintf(s + n, "cat ");
    if (comma) n += (size_t)sprintf(s + n, ", ");
    for (int i = 0; i < dogs; i++) n += (size_t)sprintf(s + n, "dog ");
    s[n] = 0;
    return s;
}

static void test_chunks(void) {
    int32_t *v = NULL;
    int n = 0;
    CHECK_OK(zl_tokenize(g_tok, "cat dog ,", &v, &n));
    CHECK(n == 3);
    free(v);
    static const struct {
        int cats, comma, dogs, n_chunks, b[4];
        const char *why;
    } cs[] = {
        {0, 0, 0, 1, {0, 0}, "empty: one empty chunk"},
        {75, 0, 0, 1, {0, 75}, "exactly 75 tokens"},
        {76, 0, 0, 2, {0, 75, 76}, "76 tokens"},
        {160, 0, 0, 3, {0, 75, 150, 160}, "160 tokens"},
        {70, 1, 10, 2, {0, 71, 81}, "a comma 5 tokens back: the chunk ends after it"},
        {55, 1, 25, 2, {0, 56, 81}, "a comma 20 tokens back: still"},
        {54, 1, 26, 2, {0, 75, 81}, "a comma 21 tokens back: a plain cut"},
        {75, 1, 1, 2, {0, 75, 77}, "a comma as token 76 opens the next chunk"},
    };
    /* A1111's BREAK keyword (upper case, a word of its own) ends the chunk, even an empty one */
    static const struct {
        const char *text;
        int n_chunks, b[5];
    } br[] = {
        {"cat cat BREAK dog", 2, {0, 2, 3}},
        {"BREAK cat", 2, {0, 0, 1}},
        {"cat BREAK", 1, {0, 1}},
        {"cat BREAK BREAK dog", 3, {0, 1, 1, 2}},
        {"cat,BREAK,dog", 2, {0, 2, 4}},
        {"catBREAK dog break dog", 1, {0, -1}},
    };
    for (size_t c = 0; c < sizeof br / sizeof br[0]; c++) {
        int32_t *ids = NULL;
        int *b = NULL, k = 0;
        CHECK_OK(zl_tokenize_chunks(g_tok, br[c].text, &ids, &b, &k));
        int ok = k == br[c].n_chunks;
        for (int i = 0; ok && i <= k; i++) ok = br[c].b[i] < 0 || b[i] == br[c].b[i];
        CHECKM(ok, "'%s': %d chunks, bounds %d %d %d %d", br[c].text, k, b ? b[0] : -1, b && k >= 1 ? b[1] : -1,
               b && k >= 2 ? b[2] : -1, b && k >= 3 ? b[3] : -1);
        free(ids);
        free(b);
    }
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        char *s = words(cs[c].cats, cs[c].comma, cs[c].dogs);
        int32_t *ids = NULL;
        int *b = NULL, k = 0;
        CHECK_OK(zl_tokenize_chunks(g_tok, s, &ids, &b, &k));
        int ok = k == cs[c].n_chunks;
        for (int i = 0; ok && i <= k; i++) ok = b[i] == cs[c].b[i];
        CHECKM(ok, "%s: %d chunks, bounds %d %d %d %d", cs[c].why, k, b ? b[0] : -1, b && k >= 1 ? b[1] : -1,
               b && k >= 2 ? b[2] : -1, b && k >= 3 ? b[3] : -1);
        free(ids);
        free(b);
        free(s);
    }
}

/* A1111's attention syntax: parse_prompt_attention's own doctest examples (the
 * weights are Python's doubles as it prints them, computed in the same order,
 * so they compare exactly), and the chunks with their weights. */
static void test_attention(void) {
    static const struct {
        const char *text;
        int n;
        const char *span[9];
        double w[9];
    } cs[] = {
        {"normal text", 1, {"normal text"}, {1.0}},
        {"an (important) word", 3, {"an ", "important", " word"}, {1.0, 1.1, 1.0}},
        {"(unbalanced", 1, {"unbalanced"}, {1.1}},
        {"\\(literal\\]", 1, {"(literal]"}, {1.0}},
        {"(unnecessary)(parens)", 1, {"unnecessaryparens"}, {1.1}},
        {"a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", 9,
         {"a ", "house", " ", "on", " a ", "hill", ", sun, ", "sky", "."},
         {1.0, 1.5730000000000004, 1.1, 1.0, 1.1, 0.55, 1.1, 1.4641000000000006, 1.1}},
        {"a BREAK b", 3, {"a", "BREAK", "b"}, {1.0, -1.0, 1.0}},
        /* and: the weight with spaces (newer A1111), a colon as text, escapes, a zero weight,
         * a stray closing bracket, a weight without an open bracket, the empty prompt */
        {"(word: 1.5 )", 1, {"word"}, {1.5}},
        {"a:b \\\\ c", 1, {"a:b \\ c"}, {1.0}},
        {"[a] (b:0)", 3, {"a", " ", "b"}, {1 / 1.1, 1.0, 0.0}},
        {"a) b]", 1, {"a) b]"}, {1.0}},
        {"x:2)", 1, {"x:2)"}, {1.0}},
        {"", 1, {""}, {1.0}},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        zl_prompt_span *sp = NULL;
        int n = 0;
        CHECK_OK(zl_prompt_parse_attention(cs[c].text, &sp, &n));
        int ok = n == cs[c].n;
        for (int i = 0; ok && i < n; i++) ok = !strcmp(sp[i].text, cs[c].span[i]) && sp[i].weight == cs[c].w[i];
        CHECKM(ok, "'%s': %d spans, first '%s' %.17g", cs[c].text, n, n ? sp[0].text : "", n ? sp[0].weight : 0.0);
        zl_prompt_spans_free(sp, n);
    }
    /* the ids are the plain text's (the spans end at word boundaries), the weights the spans' */
    int32_t *a = NULL, *b = NULL;
    float *wa = NULL, *wb = NULL;
    int *ba = NULL, *bb = NULL, ka = 0, kb = 0;
    CHECK_OK(zl_tokenize_chunks_weighted(g_tok, "a (red:1.5) cat, [dog]", 1, &a, &wa, &ba, &ka));
    CHECK_OK(zl_tokenize_chunks_weighted(g_tok, "a red cat, dog", 0, &b, &wb, &bb, &kb));
    if (a && b && ka == 1 && kb == 1 && ba[1] == 5 && bb[1] == 5) {
        const float want[5] = {1.0f, 1.5f, 1.0f, 1.0f, (float)(1 / 1.1)};
        for (int i = 0; i < 5; i++) {
            CHECKM(a[i] == b[i] && wa[i] == want[i] && wb[i] == 1.0f, "token %d: id %d vs %d, weight %g (want %g)", i,
                   a[i], b[i], wa[i], want[i]);
        }
    } else {
        CHECKM(0, "weighted chunks: %d and %d chunks", ka, kb);
    }
    free(a), free(b), free(wa), free(wb), free(ba), free(bb);
    /* BREAK cuts as without emphasis; (BREAK) in brackets is the word "break", weighted */
    const char *same[4] = {"cat cat BREAK dog", "BREAK cat", "cat BREAK BREAK dog", "cat,BREAK,dog"};
    for (int c = 0; c < 4; c++) {
        CHECK_OK(zl_tokenize_chunks_weighted(g_tok, same[c], 1, &a, &wa, &ba, &ka));
        CHECK_OK(zl_tokenize_chunks_weighted(g_tok, same[c], 0, &b, &wb, &bb, &kb));
        int ok = ka == kb;
        for (int i = 0; ok && i <= ka; i++) ok = ba[i] == bb[i];
        for (int i = 0; ok && i < ba[ka]; i++) ok = a[i] == b[i] && wa[i] == 1.0f;
        CHECKM(ok, "'%s' with emphasis: %d chunks, as without", same[c], ka);
        free(a), free(b), free(wa), free(wb), free(ba), free(bb);
    }
    CHECK_OK(zl_tokenize_chunks_weighted(g_tok, "cat (BREAK) dog", 1, &a, &wa, &ba, &ka));
    CHECKM(ka == 1 && ba[1] == 3 && wa[1] == (float)(-1.0 * 1.1), "'cat (BREAK) dog': one chunk, 'break' at -1.1: %d %g",
           ka, ka == 1 ? wa[1] : 0.0f);
    free(a), free(wa), free(ba);
}

int main(void) {
    load_vocab();
    CHECK(g_nlines == 48894);
    CHECK_OK(zl_tokenizer_new(&g_tok));
    if (!g_tok) return zt_done();
    test_cases_file("mini-sdxl");
    test_cases_file("tiny-sd15");
    test_letters();
    test_digits();
    test_apostrophes();
    test_html();
    test_whitespace();
    test_truncation();
    test_chunks();
    test_attention();
    test_errors();
    zl_tokenizer_free(g_tok);
    free(g_vocab);
    return zt_done();
}
