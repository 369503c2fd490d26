/*
 * streambatch.native._core: the fixed-width hot path without the GIL.
 *
 * Two operations, each validating its arguments with the GIL held, then doing
 * all of its work with the GIL released (one release per call, however many
 * columns, batches or ranges it covers):
 *
 *   gather(sources, slots, destinations)
 *       rows ``slots`` of every column's ring array, in order, into that
 *       column's batch arrays (a whole group of batches in one call);
 *   pread_ranges(fds, offsets, sizes, destination, positions)
 *       byte ranges of any number of files into one buffer, each at its
 *       position (one read job, whatever the shards it covers).
 *
 * Only the buffer protocol is used (no NumPy C API), so the build needs
 * nothing but a C compiler and Python's headers. The pure-Python fallback in
 * streambatch/native/__init__.py gives identical results.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

static void release_all(Py_buffer *views, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        if (views[i].obj != NULL) PyBuffer_Release(&views[i]);
    }
}

/* gather(sources, slots, destinations) -> None
 *
 * sources: sequence of C-contiguous buffers, one per column, each holding
 *     ``capacity`` rows of that column's row size (the same capacity for all).
 * slots: C-contiguous int64 buffer: the ring slot of each output row.
 * destinations: sequence (one per column) of sequences of writable
 *     C-contiguous buffers; a column's rows go to its buffers in order, each
 *     taking as many rows as it holds, and together they hold len(slots) rows.
 * Consecutive slots are copied as one run. */
static PyObject *gather(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *sources_obj, *slots_obj, *dests_obj;
    if (!PyArg_ParseTuple(args, "OOO", &sources_obj, &slots_obj, &dests_obj)) return NULL;

    PyObject *sources = PySequence_Fast(sources_obj, "sources must be a sequence of buffers");
    if (sources == NULL) return NULL;
    PyObject *dests = PySequence_Fast(dests_obj, "destinations must be a sequence of sequences of buffers");
    if (dests == NULL) {
        Py_DECREF(sources);
        return NULL;
    }
    Py_ssize_t ncols = PySequence_Fast_GET_SIZE(sources);
    PyObject *result = NULL;
    Py_buffer slots = {0};
    Py_buffer *src = NULL, *dst = NULL;
    Py_ssize_t *row_nbytes = NULL, *dst_count = NULL;
    PyObject **dst_lists = NULL;
    Py_ssize_t ndst_total = 0, ndst_got = 0, nsrc_got = 0;

    if (PySequence_Fast_GET_SIZE(dests) != ncols) {
        PyErr_Format(PyExc_ValueError, "gather: %zd sources but %zd destination lists", ncols,
                     PySequence_Fast_GET_SIZE(dests));
        goto done;
    }
    if (PyObject_GetBuffer(slots_obj, &slots, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) goto done;
    if (slots.itemsize != 8 || slots.len % 8 != 0) {
        PyErr_SetString(PyExc_TypeError, "gather: slots must be an int64 array");
        goto done;
    }
    Py_ssize_t nslots = slots.len / 8;
    const int64_t *slot = (const int64_t *)slots.buf;

    src = PyMem_Calloc(ncols ? ncols : 1, sizeof(Py_buffer));
    row_nbytes = PyMem_Calloc(ncols ? ncols : 1, sizeof(Py_ssize_t));
    dst_count = PyMem_Calloc(ncols ? ncols : 1, sizeof(Py_ssize_t));
    dst_lists = PyMem_Calloc(ncols ? ncols : 1, sizeof(PyObject *));
    if (src == NULL || row_nbytes == NULL || dst_count == NULL || dst_lists == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t c = 0; c < ncols; c++) {
        dst_lists[c] = PySequence_Fast(PySequence_Fast_GET_ITEM(dests, c), "destinations[c] must be a sequence");
        if (dst_lists[c] == NULL) goto done;
        dst_count[c] = PySequence_Fast_GET_SIZE(dst_lists[c]);
        ndst_total += dst_count[c];
    }
    dst = PyMem_Calloc(ndst_total ? ndst_total : 1, sizeof(Py_buffer));
    if (dst == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t capacity = -1;
    for (Py_ssize_t c = 0; c < ncols; c++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(sources, c), &src[c], PyBUF_C_CONTIGUOUS) < 0) goto done;
        nsrc_got++;
        /* the row size is what the destinations hold per row: rows of all buffers / len(slots) */
        Py_ssize_t total = 0;
        for (Py_ssize_t b = 0; b < dst_count[c]; b++) {
            PyObject *item = PySequence_Fast_GET_ITEM(dst_lists[c], b);
            if (PyObject_GetBuffer(item, &dst[ndst_got], PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) goto done;
            total += dst[ndst_got].len;
            ndst_got++;
        }
        if (nslots == 0) {
            if (total != 0) {
                PyErr_Format(PyExc_ValueError, "gather: column %zd: no slots but %zd destination bytes", c, total);
                goto done;
            }
            continue;
        }
        if (total % nslots != 0 || total == 0) {
            PyErr_Format(PyExc_ValueError, "gather: column %zd: %zd destination bytes for %zd rows", c, total,
                         nslots);
            goto done;
        }
        row_nbytes[c] = total / nslots;
        if (src[c].len % row_nbytes[c] != 0) {
            PyErr_Format(PyExc_ValueError, "gather: column %zd: source of %zd bytes is not whole rows of %zd", c,
                         src[c].len, row_nbytes[c]);
            goto done;
        }
        Py_ssize_t rows = src[c].len / row_nbytes[c];
        if (capacity >= 0 && rows != capacity) {
            PyErr_Format(PyExc_ValueError, "gather: column %zd holds %zd rows, column 0 %zd", c, rows, capacity);
            goto done;
        }
        capacity = rows;
    }
    for (Py_ssize_t c = 0, k = 0; c < ncols && nslots; c++) {
        for (Py_ssize_t b = 0; b < dst_count[c]; b++, k++) {
            if (dst[k].len % row_nbytes[c] != 0) {
                PyErr_Format(PyExc_ValueError, "gather: column %zd destination %zd is not whole rows", c, b);
                goto done;
            }
        }
    }
    if (nslots == 0 || ncols == 0) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    int bad = 0;
    Py_ssize_t bad_index = 0;
    int64_t bad_slot = 0;
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t i = 0; i < nslots; i++) {
        if (slot[i] < 0 || slot[i] >= capacity) {
            bad = 1;
            bad_index = i;
            bad_slot = slot[i];
            break;
        }
    }
    if (!bad) {
        Py_ssize_t base = 0;
        for (Py_ssize_t c = 0; c < ncols; c++) {
            const char *from = (const char *)src[c].buf;
            const Py_ssize_t rb = row_nbytes[c];
            Py_ssize_t i = 0;
            for (Py_ssize_t b = 0; b < dst_count[c]; b++) {
                char *to = (char *)dst[base + b].buf;
                Py_ssize_t end = i + dst[base + b].len / rb;
                while (i < end) {
                    Py_ssize_t run = 1;
                    while (i + run < end && slot[i + run] == slot[i] + run) run++;
                    memcpy(to, from + (Py_ssize_t)slot[i] * rb, (size_t)(run * rb));
                    to += run * rb;
                    i += run;
                }
            }
            base += dst_count[c];
        }
    }
    Py_END_ALLOW_THREADS;
    if (bad) {
        PyErr_Format(PyExc_IndexError, "gather: slot %lld at row %zd is outside a ring of %zd rows",
                     (long long)bad_slot, bad_index, capacity);
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    if (slots.obj != NULL) PyBuffer_Release(&slots);
    if (src != NULL) release_all(src, nsrc_got);
    if (dst != NULL) release_all(dst, ndst_got);
    if (dst_lists != NULL) {
        for (Py_ssize_t c = 0; c < ncols; c++) Py_XDECREF(dst_lists[c]);
    }
    PyMem_Free(src);
    PyMem_Free(dst);
    PyMem_Free(row_nbytes);
    PyMem_Free(dst_count);
    PyMem_Free(dst_lists);
    Py_DECREF(sources);
    Py_DECREF(dests);
    return result;
}

/* pread_ranges(fds, offsets, sizes, destination, positions) -> None | (i, done)
 *
 * Range i is ``sizes[i]`` bytes at file offset ``offsets[i]`` of descriptor
 * ``fds[i]``, read into ``destination`` at byte ``positions[i]`` (all int64
 * arrays of one length). The ranges of one read job may come from any number
 * of files (the shards it covers), so a job is one call whatever its shards.
 * Returns None when every byte was read, or ``(i, done)`` when a file ended
 * inside range i after ``done`` of its bytes (the caller names the file);
 * raises OSError on a failed read. Interrupted reads are resumed. */
static PyObject *pread_ranges(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *fds_obj, *offsets_obj, *sizes_obj, *dest_obj, *positions_obj;
    if (!PyArg_ParseTuple(args, "OOOOO", &fds_obj, &offsets_obj, &sizes_obj, &dest_obj, &positions_obj)) return NULL;
    Py_buffer fds = {0}, offsets = {0}, sizes = {0}, dest = {0}, positions = {0};
    PyObject *result = NULL;
    if (PyObject_GetBuffer(fds_obj, &fds, PyBUF_C_CONTIGUOUS) < 0) goto done;
    if (PyObject_GetBuffer(offsets_obj, &offsets, PyBUF_C_CONTIGUOUS) < 0) goto done;
    if (PyObject_GetBuffer(sizes_obj, &sizes, PyBUF_C_CONTIGUOUS) < 0) goto done;
    if (PyObject_GetBuffer(dest_obj, &dest, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) goto done;
    if (PyObject_GetBuffer(positions_obj, &positions, PyBUF_C_CONTIGUOUS) < 0) goto done;
    if (offsets.len % 8 != 0 || offsets.len != sizes.len || offsets.len != fds.len || offsets.len != positions.len) {
        PyErr_SetString(PyExc_ValueError,
                        "pread_ranges: fds, offsets, sizes and positions must be int64 arrays of one length");
        goto done;
    }
    Py_ssize_t n = offsets.len / 8;
    const int64_t *fd = (const int64_t *)fds.buf;
    const int64_t *offset = (const int64_t *)offsets.buf;
    const int64_t *size = (const int64_t *)sizes.buf;
    const int64_t *position = (const int64_t *)positions.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (size[i] < 0 || offset[i] < 0 || fd[i] < 0 || fd[i] > INT32_MAX || position[i] < 0 ||
            position[i] > (int64_t)dest.len - size[i]) {
            PyErr_Format(PyExc_ValueError,
                         "pread_ranges: range %zd (fd %lld, offset %lld, size %lld, at %lld) does not fit a "
                         "destination of %zd bytes",
                         i, (long long)fd[i], (long long)offset[i], (long long)size[i], (long long)position[i],
                         dest.len);
            goto done;
        }
    }
    int error = 0;
    Py_ssize_t short_index = -1;
    int64_t short_done = 0;
    Py_BEGIN_ALLOW_THREADS;
    char *base = (char *)dest.buf;
    for (Py_ssize_t i = 0; i < n && !error && short_index < 0; i++) {
        char *to = base + position[i];
        int64_t done_bytes = 0;
        while (done_bytes < size[i]) {
            ssize_t got =
                pread((int)fd[i], to + done_bytes, (size_t)(size[i] - done_bytes), (off_t)(offset[i] + done_bytes));
            if (got < 0) {
                if (errno == EINTR) continue;
                error = errno;
                break;
            }
            if (got == 0) {
                short_index = i;
                short_done = done_bytes;
                break;
            }
            done_bytes += got;
        }
    }
    Py_END_ALLOW_THREADS;
    if (error) {
        errno = error;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    if (short_index >= 0) {
        result = Py_BuildValue("nL", short_index, (long long)short_done);
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    if (fds.obj != NULL) PyBuffer_Release(&fds);
    if (offsets.obj != NULL) PyBuffer_Release(&offsets);
    if (sizes.obj != NULL) PyBuffer_Release(&sizes);
    if (dest.obj != NULL) PyBuffer_Release(&dest);
    if (positions.obj != NULL) PyBuffer_Release(&positions);
    return result;
}

static PyMethodDef methods[] = {
    {"gather", gather, METH_VARARGS, "gather(sources, slots, destinations): ring rows into batch arrays, GIL released"},
    {"pread_ranges", pread_ranges, METH_VARARGS,
     "pread_ranges(fds, offsets, sizes, destination, positions): byte ranges of files into one buffer, GIL released"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "streambatch.native._core", "The fixed-width hot path without the GIL.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__core(void) { return PyModule_Create(&module); }
