"""A background thread whose failure is re-raised by ``join()`` (shared by Tailer and Replicator)."""

from __future__ import annotations

import logging
import threading
from typing import Callable, Optional

log = logging.getLogger("mmm")


class BackgroundThread:
    def __init__(self) -> None:
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, target: Callable[[], None], name: str, what: str) -> None:
        if self.alive:
            raise RuntimeError(f"the {what} is already running")
        self._error = None

        def run() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 - handed to join()
                self._error = exc
                log.error("%s stopped: %s", what, exc)

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def join(self, timeout: Optional[float] = None) -> None:
        """Waits for the thread; re-raises the exception that stopped it, if any."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self._error is not None:
            error, self._error = self._error, None
            raise error
