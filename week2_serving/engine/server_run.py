"""Running uvicorn until the server is stopped or its engine dies (server.py's last step).

Either bridge (async_engine.AsyncEngine, the engine in a thread; core_client.CoreClient, the
engine in a process of its own) calls `on_death` when its engine dies; this turns that into the
server's exit with status 1, after the requests in flight got their error.
"""

from __future__ import annotations


def run_until_engine_dies(app, host: str, port: int) -> None:
    """uvicorn until stopped (exit 0) or until the engine loop dies (exit 1, so a supervisor or
    our launcher sees it): requests in flight get their error first."""
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    app.state.engine.on_death = lambda error: setattr(server, "should_exit", True)
    server.run()
    error = app.state.engine.error
    if error is not None:
        raise SystemExit(f"the engine loop died ({error!r}); the server stopped")
