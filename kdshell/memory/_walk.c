/* kdshell.memory._walk: Paging.translate's common cases, compiled (optional).
 *
 * A Translator answers what the pure-Python Paging.translate (paging.py) answers fastest there:
 * a translation-cache hit, a valid entry of a kept last-level table, and a walk through kept
 * tables whose every entry is valid (large pages too). It reads and fills the same dictionaries
 * the Python code does (the translation cache, the kept last-level tables, the page cache's table
 * arrays), so both can run over the same address space. Anything else (a table page not fetched
 * yet, an entry that is not valid, a non-canonical address, a full cache to trim, an address that
 * is not a 64-bit unsigned int) goes to `slow`, the Python method, which owns every error and
 * message. The Python walk is the reference: tests/test_paging.py checks both agree.
 *
 * Built by setup.py when a C compiler is there; without it kdshell runs the Python walk.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>

#define MAX_LEVELS 5
#define PAGE_SHIFT 12
#define PAGE_MASK 0xFFFull

typedef struct {
    int shift;            /* lowest VA bit of this level's index */
    uint64_t index_mask;  /* (1 << bits) - 1 */
    uint64_t large_mask;  /* address bits of a large page mapped here; 0: tables only */
    uint64_t large_bit;   /* the entry bit that says "large page"... */
    uint64_t large_value; /* ...when it has this value */
} Level;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *tlb;    /* dict: virtual page number -> physical page address */
    PyObject *leaves; /* dict: va >> leaf_key_shift -> last-level table (array) */
    PyObject *tables; /* dict: table physical address -> entries (array) */
    PyObject *slow;   /* callable(va): the Python translate */
    uint64_t top;     /* the top table's physical address */
    uint64_t table_mask;
    int entry_size;   /* 8 or 4 */
    int levels;
    Level level[MAX_LEVELS];
    int leaf_key_shift;
    int canon_shift;   /* va >> canon_shift is 0 or canon_top for an address the walk takes */
    uint64_t canon_top;
    Py_ssize_t tlb_limit, leaves_limit;
} Translator;

/* Entry `index` of a table array; 0 on success, -1 when it cannot be read (no buffer, short). */
static int
entry_at(Translator *self, PyObject *table, uint64_t index, uint64_t *out)
{
    Py_buffer view;
    if (PyObject_GetBuffer(table, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        return -1;
    }
    int ok = (uint64_t)view.len / (uint64_t)self->entry_size > index;
    if (ok) {
        if (self->entry_size == 8) {
            uint64_t e;
            memcpy(&e, (const char *)view.buf + index * 8, 8);
            *out = e;
        }
        else {
            uint32_t e;
            memcpy(&e, (const char *)view.buf + index * 4, 4);
            *out = e;
        }
    }
    PyBuffer_Release(&view);
    return ok ? 0 : -1;
}

/* dict[key] for an unsigned key: a borrowed reference, NULL when absent (or on error, set). */
static PyObject *
lookup(PyObject *dict, uint64_t key)
{
    PyObject *k = PyLong_FromUnsignedLongLong(key);
    if (k == NULL)
        return NULL;
    PyObject *v = PyDict_GetItemWithError(dict, k);
    Py_DECREF(k);
    return v;
}

static int
store(PyObject *dict, uint64_t key, PyObject *value)
{
    PyObject *k = PyLong_FromUnsignedLongLong(key);
    if (k == NULL)
        return -1;
    int rc = PyDict_SetItem(dict, k, value);
    Py_DECREF(k);
    return rc;
}

/* Remember vpn -> pa_page when the cache has room (a full one is left as it is, as in Python). */
static int
remember(Translator *self, uint64_t vpn, uint64_t pa_page)
{
    if (PyDict_GET_SIZE(self->tlb) >= self->tlb_limit)
        return 0;
    PyObject *v = PyLong_FromUnsignedLongLong(pa_page);
    if (v == NULL)
        return -1;
    int rc = store(self->tlb, vpn, v);
    Py_DECREF(v);
    return rc;
}

static PyObject *
slow(Translator *self, PyObject *va)
{
    return PyObject_CallOneArg(self->slow, va);
}

static PyObject *
translate(Translator *self, PyObject *arg)
{
    if (!PyLong_CheckExact(arg))
        return slow(self, arg);
    uint64_t va = PyLong_AsUnsignedLongLong(arg);
    if (va == (uint64_t)-1 && PyErr_Occurred()) { /* negative or wider than 64 bits */
        PyErr_Clear();
        return slow(self, arg);
    }
    uint64_t vpn = va >> PAGE_SHIFT, offset = va & PAGE_MASK;

    PyObject *hit = lookup(self->tlb, vpn);
    if (hit != NULL) {
        uint64_t pa_page = PyLong_AsUnsignedLongLong(hit);
        if (pa_page == (uint64_t)-1 && PyErr_Occurred())
            return NULL;
        return PyLong_FromUnsignedLongLong(pa_page | offset);
    }
    if (PyErr_Occurred())
        return NULL;

    const Level *last = &self->level[self->levels - 1];
    uint64_t leaf_key = va >> self->leaf_key_shift, e;
    PyObject *leaf = lookup(self->leaves, leaf_key);
    if (leaf != NULL) { /* a kept last-level table: one entry to read */
        if (entry_at(self, leaf, (va >> last->shift) & last->index_mask, &e) == 0 && (e & 1)) {
            if (remember(self, vpn, e & self->table_mask) < 0)
                return NULL;
            return PyLong_FromUnsignedLongLong((e & self->table_mask) | offset);
        }
        return slow(self, arg);
    }
    if (PyErr_Occurred())
        return NULL;

    uint64_t top = va >> self->canon_shift;
    if (top != 0 && top != self->canon_top)
        return slow(self, arg);
    if (PyDict_GET_SIZE(self->tlb) >= self->tlb_limit
        || PyDict_GET_SIZE(self->leaves) >= self->leaves_limit)
        return slow(self, arg); /* a full cache: Python trims it */

    uint64_t table = self->top;
    for (int i = 0; i < self->levels - 1; i++) {
        const Level *lv = &self->level[i];
        PyObject *entries = lookup(self->tables, table);
        if (entries == NULL) {
            if (PyErr_Occurred())
                return NULL;
            return slow(self, arg); /* a table page to fetch */
        }
        if (entry_at(self, entries, (va >> lv->shift) & lv->index_mask, &e) < 0 || !(e & 1))
            return slow(self, arg);
        if (lv->large_mask != 0 && (e & lv->large_bit) == lv->large_value) {
            uint64_t pa = (e & lv->large_mask) | (va & ((1ull << lv->shift) - 1));
            if (remember(self, vpn, pa & ~PAGE_MASK) < 0)
                return NULL;
            return PyLong_FromUnsignedLongLong(pa);
        }
        table = e & self->table_mask;
    }
    leaf = lookup(self->tables, table);
    if (leaf == NULL) {
        if (PyErr_Occurred())
            return NULL;
        return slow(self, arg);
    }
    if (entry_at(self, leaf, (va >> last->shift) & last->index_mask, &e) < 0 || !(e & 1))
        return slow(self, arg); /* Python keeps the table and decodes the entry */
    if (store(self->leaves, leaf_key, leaf) < 0 || remember(self, vpn, e & self->table_mask) < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong((e & self->table_mask) | offset);
}

static int
parse_levels(Translator *self, PyObject *levels)
{
    PyObject *seq = PySequence_Fast(levels, "levels must be a sequence");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1 || n > MAX_LEVELS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "1 to %d levels, not %zd", MAX_LEVELS, n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Level *lv = &self->level[i];
        int bits;
        unsigned long long large_mask, large_bit, large_value;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "iiKKK;a level is (shift, bits, large_mask, "
                              "large_bit, large_value)", &lv->shift, &bits, &large_mask, &large_bit, &large_value)) {
            Py_DECREF(seq);
            return -1;
        }
        if (lv->shift < 0 || lv->shift > 63 || bits < 1 || bits > 16) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "a level's shift or bits is out of range");
            return -1;
        }
        lv->index_mask = (1ull << bits) - 1;
        lv->large_mask = large_mask;
        lv->large_bit = large_bit;
        lv->large_value = large_value;
    }
    self->levels = (int)n;
    Py_DECREF(seq);
    return 0;
}

static int
Translator_init(Translator *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"tlb", "leaves", "tables", "slow", "top", "levels", "table_mask", "entry_size",
                            "leaf_key_shift", "canon_shift", "canon_top", "tlb_limit", "leaves_limit", NULL};
    PyObject *tlb, *leaves, *tables, *slow_fn, *levels;
    unsigned long long top, table_mask, canon_top;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!O!OKOKiiiKnn", names, &PyDict_Type, &tlb, &PyDict_Type,
                                     &leaves, &PyDict_Type, &tables, &slow_fn, &top, &levels, &table_mask,
                                     &self->entry_size, &self->leaf_key_shift, &self->canon_shift, &canon_top,
                                     &self->tlb_limit, &self->leaves_limit))
        return -1;
    if (!PyCallable_Check(slow_fn)) {
        PyErr_SetString(PyExc_TypeError, "slow must be callable");
        return -1;
    }
    if ((self->entry_size != 8 && self->entry_size != 4) || self->leaf_key_shift < 0 || self->leaf_key_shift > 63
        || self->canon_shift < 0 || self->canon_shift > 63) {
        PyErr_SetString(PyExc_ValueError, "entry_size, leaf_key_shift or canon_shift is out of range");
        return -1;
    }
    if (parse_levels(self, levels) < 0)
        return -1;
    self->top = top;
    self->table_mask = table_mask;
    self->canon_top = canon_top;
    Py_INCREF(tlb);
    Py_INCREF(leaves);
    Py_INCREF(tables);
    Py_INCREF(slow_fn);
    Py_XSETREF(self->tlb, tlb);
    Py_XSETREF(self->leaves, leaves);
    Py_XSETREF(self->tables, tables);
    Py_XSETREF(self->slow, slow_fn);
    return 0;
}

/* `slow` is a bound method of the Paging that holds this object: a cycle the collector breaks. */
static int
Translator_traverse(Translator *self, visitproc visit, void *arg)
{
    Py_VISIT(self->tlb);
    Py_VISIT(self->leaves);
    Py_VISIT(self->tables);
    Py_VISIT(self->slow);
    return 0;
}

static int
Translator_clear(Translator *self)
{
    Py_CLEAR(self->tlb);
    Py_CLEAR(self->leaves);
    Py_CLEAR(self->tables);
    Py_CLEAR(self->slow);
    return 0;
}

static void
Translator_dealloc(Translator *self)
{
    PyObject_GC_UnTrack(self);
    Translator_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* translate(va): called as a function, one positional argument */
static PyObject *
Translator_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "translate() takes exactly one positional argument (va)");
        return NULL;
    }
    if (((Translator *)self)->slow == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Translator is not initialised");
        return NULL;
    }
    return translate((Translator *)self, args[0]);
}

static PyObject *
Translator_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    Translator *self = (Translator *)PyType_GenericNew(type, args, kwargs);
    if (self != NULL)
        self->vectorcall = Translator_vectorcall;
    return (PyObject *)self;
}

static PyTypeObject TranslatorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kdshell.memory._walk.Translator",
    .tp_doc = PyDoc_STR("Paging.translate's common cases over the same caches; the rest goes to `slow`."),
    .tp_basicsize = sizeof(Translator),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Translator, vectorcall),
    .tp_new = Translator_new,
    .tp_init = (initproc)Translator_init,
    .tp_dealloc = (destructor)Translator_dealloc,
    .tp_traverse = (traverseproc)Translator_traverse,
    .tp_clear = (inquiry)Translator_clear,
    .tp_call = PyVectorcall_Call,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kdshell.memory._walk",
    .m_doc = "Paging.translate's common cases, compiled (optional: paging.py works without it).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__walk(void)
{
    if (PyType_Ready(&TranslatorType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&TranslatorType);
    if (PyModule_AddObject(m, "Translator", (PyObject *)&TranslatorType) < 0) {
        Py_DECREF(&TranslatorType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
