/*
 * Gauss-Seidel auction for the capacitated assignment of tetris_tvm.assignment.
 *
 * n indices bid for G groups; group g has cap[g] slots (a row of `price`, padded with +inf
 * up to capmax). Epsilon-scaled: each phase first releases the indices whose slot is no longer
 * within eps of their best choice, then lets every unassigned index bid, one at a time, until
 * all hold a slot. Same algorithm as the vectorised numpy version, O(G + capmax) per bid.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    const double *cost;
    int64_t n, G, capmax;
    double *price;      /* G x capmax */
    int64_t *holder;    /* G x capmax, -1 = empty */
    int64_t *owner;     /* n, group or -1 */
    int64_t *slot;      /* n, slot or -1 */
    double *m1, *m2;    /* cheapest / second cheapest slot price per group */
} state_t;

static void refresh_group(state_t *s, int64_t g) {
    const double *row = s->price + g * s->capmax;
    double a = INFINITY, b = INFINITY;
    for (int64_t j = 0; j < s->capmax; ++j) {
        double p = row[j];
        if (p < a) { b = a; a = p; } else if (p < b) { b = p; }
    }
    s->m1[g] = a;
    s->m2[g] = b;
}

/* Let index r bid once; returns the index it evicted (or -1). */
static int64_t bid(state_t *s, int64_t r, double eps) {
    const double *c = s->cost + r * s->G;
    int64_t best = 0;
    double v1 = -INFINITY, v2 = -INFINITY;
    for (int64_t g = 0; g < s->G; ++g) {
        double v = c[g] - s->m1[g];
        if (v > v1) { v2 = v1; v1 = v; best = g; } else if (v > v2) { v2 = v; }
    }
    double top = c[best];
    double same = top - s->m2[best];
    double second = v2 > same ? v2 : same;
    if (!isfinite(second)) second = top - s->m1[best] - eps;
    double *row = s->price + best * s->capmax;
    int64_t j = 0;
    for (int64_t k = 1; k < s->capmax; ++k) if (row[k] < row[j]) j = k;
    int64_t *h = s->holder + best * s->capmax + j;
    int64_t prev = *h;
    if (prev >= 0) { s->owner[prev] = -1; s->slot[prev] = -1; }
    *h = r;
    row[j] = top - second + eps;
    s->owner[r] = best;
    s->slot[r] = j;
    refresh_group(s, best);
    return prev;
}

static PyObject *run_auction(PyObject *self, PyObject *args) {
    Py_buffer cost_b, price_b, owner_b;
    long long n, G, capmax, max_bids;
    double eps, eps_final, factor;
    if (!PyArg_ParseTuple(args, "y*LLLw*w*dddL", &cost_b, &n, &G, &capmax, &price_b, &owner_b,
                          &eps, &eps_final, &factor, &max_bids))
        return NULL;
    PyObject *result = NULL;
    state_t s;
    s.cost = (const double *)cost_b.buf;
    s.n = n; s.G = G; s.capmax = capmax;
    s.price = (double *)price_b.buf;
    s.owner = (int64_t *)owner_b.buf;
    s.holder = malloc(sizeof(int64_t) * G * capmax);
    s.slot = malloc(sizeof(int64_t) * n);
    s.m1 = malloc(sizeof(double) * G);
    s.m2 = malloc(sizeof(double) * G);
    int64_t *queue = malloc(sizeof(int64_t) * (n + 1));
    if (!s.holder || !s.slot || !s.m1 || !s.m2 || !queue) { PyErr_NoMemory(); goto done; }
    if (cost_b.len < (Py_ssize_t)(sizeof(double) * n * G) ||
        price_b.len < (Py_ssize_t)(sizeof(double) * G * capmax) ||
        owner_b.len < (Py_ssize_t)(sizeof(int64_t) * n)) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match n, G, capmax");
        goto done;
    }
    for (int64_t i = 0; i < G * capmax; ++i) s.holder[i] = -1;
    /* seat the given assignment (owner[r] >= 0) in slot order */
    {
        int64_t *fill = calloc(G, sizeof(int64_t));
        if (!fill) { PyErr_NoMemory(); goto done; }
        for (int64_t r = 0; r < n; ++r) {
            int64_t g = s.owner[r];
            s.slot[r] = -1;
            if (g < 0) continue;
            if (g >= G || fill[g] >= capmax || !isfinite(s.price[g * capmax + fill[g]])) {
                s.owner[r] = -1;
                continue;
            }
            s.holder[g * capmax + fill[g]] = r;
            s.slot[r] = fill[g]++;
        }
        free(fill);
    }
    for (int64_t g = 0; g < G; ++g) refresh_group(&s, g);

    long long bids = 0;
    int converged = 1;
    for (;;) {
        /* release the indices that violate eps-complementary slackness */
        int64_t qn = 0;
        for (int64_t r = 0; r < n; ++r) {
            int64_t g = s.owner[r];
            if (g >= 0) {
                const double *c = s.cost + r * G;
                double best = -INFINITY;
                for (int64_t h = 0; h < G; ++h) {
                    double v = c[h] - s.m1[h];
                    if (v > best) best = v;
                }
                double mine = c[g] - s.price[g * capmax + s.slot[r]];
                if (mine >= best - eps) continue;
                s.holder[g * capmax + s.slot[r]] = -1;
                s.owner[r] = -1;
                s.slot[r] = -1;
            }
            queue[qn++] = r;
        }
        /* bid until everyone holds a slot: the evicted go back on the stack */
        while (qn > 0) {
            if (bids++ >= max_bids) { converged = 0; break; }
            int64_t r = queue[--qn];
            int64_t prev = bid(&s, r, eps);
            if (prev >= 0) queue[qn++] = prev;
        }
        if (!converged || eps <= eps_final) break;
        eps = eps / factor;
        if (eps < eps_final) eps = eps_final;
    }
    if (!converged) {
        PyErr_Format(PyExc_RuntimeError, "auction did not converge within %lld bids", max_bids);
        goto done;
    }
    result = PyLong_FromLongLong(bids);
done:
    free(s.holder); free(s.slot); free(s.m1); free(s.m2); free(queue);
    PyBuffer_Release(&cost_b);
    PyBuffer_Release(&price_b);
    PyBuffer_Release(&owner_b);
    return result;
}

static PyMethodDef methods[] = {
    {"run_auction", run_auction, METH_VARARGS,
     "run_auction(cost, n, G, capmax, price, owner, eps, eps_final, factor, max_bids) -> bids\n"
     "Epsilon-scaled Gauss-Seidel auction; price (G*capmax doubles) and owner (n int64, -1 ="
     " unassigned) are updated in place."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_auction",
                                    "Gauss-Seidel auction (C)", -1, methods};

PyMODINIT_FUNC PyInit__auction(void) { return PyModule_Create(&module); }
