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
 * PyObject_Call is declared here rather than through Python.h: only opaque pointers
 * pass through, and the symbol is part of the stable ABI.
 */
#include <pthread.h>
#include <unistd.h>

typedef struct _object PyObject;
extern PyObject *PyObject_Call(PyObject *callable, PyObject *args, PyObject *kwargs);

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
