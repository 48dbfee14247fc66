"""``python -m service``: validate the bundle, then serve it with uvicorn until SIGTERM.

A bad bundle exits at once with status 2 and the reason on stderr. On SIGTERM (or Ctrl-C) the
server keeps its socket open while it drains: ``/readyz`` answers 503, new caption requests get
503 ``not_ready``, accepted ones finish (up to ``CAPTION_DRAIN_TIMEOUT_S``); then uvicorn shuts
down and the process exits 0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from types import FrameType

import uvicorn
from pydantic import ValidationError

from service.app import create_app
from service.captioner import load_model
from service.logs import configure_logging
from service.manifest import BundleError
from service.model import ProviderUnavailable
from service.settings import Settings
from service.state import ServiceState
from service.urlfetch import FetchPolicy

log = logging.getLogger("service")


class DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM/SIGINT drains the service before shutting down."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._loop is None:
            self.force_exit = self._draining
            self.should_exit = True
            return
        self._draining = True
        log.info("signal %s: draining before shutdown", signal.Signals(sig).name)
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        app = self.config.loaded_app
        state: ServiceState | None = None
        while app is not None and state is None:
            state = getattr(getattr(app, "state", None), "service", None)
            app = getattr(app, "app", None)
        if state is None:
            self.should_exit = True
            return
        task = state.begin_drain()
        task.add_done_callback(lambda _: setattr(self, "should_exit", True))


def main() -> int:
    try:
        settings = Settings()
        FetchPolicy.from_settings(settings)  # a bad CAPTION_URL_ALLOWLIST entry stops here
    except (ValidationError, ValueError) as exc:
        print(f"captioner: invalid CAPTION_* settings: {exc}", file=sys.stderr)
        return 2

    configure_logging(settings.log_level, json_lines=settings.log_json)
    try:
        model = load_model(settings)
    except (BundleError, ProviderUnavailable) as exc:
        print(f"captioner: cannot serve bundle {settings.bundle_dir}: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings, model=model)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_timeout_s) + 5,
        log_level=settings.log_level,
    )
    DrainingServer(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
