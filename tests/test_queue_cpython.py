"""CPython's own tests of ``queue.Queue`` run against ``WorkQueue``: the bounded FIFO
queue's part of ``Lib/test/test_queue.py`` (3.13.0, shutdown included), vendored in
``tests/cpython/test_queue.py`` (PSF License Agreement; its header lists the changes).

The tests catch the standard library's exceptions, as code written for ``queue.Queue``
does: ``queue.Full``, ``queue.Empty`` and ``queue.ShutDown`` (``ferrule.QueueClosed``
before 3.13, where ``queue`` has none to catch).

What runs: every test of ``BaseQueueTestMixin`` against ``WorkQueue(maxsize)``, where
``type2test()`` without an argument is ``WorkQueue(0)`` (``queue.Queue()``'s default;
``WorkQueue`` asks for the bound explicitly).

Excluded, and why (each is skipped with its reason, so it shows in the summary):

- ``test_shrinking_queue`` assigns ``q.maxsize``: a ``WorkQueue``'s bound is fixed when it
  is made (``maxsize`` is read-only).
- ``test_shutdown_allowed_transitions`` reads ``q.is_shutdown``, an undocumented attribute
  of ``queue.Queue``; ``WorkQueue``'s is ``closed``.
  ``test_queue.py::test_shutdown_transitions`` makes the same transitions.
- Out of scope: the ``LifoQueue``, ``PriorityQueue`` and ``SimpleQueue`` tests (other
  classes), and ``FailingQueueTest``, which subclasses ``Queue`` to make its ``_put`` and
  ``_get`` hooks raise: ``WorkQueue`` is final and has no such hooks.
"""

from __future__ import annotations

import queue
import types
import unittest

import ferrule

from tests.cpython.test_queue import BaseQueueTestMixin

STDLIB_QUEUE = types.SimpleNamespace(
    Full=queue.Full,
    Empty=queue.Empty,
    ShutDown=getattr(queue, "ShutDown", ferrule.QueueClosed),
)


def work_queue(maxsize: int = 0) -> ferrule.WorkQueue[object]:
    return ferrule.WorkQueue(maxsize)


class WorkQueueCPythonTest(BaseQueueTestMixin, unittest.TestCase):
    queue = STDLIB_QUEUE

    def setUp(self) -> None:
        self.type2test = work_queue
        super().setUp()

    @unittest.skip("a WorkQueue's maxsize is fixed when it is made")
    def test_shrinking_queue(self) -> None:
        pass

    @unittest.skip("queue.Queue.is_shutdown is WorkQueue.closed")
    def test_shutdown_allowed_transitions(self) -> None:
        pass


def test_queue_closed_is_the_shutdown_exception_where_there_is_one() -> None:
    if hasattr(queue, "ShutDown"):
        assert issubclass(ferrule.QueueClosed, queue.ShutDown)
    q: ferrule.WorkQueue[int] = ferrule.WorkQueue(1)
    q.shutdown()
    try:
        q.put(1)
    except STDLIB_QUEUE.ShutDown as e:
        assert type(e) is ferrule.QueueClosed
    else:
        raise AssertionError("put after shutdown() did not raise")
