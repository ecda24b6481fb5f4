/*
 * qaudit._kernels: the per-value loops of calibration and measurement, in C.
 *
 * Optional: when this module is not built (no C compiler at install time),
 * qaudit computes the same statistics with numpy (qaudit/pipeline/kernels.py picks).
 * Every function here has a numpy twin that the tests compare it with:
 * histograms and counts are identical, sums of squares agree to ~1e-12
 * relative (they are accumulated in double here, in float32 pairwise sums by
 * numpy).
 *
 * Why C: each of these is one pass over the values; numpy needs 5 to 8 passes
 * (temporaries for |x|, bin indices, errors, squares) and its histogramming
 * holds the GIL, so the measuring threads cannot use both cores. Every
 * function releases the GIL while it loops.
 *
 * Float arithmetic mirrors numpy's exactly where it decides a bin: float32
 * operations in the same order, no fused multiply-add (setup.py builds with
 * -ffp-contract=off), truncating casts.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* A C-contiguous buffer of `itemsize`-byte items whose format is one of `formats`. */
static int
get_buffer(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t itemsize, const char *formats, const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
        return -1;
    }
    const char *fmt = view->format ? view->format : "B";
    if (*fmt == '<' || *fmt == '=' || *fmt == '@') {
        fmt++;
    }
    if (view->itemsize != itemsize || strlen(fmt) != 1 || !strchr(formats, *fmt)) {
        PyErr_Format(PyExc_TypeError, "%s: expected %zd-byte items of format '%s', got '%s'", what, itemsize, formats,
                     view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* x86-64 with GCC (12 or later) and glibc: the loops are compiled for the baseline ISA
 * and for AVX2 and AVX-512 machines, chosen when the module loads (an ifunc).
 * The arithmetic is the same IEEE float32/double operations in every clone
 * (-ffp-contract=off: no FMA even where the ISA has it), so results do not
 * depend on the machine. */
#ifndef ISA_CLONES /* -DISA_CLONES= builds the baseline loops only */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__GLIBC__)
#define ISA_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define ISA_CLONES
#endif
#endif

#define N_ITEMS(view) ((view).len / (view).itemsize)

/* interleaved copies of a histogram (see abs_histogram) */
#define SUBS 1

/* ------------------------------------------------------------ calibration */

PyDoc_STRVAR(abs_histogram_doc,
"abs_histogram(data, edges, counts, absolute=1)\n\n"
"Add to ``counts`` (int64, len(edges) - 1) the histogram of ``|data|`` (float32)\n"
"on the float32 ``edges``: exactly ``np.histogram(np.abs(data), bins=edges)[0]``;\n"
"with ``absolute`` 0, of ``data`` itself (``np.histogram(data, bins=edges)[0]``)\n"
"(bin i holds edges[i] <= v < edges[i+1], the last bin also v == edges[-1];\n"
"values outside [edges[0], edges[-1]] and NaN are not counted). ``edges`` must\n"
"be non-decreasing; a uniform guess of the bin is corrected against the edges\n"
"themselves, so the result does not depend on how uniform they are.");

ISA_CLONES static PyObject *
abs_histogram(PyObject *self, PyObject *args)
{
    PyObject *o_data, *o_edges, *o_counts;
    int absolute = 1;
    if (!PyArg_ParseTuple(args, "OOO|p:abs_histogram", &o_data, &o_edges, &o_counts, &absolute)) {
        return NULL;
    }
    Py_buffer data, edges, counts;
    if (get_buffer(o_data, &data, 0, 4, "f", "data") < 0) {
        return NULL;
    }
    if (get_buffer(o_edges, &edges, 0, 4, "f", "edges") < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (get_buffer(o_counts, &counts, 1, 8, "lq", "counts") < 0) {
        PyBuffer_Release(&data);
        PyBuffer_Release(&edges);
        return NULL;
    }
    Py_ssize_t n = N_ITEMS(data), n_edges = N_ITEMS(edges), nb = n_edges - 1;
    if (nb < 1 || N_ITEMS(counts) != nb) {
        PyErr_SetString(PyExc_ValueError, "abs_histogram: need at least 2 edges and len(counts) == len(edges) - 1");
        goto fail;
    }
    const float *x = (const float *)data.buf, *e = (const float *)edges.buf;
    int64_t *h = (int64_t *)counts.buf;
    for (Py_ssize_t i = 1; i < n_edges; i++) {
        if (!(e[i] >= e[i - 1])) {
            PyErr_SetString(PyExc_ValueError, "abs_histogram: edges must be non-decreasing");
            goto fail;
        }
    }
    int64_t *sub = PyMem_RawCalloc((size_t)SUBS * (size_t)(nb + 1), sizeof(int64_t));
    float *pad = PyMem_RawMalloc((size_t)(n_edges + 2) * sizeof(float));
    if (!sub || !pad) {
        PyMem_RawFree(sub);
        PyMem_RawFree(pad);
        PyErr_NoMemory();
        goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    /* pad[j + 1] = e[j], with -inf and +inf sentinels: the corrections below
     * need no bounds checks (whose outcome would be a coin toss on data with
     * many zeros, and a branch mispredicted every other value). */
    pad[0] = -INFINITY;
    memcpy(pad + 1, e, (size_t)n_edges * sizeof(float));
    pad[n_edges + 1] = INFINITY;
    const float lo = e[0], hi = e[nb];
    /* a guess of each value's bin in float32 (vectorizes; off by a bin at
     * most near an edge, or by more on far-from-uniform edges), corrected
     * against the edges themselves */
    const float inv_width = hi > lo ? (float)((double)nb / ((double)hi - (double)lo)) : 0.0f, top = (float)(nb - 1);
    enum { BLOCK = 1024 };
    int32_t guess[BLOCK], keep[BLOCK];
    float val[BLOCK];
    for (Py_ssize_t start = 0; start < n; start += BLOCK) {
        const Py_ssize_t m = n - start < BLOCK ? n - start : BLOCK;
        const float *xb = x + start;
        for (Py_ssize_t i = 0; i < m; i++) {
            const float a = absolute ? fabsf(xb[i]) : xb[i];
            float v = a > lo ? a : lo; /* maxss/minss: NaN becomes lo */
            v = v < hi ? v : hi;
            float f = (v - lo) * inv_width;
            f = f < top ? f : top;
            guess[i] = (int32_t)f + 1;
            keep[i] = -(int32_t)((a >= lo) & (a <= hi)); /* all ones, or 0: outside (or NaN) */
            val[i] = v;
        }
        for (Py_ssize_t i = 0; i < m; i++) {
            Py_ssize_t g = guess[i]; /* index into pad */
            const float v = val[i];
            while (v < pad[g]) {
                g--;
            }
            while (v >= pad[g + 1]) {
                g++;
            }
            g -= 1; /* e[g] <= v < e[g + 1]; g == nb only for v == hi (last bin, inclusive) */
            g = g < nb - 1 ? g : nb - 1;
            /* no branch on outside values (a coin toss on data with many zeros):
             * they go to bin nb, which is dropped */
            sub[(g & keep[i]) | (nb & ~(Py_ssize_t)keep[i])]++;
        }
    }
    for (int k = 0; k < SUBS; k++) {
        for (Py_ssize_t j = 0; j < nb; j++) {
            h[j] += sub[k * (nb + 1) + j];
        }
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(sub);
    PyMem_RawFree(pad);
    PyBuffer_Release(&data);
    PyBuffer_Release(&edges);
    PyBuffer_Release(&counts);
    Py_RETURN_NONE;
fail:
    PyBuffer_Release(&data);
    PyBuffer_Release(&edges);
    PyBuffer_Release(&counts);
    return NULL;
}

/* ------------------------------------------------------------ measurement */

#define BIN_BLOCK 1024
#define WAYS 4
/* rows shorter than this count straight into ch_hist (adding WAYS copies of
 * a row's channel histogram would cost more than it saves) */
#define ROW_COPIES_MIN 1024
/* the int32 copies are added to the int64 totals before they could overflow */
#define SUB_LIMIT ((int64_t)1 << 30)

/* totals += the WAYS copies; the copies are zeroed */
static void
add_copies(int64_t *totals, int32_t *copies, Py_ssize_t n)
{
    for (int k = 0; k < WAYS; k++) {
        for (Py_ssize_t j = 0; j < n; j++) {
            totals[j] += copies[k * n + j];
        }
    }
    memset(copies, 0, (size_t)WAYS * (size_t)n * sizeof(int32_t));
}

PyDoc_STRVAR(bin_values_doc,
"bin_values(x, pre, post, T, hist, ch_hist, cmin, cmax, at_min, at_max)\n\n"
"One pass of ``RangeHistogram.update`` over ``x`` (float32, [pre, C, post]\n"
"C-contiguous, finite, |x| <= T, T > 0): adds each value's fine bin\n"
"``min(floor(x * (bins / 2T)) + bins / 2, bins - 1)`` (exact: a power-of-two scale) to ``hist``\n"
"(int64 [bins]) and its coarse bin ``fine >> log2(bins / channel_bins)`` to its\n"
"channel's row of ``ch_hist`` (int64 [C, channel_bins]); writes to ``at_min`` and\n"
"``at_max`` (int64 [C]) how many values of each channel equal ``cmin``/``cmax``\n"
"(float32 [C], the channel's min and max).");

ISA_CLONES static PyObject *
bin_values(PyObject *self, PyObject *args)
{
    PyObject *o_x, *o_hist, *o_ch, *o_cmin, *o_cmax, *o_amin, *o_amax;
    Py_ssize_t pre, post;
    double T;
    if (!PyArg_ParseTuple(args, "OnndOOOOOO:bin_values", &o_x, &pre, &post, &T, &o_hist, &o_ch, &o_cmin, &o_cmax,
                          &o_amin, &o_amax)) {
        return NULL;
    }
    Py_buffer bx = {0}, bh = {0}, bc = {0}, bmin = {0}, bmax = {0}, bamin = {0}, bamax = {0};
    PyObject *result = NULL;
    if (get_buffer(o_x, &bx, 0, 4, "f", "x") < 0 || get_buffer(o_hist, &bh, 1, 8, "lq", "hist") < 0 ||
        get_buffer(o_ch, &bc, 1, 8, "lq", "ch_hist") < 0 || get_buffer(o_cmin, &bmin, 0, 4, "f", "cmin") < 0 ||
        get_buffer(o_cmax, &bmax, 0, 4, "f", "cmax") < 0 || get_buffer(o_amin, &bamin, 1, 8, "lq", "at_min") < 0 ||
        get_buffer(o_amax, &bamax, 1, 8, "lq", "at_max") < 0) {
        goto done;
    }
    Py_ssize_t C = N_ITEMS(bmin), bins = N_ITEMS(bh);
    Py_ssize_t cbins = C > 0 ? N_ITEMS(bc) / C : 0;
    int shift = 0;
    while (cbins > 0 && (cbins << shift) < bins) {
        shift++;
    }
    if (pre < 0 || post < 0 || C < 1 || pre * C * post != N_ITEMS(bx) || N_ITEMS(bmax) != C ||
        N_ITEMS(bamin) != C || N_ITEMS(bamax) != C || cbins < 1 || cbins * C != N_ITEMS(bc) ||
        (cbins << shift) != bins || bins > (1 << 20) || !(T > 0.0)) {
        PyErr_SetString(PyExc_ValueError, "bin_values: inconsistent shapes or T");
        goto done;
    }
    const float *x = (const float *)bx.buf, *cmin = (const float *)bmin.buf, *cmax = (const float *)bmax.buf;
    int64_t *hist = (int64_t *)bh.buf, *ch = (int64_t *)bc.buf, *at_min = (int64_t *)bamin.buf,
            *at_max = (int64_t *)bamax.buf;
    /* Interleaved int32 copies of the counters: value i of a block goes to copy
     * i % WAYS. On data with long runs of one bin (ReLU zeros) a single counter
     * is a chain of dependent read-modify-writes through memory. The copies of
     * `hist` are added to it at the end (and before any of them could overflow);
     * a row's channel copies at the end of the row, when the row is long enough
     * to pay for that, else the row counts straight into `ch_hist`. */
    int32_t *sub = PyMem_RawCalloc((size_t)WAYS * (size_t)(bins + cbins), sizeof(int32_t));
    if (!sub) {
        PyErr_NoMemory();
        goto done;
    }
    int32_t *csub = sub + (size_t)WAYS * bins;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    int32_t fine[BIN_BLOCK];
    const float scale = (float)((double)bins / (2.0 * T)), half = (float)(bins / 2);
    const int32_t ihalf = (int32_t)(bins / 2), ilast = (int32_t)(bins - 1);
    int64_t pending = 0; /* values in the copies of hist since they were last added */
    memset(at_min, 0, C * sizeof(int64_t));
    memset(at_max, 0, C * sizeof(int64_t));
    for (Py_ssize_t p = 0; p < pre && !bad; p++) {
        for (Py_ssize_t c = 0; c < C; c++) {
            const float *row = x + (p * C + c) * post;
            int64_t *crow = ch + c * cbins;
            const int row_copies = post >= ROW_COPIES_MIN;
            const float lo = cmin[c], hi = cmax[c];
            int64_t n_lo = 0, n_hi = 0;
            /* blocks: bins and extreme counts first (a loop that vectorizes: no
             * branch in it), then the counter increments */
            for (Py_ssize_t start = 0; start < post; start += BIN_BLOCK) {
                const Py_ssize_t m = post - start < BIN_BLOCK ? post - start : BIN_BLOCK;
                const float *xb = row + start;
                int32_t nan_or_out = 0, b_lo = 0, b_hi = 0;
                for (Py_ssize_t i = 0; i < m; i++) {
                    const float v = xb[i];
                    float t = v * scale; /* exact: scale is a power of two (an underflow gives -0, below) */
                    nan_or_out |= (int32_t)!(t >= -half) | (int32_t)!(t <= half); /* |x| <= T */
                    t = t < half ? t : half;
                    t = t > -half ? t : -half; /* keeps the cast defined; such a value fails above */
                    int32_t f = (int32_t)t;
                    f -= (int32_t)(t < (float)f);                 /* truncation to floor */
                    f -= (int32_t)(t == 0.0f) & (int32_t)(v < 0.0f); /* a negative value that underflowed */
                    f += ihalf;
                    fine[i] = f < ilast ? f : ilast;
                    b_lo += v == lo;
                    b_hi += v == hi;
                }
                n_lo += b_lo;
                n_hi += b_hi;
                if (nan_or_out) { /* NaN or |x| > T: the caller broke the contract */
                    bad = 1;
                    break;
                }
                if (pending + m > SUB_LIMIT) {
                    add_copies(hist, sub, bins);
                    pending = 0;
                }
                pending += m;
                Py_ssize_t i = 0;
                if (row_copies) {
                    for (; i + WAYS <= m; i += WAYS) {
                        for (int k = 0; k < WAYS; k++) {
                            sub[k * bins + fine[i + k]]++;
                            csub[k * cbins + (fine[i + k] >> shift)]++;
                        }
                    }
                    for (; i < m; i++) {
                        sub[(i % WAYS) * bins + fine[i]]++;
                        csub[(i % WAYS) * cbins + (fine[i] >> shift)]++;
                    }
                } else {
                    for (; i + WAYS <= m; i += WAYS) {
                        for (int k = 0; k < WAYS; k++) {
                            sub[k * bins + fine[i + k]]++;
                            crow[fine[i + k] >> shift]++;
                        }
                    }
                    for (; i < m; i++) {
                        sub[(i % WAYS) * bins + fine[i]]++;
                        crow[fine[i] >> shift]++;
                    }
                }
            }
            if (bad) {
                break;
            }
            if (row_copies) {
                add_copies(crow, csub, cbins);
            }
            at_min[c] += n_lo;
            at_max[c] += n_hi;
        }
    }
    add_copies(hist, sub, bins);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(sub);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "bin_values: a value is NaN or outside [-T, T]");
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&bx);
    PyBuffer_Release(&bh);
    PyBuffer_Release(&bc);
    PyBuffer_Release(&bmin);
    PyBuffer_Release(&bmax);
    PyBuffer_Release(&bamin);
    PyBuffer_Release(&bamax);
    return result;
}

PyDoc_STRVAR(error_sums_doc,
"error_sums(x, q, scale, zero_point, q_isolated, q_min, q_max, codes)\n"
"    -> (sum_x2, sum_e2, sum_e2_isolated, outside, sum_e2_isolated_clipped)\n\n"
"One pass over ``x`` (float32) and its per-tensor quantized twin ``q`` (uint8\n"
"or int8, same length): ``x_hat = (float32(q) - zero_point) * scale`` in float32\n"
"(as ``metrics.dequantize``), ``e = x - x_hat`` in float32; the squares are summed\n"
"in double, in a fixed order (the result does not depend on the machine).\n"
"``q_isolated`` (or None) is a second twin measured against the same ``x``.\n"
"``outside``: values below ``q_min`` or above ``q_max`` (float32 comparisons), or\n"
"-1 when both are None. ``sum_e2_isolated_clipped``: the part of ``sum_e2_isolated``\n"
"from those values (0 without an isolated twin or limits). ``codes`` (or None): a\n"
"writable uint8 [256] array; ``codes[code - type_min] = 1`` for every code of\n"
"``q_isolated`` (the integer grid's occupancy, type_min 0 for uint8, -128 for int8).");

#define LANES 8

/* the lanes' sum, in a fixed order */
static double
lanes_total(const double *a)
{
    double t = 0.0;
    for (int k = 0; k < LANES; k++) {
        t += a[k];
    }
    return t;
}

ISA_CLONES static PyObject *
error_sums(PyObject *self, PyObject *args)
{
    PyObject *o_x, *o_q, *o_iso, *o_qmin, *o_qmax, *o_codes = Py_None;
    double scale, zp;
    if (!PyArg_ParseTuple(args, "OOddOOO|O:error_sums", &o_x, &o_q, &scale, &zp, &o_iso, &o_qmin, &o_qmax,
                          &o_codes)) {
        return NULL;
    }
    Py_buffer bx = {0}, bq = {0}, bi = {0}, bc = {0};
    PyObject *result = NULL;
    int has_iso = o_iso != Py_None, clip = o_qmin != Py_None && o_qmax != Py_None;
    double qmin_d = 0.0, qmax_d = 0.0;
    if (clip) {
        qmin_d = PyFloat_AsDouble(o_qmin);
        qmax_d = PyFloat_AsDouble(o_qmax);
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    if (get_buffer(o_x, &bx, 0, 4, "f", "x") < 0 || get_buffer(o_q, &bq, 0, 1, "Bb", "q") < 0 ||
        (has_iso && get_buffer(o_iso, &bi, 0, 1, "Bb", "q_isolated") < 0) ||
        (o_codes != Py_None && get_buffer(o_codes, &bc, 1, 1, "B", "codes") < 0)) {
        goto done;
    }
    if (o_codes != Py_None && N_ITEMS(bc) != 256) {
        PyErr_SetString(PyExc_ValueError, "error_sums: codes must hold 256 flags");
        goto done;
    }
    Py_ssize_t n = N_ITEMS(bx);
    const char qf = bq.format ? bq.format[strlen(bq.format) - 1] : 'B';
    if (N_ITEMS(bq) != n || (has_iso && (N_ITEMS(bi) != n || bi.format[strlen(bi.format) - 1] != qf))) {
        PyErr_SetString(PyExc_ValueError, "error_sums: x, q and q_isolated must have the same length and q type");
        goto done;
    }
    /* x_hat of every code, in numpy's float32 order; indexed by the code's byte */
    float lut[256];
    const float s = (float)scale, z = (float)zp;
    for (int b = 0; b < 256; b++) {
        const float code = qf == 'b' ? (float)(int8_t)(uint8_t)b : (float)b;
        lut[b] = (code - z) * s;
    }
    const float *x = (const float *)bx.buf;
    const uint8_t *q = (const uint8_t *)bq.buf, *qi = has_iso ? (const uint8_t *)bi.buf : NULL;
    double sx[LANES] = {0}, se[LANES] = {0}, si[LANES] = {0}, sc[LANES] = {0};
    int64_t outside = 0;
    uint8_t *codes = o_codes != Py_None ? (uint8_t *)bc.buf : NULL;
    /* the flag of a byte: its code minus the type's minimum (int8: the top bit flipped) */
    const uint8_t flip = qf == 'b' ? 0x80 : 0x00;
    Py_BEGIN_ALLOW_THREADS
    const float qmin = (float)qmin_d, qmax = (float)qmax_d;
    /* one pass, in chunks of LANES values: value i goes to lane i % LANES, so
     * each lane is a fixed sequence of double additions whatever the chunking
     * (and the compiler can keep the lanes in vector registers) */
    const Py_ssize_t n_full = n - n % LANES;
    int64_t out_lanes[LANES] = {0};
    for (Py_ssize_t i = 0; i < n_full; i += LANES) {
        for (int k = 0; k < LANES; k++) {
            const float v = x[i + k];
            const float e = v - lut[q[i + k]];
            sx[k] += (double)v * (double)v;
            se[k] += (double)e * (double)e;
        }
        if (qi) {
            for (int k = 0; k < LANES; k++) {
                const float ei = x[i + k] - lut[qi[i + k]];
                si[k] += (double)ei * (double)ei;
            }
        }
        if (clip) {
            for (int k = 0; k < LANES; k++) {
                out_lanes[k] += (x[i + k] < qmin) + (x[i + k] > qmax);
            }
            if (qi) {
                for (int k = 0; k < LANES; k++) {
                    const float ei = x[i + k] - lut[qi[i + k]];
                    const int o = (x[i + k] < qmin) | (x[i + k] > qmax);
                    sc[k] += o ? (double)ei * (double)ei : 0.0;
                }
            }
        }
    }
    for (Py_ssize_t i = n_full; i < n; i++) {
        const int k = (int)(i % LANES);
        const float v = x[i];
        const float e = v - lut[q[i]];
        sx[k] += (double)v * (double)v;
        se[k] += (double)e * (double)e;
        if (qi) {
            const float ei = v - lut[qi[i]];
            si[k] += (double)ei * (double)ei;
        }
        if (clip) {
            out_lanes[k] += (v < qmin) + (v > qmax);
            if (qi && ((v < qmin) | (v > qmax))) {
                const float ei = v - lut[qi[i]];
                sc[k] += (double)ei * (double)ei;
            }
        }
    }
    for (int k = 0; k < LANES; k++) {
        outside += out_lanes[k];
    }
    if (codes && qi) {
        for (Py_ssize_t i = 0; i < n; i++) {
            codes[qi[i] ^ flip] = 1;
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("dddLd", lanes_total(sx), lanes_total(se), lanes_total(si), clip ? (long long)outside : -1LL,
                           lanes_total(sc));
done:
    PyBuffer_Release(&bx);
    PyBuffer_Release(&bq);
    PyBuffer_Release(&bi);
    PyBuffer_Release(&bc);
    return result;
}

/* ------------------------------------------------------------ extremes */

PyDoc_STRVAR(minmax_doc,
"minmax(x, pre, post, cmin, cmax, skip_nan) -> number of NaN\n\n"
"Each channel's min and max of ``x`` (float32, [pre, C, post] C-contiguous)\n"
"in one pass, written to ``cmin`` and ``cmax`` (float32 [C]). With\n"
"``skip_nan`` false a channel holding NaN gets NaN (as ``x.min(axis=(0, 2))``),\n"
"with it NaN values are ignored and an all-NaN channel gets NaN (as\n"
"``np.nanmin``). Returns how many values are NaN. An empty channel gets\n"
"+inf / -inf.");

#define MM_LANES 16

/* Running extremes of one row, in MM_LANES lanes: lo[k], hi[k] start at lo0,
 * hi0; nan[k] counts NaN. `v < lo ? v : lo` keeps lo when v is NaN (as minps
 * does), so NaN is counted apart. GCC does not vectorize a float min/max
 * reduction without -ffinite-math-only, hence the vector types. */
#if defined(__GNUC__)
typedef float mm_vf __attribute__((vector_size(32)));
typedef int32_t mm_vi __attribute__((vector_size(32)));

ISA_CLONES static void
row_extremes(const float *row, Py_ssize_t n, float lo0, float hi0, float *lo, float *hi, int32_t *nan)
{
    mm_vf l0, l1, h0, h1;
    mm_vi n0 = {0}, n1 = {0};
    for (int k = 0; k < 8; k++) {
        l0[k] = l1[k] = lo0;
        h0[k] = h1[k] = hi0;
    }
    Py_ssize_t i = 0;
    for (; i + 16 <= n; i += 16) {
        mm_vf a, b;
        memcpy(&a, row + i, sizeof a);
        memcpy(&b, row + i + 8, sizeof b);
        mm_vi ma = a < l0, mb = b < l1;
        l0 = (mm_vf)(((mm_vi)a & ma) | ((mm_vi)l0 & ~ma));
        l1 = (mm_vf)(((mm_vi)b & mb) | ((mm_vi)l1 & ~mb));
        ma = a > h0;
        mb = b > h1;
        h0 = (mm_vf)(((mm_vi)a & ma) | ((mm_vi)h0 & ~ma));
        h1 = (mm_vf)(((mm_vi)b & mb) | ((mm_vi)h1 & ~mb));
        n0 -= a != a; /* a true comparison is -1 */
        n1 -= b != b;
    }
    for (int k = 0; k < 8; k++) {
        lo[k] = l0[k];
        lo[k + 8] = l1[k];
        hi[k] = h0[k];
        hi[k + 8] = h1[k];
        nan[k] = n0[k];
        nan[k + 8] = n1[k];
    }
    for (; i < n; i++) {
        const float v = row[i];
        lo[0] = v < lo[0] ? v : lo[0];
        hi[0] = v > hi[0] ? v : hi[0];
        nan[0] += v != v;
    }
}
#else
static void
row_extremes(const float *row, Py_ssize_t n, float lo0, float hi0, float *lo, float *hi, int32_t *nan)
{
    for (int k = 0; k < MM_LANES; k++) {
        lo[k] = lo0;
        hi[k] = hi0;
        nan[k] = 0;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const float v = row[i];
        lo[0] = v < lo[0] ? v : lo[0];
        hi[0] = v > hi[0] ? v : hi[0];
        nan[0] += v != v;
    }
}
#endif

static PyObject *
minmax(PyObject *self, PyObject *args)
{
    PyObject *o_x, *o_min, *o_max;
    Py_ssize_t pre, post;
    int skip_nan;
    if (!PyArg_ParseTuple(args, "OnnOOp:minmax", &o_x, &pre, &post, &o_min, &o_max, &skip_nan)) {
        return NULL;
    }
    Py_buffer bx = {0}, bmin = {0}, bmax = {0};
    PyObject *result = NULL;
    if (get_buffer(o_x, &bx, 0, 4, "f", "x") < 0 || get_buffer(o_min, &bmin, 1, 4, "f", "cmin") < 0 ||
        get_buffer(o_max, &bmax, 1, 4, "f", "cmax") < 0) {
        goto done;
    }
    Py_ssize_t C = N_ITEMS(bmin);
    if (pre < 0 || post < 0 || C < 1 || N_ITEMS(bmax) != C || pre * C * post != N_ITEMS(bx)) {
        PyErr_SetString(PyExc_ValueError, "minmax: inconsistent shapes");
        goto done;
    }
    const float *x = (const float *)bx.buf;
    float *cmin = (float *)bmin.buf, *cmax = (float *)bmax.buf;
    int64_t n_nan = 0, *ch_nan = PyMem_RawCalloc((size_t)C, sizeof(int64_t));
    if (!ch_nan) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t c = 0; c < C; c++) {
        cmin[c] = INFINITY;
        cmax[c] = -INFINITY;
    }
    for (Py_ssize_t p = 0; p < pre; p++) {
        if (post < 16) { /* short rows ([N, C] tensors: rows of one value): no lanes */
            const float *block = x + p * C * post;
            for (Py_ssize_t c = 0; c < C; c++) {
                for (Py_ssize_t i = 0; i < post; i++) {
                    const float v = block[c * post + i];
                    cmin[c] = v < cmin[c] ? v : cmin[c];
                    cmax[c] = v > cmax[c] ? v : cmax[c];
                    ch_nan[c] += v != v;
                }
            }
            continue;
        }
        for (Py_ssize_t c = 0; c < C; c++) {
            float lo[MM_LANES], hi[MM_LANES];
            int32_t nan[MM_LANES];
            row_extremes(x + (p * C + c) * post, post, cmin[c], cmax[c], lo, hi, nan);
            for (int k = 0; k < MM_LANES; k++) {
                cmin[c] = lo[k] < cmin[c] ? lo[k] : cmin[c];
                cmax[c] = hi[k] > cmax[c] ? hi[k] : cmax[c];
                ch_nan[c] += nan[k];
            }
        }
    }
    for (Py_ssize_t c = 0; c < C; c++) {
        n_nan += ch_nan[c];
        /* NaN propagates (x.min()); or, skipping NaN, a channel of nothing but NaN (np.nanmin) */
        if (ch_nan[c] && (!skip_nan || ch_nan[c] == pre * post)) {
            cmin[c] = cmax[c] = NAN;
        }
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(ch_nan);
    result = PyLong_FromLongLong((long long)n_nan);
done:
    PyBuffer_Release(&bx);
    PyBuffer_Release(&bmin);
    PyBuffer_Release(&bmax);
    return result;
}

static PyMethodDef methods[] = {
    {"abs_histogram", abs_histogram, METH_VARARGS, abs_histogram_doc},
    {"bin_values", bin_values, METH_VARARGS, bin_values_doc},
    {"error_sums", error_sums, METH_VARARGS, error_sums_doc},
    {"minmax", minmax, METH_VARARGS, minmax_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "qaudit._kernels",
    "Per-value loops of calibration and measurement (optional; numpy twins in qaudit.pipeline.kernels).", -1, methods,
};

PyMODINIT_FUNC
PyInit__kernels(void)
{
    return PyModule_Create(&module);
}
