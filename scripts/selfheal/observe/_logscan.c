/*
 * The log scanner's fast path in C: `logscan`'s block pattern and its counting, in one pass over a block.
 *
 * Built by install.sh where a C compiler exists (`native.build`) and loaded with ctypes; where it is not built,
 * the same figures come from the pure-Python fast path (`logscan.FastPattern` and `Tally.add_rows`), and the
 * tests hold both to the careful path, line for line. It reads only the shapes the Python pattern reads and
 * hands back every other line whole, by its offsets, for the careful path (Python) to read: it never decides
 * anything the Python fast path would not.
 *
 * Per line (the bytes between two newlines of a block that starts with a newline):
 *   - empty: a row with the empty key (a blank line);
 *   - `TIMESTAMP [TAG] ...` where TIMESTAMP is `YYYY-MM-DD[T ]hh:mm:ss`, then ` `, `Z `, `.digits `, or
 *     `.digitsZ ` (UTC: other zones go to the careful path):
 *       - in the recent period, `[SUCCESS] task=...`: the key `[SUCCESS] task=x ...` (kept apart for P3);
 *       - inside the window (or with no window): [RETRY], [SUCCESS], [FAILED], [FALLBACK] with their key
 *         fields (`RETRY] task=x model=m reason=r`); an untracked tag (`I` for [INFO], the first letter of the
 *         commonest tags, else `NOTICE_X]`);
 *       - outside the window: the key `]`, for a tag of capitals followed by `] `;
 *       - a key may be followed by ` duration=<digits and dots>s`: the key's duration;
 *   - anything else: handed back whole (and counted with the empty key, as the pattern's row for it is).
 * Keys are counted per (key, timed) in the order first seen; a timed key keeps its count, its longest duration
 * and the exact sum of its durations (as partials, the way math.fsum adds: Shewchuk's algorithm), so memory
 * grows with the keys, not the lines. `ls_export` hands every pending key to Python, which folds them as it
 * folds its own pattern's rows (math.fsum of the partials is math.fsum of the durations).
 *
 * Bounds (since, until, the recent period) are 14-digit numbers YYYYMMDDhhmmss compared as the Python
 * pattern's range regex compares the digits of the text (so `2026-02-31` sorts as it reads); -1: no bound.
 */
#include <float.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "double arithmetic in double precision is needed (x87 rounds twice): the Python fast path reads instead"
#endif

#define LS_TIMED 1u

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(p) __builtin_prefetch(p)
#else
#define PREFETCH(p) ((void)(p))
#endif

/* An entry, followed in the arena by its key's bytes (padded to 8): one place in memory to look a line's key
 * up and count it. Entries follow one another in the order first seen. */
typedef struct {
    uint64_t hash;
    uint32_t len, flags;
    uint64_t count;    /* rows of this key (timed: its durations) */
    double max;        /* timed: the longest */
    uint32_t poff;     /* timed: the partials of the exact sum of its durations, in the pool */
    uint16_t np, pcap;
} entry;

#define PAD8(n) (((n) + 7) & ~(size_t)7)
#define KEY(e) ((const unsigned char *)((e) + 1))
#define ENTRY_AT(s, off) ((entry *)((s)->arena + (off)))

typedef struct {
    int64_t since, until, rstart, rend;
    uint64_t seed;
    unsigned char *arena; /* the entries and their keys */
    size_t arena_len, arena_cap;
    size_t nentries;
    uint64_t *table; /* open addressing: the hash's high half, then the entry's offset / 8 + 1; 0 empty */
    size_t table_cap;
    double *pool; /* the timed entries' partials */
    size_t pool_len, pool_cap;
    int64_t *careful; /* (start, end) offsets of the lines for the careful path, in the last block */
    size_t ncareful, careful_cap;
    uint64_t empty_rows; /* blank lines and careful lines: the empty key */
    int64_t last_lines;
} scanner;

static inline int is_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }
static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static inline int is_upper(unsigned char c) { return c >= 'A' && c <= 'Z'; }

static uint64_t hash_bytes(const unsigned char *p, size_t n, uint64_t seed) {
    uint64_t h = seed ^ (n * 0x9E3779B97F4A7C15ull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, p, n);
    h = (h ^ v) * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 29;
    h *= 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 32);
}

static int grow(void **ptr, size_t *cap, size_t need, size_t size) {
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    void *p = realloc(*ptr, n * size);
    if (!p)
        return -1;
    *ptr = p;
    *cap = n;
    return 0;
}

static inline uint64_t slot(uint64_t hash, size_t off) { return (hash & 0xffffffff00000000ull) | (off / 8 + 1); }

static int rehash(scanner *s, size_t cap) {
    uint64_t *t = calloc(cap, sizeof(uint64_t));
    if (!t)
        return -1;
    for (size_t off = 0; off < s->arena_len; off += sizeof(entry) + PAD8(ENTRY_AT(s, off)->len)) {
        uint64_t h = ENTRY_AT(s, off)->hash;
        size_t j = h & (cap - 1);
        while (t[j])
            j = (j + 1) & (cap - 1);
        t[j] = slot(h, off);
    }
    free(s->table);
    s->table = t;
    s->table_cap = cap;
    return 0;
}

/* The entry of (key, flags) whose hash is h, made if new; NULL when out of memory. Valid until the next lookup. */
static entry *lookup(scanner *s, const unsigned char *key, size_t len, uint32_t flags, uint64_t h) {
    size_t mask = s->table_cap - 1;
    size_t j = h & mask;
    for (;;) {
        uint64_t k = s->table[j];
        if (!k)
            break;
        if ((k >> 32) == (h >> 32)) { /* the entry itself is read only when the hash's high half matches */
            entry *e = ENTRY_AT(s, ((k & 0xffffffffu) - 1) * 8);
            if (e->hash == h && e->len == len && e->flags == flags && memcmp(KEY(e), key, len) == 0)
                return e;
        }
        j = (j + 1) & mask;
    }
    size_t size = sizeof(entry) + PAD8(len);
    if (len > UINT32_MAX || (s->arena_len + size) / 8 >= UINT32_MAX || s->pool_len + 2 * UINT16_MAX > UINT32_MAX)
        return NULL;
    if (grow((void **)&s->arena, &s->arena_cap, s->arena_len + size, 1))
        return NULL;
    size_t off = s->arena_len;
    entry *e = ENTRY_AT(s, off);
    e->hash = h;
    e->len = (uint32_t)len;
    e->flags = flags;
    e->count = 0;
    e->max = 0.0;
    e->poff = 0;
    e->np = e->pcap = 0;
    memcpy((unsigned char *)(e + 1), key, len);
    s->arena_len += size;
    s->nentries++;
    s->table[j] = slot(h, off);
    if (s->nentries * 2 > s->table_cap && rehash(s, s->table_cap * 2))
        return NULL; /* out of memory: the caller gives up on the input */
    return e;
}

static int count_key(scanner *s, const unsigned char *key, size_t len, uint64_t h) {
    entry *e = lookup(s, key, len, 0, h);
    if (!e)
        return -1;
    e->count++;
    return 0;
}

/* Add x to an entry's exact sum: its partials stay non-overlapping and add up to the exact sum of what was
 * added (msum, as in CPython's math.fsum); IEEE double arithmetic, no contraction (-std=c99). */
static int add_exact(scanner *s, entry *e, double x) {
    double *p = s->pool + e->poff;
    uint32_t i = 0;
    for (uint32_t j = 0; j < e->np; j++) {
        double y = p[j];
        if ((x < 0 ? -x : x) < (y < 0 ? -y : y)) {
            double t = x;
            x = y;
            y = t;
        }
        double hi = x + y;
        double lo = y - (hi - x);
        if (lo != 0.0)
            p[i++] = lo;
        x = hi;
    }
    if (i >= e->pcap) { /* move the partials to the pool's end with twice the room (the pool resets on export) */
        uint32_t cap = e->pcap ? 2u * e->pcap : 4u;
        if (cap > UINT16_MAX || grow((void **)&s->pool, &s->pool_cap, s->pool_len + cap, sizeof(double)))
            return -1;
        memcpy(s->pool + s->pool_len, s->pool + e->poff, i * sizeof(double));
        e->poff = (uint32_t)s->pool_len;
        e->pcap = (uint16_t)cap;
        s->pool_len += cap;
        p = s->pool + e->poff;
    }
    p[i] = x;
    e->np = (uint16_t)(i + 1);
    return 0;
}

static int time_key(scanner *s, const unsigned char *key, size_t len, double value, uint64_t h) {
    entry *e = lookup(s, key, len, LS_TIMED, h);
    if (!e || add_exact(s, e, value))
        return -1;
    if (e->count == 0 || value > e->max)
        e->max = value;
    e->count++;
    return 0;
}

static int days_in(int year, int month) {
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return days[month - 1] + (month == 2 && leap);
}

/* `YYYY-MM-DD[T ]hh:mm:ss` as the Python pattern checks it (`_TS_SECONDS`), of a date that exists (the careful
 * path rejects February 30 and the year 0000): its 14 digits, or -1. */
static int64_t timestamp(const unsigned char *p) {
    if (!(is_digit(p[0]) && is_digit(p[1]) && is_digit(p[2]) && is_digit(p[3]) && p[4] == '-'))
        return -1;
    if (!((p[5] == '0' && p[6] >= '1' && p[6] <= '9') || (p[5] == '1' && p[6] >= '0' && p[6] <= '2')) || p[7] != '-')
        return -1;
    if (!((p[8] == '0' && p[9] >= '1' && p[9] <= '9') || ((p[8] == '1' || p[8] == '2') && is_digit(p[9])) ||
          (p[8] == '3' && (p[9] == '0' || p[9] == '1'))))
        return -1;
    if (p[10] != 'T' && p[10] != ' ')
        return -1;
    if (!(((p[11] == '0' || p[11] == '1') && is_digit(p[12])) || (p[11] == '2' && p[12] >= '0' && p[12] <= '3')))
        return -1;
    if (p[13] != ':' || !(p[14] >= '0' && p[14] <= '5') || !is_digit(p[15]) || p[16] != ':' ||
        !(p[17] >= '0' && p[17] <= '5') || !is_digit(p[18]))
        return -1;
    int year = (p[0] - '0') * 1000 + (p[1] - '0') * 100 + (p[2] - '0') * 10 + (p[3] - '0');
    int month = (p[5] - '0') * 10 + (p[6] - '0'), day = (p[8] - '0') * 10 + (p[9] - '0');
    if (year == 0 || day > days_in(year, month))
        return -1;
    static const int at[14] = {0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18};
    int64_t n = 0;
    for (int i = 0; i < 14; i++)
        n = n * 10 + (p[at[i]] - '0');
    return n;
}

static inline int starts(const unsigned char *p, const unsigned char *end, const char *lit, size_t n) {
    return (size_t)(end - p) >= n && memcmp(p, lit, n) == 0;
}

/* Whether `task=`, `step=`, `target=`, `model=`, `reason=` or `detail=` (or, with `duration`, `duration=`)
 * appears anywhere in [p, end): after a key's run, such a line goes to the careful path, which reads every
 * field (`_KEY_END`'s negative lookaheads; it files an unclassified error under `detail`). */
static int names_field(const unsigned char *p, const unsigned char *end, int duration) {
    for (const unsigned char *q = p; q < end && (q = memchr(q, '=', (size_t)(end - q))) != NULL; q++) {
        size_t before = (size_t)(q - p);
        if ((before >= 4 && (memcmp(q - 4, "task", 4) == 0 || memcmp(q - 4, "step", 4) == 0)) ||
            (before >= 5 && memcmp(q - 5, "model", 5) == 0) ||
            (before >= 6 && (memcmp(q - 6, "target", 6) == 0 || memcmp(q - 6, "reason", 6) == 0 ||
                             memcmp(q - 6, "detail", 6) == 0)) ||
            (duration && before >= 8 && memcmp(q - 8, "duration", 8) == 0))
            return 1;
    }
    return 0;
}

/* A value's bytes, from p: the end of their run. A value ends where the careful path (Python's `_FIELD` over
 * the decoded text) would end it: at any white space, ASCII or Unicode (the separators 0x1c-0x1f; the UTF-8 of
 * U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000), and at a quote (a value that
 * starts with one ends at the closing one there). Other UTF-8, and bytes that are not UTF-8, are a value's. */
static const unsigned char *value_run(const unsigned char *p, const unsigned char *end) {
    for (; p < end; p++) {
        unsigned char c = *p;
        if (c < 0x80) {
            if (c <= ' ' && (c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f)))
                break;
            if (c == '"')
                break;
            continue;
        }
        size_t left = (size_t)(end - p);
        if (c == 0xc2 && left >= 2 && (p[1] == 0x85 || p[1] == 0xa0))
            break;
        if (c == 0xe1 && left >= 3 && p[1] == 0x9a && p[2] == 0x80)
            break;
        if (c == 0xe2 && left >= 3 &&
            ((p[1] == 0x80 && (p[2] <= 0x8a || p[2] == 0xa8 || p[2] == 0xa9 || p[2] == 0xaf) && p[2] >= 0x80) ||
             (p[1] == 0x81 && p[2] == 0x9f)))
            break;
        if (c == 0xe3 && left >= 3 && p[1] == 0x80 && p[2] == 0x80)
            break;
    }
    return p;
}

/* `\r?` then the line's end, or a space: what may follow a value (`_AFTER`). */
static inline int after_value(const unsigned char *p, const unsigned char *end) {
    return p == end || *p == ' ' || (*p == '\r' && p + 1 == end);
}

/* ` duration=([\d.]+)s` at p, the value ending there: 1 with the digits' bounds, else 0. */
static int duration_at(const unsigned char *p, const unsigned char *end, const unsigned char **a,
                       const unsigned char **b) {
    if (!starts(p, end, " duration=", 10))
        return 0;
    const unsigned char *q = p + 10;
    while (q < end && (is_digit(*q) || *q == '.'))
        q++;
    if (q == p + 10 || q >= end || *q != 's' || !after_value(q + 1, end))
        return 0;
    *a = p + 10;
    *b = q;
    return 1;
}

/* The end of a key (`_KEY` then `_KEY_END`) whose `task=` starts at p, or NULL: `task=\S+`, then as many
 * ` (step|target|model|reason)=\S+` as follow (possessive); then either a plain duration with no key field
 * named after it, or no key field nor `duration=` named after the run and the line's end (a `\r` before it
 * allowed) or ` [a-z_]+=` (the next field). *a and *b: the duration's digits, or NULL. */
static const unsigned char *key_end(const unsigned char *p, const unsigned char *end, const unsigned char **a,
                                    const unsigned char **b) {
    *a = *b = NULL;
    if (!starts(p, end, "task=", 5))
        return NULL;
    const unsigned char *r = value_run(p + 5, end);
    if (r == p + 5)
        return NULL;
    for (;;) {
        if (r >= end || *r != ' ')
            break;
        const unsigned char *f = r + 1, *v = NULL;
        if (starts(f, end, "step=", 5))
            v = f + 5;
        else if (starts(f, end, "target=", 7))
            v = f + 7;
        else if (starts(f, end, "model=", 6))
            v = f + 6;
        else if (starts(f, end, "reason=", 7))
            v = f + 7;
        if (!v)
            break;
        const unsigned char *w = value_run(v, end);
        if (w == v)
            break;
        r = w;
    }
    if (duration_at(r, end, a, b))
        return names_field(*b, end, 0) ? NULL : r;
    if (names_field(r, end, 1))
        return NULL;
    if (r == end || (*r == '\r' && r + 1 == end))
        return r;
    if (*r == ' ') {
        const unsigned char *g = r + 1;
        while (g < end && ((*g >= 'a' && *g <= 'z') || *g == '_'))
            g++;
        if (g > r + 1 && g < end && *g == '=')
            return r;
    }
    return NULL;
}

/* A duration's text as Python's float() reads it, where that is exact in double arithmetic (at most 19
 * digits whose value is below 2^53, at most 22 after the point: one correctly rounded division, as
 * float() rounds); 0 with *ok = 0 for any other text (none, two points, too many digits): the line goes to
 * the careful path. */
static double seconds(const unsigned char *a, const unsigned char *b, int *ok) {
    uint64_t m = 0;
    int digits = 0, frac = -1, points = 0;
    for (const unsigned char *q = a; q < b; q++) {
        if (*q == '.') {
            if (++points > 1)
                break;
            frac = 0;
            continue;
        }
        if (++digits > 19)
            break;
        m = m * 10 + (uint64_t)(*q - '0');
        if (frac >= 0)
            frac++;
    }
    *ok = points <= 1 && digits >= 1 && digits <= 19 && m <= (1ull << 53) && frac <= 22;
    if (!*ok)
        return 0.0;
    static const double p10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                   1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    return frac > 0 ? (double)m / p10[frac] : (double)m;
}

/* The commonest untracked tags and their one-byte keys (`logscan.CODE_TAGS`, in that order). */
static const char *const CODED[] = {"INFO", "DEBUG", "WARN", "ERROR", "TRACE", "NOTICE", "VERBOSE", "CRITICAL"};
static const char *const TRACKED[] = {"RETRY", "SUCCESS", "FAILED", "FALLBACK", "BREAKER",
                                      "RESUME", "COMPENSATE", "INCIDENT", "FIX", "STUCK"};

/* `]` then ` `, or the line's end (a `\r` before it allowed): `_TAG_END` after a tag's bracket. */
static inline int tag_end(const unsigned char *p, const unsigned char *end) {
    return p < end && *p == ']' && (p + 1 == end || p[1] == ' ' || (p[1] == '\r' && p + 2 == end));
}

enum { ROW_CAREFUL, ROW_KEY, ROW_TIMED };

typedef struct {
    const unsigned char *key;
    size_t len;
    double value;
} row;

/* A key from `start` to its end `k`, timed when a duration's digits [a, b) follow it: its row (a duration that
 * is not exactly a double Python would read sends the line to the careful path). */
static int key_row(row *out, const unsigned char *start, const unsigned char *k, const unsigned char *a,
                   const unsigned char *b) {
    out->key = start;
    out->len = (size_t)(k - start);
    if (!a)
        return ROW_KEY;
    int ok;
    out->value = seconds(a, b, &ok);
    return ok ? ROW_TIMED : ROW_CAREFUL;
}

/* One non-empty line [p, end): its row, as the Python block pattern reads it. */
static int read_line(const scanner *s, const unsigned char *p, const unsigned char *end, row *out) {
    if (end - p < 21)
        return ROW_CAREFUL;
    int64_t ts = timestamp(p);
    if (ts < 0)
        return ROW_CAREFUL;
    const unsigned char *q = p + 19;
    if (*q == ' ')
        q++;
    else if (*q == 'Z' && q + 1 < end && q[1] == ' ')
        q += 2;
    else if (*q == '.') {
        const unsigned char *d = q + 1;
        while (d < end && is_digit(*d))
            d++;
        if (d == q + 1)
            return ROW_CAREFUL;
        if (d < end && *d == 'Z')
            d++;
        if (d >= end || *d != ' ')
            return ROW_CAREFUL;
        q = d + 1;
    } else
        return ROW_CAREFUL;
    if (q >= end || *q != '[')
        return ROW_CAREFUL;
    const unsigned char *a, *b, *k;
    /* The recent period: [SUCCESS] kept apart, with its bracket. */
    if (s->rstart >= 0 && ts >= s->rstart && ts < s->rend && starts(q, end, "[SUCCESS] task=", 15) &&
        (k = key_end(q + 10, end, &a, &b)) != NULL)
        return key_row(out, q, k, a, b);
    const unsigned char *t = q + 1;
    if (t >= end) /* `[` ends the line (found by AddressSanitizer: the tag's first byte was read past it) */
        return ROW_CAREFUL;
    int bounded = s->since >= 0 || s->until >= 0;
    int inside = (s->since < 0 || ts >= s->since) && (s->until < 0 || ts < s->until);
    if (bounded && !inside) { /* a tag of capitals and `] `: counted as outside the window */
        const unsigned char *c = t;
        while (c < end && is_upper(*c))
            c++;
        if (c == t || c + 1 >= end || c[0] != ']' || c[1] != ' ')
            return ROW_CAREFUL;
        out->key = (const unsigned char *)"]";
        out->len = 1;
        return ROW_KEY;
    }
    /* The common tags, with their key fields. */
    const unsigned char *f = NULL;
    switch (*t) {
    case 'R':
        f = starts(t, end, "RETRY] ", 7) ? t + 7 : NULL;
        break;
    case 'S':
        f = starts(t, end, "SUCCESS] ", 9) ? t + 9 : NULL;
        break;
    case 'F':
        f = starts(t, end, "FAILED] ", 8) ? t + 8 : starts(t, end, "FALLBACK] ", 10) ? t + 10 : NULL;
        break;
    default:
        break;
    }
    if (f && (k = key_end(f, end, &a, &b)) != NULL)
        return key_row(out, t, k, a, b);
    /* An untracked tag: the commonest by their first letter, the others as `TAG]`. */
    for (size_t i = 0; i < sizeof CODED / sizeof *CODED; i++) {
        size_t n = strlen(CODED[i]);
        if (*t == (unsigned char)CODED[i][0]) {
            if (starts(t, end, CODED[i], n) && tag_end(t + n, end)) {
                out->key = t;
                out->len = 1;
                return ROW_KEY;
            }
            break; /* each code letter is one tag's */
        }
    }
    const unsigned char *c = t;
    if (c >= end || !is_upper(*c))
        return ROW_CAREFUL;
    while (c < end && (is_upper(*c) || *c == '_'))
        c++;
    if (!tag_end(c, end))
        return ROW_CAREFUL;
    for (size_t i = 0; i < sizeof TRACKED / sizeof *TRACKED; i++) {
        size_t n = strlen(TRACKED[i]);
        if ((size_t)(c - t) == n && memcmp(t, TRACKED[i], n) == 0)
            return ROW_CAREFUL; /* a tracked tag the fast path could not read */
    }
    out->key = t;
    out->len = (size_t)(c + 1 - t);
    return ROW_KEY;
}

void *ls_new(int64_t since, int64_t until, int64_t rstart, int64_t rend, uint64_t seed) {
    scanner *s = calloc(1, sizeof(scanner));
    if (!s)
        return NULL;
    s->since = since;
    s->until = until;
    s->rstart = rstart;
    s->rend = rend;
    s->seed = seed;
    if (rehash(s, 1024)) {
        free(s);
        return NULL;
    }
    return s;
}

void ls_free(void *h) {
    scanner *s = h;
    if (!s)
        return;
    free(s->arena);
    free(s->table);
    free(s->pool);
    free(s->careful);
    free(s);
}

/* Count one block (it starts with a newline; its last line needs none). Returns how many lines it hands
 * back for the careful path (`ls_careful`); -1 when out of memory (the block's counts are then partial: the
 * caller gives up on the whole input); -2 for a block that does not start with a newline (nothing counted). */
typedef struct {
    row r;
    int kind;
    uint64_t hash;
} pending;

/* Count a row whose table slot (and entry) were prefetched while the lines after it were read. */
static int settle(scanner *s, const pending *q) {
    return q->kind == ROW_TIMED ? time_key(s, q->r.key, q->r.len, q->r.value, q->hash)
                                : count_key(s, q->r.key, q->r.len, q->hash);
}

int64_t ls_scan(void *h, const char *buf, int64_t len) {
    scanner *s = h;
    const unsigned char *p = (const unsigned char *)buf, *stop = p + len;
    s->ncareful = 0;
    s->last_lines = 0;
    if (len <= 0 || *p != '\n')
        return -2;
    p++;
    /* A pipeline of three rows: the newest has its table slot prefetched, the middle one its entry, the
     * oldest is counted: each line's two cache misses overlap with reading the next lines. */
    pending q[3];
    int n = 0;
    for (;;) {
        const unsigned char *nl = memchr(p, '\n', (size_t)(stop - p));
        const unsigned char *end = nl ? nl : stop;
        s->last_lines++;
        if (end == p) {
            s->empty_rows++;
        } else {
            pending *c = &q[n];
            c->kind = read_line(s, p, end, &c->r);
            if (c->kind == ROW_CAREFUL) {
                if (grow((void **)&s->careful, &s->careful_cap, 2 * s->ncareful + 2, sizeof(int64_t)))
                    return -1;
                s->careful[2 * s->ncareful] = p - (const unsigned char *)buf;
                s->careful[2 * s->ncareful + 1] = end - (const unsigned char *)buf;
                s->ncareful++;
                s->empty_rows++;
            } else {
                c->hash = hash_bytes(c->r.key, c->r.len, s->seed ^ (c->kind == ROW_TIMED ? LS_TIMED : 0));
                PREFETCH(&s->table[c->hash & (s->table_cap - 1)]);
                if (n >= 1) { /* the middle row: its slot is in cache by now; fetch its entry */
                    uint64_t k = s->table[q[n - 1].hash & (s->table_cap - 1)];
                    if (k)
                        PREFETCH(s->arena + ((k & 0xffffffffu) - 1) * 8);
                }
                if (++n == 3) {
                    if (settle(s, &q[0]))
                        return -1;
                    q[0] = q[1];
                    q[1] = q[2];
                    n = 2;
                }
            }
        }
        if (!nl)
            break;
        p = nl + 1;
    }
    for (int i = 0; i < n; i++)
        if (settle(s, &q[i]))
            return -1;
    return (int64_t)s->ncareful;
}

const int64_t *ls_careful(void *h) { return ((scanner *)h)->careful; }
int64_t ls_last_lines(void *h) { return ((scanner *)h)->last_lines; }
int64_t ls_pending_keys(void *h) { return (int64_t)((scanner *)h)->nentries; }
int64_t ls_pending_bytes(void *h) { return (int64_t)(((scanner *)h)->arena_len + 8 * ((scanner *)h)->pool_len); }

/* The export: for each pending entry in the order first seen (the empty key first, when it has rows), a
 * header of 24 bytes (uint32 key length, uint32 flags, uint64 count, uint64 n), the key padded to 8 bytes,
 * then for a timed entry n + 1 doubles: its longest duration and the n partials of its exact sum. */
int64_t ls_export_size(void *h) {
    scanner *s = h;
    size_t n = s->empty_rows ? 24 : 0;
    for (size_t off = 0; off < s->arena_len; off += sizeof(entry) + PAD8(ENTRY_AT(s, off)->len)) {
        const entry *e = ENTRY_AT(s, off);
        n += 24 + PAD8(e->len) + ((e->flags & LS_TIMED) ? 8 * ((size_t)e->np + 1) : 0);
    }
    return (int64_t)n;
}

/* Write the export into out (ls_export_size bytes) and forget every pending entry. */
void ls_export(void *h, char *out) {
    scanner *s = h;
    size_t pos = 0;
    if (s->empty_rows) {
        uint32_t hdr[2] = {0, 0};
        uint64_t nums[2] = {s->empty_rows, 0};
        memcpy(out, hdr, 8);
        memcpy(out + 8, nums, 16);
        pos = 24;
    }
    for (size_t off = 0; off < s->arena_len; off += sizeof(entry) + PAD8(ENTRY_AT(s, off)->len)) {
        const entry *e = ENTRY_AT(s, off);
        int timed = (e->flags & LS_TIMED) != 0;
        uint32_t hdr[2] = {e->len, e->flags};
        uint64_t nums[2] = {e->count, timed ? e->np : 0};
        memcpy(out + pos, hdr, 8);
        memcpy(out + pos + 8, nums, 16);
        memset(out + pos + 24, 0, PAD8(e->len));
        memcpy(out + pos + 24, KEY(e), e->len);
        pos += 24 + PAD8(e->len);
        if (timed) {
            memcpy(out + pos, &e->max, 8);
            memcpy(out + pos + 8, s->pool + e->poff, 8 * (size_t)e->np);
            pos += 8 * ((size_t)e->np + 1);
        }
    }
    s->nentries = 0;
    s->arena_len = 0;
    s->pool_len = 0;
    s->empty_rows = 0;
    memset(s->table, 0, s->table_cap * sizeof(uint64_t));
}
