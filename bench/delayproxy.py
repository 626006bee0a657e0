"""A TCP proxy that adds a fixed delay to each direction: internet latency on loopback.

The kernel here has no netem (NOTES.md), so latency is modelled in user space. Every chunk
read from one side is written to the other `delay` seconds after it arrived, in order;
an end of stream is passed on the same way. Both legs set TCP_NODELAY, so the proxy adds
no Nagle or delayed-ACK stalls of its own. An added round-trip time of R is a delay of
R/2 each way.

Only data is delayed, not the TCP handshake itself (the client's connect() completes at
the proxy), so opening a connection costs about 1.5 round trips less than on a real link;
that is the same for every client measured through it.

Use it from a benchmark (`with DelayProxy(upstream, delay) as proxy: ... proxy.port`,
running its own event loop in a thread) or on its own:

    python bench/delayproxy.py --upstream 127.0.0.1:10587 --rtt-ms 20 [--listen 127.0.0.1:0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import threading
from types import TracebackType

CHUNK = 65536


class DelayProxy:
    """Listen on 127.0.0.1 and forward each connection to `upstream`, `delay` s each way."""

    def __init__(self, upstream: tuple[str, int], delay: float, host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.delay = delay
        self.host = host
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the thread's side -----------------------------------------------------------

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        for w in (writer, up_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except asyncio.CancelledError:
            pass  # stop(): end quietly (a cancelled connection task is logged as an error)
        finally:
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy reader to writer, each chunk `delay` after it arrived; order is kept."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def receive() -> None:
            while True:
                try:
                    data = await reader.read(CHUNK)
                except OSError:
                    data = b""
                await queue.put((loop.time() + self.delay, data))
                if not data:
                    return

        receiver = asyncio.ensure_future(receive())
        try:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    with contextlib.suppress(OSError):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return
                writer.write(data)
                try:
                    await writer.drain()
                except OSError:
                    return
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await receiver

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- the caller's side -----------------------------------------------------------

    def start(self) -> DelayProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=_hostport, required=True, metavar="HOST:PORT")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="added round trip, default 20")
    parser.add_argument("--listen", type=_hostport, default=("127.0.0.1", 0), metavar="HOST:PORT")
    options = parser.parse_args()
    proxy = DelayProxy(options.upstream, options.rtt_ms / 2000, options.listen[0])

    async def serve() -> None:
        server = await asyncio.start_server(proxy._client, *options.listen)
        port = server.sockets[0].getsockname()[1]
        print(f"{options.listen[0]}:{port} -> {options.upstream[0]}:{options.upstream[1]},"
              f" +{options.rtt_ms:g} ms round trip", flush=True)  # fmt: skip
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
