"""A flood of callbacks naming random task ids, from a process of its own (so it never shares the bot's loop).

    python -m tests.flooder URL [--connections 4] [--source 127.0.0.2] [--shape digits|garbage]

It posts callbacks over a few kept-alive connections, as fast as the endpoint answers, from the source address
(any 127.x address reaches a server on 127.0.0.1 on Linux, so a test can tell the flood from the provider). It
prints `answered N` every 500 answers, and when its stdin closes, one JSON line: the answers by HTTP status.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys

import aiohttp


def random_body(shape: str, rng: random.Random) -> bytes:
    """A callback for a task that does not exist: plausible digits (as the provider's ids), or garbage."""
    if shape == "digits":
        task_id = str(rng.randrange(10**17, 10**18))
    else:
        task_id = "".join(rng.choice("<>'\"; %$/\\\u00e9") for _ in range(rng.randrange(1, 300)))
    return json.dumps({"task_id": task_id, "task_status": "succeed"}).encode()


async def flood(url: str, connections: int, source: str, shape: str, stop: asyncio.Event) -> collections.Counter[int]:
    """Post random callbacks from `connections` workers until `stop` is set; the answers by status."""
    answers: collections.Counter[int] = collections.Counter()
    rng = random.Random(7)
    connector = aiohttp.TCPConnector(limit=connections, local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while not stop.is_set():
                try:
                    async with session.post(url, data=random_body(shape, rng)) as answer:
                        await answer.read()
                        answers[answer.status] += 1
                except aiohttp.ClientError:
                    answers[0] += 1
                    await asyncio.sleep(0.01)
                if sum(answers.values()) % 500 == 0:
                    print(f"answered {sum(answers.values())}", flush=True)

        await asyncio.gather(*(worker() for _ in range(connections)))
    return answers


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--source", default="127.0.0.2")
    parser.add_argument("--shape", choices=("digits", "garbage"), default="digits")
    args = parser.parse_args()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    flooding = loop.create_task(flood(args.url, args.connections, args.source, args.shape, stop))
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    stop.set()
    answers = await flooding
    print(json.dumps({str(status): count for status, count in answers.items()}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
