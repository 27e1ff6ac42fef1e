/* Unicode for the CLIP tokenizer. OpenAI's tokenizer runs on Python strings
 * with the `regex` module; this file reproduces the pieces it relies on.
 *
 * Coverage (anything outside is treated as "other": neither letter, number nor
 * space, and lowercased to itself):
 * - \p{L} and lowercasing: Latin (Basic, Latin-1, Extended-A/B, IPA, modifier
 *   letters, Extended Additional), Greek (+ Extended), Cyrillic (+ Supplement),
 *   Armenian, Georgian, Cherokee, Glagolitic, Coptic, Deseret, fullwidth Latin,
 *   letter-like symbols (Ω K Å), Roman numerals and circled letters (lower only);
 *   letters without case: Hebrew, Arabic, Devanagari, Thai, Hangul, kana, CJK
 *   ideographs (BMP and the supplementary planes), Yi, Bopomofo.
 * - \p{N}: ASCII and Latin-1 digits/fractions, the decimal digits of Arabic,
 *   Indic, Thai, Lao, Tibetan, Myanmar, Khmer, Mongolian scripts, super- and
 *   subscripts, number forms, circled/parenthesised numbers, CJK numerals,
 *   fullwidth digits, mathematical digits.
 * - \s: the White_Space property (what `regex` uses); Python's str.isspace
 *   (used by strip) adds U+001C..U+001F.
 * - Lowercasing is Python's full mapping for the covered blocks, including
 *   U+0130 -> "i\u0307".
 * - html.unescape: numeric references (&#N; &#xH;, with Python's Windows-1252
 *   and invalid-code-point rules) and these named references: the 106
 *   HTML 4 Latin-1 names that HTML5 also accepts without ';' (nbsp .. yuml,
 *   amp, lt, gt, quot, and AMP, LT, GT, QUOT, COPY, REG), plus, with ';':
 *   apos, the typographic ones (ndash mdash lsquo rsquo sbquo ldquo rdquo bdquo
 *   hellip bull middot dagger Dagger permil lsaquo rsaquo prime Prime trade euro
 *   OElig oelig Scaron scaron Yuml fnof circ tilde ensp emsp thinsp zwnj zwj
 *   lrm rlm), arrows (larr uarr rarr darr harr), math (minus ne le ge infin
 *   asymp sum prod radic), card suits, and the Greek letters. Other names are
 *   left as text. */
#include "models/unicode_clip.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    uint32_t lo, hi;
} uc_range;

static int in_ranges(const uc_range *r, size_t n, uint32_t c) {
    size_t a = 0, b = n;
    while (a < b) {
        size_t m = (a + b) / 2;
        if (c < r[m].lo) b = m;
        else if (c > r[m].hi) a = m + 1;
        else return 1;
    }
    return 0;
}

/* Sorted, disjoint. */
static const uc_range g_letters[] = {
    {0x41, 0x5A}, {0x61, 0x7A}, {0xAA, 0xAA}, {0xB5, 0xB5}, {0xBA, 0xBA}, {0xC0, 0xD6}, {0xD8, 0xF6},
    {0xF8, 0x2C1}, {0x2C6, 0x2D1}, {0x2E0, 0x2E4}, {0x2EC, 0x2EC}, {0x2EE, 0x2EE}, {0x370, 0x374},
    {0x376, 0x377}, {0x37A, 0x37D}, {0x37F, 0x37F}, {0x386, 0x386}, {0x388, 0x38A}, {0x38C, 0x38C},
    {0x38E, 0x3A1}, {0x3A3, 0x3F5}, {0x3F7, 0x481}, {0x48A, 0x52F}, {0x531, 0x556}, {0x559, 0x559},
    {0x560, 0x588}, {0x5D0, 0x5EA}, {0x5EF, 0x5F2}, {0x620, 0x64A}, {0x66E, 0x66F}, {0x671, 0x6D3},
    {0x6D5, 0x6D5}, {0x6E5, 0x6E6}, {0x6EE, 0x6EF}, {0x6FA, 0x6FC}, {0x6FF, 0x6FF}, {0x904, 0x939},
    {0x93D, 0x93D}, {0x950, 0x950}, {0x958, 0x961}, {0x971, 0x980}, {0xE01, 0xE30}, {0xE32, 0xE33},
    {0xE40, 0xE46}, {0x10A0, 0x10C5}, {0x10C7, 0x10C7}, {0x10CD, 0x10CD}, {0x10D0, 0x10FA},
    {0x10FC, 0x1248}, {0x13A0, 0x13F5}, {0x13F8, 0x13FD}, {0x1C80, 0x1C88}, {0x1C90, 0x1CBA},
    {0x1CBD, 0x1CBF}, {0x1D00, 0x1DBF}, {0x1E00, 0x1F15}, {0x1F18, 0x1F1D}, {0x1F20, 0x1F45},
    {0x1F48, 0x1F4D}, {0x1F50, 0x1F57}, {0x1F59, 0x1F59}, {0x1F5B, 0x1F5B}, {0x1F5D, 0x1F5D},
    {0x1F5F, 0x1F7D}, {0x1F80, 0x1FB4}, {0x1FB6, 0x1FBC}, {0x1FBE, 0x1FBE}, {0x1FC2, 0x1FC4},
    {0x1FC6, 0x1FCC}, {0x1FD0, 0x1FD3}, {0x1FD6, 0x1FDB}, {0x1FE0, 0x1FEC}, {0x1FF2, 0x1FF4},
    {0x1FF6, 0x1FFC}, {0x2071, 0x2071}, {0x207F, 0x207F}, {0x2090, 0x209C}, {0x2102, 0x2102},
    {0x2107, 0x2107}, {0x210A, 0x2113}, {0x2115, 0x2115}, {0x2119, 0x211D}, {0x2124, 0x2124},
    {0x2126, 0x2126}, {0x2128, 0x2128}, {0x212A, 0x212D}, {0x212F, 0x2139}, {0x213C, 0x213F},
    {0x2145, 0x2149}, {0x214E, 0x214E}, {0x2183, 0x2184}, {0x2C00, 0x2CE4}, {0x2CEB, 0x2CEE},
    {0x2D00, 0x2D25}, {0x3005, 0x3006}, {0x3031, 0x3035}, {0x303B, 0x303C}, {0x3041, 0x3096},
    {0x309D, 0x309F}, {0x30A1, 0x30FA}, {0x30FC, 0x30FF}, {0x3105, 0x312F}, {0x3131, 0x318E},
    {0x31A0, 0x31BF}, {0x31F0, 0x31FF}, {0x3400, 0x4DBF}, {0x4E00, 0x9FFF}, {0xA000, 0xA48C},
    {0xAB70, 0xABBF}, {0xAC00, 0xD7A3}, {0xF900, 0xFA6D}, {0xFB00, 0xFB06}, {0xFF21, 0xFF3A},
    {0xFF41, 0xFF5A}, {0xFF66, 0xFFBE}, {0x10400, 0x1044F}, {0x20000, 0x2A6DF}, {0x2A700, 0x2EBE0},
    {0x30000, 0x3134A},
};

static const uc_range g_numbers[] = {
    {0x30, 0x39}, {0xB2, 0xB3}, {0xB9, 0xB9}, {0xBC, 0xBE}, {0x660, 0x669}, {0x6F0, 0x6F9},
    {0x7C0, 0x7C9}, {0x966, 0x96F}, {0x9E6, 0x9EF}, {0x9F4, 0x9F9}, {0xA66, 0xA6F}, {0xAE6, 0xAEF},
    {0xB66, 0xB6F}, {0xBE6, 0xBF2}, {0xC66, 0xC6F}, {0xCE6, 0xCEF}, {0xD66, 0xD78}, {0xE50, 0xE59},
    {0xED0, 0xED9}, {0xF20, 0xF33}, {0x1040, 0x1049}, {0x17E0, 0x17E9}, {0x1810, 0x1819},
    {0x2070, 0x2070}, {0x2074, 0x2079}, {0x2080, 0x2089}, {0x2150, 0x2182}, {0x2185, 0x2189},
    {0x2460, 0x249B}, {0x24EA, 0x24FF}, {0x2776, 0x2793}, {0x3007, 0x3007}, {0x3021, 0x3029},
    {0x3038, 0x303A}, {0x3192, 0x3195}, {0x3220, 0x3229}, {0x3248, 0x324F}, {0x3251, 0x325F},
    {0x3280, 0x3289}, {0x32B1, 0x32BF}, {0xFF10, 0xFF19}, {0x1D7CE, 0x1D7FF}, {0x1F100, 0x1F10C},
};

static const uc_range g_white[] = {
    {0x09, 0x0D}, {0x20, 0x20}, {0x85, 0x85}, {0xA0, 0xA0}, {0x1680, 0x1680},
    {0x2000, 0x200A}, {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000},
};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

int zl_uc_is_letter(uint32_t c) { return in_ranges(g_letters, NELEM(g_letters), c); }
int zl_uc_is_number(uint32_t c) { return in_ranges(g_numbers, NELEM(g_numbers), c); }
int zl_uc_is_regex_space(uint32_t c) { return in_ranges(g_white, NELEM(g_white), c); }
int zl_uc_is_py_space(uint32_t c) { return (c >= 0x1C && c <= 0x1F) || zl_uc_is_regex_space(c); }

/* Lowercase rules: every code point in [lo, hi] (step 1), or every other one
 * starting at lo (step 2: the alternating upper/lower pairs), maps to c + delta. */
typedef struct {
    uint32_t lo, hi;
    int32_t delta;
    int step;
} uc_lower_rule;

static const uc_lower_rule g_lower[] = {
    {0x41, 0x5A, 32, 1}, {0xC0, 0xD6, 32, 1}, {0xD8, 0xDE, 32, 1}, {0x100, 0x12F, 1, 2},
    {0x132, 0x137, 1, 2}, {0x139, 0x148, 1, 2}, {0x14A, 0x177, 1, 2}, {0x178, 0x178, -121, 1},
    {0x179, 0x17E, 1, 2}, {0x181, 0x181, 210, 1}, {0x182, 0x185, 1, 2}, {0x186, 0x186, 206, 1},
    {0x187, 0x187, 1, 1}, {0x189, 0x18A, 205, 1}, {0x18B, 0x18B, 1, 1}, {0x18E, 0x18E, 79, 1},
    {0x18F, 0x18F, 202, 1}, {0x190, 0x190, 203, 1}, {0x191, 0x191, 1, 1}, {0x193, 0x193, 205, 1},
    {0x194, 0x194, 207, 1}, {0x196, 0x196, 211, 1}, {0x197, 0x197, 209, 1}, {0x198, 0x198, 1, 1},
    {0x19C, 0x19C, 211, 1}, {0x19D, 0x19D, 213, 1}, {0x19F, 0x19F, 214, 1}, {0x1A0, 0x1A5, 1, 2},
    {0x1A6, 0x1A6, 218, 1}, {0x1A7, 0x1A7, 1, 1}, {0x1A9, 0x1A9, 218, 1}, {0x1AC, 0x1AC, 1, 1},
    {0x1AE, 0x1AE, 218, 1}, {0x1AF, 0x1AF, 1, 1}, {0x1B1, 0x1B2, 217, 1}, {0x1B3, 0x1B5, 1, 2},
    {0x1B7, 0x1B7, 219, 1}, {0x1B8, 0x1B8, 1, 1}, {0x1BC, 0x1BC, 1, 1}, {0x1C4, 0x1C4, 2, 1},
    {0x1C5, 0x1C5, 1, 1}, {0x1C7, 0x1C7, 2, 1}, {0x1C8, 0x1C8, 1, 1}, {0x1CA, 0x1CA, 2, 1},
    {0x1CB, 0x1DB, 1, 2}, {0x1DE, 0x1EF, 1, 2}, {0x1F1, 0x1F1, 2, 1}, {0x1F2, 0x1F4, 1, 2},
    {0x1F6, 0x1F6, -97, 1}, {0x1F7, 0x1F7, -56, 1}, {0x1F8, 0x21F, 1, 2}, {0x220, 0x220, -130, 1},
    {0x222, 0x233, 1, 2}, {0x23A, 0x23A, 10795, 1}, {0x23B, 0x23B, 1, 1}, {0x23D, 0x23D, -163, 1},
    {0x23E, 0x23E, 10792, 1}, {0x241, 0x241, 1, 1}, {0x243, 0x243, -195, 1}, {0x244, 0x244, 69, 1},
    {0x245, 0x245, 71, 1}, {0x246, 0x24F, 1, 2}, {0x370, 0x373, 1, 2}, {0x376, 0x376, 1, 1},
    {0x37F, 0x37F, 116, 1}, {0x386, 0x386, 38, 1}, {0x388, 0x38A, 37, 1}, {0x38C, 0x38C, 64, 1},
    {0x38E, 0x38F, 63, 1}, {0x391, 0x3A1, 32, 1}, {0x3A3, 0x3AB, 32, 1}, {0x3CF, 0x3CF, 8, 1},
    {0x3D8, 0x3EF, 1, 2}, {0x3F4, 0x3F4, -60, 1}, {0x3F7, 0x3F7, 1, 1}, {0x3F9, 0x3F9, -7, 1},
    {0x3FA, 0x3FA, 1, 1}, {0x3FD, 0x3FF, -130, 1}, {0x400, 0x40F, 80, 1}, {0x410, 0x42F, 32, 1},
    {0x460, 0x481, 1, 2}, {0x48A, 0x4BF, 1, 2}, {0x4C0, 0x4C0, 15, 1}, {0x4C1, 0x4CD, 1, 2},
    {0x4D0, 0x52F, 1, 2}, {0x531, 0x556, 48, 1}, {0x10A0, 0x10C5, 7264, 1}, {0x10C7, 0x10C7, 7264, 1},
    {0x10CD, 0x10CD, 7264, 1}, {0x13A0, 0x13EF, 38864, 1}, {0x13F0, 0x13F5, 8, 1},
    {0x1C90, 0x1CBA, -3008, 1}, {0x1CBD, 0x1CBF, -3008, 1}, {0x1E00, 0x1E95, 1, 2},
    {0x1E9E, 0x1E9E, -7615, 1}, {0x1EA0, 0x1EFF, 1, 2}, {0x1F08, 0x1F0F, -8, 1}, {0x1F18, 0x1F1D, -8, 1},
    {0x1F28, 0x1F2F, -8, 1}, {0x1F38, 0x1F3F, -8, 1}, {0x1F48, 0x1F4D, -8, 1}, {0x1F59, 0x1F5F, -8, 2},
    {0x1F68, 0x1F6F, -8, 1}, {0x1F88, 0x1F8F, -8, 1}, {0x1F98, 0x1F9F, -8, 1}, {0x1FA8, 0x1FAF, -8, 1},
    {0x1FB8, 0x1FB9, -8, 1}, {0x1FBA, 0x1FBB, -74, 1}, {0x1FBC, 0x1FBC, -9, 1}, {0x1FC8, 0x1FCB, -86, 1},
    {0x1FCC, 0x1FCC, -9, 1}, {0x1FD8, 0x1FD9, -8, 1}, {0x1FDA, 0x1FDB, -100, 1}, {0x1FE8, 0x1FE9, -8, 1},
    {0x1FEA, 0x1FEB, -112, 1}, {0x1FEC, 0x1FEC, -7, 1}, {0x1FF8, 0x1FF9, -128, 1},
    {0x1FFA, 0x1FFB, -126, 1}, {0x1FFC, 0x1FFC, -9, 1}, {0x2126, 0x2126, -7517, 1},
    {0x212A, 0x212A, -8383, 1}, {0x212B, 0x212B, -8262, 1}, {0x2132, 0x2132, 28, 1},
    {0x2160, 0x216F, 16, 1}, {0x2183, 0x2183, 1, 1}, {0x24B6, 0x24CF, 26, 1}, {0x2C00, 0x2C2F, 48, 1},
    {0x2C80, 0x2CE3, 1, 2}, {0xFF21, 0xFF3A, 32, 1}, {0x10400, 0x10427, 40, 1},
};

int zl_uc_lower(uint32_t c, uint32_t out[2]) {
    if (c == 0x130) { /* Python: 'İ'.lower() == 'i̇' (two code points) */
        out[0] = 0x69;
        out[1] = 0x307;
        return 2;
    }
    size_t a = 0, b = NELEM(g_lower);
    while (a < b) {
        size_t m = (a + b) / 2;
        if (c < g_lower[m].lo) b = m;
        else if (c > g_lower[m].hi) a = m + 1;
        else {
            const uc_lower_rule *r = &g_lower[m];
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
