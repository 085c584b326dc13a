#!/usr/bin/env python3
"""Loopback TCP proxy that a benchmark can cut, pause and heal, to fake a network fault between
one node and its NATS engine.

    bench/tcp_proxy.py LISTEN_PORT TARGET_PORT    # prints "ready" once it accepts connections

Signals (send them by PID):
  SIGUSR1  cut: close every connection and stop listening, so new connects are refused
           (what a node sees when its link goes down hard);
  SIGHUP   pause: keep connections open but forward nothing (a silent link: only the
           node's pings notice it);
  SIGUSR2  heal: listen again and forward again.
SIGTERM stops it.
"""
import asyncio
import signal
import sys

HOST = "127.0.0.1"


class Proxy:
    def __init__(self, listen_port, target_port):
        self.listen_port, self.target_port = listen_port, target_port
        self.server = None
        self.writers = set()
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def listen(self):
        if self.server is None:
            # start_server sets SO_REUSEADDR, so the port can be bound again right after a cut.
            self.server = await asyncio.start_server(self.accept, HOST, self.listen_port)

    async def accept(self, c_reader, c_writer):
        try:
            u_reader, u_writer = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            c_writer.close()
            return
        self.writers |= {c_writer, u_writer}
        try:
            await asyncio.gather(self.pump(c_reader, u_writer), self.pump(u_reader, c_writer))
        except asyncio.CancelledError:
            pass  # shutting down
        for w in (c_writer, u_writer):
            self.writers.discard(w)
            w.close()

    async def pump(self, reader, writer):
        try:
            while data := await reader.read(65536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def cut(self):
        if self.server is not None:
            self.server.close()
            self.server = None
        for w in list(self.writers):
            # abort(): a reset, not a polite FIN after buffered data.
            w.transport.abort()
        self.writers.clear()
        self.flowing.set()

    def pause(self):
        self.flowing.clear()

    def heal(self):
        self.flowing.set()
        asyncio.get_running_loop().create_task(self.listen())


async def main():
    proxy = Proxy(int(sys.argv[1]), int(sys.argv[2]))
    await proxy.listen()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, proxy.cut)
    loop.add_signal_handler(signal.SIGHUP, proxy.pause)
    loop.add_signal_handler(signal.SIGUSR2, proxy.heal)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
