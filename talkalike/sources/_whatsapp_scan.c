/* The WhatsApp parser's hot loop in C: one pass over the export text, line by line, building `Message` objects.

`talkalike.sources.whatsapp` detects the file's header shape in Python and hands it here with the locale hints; this
module recognises header lines of exactly that shape (the same grammar, backtracking order included, as
`whatsapp._header_regex`), splits date, time, author and body, and builds the plain entries (nine in ten) as
`Message` objects. Every entry that needs a closer look (author-less, a suspicious author, placeholder or edited
candidates, invisible marks at the edges of its body, a date that does not exist) comes back as a tuple for the
Python code to finish, so kinds, names and dates keep one implementation. Dates, 12h marks and names are converted by
the caller's memos, called once per distinct string; this module caches their answers by the raw characters.

Built by setuptools at `pip install -e .`; tests/sources/test_whatsapp_scan.py proves C == Python on every input.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <structmember.h>

#define MAX_LOCAL_AMPM 64 /* local 12h spellings; the locale data has about 30 */
#define MAX_HINTS 64      /* placeholder start/end hints; about 15 */

typedef struct { Py_UCS4 *s; Py_ssize_t n; } Lit;

typedef struct {
    int bracket, year_first, date_dot, twelve_hour, ampm_first, time_dot;
    int date_sep, time_sep, close; /* characters */
    Lit word, ampm[MAX_LOCAL_AMPM], fstart[MAX_HINTS], fend[MAX_HINTS];
    int n_ampm, n_fstart, n_fend;
    uint64_t exact_mask[64]; /* by body length (63: longer): first characters of exact placeholders, mod 64 */
} Shape;

typedef struct {
    Py_ssize_t date_s, date_e, time_s, time_e, clock_s, clock_e, author_s, author_e, first_s, eol, line;
    int flagged; /* the first line starts or ends like a placeholder */
} Head;

static inline int is_space(Py_UCS4 c) { return c == ' ' || c == 0xa0 || c == 0x202f; } /* whatsapp_kinds.SPACE */

static inline int is_mark(Py_UCS4 c) /* whatsapp_kinds.MARKS */
{ return c == 0x200e || c == 0x200f || (c >= 0x202a && c <= 0x202e) || (c >= 0x2066 && c <= 0x2069) || c == 0xfeff; }

/* the regex module's \d on str patterns */
static inline int is_digit(Py_UCS4 c) { return c < 128 ? (c >= '0' && c <= '9') : Py_UNICODE_ISDECIMAL(c); }

#define RD(i) PyUnicode_READ(kind, data, (i))

/* The scanner's functions take `kind` as a constant after inlining, so each string width gets its own loop. */
#define HOT static inline __attribute__((always_inline))

HOT Py_ssize_t digit_run(int kind, const void *data, Py_ssize_t p, Py_ssize_t eol, Py_ssize_t cap)
{
    Py_ssize_t n = 0;
    while (p + n < eol && n < cap && is_digit(RD(p + n))) n++;
    return n;
}

/* A literal whose spaces stand for any timestamp space, as the regex writes re.escape(s).replace("\\ ", SPACE). */
HOT int spaced_at(int kind, const void *data, Py_ssize_t p, Py_ssize_t eol, const Lit *l)
{
    if (l->n > eol - p) return 0;
    for (Py_ssize_t i = 0; i < l->n; i++) {
        Py_UCS4 c = RD(p + i), w = l->s[i];
        if (w == ' ' ? !is_space(c) : c != w) return 0;
    }
    return 1;
}

HOT int exact_at(int kind, const void *data, Py_ssize_t p, Py_ssize_t lo, Py_ssize_t hi, const Lit *l)
{
    if (p < lo || p + l->n > hi) return 0;
    for (Py_ssize_t i = 0; i < l->n; i++)
        if (RD(p + i) != l->s[i]) return 0;
    return 1;
}

/* End positions of a 12h mark at p, in the regex's order: `[AaPp]\.?SPACE?[Mm]\.?` (greedy first), then the local
   spellings as listed. */
HOT int ampm_ends(int kind, const void *data, const Shape *sh, Py_ssize_t p, Py_ssize_t eol, Py_ssize_t *ends)
{
    int n = 0;
    if (p < eol) {
        Py_UCS4 c = RD(p);
        if (c == 'A' || c == 'a' || c == 'P' || c == 'p') {
            Py_ssize_t a[2], b[2];
            int na = 0;
            if (p + 1 < eol && RD(p + 1) == '.') a[na++] = p + 2;
            a[na++] = p + 1;
            for (int i = 0; i < na; i++) {
                int nb = 0;
                if (a[i] < eol && is_space(RD(a[i]))) b[nb++] = a[i] + 1;
                b[nb++] = a[i];
                for (int j = 0; j < nb; j++) {
                    Py_ssize_t q = b[j];
                    if (q < eol && (RD(q) == 'M' || RD(q) == 'm')) {
                        if (q + 1 < eol && RD(q + 1) == '.') ends[n++] = q + 2;
                        ends[n++] = q + 1;
                    }
                }
            }
        }
    }
    for (int i = 0; i < sh->n_ampm; i++)
        if (spaced_at(kind, data, p, eol, &sh->ampm[i])) ends[n++] = p + sh->ampm[i].n;
    return n;
}

/* What follows the time: the optional dot, then `] `, ` - `, `: ` or ` `. The end of the header, or -1. */
HOT Py_ssize_t tail_at(int kind, const void *data, const Shape *sh, Py_ssize_t p, Py_ssize_t eol)
{
    if (sh->time_dot) {
        if (p >= eol || RD(p) != '.') return -1;
        p++;
    }
    switch (sh->close) {
    case ']':
        return p + 1 < eol && RD(p) == ']' && is_space(RD(p + 1)) ? p + 2 : -1;
    case '-':
        return p + 2 < eol && is_space(RD(p)) && RD(p + 1) == '-' && is_space(RD(p + 2)) ? p + 3 : -1;
    case ':':
        return p + 1 < eol && RD(p) == ':' && is_space(RD(p + 1)) ? p + 2 : -1;
    default:
        return p < eol && is_space(RD(p)) ? p + 1 : -1;
    }
}

/* h:mm[:ss], then the 12h mark when it trails, then the tail; tries the regex's alternatives in its order. */
HOT int clock_at(int kind, const void *data, const Shape *sh, Py_ssize_t p, Py_ssize_t eol, int trailing, Head *h,
                 Py_ssize_t *head_end)
{
    Py_ssize_t n = digit_run(kind, data, p, eol, 3), ends[8 + MAX_LOCAL_AMPM], opts[2];
    if (n < 1 || n > 2) return 0;
    Py_ssize_t q = p + n;
    if (q + 2 >= eol || RD(q) != sh->time_sep || !is_digit(RD(q + 1)) || !is_digit(RD(q + 2))) return 0;
    q += 3;
    int no = 0;
    if (q + 2 < eol && RD(q) == sh->time_sep && is_digit(RD(q + 1)) && is_digit(RD(q + 2))) opts[no++] = q + 3;
    opts[no++] = q;
    h->clock_s = p;
    for (int i = 0; i < no; i++) {
        Py_ssize_t o = opts[i];
        h->clock_e = o;
        if (!trailing) {
            Py_ssize_t t = tail_at(kind, data, sh, o, eol);
            if (t >= 0) { h->time_e = o; *head_end = t; return 1; }
            continue;
        }
        Py_ssize_t sp[2];
        int ns = 0;
        if (o < eol && is_space(RD(o))) sp[ns++] = o + 1;
        sp[ns++] = o;
        for (int j = 0; j < ns; j++) {
            int ne = ampm_ends(kind, data, sh, sp[j], eol, ends);
            for (int k = 0; k < ne; k++) {
                Py_ssize_t t = tail_at(kind, data, sh, ends[k], eol);
                if (t >= 0) { h->time_e = ends[k]; *head_end = t; return 1; }
            }
        }
    }
    return 0;
}

/* Whether the line [line, eol) is a header of the file's shape; fills h with the spans the regex's groups take. */
HOT int header_at(int kind, const void *data, const Shape *sh, Py_ssize_t line, Py_ssize_t eol, Head *h)
{
    Py_ssize_t p = line, n, he;
    while (p < eol && is_mark(RD(p))) p++;
    if (sh->bracket) {
        if (p >= eol || RD(p) != '[') return 0;
        p++;
    }
    if (p >= eol || !is_digit(RD(p)))
        return 0; /* most continuation lines end here */
    h->date_s = p;
    for (int part = 0; part < 3; part++) {
        n = digit_run(kind, data, p, eol, 5);
        if (sh->year_first ? (part == 0 ? n != 4 : (n < 1 || n > 2))
                           : (part < 2 ? (n < 1 || n > 2) : (n != 2 && n != 4)))
            return 0;
        p += n;
        if (part < 2) {
            if (p >= eol || RD(p) != sh->date_sep) return 0;
            p++;
            if (p < eol && is_space(RD(p))) p++;
        }
    }
    if (sh->date_dot) {
        if (p >= eol || RD(p) != '.') return 0;
        p++;
    }
    h->date_e = p;
    if (p < eol && RD(p) == ',') p++;
    if (p >= eol || !is_space(RD(p))) return 0;
    p++;
    if (sh->word.n) {
        if (!spaced_at(kind, data, p, eol, &sh->word)) return 0;
        p += sh->word.n;
        if (p >= eol || !is_space(RD(p))) return 0;
        p++;
    }
    h->time_s = p;
    if (sh->ampm_first) {
        Py_ssize_t ends[8 + MAX_LOCAL_AMPM];
        int ne = ampm_ends(kind, data, sh, p, eol, ends), found = 0;
        for (int k = 0; k < ne && !found; k++) {
            Py_ssize_t q = ends[k];
            if (q < eol && is_space(RD(q))) q++;
            found = clock_at(kind, data, sh, q, eol, 0, h, &he);
        }
        if (!found) return 0;
    } else if (!clock_at(kind, data, sh, p, eol, sh->twelve_hour, h, &he)) { return 0; }
    /* the author runs to the first ": " of the line; a line without one has no author */
    h->author_s = h->author_e = -1;
    h->first_s = he;
    for (Py_ssize_t k = he; k + 1 < eol; k++) {
        if (RD(k) == ':' && RD(k + 1) == ' ') {
            h->author_s = he;
            h->author_e = k;
            h->first_s = k + 2;
            break;
        }
    }
    h->eol = eol;
    h->line = line;
    h->flagged = 0;
    for (int i = 0; i < sh->n_fstart && !h->flagged; i++)
        h->flagged = exact_at(kind, data, h->first_s, h->first_s, eol, &sh->fstart[i]);
    for (int i = 0; i < sh->n_fend && !h->flagged; i++)
        h->flagged = exact_at(kind, data, eol - sh->fend[i].n, line, eol, &sh->fend[i]);
    return 1;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Answers of the caller's memos, cached by the raw characters of the span they were asked for. */

typedef struct { Py_uhash_t hash; PyObject *key, *val; } Slot; /* key: the span as a str, as the memo saw it */

typedef struct { Slot *slots; size_t mask, used; } Cache;

static void cache_free(Cache *c)
{
    if (!c->slots) return;
    for (size_t i = 0; i <= c->mask; i++) { Py_XDECREF(c->slots[i].key); Py_XDECREF(c->slots[i].val); }
    PyMem_Free(c->slots);
    c->slots = NULL;
}

static int cache_init(Cache *c, size_t size)
{
    c->slots = PyMem_Calloc(size, sizeof(Slot));
    c->mask = size - 1;
    c->used = 0;
    if (!c->slots) { PyErr_NoMemory(); return -1; }
    return 0;
}

static Slot *cache_probe(Slot *slots, size_t mask, Py_uhash_t hash, int kind, const void *data, Py_ssize_t s,
                         Py_ssize_t e)
{
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        Slot *slot = &slots[i];
        if (!slot->key) return slot;
        if (slot->hash != hash || PyUnicode_GET_LENGTH(slot->key) != e - s) continue;
        int kk = PyUnicode_KIND(slot->key);
        const void *kd = PyUnicode_DATA(slot->key);
        Py_ssize_t j = 0;
        while (j < e - s && PyUnicode_READ(kk, kd, j) == RD(s + j)) j++;
        if (j == e - s) return slot;
    }
}

static int cache_grow(Cache *c)
{
    size_t size = (c->mask + 1) * 2;
    Slot *slots = PyMem_Calloc(size, sizeof(Slot));
    if (!slots) { PyErr_NoMemory(); return -1; }
    for (size_t i = 0; i <= c->mask; i++) {
        Slot *old = &c->slots[i];
        if (!old->key) continue;
        size_t j = old->hash & (size - 1);
        while (slots[j].key) j = (j + 1) & (size - 1);
        slots[j] = *old;
    }
    PyMem_Free(c->slots);
    c->slots = slots;
    c->mask = size - 1;
    return 0;
}

/* The memo's answer for text[s:e]; asks the memo (a dict with __missing__) on the first sight of these characters. */
static Slot *cache_get(Cache *c, PyObject *memo, PyObject *text, int kind, const void *data, Py_ssize_t s,
                       Py_ssize_t e)
{
    Py_uhash_t hash = 2166136261u;
    for (Py_ssize_t i = s; i < e; i++) hash = (hash ^ RD(i)) * 16777619u;
    Slot *slot = cache_probe(c->slots, c->mask, hash, kind, data, s, e);
    if (slot->key) return slot;
    if (2 * (c->used + 1) > c->mask + 1) {
        if (cache_grow(c) < 0) return NULL;
        slot = cache_probe(c->slots, c->mask, hash, kind, data, s, e);
    }
    PyObject *key = PyUnicode_Substring(text, s, e);
    if (!key) return NULL;
    PyObject *val = PyObject_GetItem(memo, key);
    if (!val) { Py_DECREF(key); return NULL; }
    slot->hash = hash;
    slot->key = key;
    slot->val = val;
    c->used++;
    return slot;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* The scan */

typedef struct {
    PyObject *text, *exact, *days, *offsets, *names, *suspect, *text_kind;
    PyTypeObject *message;
    Py_ssize_t slots[5]; /* Message's slots: time, sender, text, kind, edited */
    Cache dates, marks, people;
    PyObject *messages, *closer;
    Py_ssize_t count;
    PyObject *last_day, *last_dt; /* consecutive entries often share a minute: one datetime for them */
    long long last_secs;
} Scan;

/* A Message built like whatsapp._messages does: a bare object of the frozen slots class, slots set directly. */
static PyObject *new_message(Scan *sc, PyObject *when, PyObject *sender, PyObject *body, PyObject *kind_)
{
    PyObject *obj = sc->message->tp_alloc(sc->message, 0);
    if (!obj) return NULL;
    PyObject *vals[5] = {when, sender, body, kind_, Py_False};
    for (int i = 0; i < 5; i++) { Py_INCREF(vals[i]); *(PyObject **)((char *)obj + sc->slots[i]) = vals[i]; }
    return obj;
}

/* day at secs (0 <= secs < 86400: seconds_of refuses times that do not exist). A new reference. */
static PyObject *when_of(Scan *sc, PyObject *day, long long secs)
{
    if (day == sc->last_day && secs == sc->last_secs) { Py_INCREF(sc->last_dt); return sc->last_dt; }
    PyObject *dt = PyDateTime_FromDateAndTime(PyDateTime_GET_YEAR(day), PyDateTime_GET_MONTH(day),
                                              PyDateTime_GET_DAY(day), (int)(secs / 3600), (int)(secs / 60 % 60),
                                              (int)(secs % 60), 0);
    if (!dt) return NULL;
    Py_XDECREF(sc->last_dt);
    Py_INCREF(dt);
    sc->last_dt = dt;
    sc->last_day = day; /* borrowed: the dates cache holds it */
    sc->last_secs = secs;
    return dt;
}

static int append_steal(PyObject *list, PyObject *item)
{
    if (!item) return -1;
    int r = PyList_Append(list, item);
    Py_DECREF(item);
    return r;
}

HOT long long digit_at(int kind, const void *data, Py_ssize_t p) { return Py_UNICODE_TODECIMAL(RD(p)); }

/* The time of day in seconds, read as whatsapp._Clock.time reads the time string: h, mm, optional ss, and the 12h
   mark's offset (the text before the hour or after the digits), which the marks memo gives once per spelling.
   -1 on a Python error, NO_TIME for a time that does not exist (24:00, 23:61), which the caller reports. */
#define NO_TIME (-2)
HOT long long seconds_of(int kind, const void *data, Scan *sc, const Shape *sh, const Head *h)
{
    Py_ssize_t p = h->clock_s;
    long long hour = 0, minute, second = 0;
    for (; RD(p) != sh->time_sep; p++) /* one or two digits, then the separator (header_at checked) */
        hour = hour * 10 + digit_at(kind, data, p);
    minute = digit_at(kind, data, p + 1) * 10 + digit_at(kind, data, p + 2);
    if (p + 3 < h->clock_e) second = digit_at(kind, data, p + 4) * 10 + digit_at(kind, data, p + 5);
    Py_ssize_t ms = sh->ampm_first ? h->time_s : h->clock_e, me = sh->ampm_first ? h->clock_s : h->time_e;
    if (ms < me) {
        Slot *mark = cache_get(&sc->marks, sc->offsets, sc->text, kind, data, ms, me);
        if (!mark) return -1;
        long offset = PyLong_AsLong(mark->val);
        if (offset == -1 && PyErr_Occurred()) return -1;
        if (hour == 12) hour = offset; /* 12 AM is midnight, 12 PM noon */
        else if (hour < 12) hour += offset;
    }
    if (hour > 23 || minute > 59 || second > 59) return NO_TIME;
    return hour * 3600 + minute * 60 + second;
}

/* One entry: the header h and its body text[h.first_s:body_e] (continuation lines included). */
HOT int emit(int kind, const void *data, Scan *sc, const Shape *sh, const Head *h, Py_ssize_t body_e)
{
    Slot *date = cache_get(&sc->dates, sc->days, sc->text, kind, data, h->date_s, h->date_e);
    if (!date) return -1;
    if (date->val != Py_None && !PyDateTime_Check(date->val)) {
        PyErr_SetString(PyExc_TypeError, "the days memo must answer datetime or None");
        return -1;
    }
    long long secs = seconds_of(kind, data, sc, sh, h);
    if (secs == -1) return -1;
    PyObject *raw = Py_None, *sender = Py_None;
    if (h->author_s >= 0) {
        Slot *who = cache_get(&sc->people, sc->names, sc->text, kind, data, h->author_s, h->author_e);
        if (!who) return -1;
        raw = who->key;
        sender = who->val;
    }
    Py_ssize_t index = sc->count++;
    PyObject *when = NULL, *body = NULL; /* when stays NULL for a date or time that does not exist */
    if (date->val != Py_None && secs != NO_TIME && !(when = when_of(sc, date->val, secs))) return -1;
    if (when && raw != Py_None && sender != sc->suspect) {
        Py_ssize_t s = h->first_s, e = body_e;
        while (s < e && is_mark(RD(s))) s++;
        while (e > s && is_mark(RD(e - 1))) e--;
        int edges = s != h->first_s || e != body_e;
        Py_ssize_t len = e - s;
        if (len > 0 && (sh->exact_mask[len < 63 ? len : 63] >> (RD(s) & 63) & 1)) {
            body = PyUnicode_Substring(sc->text, s, e);
            if (!body) goto error;
            PyObject *found = PyDict_GetItemWithError(sc->exact, body);
            if (found) { /* an exact placeholder or notice: as whatsapp._entries' first closer step */
                int system = PyUnicode_CompareWithASCIIString(found, "system") == 0;
                PyObject *m = new_message(sc, when, system ? Py_None : sender, body, found);
                Py_DECREF(when);
                Py_DECREF(body);
                return append_steal(sc->messages, m);
            }
            if (PyErr_Occurred()) goto error;
        }
        int plain = !h->flagged && !edges && !(body_e > h->first_s && RD(body_e - 1) == '>');
        if (plain && len >= 11) {
            static const char needle[] = "maps.google";
            for (Py_ssize_t i = s; i + 11 <= e && plain; i++) {
                if (RD(i) != 'm') continue;
                int k = 1;
                while (k < 11 && RD(i + k) == (Py_UCS4)needle[k]) k++;
                plain = k < 11;
            }
        }
        if (plain) {
            if (!body && !(body = PyUnicode_Substring(sc->text, s, e))) goto error;
            PyObject *m = new_message(sc, when, sender, body, sc->text_kind);
            Py_DECREF(when);
            Py_DECREF(body);
            return append_steal(sc->messages, m);
        }
        Py_CLEAR(body);
    }
    /* the closer look, in Python: (index, when or None, date, raw author or None, sender, first line, the rest); for
       a time that does not exist, `date` is (time string,) instead */
    if (PyList_Append(sc->messages, Py_None) < 0) goto error;
    PyObject *what = date->key;
    if (date->val != Py_None && secs == NO_TIME) {
        PyObject *clock = PyUnicode_Substring(sc->text, h->time_s, h->time_e);
        what = clock ? PyTuple_Pack(1, clock) : NULL;
        Py_XDECREF(clock);
        if (!what) goto error;
    } else {
        Py_INCREF(what);
    }
    PyObject *first = PyUnicode_Substring(sc->text, h->first_s, h->eol);
    PyObject *rest = first ? PyUnicode_Substring(sc->text, h->eol, body_e) : NULL;
    PyObject *at = rest ? PyLong_FromSsize_t(index) : NULL;
    PyObject *entry = at ? PyTuple_Pack(7, at, when ? when : Py_None, what, raw, sender, first, rest) : NULL;
    Py_DECREF(what);
    Py_XDECREF(first);
    Py_XDECREF(rest);
    Py_XDECREF(at);
    if (!entry) goto error;
    Py_XDECREF(when);
    return append_steal(sc->closer, entry);
error:
    Py_XDECREF(when);
    Py_XDECREF(body);
    return -1;
}

HOT Py_ssize_t scan_text(int kind, const void *data, Scan *sc, const Shape *sh, Py_ssize_t start, Py_ssize_t end)
{
    Py_ssize_t line = start, first = -1;
    Head cur = {0}, next;
    int open = 0;
    while (line <= end) {
        Py_ssize_t eol = line;
        if (kind == PyUnicode_1BYTE_KIND) {
            const char *nl = memchr((const char *)data + line, '\n', end - line);
            eol = nl ? nl - (const char *)data : end;
        } else {
            while (eol < end && RD(eol) != '\n') eol++;
        }
        if (header_at(kind, data, sh, line, eol, &next)) {
            if (open && emit(kind, data, sc, sh, &cur, line - 1) < 0) return -2;
            if (first < 0) first = line;
            cur = next;
            open = 1;
        }
        if (eol >= end) break;
        line = eol + 1;
    }
    if (open && emit(kind, data, sc, sh, &cur, end) < 0) return -2;
    return first;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Arguments */

static int to_lits(PyObject *tuple, Lit *out, int cap, int *n, const char *what)
{
    if (PyTuple_GET_SIZE(tuple) > cap)
        return PyErr_Format(PyExc_ValueError, "%s: more than %d strings", what, cap), -1;
    for (*n = 0; *n < PyTuple_GET_SIZE(tuple); (*n)++) {
        PyObject *s = PyTuple_GET_ITEM(tuple, *n);
        if (!PyUnicode_Check(s)) { PyErr_Format(PyExc_TypeError, "%s: strings expected", what); return -1; }
        if (!(out[*n].s = PyUnicode_AsUCS4Copy(s))) return -1;
        out[*n].n = PyUnicode_GET_LENGTH(s);
    }
    return 0;
}

static void free_lits(Lit *l, int n)
{
    for (int i = 0; i < n; i++) PyMem_Free(l[i].s);
}

/* Offsets of Message's five slots, read from its member descriptors. */
static int slot_offsets(PyTypeObject *type, Py_ssize_t *offsets)
{
    static const char *names[5] = {"time", "sender", "text", "kind", "edited"};
    for (int i = 0; i < 5; i++) {
        PyObject *d = PyDict_GetItemString(type->tp_dict, names[i]);
        if (!d || !Py_IS_TYPE(d, &PyMemberDescr_Type) || ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", type->tp_name, names[i]);
            return -1;
        }
        offsets[i] = ((PyMemberDescrObject *)d)->d_member->offset;
    }
    return 0;
}

PyDoc_STRVAR(scan_doc,
             "scan(text, start, end, shape, ampm, starts, ends, exact, days, offsets, names, suspect, message,\n"
             "     text_kind)\n"
             "-> (offset of the first header line or -1, messages with None where the closer list has the entry, "
             "closer)\n\nSee talkalike.sources.whatsapp._scan_fast.");

static PyObject *scan(PyObject *self, PyObject *args)
{
    Scan sc = {0};
    Shape *sh = PyMem_Calloc(1, sizeof(Shape));
    PyObject *shape, *ampm, *starts, *ends, *word, *result = NULL;
    Py_ssize_t start, end;
    if (!sh) return PyErr_NoMemory();
    PyTypeObject *T = &PyTuple_Type, *D = &PyDict_Type;
    if (!PyArg_ParseTuple(args, "UnnO!O!O!O!O!O!O!O!OO!U", &sc.text, &start, &end, T, &shape, T, &ampm, T, &starts, T,
                          &ends, D, &sc.exact, D, &sc.days, D, &sc.offsets, D, &sc.names, &sc.suspect, &PyType_Type,
                          &sc.message, &sc.text_kind))
        goto done;
    if (!PyArg_ParseTuple(shape, "pCppUCpppC", &sh->bracket, &sh->date_sep, &sh->year_first, &sh->date_dot, &word,
                          &sh->time_sep, &sh->twelve_hour, &sh->ampm_first, &sh->time_dot, &sh->close))
        goto done;
    if (start < 0 || end > PyUnicode_GET_LENGTH(sc.text) || start > end) {
        PyErr_SetString(PyExc_ValueError, "start and end must lie within the text");
        goto done;
    }
    if (!(sh->word.s = PyUnicode_AsUCS4Copy(word))) goto done;
    sh->word.n = PyUnicode_GET_LENGTH(word);
    if (to_lits(ampm, sh->ampm, MAX_LOCAL_AMPM, &sh->n_ampm, "ampm") < 0 ||
        to_lits(starts, sh->fstart, MAX_HINTS, &sh->n_fstart, "starts") < 0 ||
        to_lits(ends, sh->fend, MAX_HINTS, &sh->n_fend, "ends") < 0)
        goto done;
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(sc.exact, &pos, &key, &value)) {
        if (!PyUnicode_Check(key) || !PyUnicode_Check(value)) {
            PyErr_SetString(PyExc_TypeError, "exact must map str to str");
            goto done;
        }
        Py_ssize_t n = PyUnicode_GET_LENGTH(key);
        if (n > 0) sh->exact_mask[n < 63 ? n : 63] |= 1ull << (PyUnicode_READ_CHAR(key, 0) & 63);
    }
    if (slot_offsets(sc.message, sc.slots) < 0) goto done;
    if (cache_init(&sc.dates, 1024) < 0 || cache_init(&sc.marks, 64) < 0 || cache_init(&sc.people, 256) < 0) goto done;
    if (!(sc.messages = PyList_New(0)) || !(sc.closer = PyList_New(0))) goto done;
    int kind = PyUnicode_KIND(sc.text);
    const void *data = PyUnicode_DATA(sc.text);
    Py_ssize_t first = kind == PyUnicode_1BYTE_KIND   ? scan_text(PyUnicode_1BYTE_KIND, data, &sc, sh, start, end)
                       : kind == PyUnicode_2BYTE_KIND ? scan_text(PyUnicode_2BYTE_KIND, data, &sc, sh, start, end)
                                                      : scan_text(PyUnicode_4BYTE_KIND, data, &sc, sh, start, end);
    if (first == -2) goto done;
    result = Py_BuildValue("(nOO)", first, sc.messages, sc.closer);
done:
    Py_XDECREF(sc.messages);
    Py_XDECREF(sc.closer);
    Py_XDECREF(sc.last_dt);
    cache_free(&sc.dates), cache_free(&sc.marks), cache_free(&sc.people);
    PyMem_Free(sh->word.s);
    free_lits(sh->ampm, sh->n_ampm), free_lits(sh->fstart, sh->n_fstart), free_lits(sh->fend, sh->n_fend);
    PyMem_Free(sh);
    return result;
}

static PyMethodDef methods[] = {{"scan", scan, METH_VARARGS, scan_doc}, {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_whatsapp_scan",
                                    "The WhatsApp parser's hot loop; see talkalike/sources/_whatsapp_scan.c.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__whatsapp_scan(void)
{
    PyDateTime_IMPORT;
    if (!PyDateTimeAPI) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    /* the character classes compiled in, for the test that checks them against whatsapp_kinds */
    if (PyModule_AddStringConstant(m, "MARKS",
                                   "\xe2\x80\x8e\xe2\x80\x8f\xe2\x80\xaa\xe2\x80\xab\xe2\x80\xac\xe2\x80\xad"
                                   "\xe2\x80\xae\xe2\x81\xa6\xe2\x81\xa7\xe2\x81\xa8\xe2\x81\xa9\xef\xbb\xbf") < 0 ||
        PyModule_AddStringConstant(m, "SPACES", " \xc2\xa0\xe2\x80\xaf") < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
