/* PyTorch checkpoints (.ckpt/.pt/.pth/.bin written by torch.save since 1.6): a
 * zip archive, every member stored uncompressed, holding `<dir>/data.pkl` (a
 * pickle of the state dict) and one raw storage per `<dir>/data/<key>`.
 *
 * The pickle is never executed. A small stack machine reads the opcodes that
 * pickle protocols 2-5 use for data (dicts, lists, tuples, strings, numbers)
 * and builds values; a global (`c` / STACK_GLOBAL) is only a name, and calling
 * one (REDUCE, NEWOBJ, BUILD) builds nothing but:
 *  - torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...) and
 *    torch._utils._rebuild_parameter(tensor, ...): a tensor view;
 *  - collections.OrderedDict(): a dict; torch.Size(t): the tuple t;
 * anything else gives an opaque value, which is fine wherever a tensor is not
 * needed (the other entries of a training checkpoint: step counts, optimizer
 * state, hyper-parameters). A storage is the persistent id ('storage',
 * torch.<Type>Storage, key, location, numel), its bytes the member
 * `<dir>/data/<key>`, little-endian.
 *
 * Tensors are taken from the dict under "state_dict" when there is one (as SD
 * checkpoints save it), else from the top-level dict. A view whose elements
 * are contiguous points into the mapping; another view (transposed, say) is
 * copied, and never more bytes than its storage holds. */
#include "io/torch_zip.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ zip */

typedef struct {
    const char *name; /* not NUL-terminated */
    size_t name_len;
    uint64_t off, size; /* the member's data in the file */
} member;

static uint32_t rd16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t rd32(const uint8_t *p) { return rd16(p) | rd16(p + 2) << 16; }
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

/* The central directory's members (stored ones only; another method is an error). */
static int zip_members(const uint8_t *m, size_t size, const char *P, member **out, size_t *n_out) {
    *out = NULL;
    *n_out = 0;
    if (size < 22) return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: zip file too short (%zu bytes)", P, size);
    size_t eocd = 0;
    int found = 0;
    size_t lo = size > 22 + 65535 ? size - 22 - 65535 : 0;
    for (size_t p = size - 22 + 1; p-- > lo;)
        if (rd32(m + p) == 0x06054b50u) {
            eocd = p, found = 1;
            break;
        }
    if (!found) return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: no zip end-of-directory record (truncated?)", P);
    uint64_t count = rd16(m + eocd + 10), cd_size = rd32(m + eocd + 12), cd_off = rd32(m + eocd + 16);
    if (count == 0xFFFF || cd_size == 0xFFFFFFFFu || cd_off == 0xFFFFFFFFu) {
        /* zip64: a locator just before the record points at the zip64 record */
        if (eocd < 20 || rd32(m + eocd - 20) != 0x07064b50u)
            return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: zip64 locator missing", P);
        uint64_t z = rd64(m + eocd - 20 + 8);
        if (z > size || size - z < 56 || rd32(m + z) != 0x06064b50u)
            return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: bad zip64 end-of-directory record", P);
        count = rd64(m + z + 32), cd_size = rd64(m + z + 40), cd_off = rd64(m + z + 48);
    }
    if (cd_off > size || cd_size > size - cd_off || count > cd_size / 46)
        return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: zip directory outside the file", P);
    member *mem = calloc(count ? count : 1, sizeof *mem);
    if (!mem) return zl_set_error(ZL_ENOMEM, "%s: out of memory", P);
    const uint8_t *c = m + cd_off, *end = m + cd_off + cd_size;
    for (uint64_t i = 0; i < count; i++) {
        if (end - c < 46 || rd32(c) != 0x02014b50u) {
            free(mem);
            return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: zip directory entry %llu is damaged", P,
                                (unsigned long long)i);
        }
        uint32_t method = rd16(c + 10), nl = rd16(c + 28), xl = rd16(c + 30), cl = rd16(c + 32);
        uint64_t csize = rd32(c + 20), usize = rd32(c + 24), loff = rd32(c + 42);
        if ((size_t)(end - c) - 46 < (size_t)nl + xl + cl) {
            free(mem);
            return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: zip directory entry %llu runs past the directory", P,
                                (unsigned long long)i);
        }
        const uint8_t *x = c + 46 + nl, *xe = x + xl;
        while (xe - x >= 4) { /* zip64 extra field: the 0xFFFFFFFF fields, in order */
            uint32_t id = rd16(x), len = rd16(x + 2);
            if ((size_t)(xe - x) - 4 < len) break;
            if (id == 1) {
                const uint8_t *q = x + 4, *qe = x + 4 + len;
                if (usize == 0xFFFFFFFFu && qe - q >= 8) usize = rd64(q), q += 8;
                if (csize == 0xFFFFFFFFu && qe - q >= 8) csize = rd64(q), q += 8;
                if (loff == 0xFFFFFFFFu && qe - q >= 8) loff = rd64(q);
            }
            x += 4 + len;
        }
        mem[i].name = (const char *)c + 46;
        mem[i].name_len = nl;
        if (method != 0 || csize != usize) {
            int l = nl > 200 ? 200 : (int)nl;
            free(mem);
            return zl_set_error(ZL_EUNSUPPORTED, "%s: PyTorch checkpoint: member '%.*s' is compressed (method %u); "
                                                 "torch.save stores members uncompressed", P, l, (const char *)c + 46, method);
        }
        if (loff > size || size - loff < 30 || rd32(m + loff) != 0x04034b50u) {
            free(mem);
            return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: zip member %llu has no local header", P,
                                (unsigned long long)i);
        }
        uint64_t data = loff + 30 + rd16(m + loff + 26) + rd16(m + loff + 28);
        if (data > size || usize > size - data) {
            free(mem);
            return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: zip member %llu runs past the end of the file", P,
                                (unsigned long long)i);
        }
        mem[i].off = data;
        mem[i].size = usize;
        c += 46 + nl + xl + cl;
    }
    *out = mem;
    *n_out = (size_t)count;
    return ZL_OK;
}

static const member *find_member(const member *mem, size_t n, const char *dir, size_t dl, const char *rest) {
    size_t rl = strlen(rest);
    for (size_t i = 0; i < n; i++)
        if (mem[i].name_len == dl + rl && !memcmp(mem[i].name, dir, dl) && !memcmp(mem[i].name + dl, rest, rl))
            return &mem[i];
    return NULL;
}

/* ------------------------------------------------------------------ values */

typedef enum { V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_TUPLE, V_LIST, V_DICT, V_GLOBAL, V_STORAGE, V_TENSOR, V_OPAQUE, V_MARK } vkind;

typedef struct val val;
struct val {
    vkind k;
    int64_t i;          /* INT, BOOL */
    char *s;            /* STR (NUL-terminated copy; may hold NULs), GLOBAL "module\nname" */
    size_t slen;
    val **it;           /* TUPLE, LIST; DICT as key, value pairs */
    size_t n, cap;
    /* STORAGE */
    zl_dtype dt;
    const member *mem;
    int64_t numel;
    /* TENSOR */
    val *st;
    int64_t off;
    int ndim;
    int64_t shape[ZL_MAX_DIMS], stride[ZL_MAX_DIMS];
};

typedef struct {
    const char *P;
    val **all;          /* every value made, freed at the end */
    size_t nall, capall;
    val **stack;
    size_t sp, capstack;
    val **memo;
    size_t nmemo;
    size_t memo_cap;    /* the most memo slots a pickle of this length can name */
    const member *mem;
    size_t nmem;
    const char *dir;
    size_t dl;
} vm;

static val *mk(vm *v, vkind k) {
    if (v->nall == v->capall) {
        size_t c = v->capall ? v->capall * 2 : 256;
        val **a = realloc(v->all, c * sizeof *a);
        if (!a) return NULL;
        v->all = a, v->capall = c;
    }
    val *x = calloc(1, sizeof *x);
    if (!x) return NULL;
    x->k = k;
    v->all[v->nall++] = x;
    return x;
}

static void vm_free(vm *v) {
    for (size_t i = 0; i < v->nall; i++) {
        free(v->all[i]->s);
        free(v->all[i]->it);
        free(v->all[i]);
    }
    free(v->all);
    free(v->stack);
    free(v->memo);
}

static int push_item(val *c, val *x) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 4;
        val **a = realloc(c->it, cap * sizeof *a);
        if (!a) return -1;
        c->it = a, c->cap = cap;
    }
    c->it[c->n++] = x;
    return 0;
}

static int push(vm *v, val *x) {
    if (!x) return zl_set_error(ZL_ENOMEM, "%s: out of memory", v->P);
    if (v->sp == v->capstack) {
        size_t c = v->capstack ? v->capstack * 2 : 64;
        val **a = realloc(v->stack, c * sizeof *a);
        if (!a) return zl_set_error(ZL_ENOMEM, "%s: out of memory", v->P);
        v->stack = a, v->capstack = c;
    }
    v->stack[v->sp++] = x;
    return ZL_OK;
}

static int is_global(const val *x, const char *mod, const char *name) {
    if (!x || x->k != V_GLOBAL) return 0;
    size_t ml = strlen(mod);
    return x->slen == ml + 1 + strlen(name) && !memcmp(x->s, mod, ml) && x->s[ml] == '\n' && !strcmp(x->s + ml + 1, name);
}

static zl_dtype storage_dtype(const val *g) {
    static const struct {
        const char *name;
        zl_dtype dt;
    } t[] = {{"FloatStorage", ZL_DT_F32}, {"HalfStorage", ZL_DT_F16},  {"BFloat16Storage", ZL_DT_BF16},
             {"DoubleStorage", ZL_DT_F64}, {"LongStorage", ZL_DT_I64}, {"IntStorage", ZL_DT_I32},
             {"ShortStorage", ZL_DT_I16}, {"CharStorage", ZL_DT_I8},  {"ByteStorage", ZL_DT_U8},
             {"BoolStorage", ZL_DT_BOOL}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (is_global(g, "torch", t[i].name)) return t[i].dt;
    return ZL_DT_INVALID;
}

/* BINPERSID: ('storage', torch.<Type>Storage, key, location, numel) */
static int persistent_load(vm *v, val *pid, val **out) {
    if (!pid || pid->k != V_TUPLE || pid->n < 5 || pid->it[0]->k != V_STR || strcmp(pid->it[0]->s, "storage") ||
        pid->it[2]->k != V_STR || pid->it[4]->k != V_INT)
        return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: a persistent id that is not ('storage', type, key, "
                                        "location, size)", v->P);
    zl_dtype dt = storage_dtype(pid->it[1]);
    if (dt == ZL_DT_INVALID) {
        const val *g = pid->it[1];
        char name[96] = "?";
        if (g->k == V_GLOBAL) {
            snprintf(name, sizeof name, "%s", g->s);
            char *nl = strchr(name, '\n');
            if (nl) *nl = '.';
        }
        return zl_set_error(ZL_EUNSUPPORTED, "%s: PyTorch checkpoint: storage type '%s' is not read", v->P, name);
    }
    const char *key = pid->it[2]->s;
    if (strlen(key) != pid->it[2]->slen || strlen(key) > 200)
        return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: bad storage key", v->P);
    char rest[256];
    snprintf(rest, sizeof rest, "data/%s", key);
    const member *m = find_member(v->mem, v->nmem, v->dir, v->dl, rest);
    if (!m) return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: storage '%s' has no member %.*s%s", v->P, key,
                                (int)v->dl, v->dir, rest);
    int64_t numel = pid->it[4]->i, esz = zl_dtype_bits(dt) / 8;
    if (numel < 0 || (uint64_t)numel > m->size / (uint64_t)esz)
        return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: storage '%s' of %lld elements is larger than its "
                                        "%llu-byte member", v->P, key, (long long)numel, (unsigned long long)m->size);
    val *s = mk(v, V_STORAGE);
    if (!s) return zl_set_error(ZL_ENOMEM, "%s: out of memory", v->P);
    s->dt = dt, s->mem = m, s->numel = numel;
    *out = s;
    return ZL_OK;
}

/* _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, metadata]) */
static val *rebuild_tensor(vm *v, const val *a) {
    if (!a || a->k != V_TUPLE || a->n < 4 || a->it[0]->k != V_STORAGE || a->it[1]->k != V_INT ||
        a->it[2]->k != V_TUPLE || a->it[3]->k != V_TUPLE || a->it[2]->n != a->it[3]->n || a->it[2]->n > ZL_MAX_DIMS)
        return NULL;
    val *t = mk(v, V_TENSOR);
    if (!t) return NULL;
    t->st = a->it[0];
    t->off = a->it[1]->i;
    t->ndim = (int)a->it[2]->n;
    for (int d = 0; d < t->ndim; d++) {
        const val *s = a->it[2]->it[d], *r = a->it[3]->it[d];
        if (s->k != V_INT || r->k != V_INT) {
            t->k = V_OPAQUE;
            return t;
        }
        t->shape[d] = s->i;
        t->stride[d] = r->i;
    }
    return t;
}

/* REDUCE / NEWOBJ: the callable f applied to the tuple a */
static val *call(vm *v, const val *f, val *a) {
    if (is_global(f, "torch._utils", "_rebuild_tensor_v2")) {
        val *t = rebuild_tensor(v, a);
        return t ? t : mk(v, V_OPAQUE);
    }
    if (is_global(f, "torch._utils", "_rebuild_parameter") && a && a->k == V_TUPLE && a->n >= 1 && a->it[0]->k == V_TENSOR)
        return a->it[0];
    if (is_global(f, "collections", "OrderedDict")) return mk(v, V_DICT);
    if (is_global(f, "torch", "Size") && a && a->k == V_TUPLE && a->n == 1 && a->it[0]->k == V_TUPLE) return a->it[0];
    return mk(v, V_OPAQUE);
}

static int pop_mark(vm *v, size_t *at) {
    size_t i = v->sp;
    while (i > 0 && v->stack[i - 1]->k != V_MARK) i--;
    if (i == 0) return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: pickle has no MARK where one is needed", v->P);
    *at = i - 1;
    return ZL_OK;
}

/* Run the pickle; *top receives the result. */
static int run(vm *v, const uint8_t *p, size_t n, val **top) {
    const uint8_t *e = p + n, *start = p;
    *top = NULL;
#define NEED(k)                                                                                                       \
    do {                                                                                                              \
        if ((size_t)(e - p) < (size_t)(k))                                                                            \
            return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: pickle truncated at byte %zu", v->P,             \
                                (size_t)(p - start));                                                                 \
    } while (0)
#define POP(x)                                                                                                        \
    do {                                                                                                              \
        if (v->sp == 0 || v->stack[v->sp - 1]->k == V_MARK)                                                           \
            return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: pickle stack underflow at byte %zu", v->P,       \
                                (size_t)(p - start));                                                                 \
        x = v->stack[--v->sp];                                                                                        \
    } while (0)
#define TRY(expr)                                                                                                     \
    do {                                                                                                              \
        int rc_ = (expr);                                                                                             \
        if (rc_) return rc_;                                                                                          \
    } while (0)
    while (p < e) {
        const size_t at = (size_t)(p - start);
        const uint8_t op = *p++;
        val *x = NULL, *y = NULL, *z = NULL;
        size_t len = 0;
        switch (op) {
        case 0x80: NEED(1); p++; break;                   /* PROTO */
        case 0x95: NEED(8); p += 8; break;                /* FRAME */
        case '(': TRY(push(v, mk(v, V_MARK))); break;     /* MARK */
        case '.':                                         /* STOP */
            POP(x);
            *top = x;
            return ZL_OK;
        case 'N': TRY(push(v, mk(v, V_NONE))); break;
        case 0x88: case 0x89:                             /* NEWTRUE, NEWFALSE */
            x = mk(v, V_BOOL);
            if (x) x->i = op == 0x88;
            TRY(push(v, x));
            break;
        case 'J': case 'K': case 'M': {                   /* BININT, BININT1, BININT2 */
            size_t k = op == 'J' ? 4 : op == 'K' ? 1 : 2;
            NEED(k);
            x = mk(v, V_INT);
            if (x) x->i = op == 'J' ? (int64_t)(int32_t)rd32(p) : op == 'K' ? p[0] : (int64_t)rd16(p);
            p += k;
            TRY(push(v, x));
            break;
        }
        case 0x8a: {                                      /* LONG1 */
            NEED(1);
            len = p[0];
            p++;
            NEED(len);
            if (len > 8) return zl_set_error(ZL_EUNSUPPORTED, "%s: PyTorch checkpoint: integer of %zu bytes at byte %zu", v->P, len, at);
            uint64_t u = 0;
            for (size_t i = 0; i < len; i++) u |= (uint64_t)p[i] << (8 * i);
            if (len && len < 8 && (p[len - 1] & 0x80)) u |= ~(uint64_t)0 << (8 * len);
            x = mk(v, V_INT);
            if (x) x->i = (int64_t)u;
            p += len;
            TRY(push(v, x));
            break;
        }
        case 'G':                                         /* BINFLOAT */
            NEED(8);
            p += 8;
            TRY(push(v, mk(v, V_FLOAT)));
            break;
        case 'X': case 0x8c: case 0x8d:                   /* BINUNICODE, SHORT_BINUNICODE, BINUNICODE8 */
        case 'T': case 'U':                               /* BINSTRING, SHORT_BINSTRING */
        case 'B': case 'C': case 0x8e: {                  /* BINBYTES, SHORT_BINBYTES, BINBYTES8 */
            size_t k = (op == 0x8c || op == 'U' || op == 'C') ? 1 : (op == 0x8d || op == 0x8e) ? 8 : 4;
            NEED(k);
            uint64_t l = k == 1 ? p[0] : k == 4 ? rd32(p) : rd64(p);
            p += k;
            NEED(l);
            x = mk(v, V_STR);
            if (x) x->s = malloc((size_t)l + 1);
            if (!x || !x->s) return zl_set_error(ZL_ENOMEM, "%s: out of memory", v->P);
            memcpy(x->s, p, (size_t)l);
            x->s[l] = 0;
            x->slen = (size_t)l;
            p += l;
            TRY(push(v, x));
            break;
        }
        case 'c': {                                       /* GLOBAL "module\nname\n" */
            const uint8_t *a = memchr(p, '\n', (size_t)(e - p));
            const uint8_t *b = a ? memchr(a + 1, '\n', (size_t)(e - a - 1)) : NULL;
            if (!b) return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: unterminated GLOBAL at byte %zu", v->P, at);
            x = mk(v, V_GLOBAL);
            if (x) x->s = malloc((size_t)(b - p) + 1);
            if (!x || !x->s) return zl_set_error(ZL_ENOMEM, "%s: out of memory", v->P);
            memcpy(x->s, p, (size_t)(b - p));
            x->s[b - p] = 0;
            x->slen = (size_t)(b - p);
            p = b + 1;
            TRY(push(v, x));
            break;
        }
        case 0x93:                                        /* STACK_GLOBAL */
            POP(y);
            POP(x);
            if (x->k != V_STR || y->k != V_STR)
                return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: STACK_GLOBAL of non-strings at byte %zu", v->P, at);
            z = mk(v, V_GLOBAL);
            if (z) z->s = malloc(x->slen + y->slen + 2);
            if (!z || !z->s) return zl_set_error(ZL_ENOMEM, "%s: out of memory", v->P);
            memcpy(z->s, x->s, x->slen);
            z->s[x->slen] = '\n';
            memcpy(z->s + x->slen + 1, y->s, y->slen + 1);
            z->slen = x->slen + 1 + y->slen;
            TRY(push(v, z));
            break;
        case ')': TRY(push(v, mk(v, V_TUPLE))); break;    /* EMPTY_TUPLE */
        case ']': TRY(push(v, mk(v, V_LIST))); break;     /* EMPTY_LIST */
        case '}': TRY(push(v, mk(v, V_DICT))); break;     /* EMPTY_DICT */
        case 0x8f: TRY(push(v, mk(v, V_OPAQUE))); break;  /* EMPTY_SET */
        case 0x85: case 0x86: case 0x87: {                /* TUPLE1..3 */
            size_t k = (size_t)(op - 0x84);
            if (v->sp < k) return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: pickle stack underflow at byte %zu", v->P, at);
            x = mk(v, V_TUPLE);
            if (!x) return zl_set_error(ZL_ENOMEM, "%s: out of memory", v->P);
            for (size_t i = v->sp - k; i < v->sp; i++) {
                if (v->stack[i]->k == V_MARK)
                    return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: MARK inside a tuple at byte %zu", v->P, at);
                if (push_item(x, v->stack[i])) return zl_set_error(ZL_ENOMEM, "%s: out of memory", v->P);
            }
            v->sp -= k;
            TRY(push(v, x));
            break;
        }
        case 't': case 'l': case 'd': case 0x91: {        /* TUPLE, LIST, DICT, FROZENSET (from the mark) */
            size_t m;
            TRY(pop_mark(v, &m));
            if (op == 'd' && (v->sp - m - 1) % 2)
                return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: DICT of an odd item count at byte %zu", v->P, at);
            x = mk(v, op == 't' ? V_TUPLE : op == 'l' ? V_LIST : op == 'd' ? V_DICT : V_OPAQUE);
            if (!x) return zl_set_error(ZL_ENOMEM, "%s: out of memory", v->P);
            if (op != 0x91)
                for (size_t i = m + 1; i < v->sp; i++)
                    if (push_item(x, v->stack[i])) return zl_set_error(ZL_ENOMEM, "%s: out of memory", v->P);
            v->sp = m;
            TRY(push(v, x));
            break;
        }
        case 'a':                                         /* APPEND */
            POP(y);
            POP(x);
            if (x->k == V_LIST && push_item(x, y)) return zl_set_error(ZL_ENOMEM, "%s: out of memory", v->P);
            TRY(push(v, x));
            break;
        case 'e': case 'u': case 0x90: {                  /* APPENDS, SETITEMS, ADDITEMS */
            size_t m;
            TRY(pop_mark(v, &m));
            if (m == 0) return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: nothing to add to at byte %zu", v->P, at);
            x = v->stack[m - 1];
            if (op == 'u' && (v->sp - m - 1) % 2)
                return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: SETITEMS of an odd item count at byte %zu", v->P, at);
            if ((op == 'e' && x->k == V_LIST) || (op == 'u' && x->k == V_DICT))
                for (size_t i = m + 1; i < v->sp; i++)
                    if (push_item(x, v->stack[i])) return zl_set_error(ZL_ENOMEM, "%s: out of memory", v->P);
            v->sp = m;
            break;
        }
        case 's':                                         /* SETITEM */
            POP(z);
            POP(y);
            if (v->sp == 0) return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: SETITEM without a dict at byte %zu", v->P, at);
            x = v->stack[v->sp - 1];
            if (x->k == V_DICT && (push_item(x, y) || push_item(x, z)))
                return zl_set_error(ZL_ENOMEM, "%s: out of memory", v->P);
            break;
        case 'R': case 0x81:                              /* REDUCE, NEWOBJ */
            POP(y);
            POP(x);
            TRY(push(v, call(v, x, y)));
            break;
        case 0x92:                                        /* NEWOBJ_EX */
            POP(z);
            POP(y);
            POP(x);
            TRY(push(v, call(v, x, y)));
            break;
        case 'b':                                         /* BUILD: state is ignored */
            POP(y);
            if (v->sp == 0) return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: BUILD without an object at byte %zu", v->P, at);
            break;
        case 'Q':                                         /* BINPERSID */
            POP(x);
            TRY(persistent_load(v, x, &y));
            TRY(push(v, y));
            break;
        case 'q': case 'r': case 0x94: {                  /* BINPUT, LONG_BINPUT, MEMOIZE */
            size_t idx;
            if (op == 0x94) idx = v->nmemo;
            else {
                NEED(op == 'q' ? 1 : 4);
                idx = op == 'q' ? p[0] : rd32(p);
                p += op == 'q' ? 1 : 4;
            }
            if (v->sp == 0) return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: PUT on an empty stack at byte %zu", v->P, at);
            if (idx >= v->memo_cap)
                return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: memo index %zu at byte %zu", v->P, idx, at);
            if (idx >= v->nmemo) {
                val **mm = realloc(v->memo, (idx + 1) * sizeof *mm);
                if (!mm) return zl_set_error(ZL_ENOMEM, "%s: out of memory", v->P);
                memset(mm + v->nmemo, 0, (idx + 1 - v->nmemo) * sizeof *mm);
                v->memo = mm, v->nmemo = idx + 1;
            }
            v->memo[idx] = v->stack[v->sp - 1];
            break;
        }
        case 'h': case 'j': {                             /* BINGET, LONG_BINGET */
            NEED(op == 'h' ? 1 : 4);
            size_t idx = op == 'h' ? p[0] : rd32(p);
            p += op == 'h' ? 1 : 4;
            if (idx >= v->nmemo || !v->memo[idx])
                return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: memo entry %zu read before it is set (byte %zu)", v->P, idx, at);
            TRY(push(v, v->memo[idx]));
            break;
        }
        case '0': POP(x); break;                          /* POP */
        case '1': {                                       /* POP_MARK */
            size_t m;
            TRY(pop_mark(v, &m));
            v->sp = m;
            break;
        }
        case '2':                                         /* DUP */
            if (v->sp == 0) return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: DUP on an empty stack at byte %zu", v->P, at);
            TRY(push(v, v->stack[v->sp - 1]));
            break;
        default:
            return zl_set_error(ZL_EUNSUPPORTED, "%s: PyTorch checkpoint: pickle opcode 0x%02x at byte %zu is not read",
                                v->P, op, at);
        }
    }
#undef NEED
#undef POP
#undef TRY
    return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: pickle ends without STOP", v->P);
}

/* ------------------------------------------------------------------ tensors */

static const val *dict_get(const val *d, const char *key) {
    for (size_t i = 0; i + 1 < d->n; i += 2)
        if (d->it[i]->k == V_STR && !strcmp(d->it[i]->s, key) && strlen(key) == d->it[i]->slen) return d->it[i + 1];
    return NULL;
}

/* One tensor view into a zl_torch_tensor: a pointer into the file when its
 * elements are contiguous, else a copy (counted against *copy_budget). */
static int make_tensor(const char *P, const uint8_t *map, const val *key, const val *t, zl_torch_tensor *out,
                       uint64_t *copy_budget) {
    memset(out, 0, sizeof *out);
    const val *s = t->st;
    const int64_t esz = zl_dtype_bits(s->dt) / 8;
    if (strlen(key->s) != key->slen) return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: a tensor name holds a NUL byte", P);
    int64_t numel = 1, last = 0;
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] < 0 || t->stride[d] < 0)
            return zl_set_error(ZL_EFORMAT, "%s: tensor '%s': negative size or stride", P, key->s);
    /* the nonzero sizes' product stays small even for an empty tensor (as safetensors' shapes must) */
    int64_t nz = 1;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] == 0) {
            numel = 0;
            continue;
        }
        if (nz > ((int64_t)1 << 40) / t->shape[d])
            return zl_set_error(ZL_EFORMAT, "%s: tensor '%s': its sizes multiply past 2^40", P, key->s);
        nz *= t->shape[d];
    }
    if (numel)
        for (int d = 0; d < t->ndim; d++) {
            /* every element must lie inside the storage: (size - 1) * stride < its length */
            if (t->shape[d] > 1 && t->stride[d] && t->shape[d] - 1 > s->numel / t->stride[d])
                return zl_set_error(ZL_EFORMAT, "%s: tensor '%s' reaches past the end of its storage (%lld elements)",
                                    P, key->s, (long long)s->numel);
            if (t->shape[d] > s->numel || numel > s->numel / t->shape[d])
                return zl_set_error(ZL_EUNSUPPORTED, "%s: tensor '%s' has more elements than its storage (a broadcast "
                                                     "view)", P, key->s);
            numel *= t->shape[d];
            last += (t->shape[d] - 1) * t->stride[d];
        }
    if (t->off < 0 || (numel && (t->off > s->numel || last >= s->numel - t->off)))
        return zl_set_error(ZL_EFORMAT, "%s: tensor '%s' reaches past the end of its storage (%lld elements)", P, key->s,
                            (long long)s->numel);
    int contiguous = 1;
    int64_t want = 1;
    for (int d = t->ndim - 1; d >= 0 && numel; d--) {
        if (t->shape[d] != 1 && t->stride[d] != want) contiguous = 0;
        want *= t->shape[d];
    }
    out->name = key->s;
    out->dtype = s->dt;
    out->ndim = t->ndim;
    memcpy(out->shape, t->shape, sizeof out->shape);
    out->numel = numel;
    out->nbytes = (size_t)(numel * esz);
    const uint8_t *base = map + s->mem->off + (uint64_t)t->off * (uint64_t)esz;
    if (contiguous || numel == 0) {
        out->data = base;
        out->file_off = s->mem->off + (uint64_t)t->off * (uint64_t)esz;
        return ZL_OK;
    }
    if (out->nbytes > *copy_budget)
        return zl_set_error(ZL_EUNSUPPORTED, "%s: tensor '%s': strided views total more bytes than the file", P, key->s);
    *copy_budget -= out->nbytes;
    uint8_t *c = malloc(out->nbytes ? out->nbytes : 1);
    if (!c) return zl_set_error(ZL_ENOMEM, "%s: out of memory copying tensor '%s'", P, key->s);
    int64_t idx[ZL_MAX_DIMS] = {0};
    for (int64_t i = 0; i < numel; i++) {
        int64_t src = 0;
        for (int d = 0; d < t->ndim; d++) src += idx[d] * t->stride[d];
        memcpy(c + i * esz, base + src * esz, (size_t)esz);
        for (int d = t->ndim - 1; d >= 0; d--) {
            if (++idx[d] < t->shape[d]) break;
            idx[d] = 0;
        }
    }
    out->owned = c;
    out->data = c;
    return ZL_OK;
}

/* The tensors of dict d and, `depth` levels down, of the dicts inside it (names
 * joined by '.', as A1111's embeddings' string_to_param.*): counted when tt is
 * NULL, else made. *work bounds the walk (a pickle may nest one dict in itself). */
static int collect(const char *path, const uint8_t *map, const val *d, const char *prefix, int depth,
                   zl_torch_tensor *tt, int *nt, uint64_t *budget, long *work) {
    for (size_t i = 0; i + 1 < d->n; i += 2) {
        const val *k = d->it[i], *x = d->it[i + 1];
        if (++*work > (1L << 20))
            return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: its dicts nest too much", path);
        if (k->k != V_STR || (x->k != V_TENSOR && !(x->k == V_DICT && depth > 0))) continue;
        if (strlen(k->s) != k->slen)
            return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: a key holds a NUL byte", path);
        size_t pl = strlen(prefix);
        char *name = malloc(pl + k->slen + 2);
        if (!name) return zl_set_error(ZL_ENOMEM, "%s: out of memory", path);
        memcpy(name, prefix, pl);
        memcpy(name + pl, k->s, k->slen + 1);
        int rc = ZL_OK;
        if (x->k == V_DICT) {
            strcat(name, ".");
            rc = collect(path, map, x, name, depth - 1, tt, nt, budget, work);
            free(name);
        } else if (!tt) {
            (*nt)++;
            free(name);
        } else {
            val key = *k;
            key.s = name;
            key.slen = strlen(name);
            rc = make_tensor(path, map, &key, x, &tt[*nt], budget);
            if (!rc) {
                tt[*nt].name = name;
                (*nt)++;
            } else {
                free(tt[*nt].owned);
                tt[*nt].owned = NULL;
                free(name);
            }
        }
        if (rc) return rc;
    }
    return ZL_OK;
}

int zl_torch_zip_read(const uint8_t *map, size_t size, const char *path, zl_torch_tensor **out, int *n_out) {
    *out = NULL;
    *n_out = 0;
    member *mem = NULL;
    size_t nmem = 0;
    int rc = zip_members(map, size, path, &mem, &nmem);
    if (rc) return rc;
    /* the pickle: <dir>/data.pkl, the one member so named */
    const member *pk = NULL;
    for (size_t i = 0; i < nmem; i++) {
        const member *m = &mem[i];
        if (m->name_len >= 8 && !memcmp(m->name + m->name_len - 8, "data.pkl", 8) &&
            (m->name_len == 8 || m->name[m->name_len - 9] == '/')) {
            if (pk) {
                free(mem);
                return zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: more than one data.pkl", path);
            }
            pk = m;
        }
    }
    if (!pk) {
        free(mem);
        return zl_set_error(ZL_EFORMAT, "%s: a zip file without a data.pkl: not a PyTorch checkpoint", path);
    }
    const member *bo = find_member(mem, nmem, pk->name, pk->name_len - 8, "byteorder");
    if (bo && !(bo->size == 6 && !memcmp(map + bo->off, "little", 6))) {
        free(mem);
        return zl_set_error(ZL_EUNSUPPORTED, "%s: PyTorch checkpoint: saved on a big-endian machine (not read)", path);
    }
    vm v;
    memset(&v, 0, sizeof v);
    v.P = path;
    v.mem = mem;
    v.nmem = nmem;
    v.dir = pk->name;
    v.dl = pk->name_len - 8;
    v.memo_cap = (size_t)pk->size + 1;
    val *top = NULL;
    rc = run(&v, map + pk->off, (size_t)pk->size, &top);
    const val *sd = NULL;
    if (!rc) {
        sd = top && top->k == V_DICT ? dict_get(top, "state_dict") : NULL;
        if (!sd || sd->k != V_DICT) sd = top;
        if (!sd || sd->k != V_DICT)
            rc = zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint: the pickle holds no dict of tensors", path);
    }
    zl_torch_tensor *tt = NULL;
    int nt = 0;
    if (!rc) {
        /* a state_dict's own entries; else the top-level dict's, and those of dicts in it */
        const int depth = sd == top ? 3 : 0;
        int cnt = 0;
        long work = 0;
        uint64_t budget = size;
        rc = collect(path, map, sd, "", depth, NULL, &cnt, &budget, &work);
        if (!rc && !(tt = calloc(cnt ? (size_t)cnt : 1, sizeof *tt))) rc = zl_set_error(ZL_ENOMEM, "%s: out of memory", path);
        work = 0;
        if (!rc) rc = collect(path, map, sd, "", depth, tt, &nt, &budget, &work);
        if (!rc && nt == 0) rc = zl_set_error(ZL_EFORMAT, "%s: PyTorch checkpoint without tensors", path);
    }
    vm_free(&v);
    free(mem);
    if (rc) {
        zl_torch_tensors_free(tt, nt);
        return rc;
    }
    *out = tt;
    *n_out = nt;
    return ZL_OK;
}

void zl_torch_tensors_free(zl_torch_tensor *t, int n) {
    if (!t) return;
    for (int i = 0; i < n; i++) {
        free(t[i].name);
        free(t[i].owned);
    }
    free(t);
}
