/* The CLIP BPE tokenizer, bit-exact with OpenAI CLIP's SimpleTokenizer (less
 * ftfy, which the fixtures avoid; ftfy would also NFC-normalise).
 *
 * Vocabulary: the 256 byte symbols (in bytes_to_unicode order), the same with
 * "</w>", then one token per merge line 1..48894 of bpe_simple_vocab_16e6.txt
 * (line 0 is a header), then <|startoftext|> 49406 and <|endoftext|> 49407.
 * Tokens are handled as ids throughout: a merge is a pair of ids with a rank
 * and a result id; a token's text is kept only for decoding.
 *
 * BPE: SimpleTokenizer repeatedly merges every occurrence of the lowest-rank
 * pair, left to right. We do the same in O(n log n) with a heap ordered by
 * (rank, position): for a merge list in which every merge's parts are made by
 * lower-rank merges (checked when the vocabulary is built), popping pairs in
 * that order gives exactly the same result, and a pathological prompt
 * (one huge "word") cannot make us quadratic. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "models/unicode_clip.h"
#include "ziplora/progress.h"
#include "ziplora/text.h"

extern const unsigned char zl_vocab_gz[];
extern const unsigned long zl_vocab_gz_len;

#define N_MERGES 48894

struct zl_tokenizer {
    int32_t byte_id[256]; /* byte -> symbol id (0..255) */
    /* id -> bytes of its text (byte symbols decoded back), and whether it ends a word */
    uint32_t *tok_off;    /* [VOCAB + 1] offsets into tok_bytes */
    char *tok_bytes;
    uint8_t *tok_eow;     /* [VOCAB] */
    /* pair (a, b) -> rank and merged id: open addressing on a 64-bit key */
    size_t pcap;
    uint64_t *pkey;       /* 0 = empty (pair (0,0) is not a merge key: stored +1) */
    int32_t *prank, *pout;
    /* textual-inversion embeddings: a trigger's ids become `rows` placeholder ids
     * ZL_CLIP_VOCAB + base .. + base + rows - 1 (zl_tokenizer_add_embedding) */
    struct {
        int32_t *ids;
        int n, base, rows;
    } *emb;
    int n_emb, emb_rows;
};

/* ---- hashing ------------------------------------------------------------ */
static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static uint64_t pair_key(int32_t a, int32_t b) { return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1; }

static void pair_put(zl_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t out) {
    uint64_t k = pair_key(a, b);
    size_t i = mix64(k) & (t->pcap - 1);
    while (t->pkey[i] && t->pkey[i] != k) i = (i + 1) & (t->pcap - 1);
    t->pkey[i] = k; /* a repeated pair keeps the later rank, as Python's dict does */
    t->prank[i] = rank;
    t->pout[i] = out;
}

static int pair_get(const zl_tokenizer *t, int32_t a, int32_t b, int32_t *rank, int32_t *out) {
    uint64_t k = pair_key(a, b);
    size_t i = mix64(k) & (t->pcap - 1);
    while (t->pkey[i]) {
        if (t->pkey[i] == k) {
            *rank = t->prank[i];
            *out = t->pout[i];
            return 1;
        }
        i = (i + 1) & (t->pcap - 1);
    }
    return 0;
}

/* String -> id map used only while building (FNV-1a, open addressing). */
typedef struct {
    size_t cap;
    const char **key;
    uint32_t *klen;
    int32_t *val;
} str_map;

static uint64_t fnv(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

static void smap_put(str_map *m, const char *s, size_t n, int32_t v) {
    size_t i = fnv(s, n) & (m->cap - 1);
    while (m->key[i] && !(m->klen[i] == n && !memcmp(m->key[i], s, n))) i = (i + 1) & (m->cap - 1);
    m->key[i] = s; /* later entries win, as in Python's dict(zip(vocab, range)) */
    m->klen[i] = (uint32_t)n;
    m->val[i] = v;
}

static int32_t smap_get(const str_map *m, const char *s, size_t n) {
    size_t i = fnv(s, n) & (m->cap - 1);
    while (m->key[i]) {
        if (m->klen[i] == n && !memcmp(m->key[i], s, n)) return m->val[i];
        i = (i + 1) & (m->cap - 1);
    }
    return -1;
}

/* ---- vocabulary ---------------------------------------------------------- */

/* OpenAI's bytes_to_unicode: printable bytes map to themselves, the others
 * to U+0100 + n in byte order. order[i] = the byte of symbol i. */
static void byte_order(int order[256], uint32_t ucp[256]) {
    int k = 0;
    for (int b = 0; b < 256; b++)
        if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) order[k++] = b;
    int n = 0;
    for (int b = 0; b < 256; b++) {
        if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) {
            ucp[b] = (uint32_t)b;
        } else {
            ucp[b] = 256u + (uint32_t)n++;
            order[k++] = b;
        }
    }
}

static int inflate_vocab(char **out, size_t *len) {
    size_t cap = 2u << 20, n = 0;
    char *buf = malloc(cap);
    if (!buf) return zl_set_error(ZL_ENOMEM, "out of memory decompressing the CLIP vocabulary");
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) {
        free(buf);
        return zl_set_error(ZL_EFORMAT, "embedded CLIP vocabulary: zlib init failed");
    }
    zs.next_in = (Bytef *)zl_vocab_gz;
    zs.avail_in = (uInt)zl_vocab_gz_len;
    int zr;
    do {
        if (n == cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) { inflateEnd(&zs); free(buf); return zl_set_error(ZL_ENOMEM, "out of memory decompressing the CLIP vocabulary"); }
            buf = nb;
            cap *= 2;
        }
        zs.next_out = (Bytef *)buf + n;
        zs.avail_out = (uInt)(cap - n);
        zr = inflate(&zs, Z_NO_FLUSH);
        n = cap - zs.avail_out;
    } while (zr == Z_OK);
    inflateEnd(&zs);
    if (zr != Z_STREAM_END) {
        free(buf);
        return zl_set_error(ZL_EFORMAT, "embedded CLIP vocabulary: corrupt gzip data");
    }
    *out = buf;
    *len = n;
    return ZL_OK;
}

/* Decode a token string in the byte-unicode alphabet back to bytes. */
static int unbyte(const char *s, size_t n, const int32_t inv[512], char *dst, size_t *dn) {
    uint32_t *cps;
    size_t m, bad;
    if (zl_uc_decode_utf8(s, n, &cps, &m, &bad)) return -1;
    for (size_t i = 0; i < m; i++) {
        if (cps[i] >= 512 || inv[cps[i]] < 0) { free(cps); return -1; }
        dst[i] = (char)inv[cps[i]];
    }
    *dn = m;
    free(cps);
    return 0;
}

int zl_tokenizer_new(zl_tokenizer **out) {
    *out = NULL;
    char *txt = NULL;
    size_t tlen = 0;
    int rc = inflate_vocab(&txt, &tlen);
    if (rc) return rc;
    zl_tokenizer *t = calloc(1, sizeof *t);
    /* All vocab strings (UTF-8 in the byte alphabet), built as Python does. */
    const char **vs = calloc(ZL_CLIP_VOCAB, sizeof *vs);
    uint32_t *vl = calloc(ZL_CLIP_VOCAB, sizeof *vl);
    char *sym = malloc(512 * 8);
    int32_t (*mparts)[2] = calloc(N_MERGES, sizeof *mparts);
    const char **ma = calloc(N_MERGES * 2, sizeof *ma);
    uint32_t *mal = calloc(N_MERGES * 2, sizeof *mal);
    char *cat = malloc(tlen + 1);
    str_map m = {1u << 17, NULL, NULL, NULL};
    m.key = calloc(m.cap, sizeof *m.key);
    m.klen = calloc(m.cap, sizeof *m.klen);
    m.val = calloc(m.cap, sizeof *m.val);
    t->pcap = 1u << 17;
    t->pkey = calloc(t->pcap, sizeof *t->pkey);
    t->prank = calloc(t->pcap, sizeof *t->prank);
    t->pout = calloc(t->pcap, sizeof *t->pout);
    t->tok_off = calloc(ZL_CLIP_VOCAB + 1, sizeof *t->tok_off);
    t->tok_eow = calloc(ZL_CLIP_VOCAB, 1);
    t->tok_bytes = malloc(tlen + 4096);
    if (!t || !vs || !vl || !sym || !mparts || !ma || !mal || !cat || !m.key || !m.klen || !m.val || !t->pkey ||
        !t->prank || !t->pout || !t->tok_off || !t->tok_eow || !t->tok_bytes) {
        rc = zl_set_error(ZL_ENOMEM, "out of memory building the CLIP vocabulary");
        goto done;
    }
    int order[256];
    uint32_t ucp[256];
    int32_t inv[512]; /* byte-alphabet code point -> byte */
    for (int i = 0; i < 512; i++) inv[i] = -1;
    byte_order(order, ucp);
    for (int b = 0; b < 256; b++) inv[ucp[b]] = b;
    for (int i = 0; i < 256; i++) {
        char *s = sym + i * 8, *e = sym + (256 + i) * 8;
        int k = zl_uc_encode_utf8(ucp[order[i]], s);
        memcpy(e, s, (size_t)k);
        memcpy(e + k, "</w>", 4);
        vs[i] = s;
        vl[i] = (uint32_t)k;
        vs[256 + i] = e;
        vl[256 + i] = (uint32_t)k + 4;
        t->byte_id[order[i]] = i;
    }
    /* Merge lines 1..48894. */
    char *p = txt, *end = txt + tlen;
    char *nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl) { rc = zl_set_error(ZL_EFORMAT, "embedded CLIP vocabulary: no header line"); goto done; }
    p = nl + 1;
    char *cp = cat;
    for (int r = 0; r < N_MERGES; r++) {
        nl = memchr(p, '\n', (size_t)(end - p));
        char *le = nl ? nl : end;
        char *sp = memchr(p, ' ', (size_t)(le - p));
        if (!sp || sp == p || sp + 1 >= le || memchr(sp + 1, ' ', (size_t)(le - sp - 1))) {
            rc = zl_set_error(ZL_EFORMAT, "embedded CLIP vocabulary: merge line %d is not 'a b'", r + 1);
            goto done;
        }
        ma[2 * r] = p;
        mal[2 * r] = (uint32_t)(sp - p);
        ma[2 * r + 1] = sp + 1;
        mal[2 * r + 1] = (uint32_t)(le - sp - 1);
        memcpy(cp, p, (size_t)(sp - p));
        memcpy(cp + (sp - p), sp + 1, (size_t)(le - sp - 1));
        vs[512 + r] = cp;
        vl[512 + r] = (uint32_t)((sp - p) + (le - sp - 1));
        cp += vl[512 + r];
        if (!nl) { if (r != N_MERGES - 1) { rc = zl_set_error(ZL_EFORMAT, "embedded CLIP vocabulary: too few merges"); goto done; } }
        else p = nl + 1;
    }
    vs[ZL_CLIP_BOS] = "<|startoftext|>";
    vl[ZL_CLIP_BOS] = 15;
    vs[ZL_CLIP_EOS] = "<|endoftext|>";
    vl[ZL_CLIP_EOS] = 13;
    for (int i = 0; i < ZL_CLIP_VOCAB; i++) smap_put(&m, vs[i], vl[i], i);
    /* Rank at which each id is made (-1: bytes and specials). */
    int32_t *made = malloc(ZL_CLIP_VOCAB * sizeof *made);
    if (!made) { rc = zl_set_error(ZL_ENOMEM, "out of memory building the CLIP vocabulary"); goto done; }
    for (int i = 0; i < ZL_CLIP_VOCAB; i++) made[i] = -1;
    for (int r = 0; r < N_MERGES; r++) {
        int32_t a = smap_get(&m, ma[2 * r], mal[2 * r]), b = smap_get(&m, ma[2 * r + 1], mal[2 * r + 1]);
        int32_t o = smap_get(&m, vs[512 + r], vl[512 + r]);
        if (a < 0 || b < 0) {
            free(made);
            rc = zl_set_error(ZL_EFORMAT, "embedded CLIP vocabulary: merge line %d uses an unknown symbol", r + 1);
            goto done;
        }
        /* The heap BPE equals Python's only if parts exist before they are merged. */
        if ((made[a] >= 0 && made[a] >= r) || (made[b] >= 0 && made[b] >= r)) {
            free(made);
            rc = zl_set_error(ZL_EFORMAT, "embedded CLIP vocabulary: merge line %d uses a later token", r + 1);
            goto done;
        }
        if (made[o] < 0) made[o] = r;
        mparts[r][0] = a;
        mparts[r][1] = b;
        pair_put(t, a, b, r, o);
    }
    free(made);
    /* Decoding table. */
    size_t off = 0;
    for (int i = 0; i < ZL_CLIP_VOCAB; i++) {
        t->tok_off[i] = (uint32_t)off;
        size_t n = vl[i];
        int eow = 0;
        if (i == ZL_CLIP_BOS || i == ZL_CLIP_EOS) {
            memcpy(t->tok_bytes + off, vs[i], n);
            off += n;
            t->tok_eow[i] = 0;
            continue;
        }
        if (n >= 4 && !memcmp(vs[i] + n - 4, "</w>", 4)) { n -= 4; eow = 1; }
        size_t dn;
        if (unbyte(vs[i], n, inv, t->tok_bytes + off, &dn)) {
            rc = zl_set_error(ZL_EFORMAT, "embedded CLIP vocabulary: token %d is not in the byte alphabet", i);
            goto done;
        }
        off += dn;
        t->tok_eow[i] = (uint8_t)eow;
    }
    t->tok_off[ZL_CLIP_VOCAB] = (uint32_t)off;
    rc = ZL_OK;
done:
    free(txt); free(vs); free(vl); free(sym); free(mparts); free(ma); free(mal); free(cat);
    free(m.key); free(m.klen); free(m.val);
    if (rc) zl_tokenizer_free(t);
    else *out = t;
    return rc;
}

void zl_tokenizer_free(zl_tokenizer *t) {
    if (!t) return;
    free(t->tok_off); free(t->tok_bytes); free(t->tok_eow);
    free(t->pkey); free(t->prank); free(t->pout);
    for (int i = 0; i < t->n_emb; i++) free(t->emb[i].ids);
    free(t->emb);
    free(t);
}

int zl_tokenizer_add_embedding(zl_tokenizer *t, const char *trigger, int rows, int32_t *first_id) {
    if (rows < 1 || rows > ZL_CLIP_MAX_TOKENS)
        return zl_set_error(ZL_EINVAL, "embedding '%s': %d vectors (1 to %d fit a prompt)", trigger, rows,
                            ZL_CLIP_MAX_TOKENS);
    int32_t *ids = NULL;
    int n = 0;
    int rc = zl_tokenize(t, trigger, &ids, &n);
    if (rc) return rc;
    if (n == 0) {
        free(ids);
        return zl_set_error(ZL_EINVAL, "embedding '%s': its name has no tokens to find in a prompt", trigger);
    }
    for (int i = 0; i < t->n_emb; i++)
        if (t->emb[i].n == n && !memcmp(t->emb[i].ids, ids, sizeof *ids * (size_t)n)) {
            free(ids);
            return zl_set_error(ZL_EINVAL, "embedding '%s': another embedding has the same name", trigger);
        }
    void *ne = realloc(t->emb, sizeof *t->emb * (size_t)(t->n_emb + 1));
    if (!ne) {
        free(ids);
        return zl_set_error(ZL_ENOMEM, "out of memory");
    }
    t->emb = ne;
    t->emb[t->n_emb].ids = ids;
    t->emb[t->n_emb].n = n;
    t->emb[t->n_emb].base = t->emb_rows;
    t->emb[t->n_emb].rows = rows;
    t->n_emb++;
    if (first_id) *first_id = ZL_CLIP_VOCAB + t->emb_rows;
    t->emb_rows += rows;
    return ZL_OK;
}

/* The embedding whose trigger's ids start at v[i] (the longest when several
 * do), or -1. */
static int emb_at(const zl_tokenizer *t, const int32_t *v, int n, int i) {
    int best = -1;
    for (int e = 0; e < t->n_emb; e++)
        if (t->emb[e].n <= n - i && !memcmp(v + i, t->emb[e].ids, sizeof *v * (size_t)t->emb[e].n) &&
            (best < 0 || t->emb[e].n > t->emb[best].n))
            best = e;
    return best;
}

/* Replace every trigger in v[0..n) by its placeholder ids (weights: the
 * trigger's first token's), as A1111 finds embeddings in a span's tokens. */
static int substitute_embeddings(const zl_tokenizer *t, int32_t **v, float **w, int *n) {
    if (!t->n_emb) return ZL_OK;
    int grow = 0;
    for (int i = 0; i < *n;) {
        int e = emb_at(t, *v, *n, i);
        if (e < 0) { i++; continue; }
        grow += t->emb[e].rows - t->emb[e].n;
        i += t->emb[e].n;
    }
    const int cap = *n + (grow > 0 ? grow : 0);
    int32_t *nv = malloc(sizeof *nv * (size_t)(cap ? cap : 1));
    float *nw = w ? malloc(sizeof *nw * (size_t)(cap ? cap : 1)) : NULL;
    if (!nv || (w && !nw)) {
        free(nv);
        free(nw);
        return zl_set_error(ZL_ENOMEM, "out of memory");
    }
    int m = 0;
    for (int i = 0; i < *n;) {
        int e = emb_at(t, *v, *n, i);
        if (e < 0) {
            if (w) nw[m] = (*w)[i];
            nv[m++] = (*v)[i++];
            continue;
        }
        for (int r = 0; r < t->emb[e].rows; r++) {
            if (w) nw[m] = (*w)[i];
            nv[m++] = ZL_CLIP_VOCAB + t->emb[e].base + r;
        }
        i += t->emb[e].n;
    }
    free(*v);
    *v = nv;
    if (w) {
        free(*w);
        *w = nw;
    }
    *n = m;
    return ZL_OK;
}

/* The vector count of the embedding whose first placeholder is id, or 0. */
static int emb_start_rows(const zl_tokenizer *t, int32_t id) {
    for (int e = 0; e < t->n_emb && id >= ZL_CLIP_VOCAB; e++)
        if (id == ZL_CLIP_VOCAB + t->emb[e].base) return t->emb[e].rows;
    return 0;
}

/* ---- clean-up ------------------------------------------------------------ */

/* Code points of the cleaned, lowercased text; *out malloc'd. */
static int clean_cps(const char *text, uint32_t **out, size_t *n_out) {
    uint32_t *a;
    size_t n, bad;
    int r = zl_uc_decode_utf8(text, strlen(text), &a, &n, &bad);
    if (r == -2) return zl_set_error(ZL_ENOMEM, "out of memory tokenizing a prompt");
    if (r) return zl_set_error(ZL_EINVAL, "prompt is not valid UTF-8 (bad byte at offset %zu)", bad);
    uint32_t *b = malloc((n + 1) * sizeof *b);
    uint32_t *c = malloc((2 * n + 1) * sizeof *c); /* lowercasing may double (U+0130) */
    if (!b || !c) { free(a); free(b); free(c); return zl_set_error(ZL_ENOMEM, "out of memory tokenizing a prompt"); }
    n = zl_uc_html_unescape(a, n, b);
    n = zl_uc_html_unescape(b, n, a);
    /* strip (Python isspace), then \s+ -> ' ' and strip again, then lower */
    size_t s = 0, e = n;
    while (s < e && zl_uc_is_py_space(a[s])) s++;
    while (e > s && zl_uc_is_py_space(a[e - 1])) e--;
    size_t k = 0;
    for (size_t i = s; i < e;) {
        if (zl_uc_is_regex_space(a[i])) {
            while (i < e && zl_uc_is_regex_space(a[i])) i++;
            b[k++] = ' ';
        } else {
            b[k++] = a[i++];
        }
    }
    s = 0;
    e = k;
    while (s < e && zl_uc_is_py_space(b[s])) s++;
    while (e > s && zl_uc_is_py_space(b[e - 1])) e--;
    size_t m = 0;
    for (size_t i = s; i < e; i++) {
        uint32_t l[2];
        int nl = zl_uc_lower(b[i], l);
        for (int j = 0; j < nl; j++) c[m++] = l[j];
    }
    free(a);
    free(b);
    *out = c;
    *n_out = m;
    return ZL_OK;
}

int zl_clip_clean_text(const char *text, char **out) {
    uint32_t *c;
    size_t n;
    *out = NULL;
    int rc = clean_cps(text, &c, &n);
    if (rc) return rc;
    char *s = malloc(4 * n + 1);
    if (!s) { free(c); return zl_set_error(ZL_ENOMEM, "out of memory tokenizing a prompt"); }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += (size_t)zl_uc_encode_utf8(c[i], s + k);
    s[k] = 0;
    free(c);
    *out = s;
    return ZL_OK;
}

/* ---- split + BPE ------------------------------------------------------------ */

typedef struct {
    int32_t *v;
    int n, cap;
} ids_buf;

static int ids_push(ids_buf *b, int32_t id) {
    if (b->n == b->cap) {
        int nc = b->cap ? b->cap * 2 : 64;
        int32_t *nv = realloc(b->v, (size_t)nc * sizeof *nv);
        if (!nv) return -1;
        b->v = nv;
        b->cap = nc;
    }
    b->v[b->n++] = id;
    return 0;
}

/* Heap of candidate merges ordered by (rank, left position). */
typedef struct {
    int32_t rank, pos;
} bpe_cand;

static int cand_less(bpe_cand a, bpe_cand b) { return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos); }

static void heap_push(bpe_cand *h, int *n, bpe_cand c) {
    int i = (*n)++;
    h[i] = c;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!cand_less(h[i], h[p])) break;
        bpe_cand t = h[i]; h[i] = h[p]; h[p] = t;
        i = p;
    }
}

static bpe_cand heap_pop(bpe_cand *h, int *n) {
    bpe_cand top = h[0];
    h[0] = h[--(*n)];
    int i = 0;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && cand_less(h[l], h[m])) m = l;
        if (r < *n && cand_less(h[r], h[m])) m = r;
        if (m == i) break;
        bpe_cand t = h[i]; h[i] = h[m]; h[m] = t;
        i = m;
    }
    return top;
}

/* BPE of one piece given as bytes; appends ids. */
static int bpe_piece(const zl_tokenizer *t, const unsigned char *bytes, int n, ids_buf *outb) {
    int32_t *sym = malloc((size_t)n * sizeof *sym);
    int *next = malloc((size_t)n * sizeof *next), *prev = malloc((size_t)n * sizeof *prev);
    bpe_cand *heap = malloc((size_t)(3 * n + 1) * sizeof *heap); /* n-1 initial + two per merge */
    int rc = 0;
    if (!sym || !next || !prev || !heap) { rc = -1; goto out; }
    for (int i = 0; i < n; i++) {
        sym[i] = t->byte_id[bytes[i]] + (i == n - 1 ? 256 : 0);
        next[i] = i + 1 < n ? i + 1 : -1;
        prev[i] = i - 1;
    }
    int hn = 0;
    for (int i = 0; i + 1 < n; i++) {
        int32_t r, o;
        if (pair_get(t, sym[i], sym[i + 1], &r, &o)) heap_push(heap, &hn, (bpe_cand){r, i});
    }
    while (hn > 0) {
        bpe_cand c = heap_pop(heap, &hn);
        int i = c.pos, j;
        if (sym[i] < 0 || (j = next[i]) < 0) continue; /* stale */
        int32_t r, o;
        if (!pair_get(t, sym[i], sym[j], &r, &o) || r != c.rank) continue; /* stale: symbols changed */
        sym[i] = o;
        sym[j] = -1;
        next[i] = next[j];
        if (next[j] >= 0) prev[next[j]] = i;
        if (prev[i] >= 0 && pair_get(t, sym[prev[i]], sym[i], &r, &o)) heap_push(heap, &hn, (bpe_cand){r, prev[i]});
        if (next[i] >= 0 && pair_get(t, sym[i], sym[next[i]], &r, &o)) heap_push(heap, &hn, (bpe_cand){r, i});
    }
    for (int i = 0; i >= 0; i = next[i])
        if (ids_push(outb, sym[i])) { rc = -1; break; }
out:
    free(sym); free(next); free(prev); free(heap);
    return rc;
}

/* The regex's IGNORECASE (simple case folding) for the contraction letters;
 * U+017F LONG S folds to 's'. */
static uint32_t fold_ascii(uint32_t c) {
    if (c >= 'A' && c <= 'Z') return c + 32;
    if (c == 0x17F) return 's';
    return c;
}

static const char *const g_contractions[] = {"s", "t", "re", "ve", "m", "ll", "d"};

/* Length of the regex match at c[i] (0 if none), and whether it is a special token. */
static size_t match_at(const uint32_t *c, size_t n, size_t i, int32_t *special) {
    static const char *const specials[2] = {"<|startoftext|>", "<|endoftext|>"};
    *special = -1;
    for (int s = 0; s < 2; s++) {
        size_t L = strlen(specials[s]);
        if (i + L <= n) {
            size_t k = 0;
            while (k < L && c[i + k] == (unsigned char)specials[s][k]) k++;
            if (k == L) { *special = s ? ZL_CLIP_EOS : ZL_CLIP_BOS; return L; }
        }
    }
    if (c[i] == '\'') {
        for (int k = 0; k < 7; k++) {
            size_t L = strlen(g_contractions[k]), q = 0;
            while (q < L && i + 1 + q < n && fold_ascii(c[i + 1 + q]) == (unsigned char)g_contractions[k][q]) q++;
            if (q == L) return L + 1;
        }
    }
    if (zl_uc_is_letter(c[i])) {
        size_t j = i;
        while (j < n && zl_uc_is_letter(c[j])) j++;
        return j - i;
    }
    if (zl_uc_is_number(c[i])) return 1;
    if (!zl_uc_is_regex_space(c[i])) {
        size_t j = i;
        while (j < n && !zl_uc_is_regex_space(c[j]) && !zl_uc_is_letter(c[j]) && !zl_uc_is_number(c[j])) j++;
        return j - i;
    }
    return 0;
}

int zl_tokenize(const zl_tokenizer *t, const char *text, int32_t **ids, int *n_ids) {
    *ids = NULL;
    *n_ids = 0;
    uint32_t *c;
    size_t n;
    int rc = clean_cps(text, &c, &n);
    if (rc) return rc;
    ids_buf ob = {0};
    unsigned char *piece = malloc(4 * n + 1);
    if (!piece) { free(c); return zl_set_error(ZL_ENOMEM, "out of memory tokenizing a prompt"); }
    for (size_t i = 0; i < n;) {
        int32_t sp;
        size_t L = match_at(c, n, i, &sp);
        if (!L) { i++; continue; }
        if (sp >= 0) {
            if (ids_push(&ob, sp)) goto oom;
        } else {
            int k = 0;
            for (size_t q = 0; q < L; q++) k += zl_uc_encode_utf8(c[i + q], (char *)piece + k);
            if (bpe_piece(t, piece, k, &ob)) goto oom;
        }
        i += L;
    }
    free(piece);
    free(c);
    *ids = ob.v;
    *n_ids = ob.n;
    return ZL_OK;
oom:
    free(piece);
    free(c);
    free(ob.v);
    return zl_set_error(ZL_ENOMEM, "out of memory tokenizing a prompt");
}

int zl_tokenizer_decode(const zl_tokenizer *t, const int32_t *ids, int n, char **out) {
    size_t len = 1;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= ZL_CLIP_VOCAB) return zl_set_error(ZL_EINVAL, "token id %d is outside the CLIP vocabulary", ids[i]);
        len += t->tok_off[ids[i] + 1] - t->tok_off[ids[i]] + 1;
    }
    char *s = malloc(len);
    if (!s) return zl_set_error(ZL_ENOMEM, "out of memory decoding tokens");
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        uint32_t a = t->tok_off[ids[i]], b = t->tok_off[ids[i] + 1];
        memcpy(s + k, t->tok_bytes + a, b - a);
        k += b - a;
        if (t->tok_eow[ids[i]]) s[k++] = ' ';
    }
    while (k > 0 && s[k - 1] == ' ') k--;
    s[k] = 0;
    *out = s;
    return ZL_OK;
}

/* Python's \w for one byte of UTF-8 text: ASCII letters, digits, '_', and (an
 * approximation) every byte of a non-ASCII character. */
static int word_byte(unsigned char c) { return isalnum(c) || c == '_' || c >= 0x80; }

/* The next "BREAK" that is a word of its own (A1111's \bBREAK\b), or NULL. */
static const char *find_break(const char *s, const char *from) {
    for (const char *p = strstr(from, "BREAK"); p; p = strstr(p + 1, "BREAK"))
        if ((p == s || !word_byte((unsigned char)p[-1])) && !word_byte((unsigned char)p[5])) return p;
    return NULL;
}

/* ---- A1111's attention syntax (modules/prompt_parser.py parse_prompt_attention) ---- */

typedef struct {
    zl_prompt_span *v;
    int n, cap;
} spans;

static int span_push(spans *s, const char *text, size_t len, double w) {
    if (s->n == s->cap) {
        int c = s->cap ? s->cap * 2 : 16;
        zl_prompt_span *nv = realloc(s->v, sizeof *nv * (size_t)c);
        if (!nv) return -1;
        s->v = nv, s->cap = c;
    }
    char *t = malloc(len + 1);
    if (!t) return -1;
    memcpy(t, text, len);
    t[len] = 0;
    s->v[s->n].text = t;
    s->v[s->n++].weight = w;
    return 0;
}

/* A plain-text token: split at each BREAK (A1111's \s*\bBREAK\b\s*), the
 * BREAKs as ("BREAK", -1). */
static int push_text(spans *s, const char *p, size_t len) {
    const char *const start = p, *e = p + len;
    for (;;) {
        const char *q = NULL;
        for (const char *r = p; r + 5 <= e; r++)
            if (!memcmp(r, "BREAK", 5) && (r == start || !word_byte((unsigned char)r[-1])) &&
                (r + 5 == e || !word_byte((unsigned char)r[5]))) {
                q = r;
                break;
            }
        if (!q) return span_push(s, p, (size_t)(e - p), 1.0);
        const char *a = q, *b = q + 5;
        while (a > p && isspace((unsigned char)a[-1])) a--;
        while (b < e && isspace((unsigned char)b[0])) b++;
        if (span_push(s, p, (size_t)(a - p), 1.0) || span_push(s, "BREAK", 5, -1.0)) return -1;
        p = b;
    }
}

void zl_prompt_spans_free(zl_prompt_span *s, int n) {
    for (int i = 0; i < n; i++) free(s[i].text);
    free(s);
}

int zl_prompt_parse_attention(const char *text, zl_prompt_span **out, int *n_out) {
    *out = NULL;
    *n_out = 0;
    spans s = {0};
    int *round = NULL, *square = NULL, nr = 0, ns = 0, fail = 0;
    const size_t L = strlen(text);
    round = malloc(sizeof(int) * (L + 1));
    square = malloc(sizeof(int) * (L + 1));
    if (!round || !square) fail = 1;
    const char *p = text;
    while (*p && !fail) {
        if (*p == '\\') { /* \( \) \[ \] \\ give the character; a lone \ gives nothing */
            if (p[1] && strchr("()[]\\", p[1])) {
                fail = span_push(&s, p + 1, 1, 1.0);
                p += 2;
            } else {
                fail = span_push(&s, "", 0, 1.0);
                p++;
            }
        } else if (*p == '(') {
            round[nr++] = s.n;
            p++;
        } else if (*p == '[') {
            square[ns++] = s.n;
            p++;
        } else if (*p == ':') {
            /* :\s*([+-]?[.\d]+)\s*\)  (a group Python's float() refuses, as "1.2.3", is kept as text) */
            const char *q = p + 1;
            while (isspace((unsigned char)*q)) q++;
            const char *g = q;
            if (*q == '+' || *q == '-') q++;
            const char *d = q;
            while (*q == '.' || isdigit((unsigned char)*q)) q++;
            const char *ge = q;
            while (isspace((unsigned char)*q)) q++;
            const int matched = ge > d && *q == ')';
            double w = 0;
            int number = 0;
            if (matched && (size_t)(ge - g) < 64) {
                char num[64], *end = NULL;
                memcpy(num, g, (size_t)(ge - g));
                num[ge - g] = 0;
                w = strtod(num, &end);
                number = end == num + (ge - g);
            }
            if (matched && number && nr > 0) {
                int st = round[--nr];
                for (int i = st; i < s.n; i++) s.v[i].weight *= w;
                p = q + 1;
            } else if (matched) {
                fail = push_text(&s, p, (size_t)(q + 1 - p));
                p = q + 1;
            } else {
                fail = span_push(&s, ":", 1, 1.0);
                p++;
            }
        } else if (*p == ')' || *p == ']') {
            int *stk = *p == ')' ? round : square, *np = *p == ')' ? &nr : &ns;
            if (*np > 0) {
                int st = stk[--*np];
                double m = *p == ')' ? 1.1 : 1 / 1.1;
                for (int i = st; i < s.n; i++) s.v[i].weight *= m;
            } else {
                fail = push_text(&s, p, 1);
            }
            p++;
        } else {
            size_t n = strcspn(p, "\\()[]:");
            fail = push_text(&s, p, n);
            p += n;
        }
    }
    /* brackets left open apply to the end, in the order they were opened */
    for (int k = 0; k < nr && !fail; k++)
        for (int i = round[k]; i < s.n; i++) s.v[i].weight *= 1.1;
    for (int k = 0; k < ns && !fail; k++)
        for (int i = square[k]; i < s.n; i++) s.v[i].weight *= 1 / 1.1;
    free(round);
    free(square);
    if (!fail && s.n == 0) fail = span_push(&s, "", 0, 1.0);
    /* merge runs of identical weights */
    for (int i = 0; !fail && i + 1 < s.n;) {
        if (s.v[i].weight == s.v[i + 1].weight) {
            size_t a = strlen(s.v[i].text), b = strlen(s.v[i + 1].text);
            char *m = realloc(s.v[i].text, a + b + 1);
            if (!m) {
                fail = 1;
                break;
            }
            memcpy(m + a, s.v[i + 1].text, b + 1);
            s.v[i].text = m;
            free(s.v[i + 1].text);
            memmove(s.v + i + 1, s.v + i + 2, sizeof *s.v * (size_t)(s.n - i - 2));
            s.n--;
        } else {
            i++;
        }
    }
    if (fail) {
        zl_prompt_spans_free(s.v, s.n);
        return zl_set_error(ZL_ENOMEM, "out of memory parsing a prompt");
    }
    *out = s.v;
    *n_out = s.n;
    return ZL_OK;
}

/* Append the BPE ids of `piece` (weight w; embeddings substituted) to v / wt. */
static int append_ids(const zl_tokenizer *t, const char *piece, float w, int32_t **v, float **wt, int *n) {
    int32_t *pv = NULL;
    int pn = 0;
    int rc = zl_tokenize(t, piece, &pv, &pn);
    if (!rc) rc = substitute_embeddings(t, &pv, NULL, &pn);
    if (!rc && pn) {
        int32_t *nv = realloc(*v, sizeof **v * (size_t)(*n + pn));
        if (nv) *v = nv;
        float *nw = nv ? realloc(*wt, sizeof **wt * (size_t)(*n + pn)) : NULL;
        if (nw) *wt = nw;
        if (!nv || !nw) rc = zl_set_error(ZL_ENOMEM, "out of memory");
        else {
            memcpy(*v + *n, pv, sizeof *pv * (size_t)pn);
            for (int i = 0; i < pn; i++) (*wt)[*n + i] = w;
            *n += pn;
        }
    }
    free(pv);
    return rc;
}

int zl_tokenize_chunks(const zl_tokenizer *t, const char *text, int32_t **ids_out, int **bounds_out, int *n_chunks) {
    float *w = NULL;
    int rc = zl_tokenize_chunks_weighted(t, text, 0, ids_out, &w, bounds_out, n_chunks);
    free(w);
    return rc;
}

int zl_tokenize_chunks_weighted(const zl_tokenizer *t, const char *text, int emphasis, int32_t **ids_out,
                                float **weights_out, int **bounds_out, int *n_chunks) {
    *ids_out = NULL;
    *weights_out = NULL;
    *bounds_out = NULL;
    *n_chunks = 0;
    int32_t *cv = NULL, *v = NULL;
    float *wt = NULL;
    int nc = 0, n = 0, nbrk = 0, rc = zl_tokenize(t, ",", &cv, &nc);
    const int32_t comma = !rc && nc == 1 ? cv[0] : -1;
    free(cv);
    int *brk = NULL;
    if (emphasis && !rc) {
        /* A1111: each span tokenized alone, its tokens carrying its weight; ("BREAK", -1) ends a chunk */
        zl_prompt_span *sp = NULL;
        int nsp = 0;
        rc = zl_prompt_parse_attention(text, &sp, &nsp);
        for (int i = 0; i < nsp && !rc; i++) {
            if (sp[i].weight == -1.0 && !strcmp(sp[i].text, "BREAK")) {
                int *nb = realloc(brk, sizeof *nb * (size_t)(nbrk + 1));
                if (!nb) rc = zl_set_error(ZL_ENOMEM, "out of memory");
                else {
                    brk = nb;
                    brk[nbrk++] = n;
                }
                continue;
            }
            rc = append_ids(t, sp[i].text, (float)sp[i].weight, &v, &wt, &n);
        }
        zl_prompt_spans_free(sp, nsp);
    }
    /* without emphasis: the text between BREAKs, tokenized piece by piece; brk[] = token offsets of the BREAKs */
    for (const char *p = text; !rc && !emphasis;) {
        const char *q = find_break(text, p);
        size_t len = q ? (size_t)(q - p) : strlen(p);
        char *piece = malloc(len + 1);
        if (!piece) rc = zl_set_error(ZL_ENOMEM, "out of memory");
        else {
            memcpy(piece, p, len);
            piece[len] = 0;
            rc = append_ids(t, piece, 1.0f, &v, &wt, &n);
            free(piece);
        }
        if (rc || !q) break;
        int *nb = realloc(brk, sizeof *nb * (size_t)(nbrk + 1));
        if (!nb) {
            rc = zl_set_error(ZL_ENOMEM, "out of memory");
            break;
        }
        brk = nb;
        brk[nbrk++] = n;
        p = q + 5;
    }
    /* at most one chunk per token and per BREAK, plus the first */
    int *b = rc ? NULL : malloc(sizeof(int) * (size_t)(n + nbrk + 2));
    if (!rc && !b) rc = zl_set_error(ZL_ENOMEM, "out of memory");
    if (rc) {
        free(v);
        free(wt);
        free(brk);
        return rc;
    }
    if (!wt) wt = malloc(sizeof(float)); /* (no tokens: a valid, empty weights array) */
    if (!wt) {
        free(v);
        free(brk);
        free(b);
        return zl_set_error(ZL_ENOMEM, "out of memory");
    }
    int k = 0, start = 0, last_comma = -1, nb = 0; /* last_comma: offset in the current chunk */
    b[k++] = 0;
    for (int i = 0; i <= n; i++) {
        /* BREAK ends the current chunk, even an empty one */
        for (; nb < nbrk && brk[nb] == i; nb++) {
            start = i;
            b[k++] = start;
            last_comma = -1;
        }
        if (i == n) break;
        int len = i - start;
        if (v[i] == comma) {
            last_comma = len;
        } else if (len == ZL_CLIP_MAX_TOKENS && last_comma >= 0 && len - last_comma <= ZL_CLIP_COMMA_BACKTRACK) {
            /* end the chunk after its last comma; the tokens after it move on */
            start += last_comma + 1;
            b[k++] = start;
            last_comma = -1;
            len = i - start;
        }
        /* a full chunk ends; so does one an embedding's vectors would not fit (A1111 keeps them together) */
        const int er = emb_start_rows(t, v[i]);
        if (len == ZL_CLIP_MAX_TOKENS || (er && len > 0 && len + er > ZL_CLIP_MAX_TOKENS)) {
            start = i;
            b[k++] = start;
            last_comma = -1;
        }
    }
    if (n > start || k == 1) b[k++] = n;
    free(brk);
    *ids_out = v;
    *weights_out = wt;
    *bounds_out = b;
    *n_chunks = k - 1;
    return ZL_OK;
}

int zl_tokenize_clip(const zl_tokenizer *t, const char *text, int32_t pad_id, int warn, int32_t ids[ZL_CLIP_CTX],
                     int *n_dropped) {
    int32_t *v;
    int n;
    int rc = zl_tokenize(t, text, &v, &n);
    if (!rc) rc = substitute_embeddings(t, &v, NULL, &n);
    if (rc) return rc;
    int keep = n < ZL_CLIP_MAX_TOKENS ? n : ZL_CLIP_MAX_TOKENS;
    ids[0] = ZL_CLIP_BOS;
    if (keep) memcpy(ids + 1, v, (size_t)keep * sizeof *ids);
    ids[keep + 1] = ZL_CLIP_EOS;
    for (int i = keep + 2; i < ZL_CLIP_CTX; i++) ids[i] = pad_id;
    if (n_dropped) *n_dropped = n - keep;
    if (warn && n > keep) {
        char *d = NULL;
        if (zl_tokenizer_decode(t, v + keep, n - keep, &d) == ZL_OK) {
            zl_warn("prompt is longer than %d tokens; %d tokens were dropped: \"%s\" (generate --long-prompt keeps "
                    "them, in chunks as A1111 does)",
                    ZL_CLIP_MAX_TOKENS, n - keep, d);
            free(d);
        } else { /* (an embedding's vectors among them) */
            zl_warn("prompt is longer than %d tokens; %d tokens were dropped (generate --long-prompt keeps them, in "
                    "chunks as A1111 does)", ZL_CLIP_MAX_TOKENS, n - keep);
        }
    }
    free(v);
    return ZL_OK;
}
