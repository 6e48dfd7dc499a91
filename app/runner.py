"""Running one generation in a worker thread: streamed progress, Stop, and failures as messages.

``Runner.run(call, session)`` starts ``call(on_progress, stop_event)`` in a thread and yields its progress every
``STREAM_INTERVAL_S`` (the newest update, or the last fraction with no partial result), then its result. Stop
(``Runner.stop`` for a browser session, or a client that cancels or goes away) sets the run's stop event; the
pipeline stops between tokens and returns what it has. A failure comes back as ``RunFailed`` whose message a
visitor can act on; only unexpected failures are logged with their traceback.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from typing import Any, Callable, Iterator

from app.catalogue import _is_oom

log = logging.getLogger("perceiverar.app")

STREAM_INTERVAL_S = 0.25  # at most ~4 UI updates a second: enough to watch, cheap to send
OOM_MESSAGE = (
    "Out of memory: this request needs more memory than the server has free. Try fewer samples, a smaller image "
    "or shorter audio, fewer latents, or a shorter prompt."
)


class RunFailed(Exception):
    """A generation that failed; ``str()`` is the message for the visitor."""


def explain(exc: BaseException, *, stopped: bool = False) -> RunFailed:
    """A library exception as a message a visitor can act on (the traceback only for unexpected ones)."""
    if isinstance(exc, RunFailed):
        return exc
    if _is_oom(exc):
        log.warning("out of memory during generation: %s", exc)
        return RunFailed(OOM_MESSAGE)
    if stopped:
        return RunFailed("Generation was stopped.")
    if isinstance(exc, ValueError):  # the library's input errors (TokenizerError is a ValueError)
        log.info("request refused by the pipeline: %s", exc)
        return RunFailed(f"Invalid request: {exc}")
    log.error("generation failed", exc_info=exc)
    return RunFailed(f"Generation failed ({type(exc).__name__}: {exc}). The app is still running; try again.")


class Runner:
    """Worker threads for generations, and the stop events of each browser session's running generations."""

    def __init__(self):
        self._active: dict[str, set[threading.Event]] = defaultdict(set)
        self._guard = threading.Lock()

    @property
    def running(self) -> int:
        with self._guard:
            return sum(len(s) for s in self._active.values())

    def stop(self, session: str | None, *, wait: float = 0.0) -> bool:
        """Stop every generation of this session; wait up to ``wait`` s. True when none is left running."""
        key = session or ""
        with self._guard:
            for ev in self._active.get(key, ()):
                ev.set()
        deadline = time.monotonic() + wait
        while True:
            with self._guard:
                if not self._active.get(key):
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _register(self, session: str | None) -> threading.Event:
        ev = threading.Event()
        with self._guard:
            self._active[session or ""].add(ev)
        return ev

    def _unregister(self, session: str | None, ev: threading.Event) -> None:
        with self._guard:
            s = self._active.get(session or "")
            if s is not None:
                s.discard(ev)
                if not s:
                    self._active.pop(session or "", None)

    def run(self, call: Callable[..., Any], session: str | None = None) -> Iterator[tuple[str, Any]]:
        """Yields ("progress", (fraction, partial)) now and then, then ("done", (result, stopped)).

        Raises RunFailed. Closing the iterator (Stop, a disconnect) sets the stop event.
        """
        stop = self._register(session)
        updates: queue.Queue = queue.Queue()
        outcome: dict[str, Any] = {}

        def on_progress(fraction, partial=None):
            updates.put((float(fraction), partial))

        def work():
            try:
                outcome["result"] = call(on_progress, stop)
            except BaseException as e:  # noqa: BLE001 - handed to the request thread
                outcome["error"] = e
            finally:
                updates.put(None)

        worker = threading.Thread(target=work, name="perceiverar-generate", daemon=True)
        worker.start()
        try:
            last_sent, latest, fraction, finished = time.monotonic(), None, 0.0, False
            while not finished:
                try:
                    item = updates.get(timeout=STREAM_INTERVAL_S)
                except queue.Empty:
                    item = False
                while item not in (False, None):  # keep only the newest update
                    latest = item
                    try:
                        item = updates.get_nowait()
                    except queue.Empty:
                        item = False
                finished = item is None
                now = time.monotonic()
                if not finished and now - last_sent >= STREAM_INTERVAL_S:
                    # Without news (a long prompt's prefill, a slow step) the last fraction and no partial result:
                    # the status clock keeps ticking, and a caller who closes this iterator (a client's cancel
                    # waits for it) is never kept waiting longer than one interval.
                    if latest is not None:
                        fraction = latest[0]
                    yield "progress", latest or (fraction, None)
                    latest, last_sent = None, now
            worker.join()
            if "error" in outcome:
                raise explain(outcome["error"], stopped=stop.is_set())
            yield "done", (outcome.get("result"), stop.is_set())
        finally:
            stop.set()  # no-op when finished; stops the worker when the client went away or pressed Stop
            self._unregister(session, stop)
