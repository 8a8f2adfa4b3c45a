/* Calls into Python that park the thread, instead of unwinding it, if the interpreter
 * ends the thread while it runs.
 *
 * While CPython 3.10-3.13 finalizes, a daemon thread that re-attaches to the interpreter
 * (after a sleep, I/O, a lock wait) is ended with pthread_exit(), a forced unwind of its
 * stack. Through Rust frames (ferrule's method that called the Python code, PyO3's
 * trampoline) that unwind aborts the process. A POSIX cleanup handler pushed around the
 * call is run by that unwind before it reaches any frame below this one; the handler
 * never returns, so the thread parks for the rest of the process's life, as CPython 3.14
 * does with such threads, and no Rust frame is unwound.
 *
 * The same guard serves a key's __eq__ and __hash__ (user code a hash table runs) and
 * the comparisons a registry `where` falls back to.
 *
 * The CPython functions used are declared here rather than through Python.h: only opaque
 * pointers and integers pass through, and the symbols are part of the stable ABI.
 */
#include <pthread.h>
#include <sys/types.h>
#include <unistd.h>

typedef struct _object PyObject;
extern PyObject *PyObject_Call(PyObject *callable, PyObject *args, PyObject *kwargs);
extern PyObject *PyObject_RichCompare(PyObject *a, PyObject *b, int op);
extern int PyObject_IsTrue(PyObject *o);
extern void Py_DecRef(PyObject *o);
extern int PySequence_Contains(PyObject *container, PyObject *item);
extern ssize_t PyObject_Hash(PyObject *o); /* Py_hash_t is Py_ssize_t */

static void park_forever(void *unused)
{
    (void)unused;
    for (;;)
        pause();
}

PyObject *ferrule_call_parking_at_exit(PyObject *callable, PyObject *args, PyObject *kwargs)
{
    PyObject *volatile result = 0;
    pthread_cleanup_push(park_forever, 0);
    result = PyObject_Call(callable, args, kwargs);
    pthread_cleanup_pop(0);
    return result;
}

/* bool(a <op> b) as the operator computes it (no identity shortcut, unlike
 * PyObject_RichCompareBool): 1, 0, or -1 with an exception set. */
int ferrule_compare_parking_at_exit(PyObject *a, PyObject *b, int op)
{
    volatile int result = -1;
    pthread_cleanup_push(park_forever, 0);
    PyObject *r = PyObject_RichCompare(a, b, op);
    if (r) {
        result = PyObject_IsTrue(r);
        Py_DecRef(r);
    }
    pthread_cleanup_pop(0);
    return result;
}

/* PySequence_Contains(container, item): 1, 0, or -1 with an exception set. */
int ferrule_contains_parking_at_exit(PyObject *container, PyObject *item)
{
    volatile int result = -1;
    pthread_cleanup_push(park_forever, 0);
    result = PySequence_Contains(container, item);
    pthread_cleanup_pop(0);
    return result;
}

/* PyObject_Hash(o): the hash, or -1 with an exception set. */
ssize_t ferrule_hash_parking_at_exit(PyObject *o)
{
    volatile ssize_t result = -1;
    pthread_cleanup_push(park_forever, 0);
    result = PyObject_Hash(o);
    pthread_cleanup_pop(0);
    return result;
}
