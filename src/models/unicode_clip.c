/* Unicode for the CLIP tokenizer. OpenAI's tokenizer runs on Python strings
 * with the `regex` module; this file reproduces the pieces it relies on.
 * - \p{L}, \p{N}, \s (the regex module's White_Space), Python's str.isspace
 *   (used by strip: adds U+001C..U+001F) and str.lower (full mapping, including
 *   U+0130 -> "i\u0307"): tables generated from Python and `regex` by
 *   tools/gen_unicode_clip.py into unicode_tables.c, for every code point.
 * - html.unescape: numeric references (&#N; &#xH;, with Python's Windows-1252
 *   and invalid-code-point rules) and these named references: the 106
 *   HTML 4 Latin-1 names that HTML5 also accepts without ';' (nbsp .. yuml,
 *   amp, lt, gt, quot, and AMP, LT, GT, QUOT, COPY, REG), plus, with ';':
 *   apos, the typographic ones (ndash mdash lsquo rsquo sbquo ldquo rdquo bdquo
 *   hellip bull dagger Dagger permil lsaquo rsaquo prime Prime trade euro
 *   OElig oelig Scaron scaron Yuml fnof circ tilde ensp emsp thinsp zwnj zwj
 *   lrm rlm), arrows (larr uarr rarr darr harr), math (minus ne le ge infin
 *   asymp sum prod radic), card suits, and the Greek letters. Other names
 *   (HTML5 has 2231) are left as text. */
#include "models/unicode_clip.h"
#include "models/unicode_tables.h"

#include <stdlib.h>
#include <string.h>

static int in_ranges(const zl_uc_range *r, size_t n, uint32_t c) {
    size_t a = 0, b = n;
    while (a < b) {
        size_t m = (a + b) / 2;
        if (c < r[m].lo) b = m;
        else if (c > r[m].hi) a = m + 1;
        else return 1;
    }
    return 0;
}

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

int zl_uc_is_letter(uint32_t c) { return in_ranges(zl_uc_letters, zl_uc_letters_n, c); }
int zl_uc_is_number(uint32_t c) { return in_ranges(zl_uc_numbers, zl_uc_numbers_n, c); }
int zl_uc_is_regex_space(uint32_t c) { return in_ranges(zl_uc_regex_space, zl_uc_regex_space_n, c); }
int zl_uc_is_py_space(uint32_t c) { return in_ranges(zl_uc_py_space, zl_uc_py_space_n, c); }

int zl_uc_lower(uint32_t c, uint32_t out[2]) {
    for (size_t i = 0; i < zl_uc_lower_multis_n; i++)
        if (zl_uc_lower_multis[i].cp == c) {
            out[0] = zl_uc_lower_multis[i].lower[0];
            out[1] = zl_uc_lower_multis[i].lower[1];
            return 2;
        }
    size_t a = 0, b = zl_uc_lower_rules_n;
    while (a < b) {
        size_t m = (a + b) / 2;
        const zl_uc_lower_rule *r = &zl_uc_lower_rules[m];
        if (c < r->lo) b = m;
        else if (c > r->hi) a = m + 1;
        else {
            if (r->step == 1 || ((c - r->lo) % 2) == 0) c = (uint32_t)((int32_t)c + r->delta);
            break;
        }
    }
    out[0] = c;
    return 1;
}

int zl_uc_decode_utf8(const char *s, size_t len, uint32_t **out, size_t *n, size_t *bad_at) {
    const unsigned char *p = (const unsigned char *)s;
    uint32_t *o = malloc((len + 1) * sizeof *o);
    if (!o) return -2;
    size_t k = 0, i = 0;
    while (i < len) {
        unsigned c = p[i];
        uint32_t cp;
        int extra;
        if (c < 0x80) { cp = c; extra = 0; }
        else if (c >= 0xC2 && c <= 0xDF) { cp = c & 0x1F; extra = 1; }
        else if (c >= 0xE0 && c <= 0xEF) { cp = c & 0x0F; extra = 2; }
        else if (c >= 0xF0 && c <= 0xF4) { cp = c & 0x07; extra = 3; }
        else goto bad;
        if (i + (size_t)extra >= len + (extra ? 0 : 1)) goto bad;
        for (int j = 1; j <= extra; j++) {
            unsigned cc = p[i + j];
            if ((cc & 0xC0) != 0x80) goto bad;
            cp = (cp << 6) | (cc & 0x3F);
        }
        if ((extra == 2 && cp < 0x800) || (extra == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            goto bad;
        o[k++] = cp;
        i += 1 + (size_t)extra;
        continue;
    bad:
        free(o);
        if (bad_at) *bad_at = i;
        return -1;
    }
    *out = o;
    *n = k;
    return 0;
}

int zl_uc_encode_utf8(uint32_t c, char *buf) {
    if (c < 0x80) { buf[0] = (char)c; return 1; }
    if (c < 0x800) { buf[0] = (char)(0xC0 | (c >> 6)); buf[1] = (char)(0x80 | (c & 0x3F)); return 2; }
    if (c < 0x10000) {
        buf[0] = (char)(0xE0 | (c >> 12));
        buf[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        buf[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    buf[0] = (char)(0xF0 | (c >> 18));
    buf[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    buf[2] = (char)(0x80 | ((c >> 6) & 0x3F));
    buf[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

/* ---- html.unescape ---------------------------------------------------------- */

/* HTML 4 Latin-1 names for U+00A0..U+00FF, in code point order. HTML5 accepts
 * all of these without the ';' (Python's html5 table lists them both ways). */
static const char *const g_latin1_names[96] = {
    "nbsp",   "iexcl",  "cent",   "pound",  "curren", "yen",    "brvbar", "sect",   "uml",    "copy",
    "ordf",   "laquo",  "not",    "shy",    "reg",    "macr",   "deg",    "plusmn", "sup2",   "sup3",
    "acute",  "micro",  "para",   "middot", "cedil",  "sup1",   "ordm",   "raquo",  "frac14", "frac12",
    "frac34", "iquest", "Agrave", "Aacute", "Acirc",  "Atilde", "Auml",   "Aring",  "AElig",  "Ccedil",
    "Egrave", "Eacute", "Ecirc",  "Euml",   "Igrave", "Iacute", "Icirc",  "Iuml",   "ETH",    "Ntilde",
    "Ograve", "Oacute", "Ocirc",  "Otilde", "Ouml",   "times",  "Oslash", "Ugrave", "Uacute", "Ucirc",
    "Uuml",   "Yacute", "THORN",  "szlig",  "agrave", "aacute", "acirc",  "atilde", "auml",   "aring",
    "aelig",  "ccedil", "egrave", "eacute", "ecirc",  "euml",   "igrave", "iacute", "icirc",  "iuml",
    "eth",    "ntilde", "ograve", "oacute", "ocirc",  "otilde", "ouml",   "divide", "oslash", "ugrave",
    "uacute", "ucirc",  "uuml",   "yacute", "thorn",  "yuml",
};

typedef struct {
    const char *name;
    uint32_t cp;
    int legacy; /* also valid without the ';' */
} uc_entity;

static const uc_entity g_entities[] = {
    {"amp", '&', 1}, {"lt", '<', 1}, {"gt", '>', 1}, {"quot", '"', 1},
    {"AMP", '&', 1}, {"LT", '<', 1}, {"GT", '>', 1}, {"QUOT", '"', 1}, {"COPY", 0xA9, 1}, {"REG", 0xAE, 1},
    {"apos", '\'', 0}, {"ndash", 0x2013, 0}, {"mdash", 0x2014, 0}, {"lsquo", 0x2018, 0},
    {"rsquo", 0x2019, 0}, {"sbquo", 0x201A, 0}, {"ldquo", 0x201C, 0}, {"rdquo", 0x201D, 0},
    {"bdquo", 0x201E, 0}, {"hellip", 0x2026, 0}, {"bull", 0x2022, 0}, {"dagger", 0x2020, 0},
    {"Dagger", 0x2021, 0}, {"permil", 0x2030, 0}, {"lsaquo", 0x2039, 0}, {"rsaquo", 0x203A, 0},
    {"prime", 0x2032, 0}, {"Prime", 0x2033, 0}, {"trade", 0x2122, 0}, {"euro", 0x20AC, 0},
    {"OElig", 0x152, 0}, {"oelig", 0x153, 0}, {"Scaron", 0x160, 0}, {"scaron", 0x161, 0},
    {"Yuml", 0x178, 0}, {"fnof", 0x192, 0}, {"circ", 0x2C6, 0}, {"tilde", 0x2DC, 0},
    {"ensp", 0x2002, 0}, {"emsp", 0x2003, 0}, {"thinsp", 0x2009, 0}, {"zwnj", 0x200C, 0},
    {"zwj", 0x200D, 0}, {"lrm", 0x200E, 0}, {"rlm", 0x200F, 0}, {"larr", 0x2190, 0},
    {"uarr", 0x2191, 0}, {"rarr", 0x2192, 0}, {"darr", 0x2193, 0}, {"harr", 0x2194, 0},
    {"minus", 0x2212, 0}, {"ne", 0x2260, 0}, {"le", 0x2264, 0}, {"ge", 0x2265, 0},
    {"infin", 0x221E, 0}, {"asymp", 0x2248, 0}, {"sum", 0x2211, 0}, {"prod", 0x220F, 0},
    {"radic", 0x221A, 0}, {"spades", 0x2660, 0}, {"clubs", 0x2663, 0}, {"hearts", 0x2665, 0},
    {"diams", 0x2666, 0},
    {"Alpha", 0x391, 0}, {"Beta", 0x392, 0}, {"Gamma", 0x393, 0}, {"Delta", 0x394, 0},
    {"Epsilon", 0x395, 0}, {"Zeta", 0x396, 0}, {"Eta", 0x397, 0}, {"Theta", 0x398, 0},
    {"Iota", 0x399, 0}, {"Kappa", 0x39A, 0}, {"Lambda", 0x39B, 0}, {"Mu", 0x39C, 0},
    {"Nu", 0x39D, 0}, {"Xi", 0x39E, 0}, {"Omicron", 0x39F, 0}, {"Pi", 0x3A0, 0},
    {"Rho", 0x3A1, 0}, {"Sigma", 0x3A3, 0}, {"Tau", 0x3A4, 0}, {"Upsilon", 0x3A5, 0},
    {"Phi", 0x3A6, 0}, {"Chi", 0x3A7, 0}, {"Psi", 0x3A8, 0}, {"Omega", 0x3A9, 0},
    {"alpha", 0x3B1, 0}, {"beta", 0x3B2, 0}, {"gamma", 0x3B3, 0}, {"delta", 0x3B4, 0},
    {"epsilon", 0x3B5, 0}, {"zeta", 0x3B6, 0}, {"eta", 0x3B7, 0}, {"theta", 0x3B8, 0},
    {"iota", 0x3B9, 0}, {"kappa", 0x3BA, 0}, {"lambda", 0x3BB, 0}, {"mu", 0x3BC, 0},
    {"nu", 0x3BD, 0}, {"xi", 0x3BE, 0}, {"omicron", 0x3BF, 0}, {"pi", 0x3C0, 0},
    {"rho", 0x3C1, 0}, {"sigmaf", 0x3C2, 0}, {"sigma", 0x3C3, 0}, {"tau", 0x3C4, 0},
    {"upsilon", 0x3C5, 0}, {"phi", 0x3C6, 0}, {"chi", 0x3C7, 0}, {"psi", 0x3C8, 0},
    {"omega", 0x3C9, 0},
};

/* Compare code points to an ASCII name. */
static int name_eq(const uint32_t *s, size_t n, const char *name) {
    size_t k = strlen(name);
    if (k != n) return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] != (unsigned char)name[i]) return 0;
    return 1;
}

/* Look a name up (s excludes any ';'). semi: the reference ended with ';'.
 * Returns the code point or 0 if unknown. */
static uint32_t entity_lookup(const uint32_t *s, size_t n, int semi) {
    for (int i = 0; i < 96; i++)
        if (name_eq(s, n, g_latin1_names[i])) return 0xA0 + (uint32_t)i; /* all legacy */
    for (size_t i = 0; i < NELEM(g_entities); i++)
        if ((semi || g_entities[i].legacy) && name_eq(s, n, g_entities[i].name)) return g_entities[i].cp;
    return 0;
}

/* Python's html._invalid_charrefs for 0x80..0x9F (Windows-1252). 0 = keep the value. */
static const uint16_t g_cp1252[32] = {
    0x20AC, 0x81,   0x201A, 0x192,  0x201E, 0x2026, 0x2020, 0x2021, 0x2C6,  0x2030, 0x160,
    0x2039, 0x152,  0x8D,   0x17D,  0x8F,   0x90,   0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
    0x2013, 0x2014, 0x2DC,  0x2122, 0x161,  0x203A, 0x153,  0x9D,   0x17E,  0x178,
};

/* Resolve &#...; exactly as Python's html.unescape: returns 0 code points
 * (dropped) or 1 (in *cp). */
static int numeric_ref(uint64_t num, uint32_t *cp) {
    if (num == 0) { *cp = 0xFFFD; return 1; }
    if (num == 0x0D) { *cp = 0x0D; return 1; }
    if (num >= 0x80 && num <= 0x9F) { *cp = g_cp1252[num - 0x80]; return 1; }
    if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) { *cp = 0xFFFD; return 1; }
    if ((num >= 0x1 && num <= 0x8) || num == 0xB || (num >= 0xE && num <= 0x1F) || (num >= 0x7F && num <= 0x9F) ||
        (num >= 0xFDD0 && num <= 0xFDEF) || (num & 0xFFFE) == 0xFFFE)
        return 0;
    *cp = (uint32_t)num;
    return 1;
}

static int is_name_char(uint32_t c) {
    return c != '\t' && c != '\n' && c != '\f' && c != ' ' && c != '<' && c != '&' && c != '#' && c != ';';
}

static int hexval(uint32_t c) {
    if (c >= '0' && c <= '9') return (int)(c - '0');
    if (c >= 'a' && c <= 'f') return (int)(c - 'a' + 10);
    if (c >= 'A' && c <= 'F') return (int)(c - 'A' + 10);
    return -1;
}

size_t zl_uc_html_unescape(const uint32_t *in, size_t n, uint32_t *out) {
    size_t k = 0, i = 0;
    while (i < n) {
        if (in[i] != '&') { out[k++] = in[i++]; continue; }
        size_t j = i + 1;
        /* &#digits;? or &#xhex;? */
        if (j < n && in[j] == '#') {
            size_t p = j + 1;
            int hex = p < n && (in[p] == 'x' || in[p] == 'X');
            if (hex) p++;
            size_t d0 = p;
            uint64_t num = 0;
            while (p < n && (hex ? hexval(in[p]) >= 0 : (in[p] >= '0' && in[p] <= '9'))) {
                num = num * (hex ? 16 : 10) + (uint64_t)(hex ? hexval(in[p]) : (int)(in[p] - '0'));
                if (num > 0x10FFFF) num = 0x110000; /* saturate: Python maps it to U+FFFD anyway */
                p++;
            }
            if (p == d0) { out[k++] = in[i++]; continue; } /* "&#" without digits stays */
            if (p < n && in[p] == ';') p++;
            uint32_t cp;
            if (numeric_ref(num, &cp)) out[k++] = cp;
            i = p;
            continue;
        }
        /* Named: up to 32 name characters, then an optional ';'. */
        size_t p = j;
        while (p < n && p - j < 32 && is_name_char(in[p])) p++;
        if (p == j) { out[k++] = in[i++]; continue; }
        size_t len = p - j;
        int semi = p < n && in[p] == ';';
        uint32_t cp = entity_lookup(in + j, len, semi);
        if (cp) {
            out[k++] = cp;
            i = p + (size_t)semi;
            continue;
        }
        /* Longest legacy prefix (length >= 2), the rest stays as text:
         * Python tries s[:x] for x = len(s)-1 .. 2 where s includes the ';'. */
        size_t slen = len + (size_t)semi, x;
        for (x = slen - 1; x >= 2; x--) {
            size_t nl = x > len ? len : x; /* a prefix never includes the final ';' */
            if (x > len) continue;
            cp = entity_lookup(in + j, nl, 0);
            if (cp) break;
        }
        if (x >= 2 && cp) {
            out[k++] = cp;
            i = j + x;
            continue;
        }
        out[k++] = in[i++]; /* no entity: keep the '&' and rescan after it */
    }
    return k;
}
