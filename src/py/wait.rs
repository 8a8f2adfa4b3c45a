//! The one place where ferrule lets go of the interpreter and takes it back.
//!
//! Every wait (a full or empty queue, a single-flight follower, a limiter, budget or pool
//! waiting for room) and every long bulk operation runs detached through [`detach`]; a
//! detached wait that must run Python for a moment (the signal check between slices, an
//! asyncio wake-up) does so through [`reattach`], and code that may run attached or not
//! (a `std::task::Waker`'s `wake`) through [`attach`]. Nothing else in the crate calls PyO3's
//! `Python::detach`/`Python::attach` (clippy's `disallowed-methods` enforces it).
//!
//! # Exit safety
//! While the interpreter finalizes, CPython 3.10-3.13 ends any other thread that tries to
//! attach with `PyThread_exit_thread`, a forced unwind. Through Rust frames that unwind
//! aborts the process ("FATAL: exception not rethrown"). A daemon thread waiting inside
//! ferrule at exit would hit exactly that when its wait ends. So a *gate* stands before
//! every re-attachment made here:
//!
//! - An `atexit` hook ([`_close_gate`], registered when the module is imported) closes the
//!   gate. `atexit` runs after non-daemon threads were joined and before the interpreter
//!   starts finalizing, on the thread that will finalize it.
//! - A thread that finds the gate closed (or the interpreter already finalizing) parks
//!   forever instead of attaching: the process is about to end, and a parked daemon thread
//!   is what CPython 3.14 makes of its own daemon threads. The finalizing thread itself is
//!   never parked: it may still detach and re-attach (a `__del__` that waits, say).
//! - A race remains between "the gate is open" and "attached": a thread can pass the gate
//!   and then wait for the GIL while the hook runs. The hook closes that window: each
//!   thread counts itself in `PASSING` before looking at the gate and out once attached,
//!   and the hook, having closed the gate, waits with the interpreter released until the
//!   count drops to zero. After it returns, no thread of ours is between gate and
//!   interpreter, and none will enter.
//!
//! Orderings: `PASSING` and `CLOSED` use `SeqCst`. The argument is Dekker's: a thread
//! increments `PASSING` then reads `CLOSED`; the hook stores `CLOSED` then reads
//! `PASSING`. In the single total order either the thread sees the gate closed, or the
//! hook sees the thread counted and waits for it.
//!
//! # A crash at exit that no extension can prevent (CPython 3.10)
//! CPython 3.10 can crash (SIGSEGV) by itself at exit, with or without ferrule. A daemon
//! thread waiting for the GIL that timed out once before finalization began has asked the
//! holder to drop it. If its next timeout comes after `Py_FinalizeEx` freed the main
//! interpreter while the process is still exiting (in OpenSSL's exit-time cleanup, for
//! one: `asyncio` imports `ssl`), `take_gil` withdraws that request through the freed
//! `PyInterpreterState`. This is `RESET_GIL_DROP_REQUEST(interp)` before
//! `PyThread_exit_thread`, which the 3.10 backport of gh-96387 added. The waiter can be
//! anywhere: at a switch interval in plain Python code, or `time.sleep` returning. No
//! ferrule frame is involved, and no extension code runs then. A pure-Python program whose
//! daemon threads compete for the GIL at exit crashes the same way. From 3.11 the main
//! interpreter is allocated statically, so that late write lands in live memory.
//!
//! # Calls into Python
//! Python code that ferrule calls (a factory, a protected function, a handler, a waker)
//! can itself detach and re-attach (a sleep, I/O, a lock). If the interpreter finalizes
//! meanwhile, CPython ends the thread with a forced unwind from inside that code, through
//! ferrule's frames. [`call`] runs such code under a POSIX cleanup handler
//! (`src/c/exit_guard.c`) that parks the thread instead, before the unwind reaches a Rust
//! frame. Every call of user-supplied code goes through it.
//!
//! # Slices
//! Detached waits are cut into slices of at most [`SLICE`], between which the caller runs
//! [`check_signals`], so Ctrl-C raises `KeyboardInterrupt` promptly (well under 0.2 s).

use std::os::raw::{c_int, c_ulong};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::BoundObject;

pub use crate::core::wait::SLICE;

static CLOSED: AtomicBool = AtomicBool::new(false);
static PASSING: AtomicUsize = AtomicUsize::new(0);
/// Thread ident (`threading.get_ident()`) of the thread that finalizes: the one that ran
/// the hook, else the main thread. 0 until known.
static FINALIZER: AtomicU64 = AtomicU64::new(0);

extern "C" {
    /// `threading.get_ident()`: safe to call without the interpreter.
    fn PyThread_get_thread_ident() -> c_ulong;
}

#[cfg(unix)]
extern "C" {
    /// `PyObject_Call` under a cleanup handler that parks the thread if the interpreter
    /// ends it during the call (src/c/exit_guard.c).
    fn ferrule_call_parking_at_exit(
        callable: *mut pyo3::ffi::PyObject,
        args: *mut pyo3::ffi::PyObject,
        kwargs: *mut pyo3::ffi::PyObject,
    ) -> *mut pyo3::ffi::PyObject;
    /// `bool(PyObject_RichCompare(a, b, op))` under the same handler.
    fn ferrule_compare_parking_at_exit(
        a: *mut pyo3::ffi::PyObject,
        b: *mut pyo3::ffi::PyObject,
        op: c_int,
    ) -> c_int;
    /// `PySequence_Contains(container, item)` under the same handler.
    fn ferrule_contains_parking_at_exit(
        container: *mut pyo3::ffi::PyObject,
        item: *mut pyo3::ffi::PyObject,
    ) -> c_int;
    /// `PyObject_Hash(o)` under the same handler.
    fn ferrule_hash_parking_at_exit(o: *mut pyo3::ffi::PyObject) -> pyo3::ffi::Py_hash_t;
}

#[cfg(not(Py_3_13))]
extern "C" {
    /// Public as `Py_IsFinalizing` from 3.13; exported under this name before.
    fn _Py_IsFinalizing() -> c_int;
}

fn interpreter_finalizing() -> bool {
    // SAFETY: both read one word of the runtime state; documented as callable without an
    // attached thread state.
    #[cfg(Py_3_13)]
    let f = unsafe { pyo3::ffi::Py_IsFinalizing() };
    #[cfg(not(Py_3_13))]
    let f = unsafe { _Py_IsFinalizing() };
    f != 0
}

fn current_ident() -> u64 {
    // SAFETY: `PyThread_get_thread_ident` is `pthread_self()`; no interpreter state.
    #[allow(clippy::useless_conversion)] // c_ulong is u32 on some targets
    u64::from(unsafe { PyThread_get_thread_ident() })
}

/// True when the calling thread must not attach again: the interpreter is exiting and
/// this is not the thread that finalizes it.
fn exiting() -> bool {
    (CLOSED.load(SeqCst) || interpreter_finalizing()) && FINALIZER.load(SeqCst) != current_ident()
}

fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}

/// Proof that the calling thread went through the open gate; dropped once attached.
#[must_use]
struct Pass(());

impl Drop for Pass {
    fn drop(&mut self) {
        PASSING.fetch_sub(1, SeqCst);
    }
}

/// Passes the gate, or parks forever if the interpreter is exiting.
fn pass_gate() -> Pass {
    PASSING.fetch_add(1, SeqCst);
    if exiting() {
        PASSING.fetch_sub(1, SeqCst);
        park_forever();
    }
    Pass(())
}

/// Runs `f` detached from the interpreter (the GIL released on GIL builds) and returns
/// attached. If the interpreter begins to exit meanwhile, the call never returns: the
/// thread parks (see the module documentation).
pub fn detach<T, F>(py: Python<'_>, f: F) -> T
where
    F: Send + FnOnce() -> T,
    T: Send,
{
    #[allow(clippy::disallowed_methods)] // this is the exit-safe wrapper
    let (value, pass) = py.detach(|| {
        let value = f();
        (value, pass_gate())
    });
    drop(pass);
    value
}

/// Runs `f` attached, from inside a [`detach`] closure (never from attached code: a
/// thread that holds the interpreter must not park). Parks forever instead if the
/// interpreter is exiting.
pub fn reattach<R>(f: impl FnOnce(Python<'_>) -> R) -> R {
    let pass = pass_gate();
    #[allow(clippy::disallowed_methods)] // this is the exit-safe wrapper
    Python::attach(|py| {
        drop(pass);
        f(py)
    })
}

/// Runs `f` attached, from code that cannot know whether its thread is attached: a
/// `std::task::Waker`'s `wake`, run by whichever thread ends what the waker waits for. An
/// attached thread runs `f` at once (it must not park: it may hold the interpreter the
/// exit waits for); any other thread attaches through the gate, as [`reattach`].
pub fn attach<R>(f: impl FnOnce(Python<'_>) -> R) -> R {
    // SAFETY: reads the calling thread's own state; callable without the interpreter.
    if unsafe { pyo3::ffi::PyGILState_Check() } == 1 {
        #[allow(clippy::disallowed_methods)] // already attached: nothing to guard
        return Python::attach(f);
    }
    reattach(f)
}

/// The check between the slices of a detached wait: re-attaches (through the gate) and
/// runs the signal handlers, so Ctrl-C raises `KeyboardInterrupt` in the waiting thread.
pub fn check_signals() -> PyResult<()> {
    #[allow(clippy::redundant_closure_for_method_calls)] // the method is not lifetime-generic
    reattach(|py| py.check_signals())
}

/// `f(*args, **kwargs)` for code ferrule does not control (see the module documentation).
pub fn call<'py, A>(
    f: &Bound<'py, PyAny>,
    args: A,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>>
where
    A: IntoPyObject<'py, Target = PyTuple>,
{
    let py = f.py();
    let args = args.into_pyobject(py).map_err(Into::into)?.into_bound();
    #[cfg(unix)]
    {
        let kwargs = kwargs.map_or(std::ptr::null_mut(), Bound::as_ptr);
        // SAFETY: the pointers are live for the call (borrowed from bound objects); the
        // C function returns a new reference or NULL with an exception set, as
        // PyObject_Call does.
        unsafe {
            let r = ferrule_call_parking_at_exit(f.as_ptr(), args.as_ptr(), kwargs);
            Bound::from_owned_ptr_or_err(py, r)
        }
    }
    #[cfg(not(unix))]
    {
        f.call(args, kwargs)
    }
}

/// Reports an exception raised by code that runs *beside* an operation — a callback
/// (`on_state_change`), a bus's `publish`, an item's `close()`, a wake-up hook, an owner's
/// `is_alive()` — to `sys.unraisablehook`, so that it never leaves the operation half
/// done. This is Python's own rule for weakref callbacks and `__del__`, and it holds for
/// every exception, `KeyboardInterrupt` and `SystemExit` included. Code that is part of
/// the operation (a factory, the protected function, a key's `__eq__`) raises instead.
pub fn report(py: Python<'_>, e: PyErr, obj: Option<&Bound<'_, PyAny>>) {
    e.write_unraisable(py, obj);
}

/// `a == b` (`a.__eq__(b)` first, as a dict compares a stored key with a probe) for a
/// hash table: user code, run under the same exit guard as [`call`].
pub fn eq(a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<bool> {
    compare(a, b, pyo3::basic::CompareOp::Eq)
}

/// `bool(a <op> b)`, Python's rich comparison, under the same exit guard as [`call`].
pub fn compare(
    a: &Bound<'_, PyAny>,
    b: &Bound<'_, PyAny>,
    op: pyo3::basic::CompareOp,
) -> PyResult<bool> {
    #[cfg(unix)]
    {
        // SAFETY: both pointers are live for the call; the C function returns 1, 0, or
        // -1 with an exception set.
        match unsafe { ferrule_compare_parking_at_exit(a.as_ptr(), b.as_ptr(), op as c_int) } {
            -1 => Err(PyErr::fetch(a.py())),
            r => Ok(r == 1),
        }
    }
    #[cfg(not(unix))]
    {
        a.rich_compare(b, op)?.is_truthy()
    }
}

/// `item in container`, under the same exit guard as [`call`].
pub fn contains(container: &Bound<'_, PyAny>, item: &Bound<'_, PyAny>) -> PyResult<bool> {
    #[cfg(unix)]
    {
        // SAFETY: both pointers are live for the call; the C function returns what
        // PySequence_Contains does (-1 with an exception set).
        match unsafe { ferrule_contains_parking_at_exit(container.as_ptr(), item.as_ptr()) } {
            -1 => Err(PyErr::fetch(container.py())),
            r => Ok(r == 1),
        }
    }
    #[cfg(not(unix))]
    {
        container.contains(item)
    }
}

/// `hash(o)` for a hash table: user code (`__hash__`), run under the same exit guard as
/// [`call`].
pub fn hash(o: &Bound<'_, PyAny>) -> PyResult<isize> {
    #[cfg(unix)]
    {
        // SAFETY: the pointer is live for the call; the C function returns what
        // PyObject_Hash does (-1 with an exception set).
        match unsafe { ferrule_hash_parking_at_exit(o.as_ptr()) } {
            -1 => Err(PyErr::fetch(o.py())),
            h => Ok(h),
        }
    }
    #[cfg(not(unix))]
    {
        o.hash()
    }
}

/// `f()` through [`call`].
pub fn call0<'py>(f: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    call(f, (), None)
}

/// `f(*args)` through [`call`].
pub fn call1<'py, A>(f: &Bound<'py, PyAny>, args: A) -> PyResult<Bound<'py, PyAny>>
where
    A: IntoPyObject<'py, Target = PyTuple>,
{
    call(f, args, None)
}

/// The `atexit` hook: closes the gate, then waits (detached) until no thread is between
/// gate and interpreter. Registered by [`register`]; idempotent.
#[pyfunction]
pub fn _close_gate(py: Python<'_>) {
    FINALIZER.store(current_ident(), SeqCst);
    CLOSED.store(true, SeqCst);
    // Bounded: a thread counted in PASSING attaches as soon as the interpreter is free,
    // which it is while this waits. The bound only guards against the unforeseen.
    let give_up = Instant::now() + Duration::from_secs(2);
    #[allow(clippy::disallowed_methods)] // the finalizing thread is never parked
    py.detach(|| {
        while PASSING.load(SeqCst) != 0 && Instant::now() < give_up {
            std::thread::sleep(Duration::from_micros(200));
        }
    });
}

/// Registers [`_close_gate`] with `atexit` and records the main thread as the finalizer
/// until the hook names the real one.
pub fn register(m: &Bound<'_, pyo3::types::PyModule>) -> PyResult<()> {
    let py = m.py();
    let main = py
        .import("threading")?
        .call_method0("main_thread")?
        .getattr("ident")?;
    if let Ok(ident) = main.extract::<u64>() {
        let _ = FINALIZER.compare_exchange(0, ident, SeqCst, SeqCst);
    }
    let hook = m.getattr("_close_gate")?;
    py.import("atexit")?.call_method1("register", (hook,))?;
    Ok(())
}
