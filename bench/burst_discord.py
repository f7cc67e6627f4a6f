"""A burst of image commands through Discord: 20 `/video image` with ~9.5 MB photos at once, while other members
ask `/quota` every ~50 ms. The real bot runs in this process; the fake Discord (with Discord's rate limits, its CDN
serving the attachments) and the Kling simulator run in a child process driven over a control API.

Run: `.venv/bin/python -m bench.burst_discord` (`--before`: also today's way, each in a fresh process, then the
ratio). Prints the bot's peak memory over idle, the `/quota` answers' p50/p99, and each image job's first answer,
card and "on its way" answer, in seconds from the burst.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import discord
from aiohttp import web
from PIL import Image

from bench.flood import KEY, fakes_process, percentile, running_bot, serve_control
from bot.media.images import FirstFrame, ImageRejected, check_first_frame
from bot.provider.simulator import KlingSimulator
from tests.fake_discord import FakeDiscord

ASKERS = 10


def noise_jpeg(megabytes: float) -> bytes:
    """A JPEG of random pixels of about `megabytes` (noise does not compress: ~1.2 bytes a pixel at quality 95)."""
    width = max(400, int(math.sqrt(megabytes * 1e6 / 1.2 * 1.5)))
    height = max(300, width * 2 // 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(out, "JPEG", quality=95)
    return out.getvalue()


# --- the child process: the fakes and their control API --------------------------------------------------------


async def serve_fakes() -> None:
    fake = FakeDiscord(rate_limits=True)
    for name in [f"member{n}" for n in range(100)] + [f"asker{n}" for n in range(ASKERS)]:
        fake.add_user(name)
    sim = KlingSimulator(api_key=KEY, endpoint_path="flood", render_seconds=10**9)
    sim.hold = True
    posted: dict[str, float] = {}  # message id -> when the fake stored it (a card: when the member sees it)
    store = fake._message

    def timed(*args: Any, **kwargs: Any) -> Any:
        message = store(*args, **kwargs)
        posted[message["id"]] = time.perf_counter()
        return message

    fake._message = timed  # type: ignore[method-assign]
    await fake.start()
    await sim.start()
    attachments: list[dict[str, Any]] = []

    async def prepare(request: web.Request) -> web.Response:
        body = await request.json()
        for n in range(body["images"]):
            data = await asyncio.to_thread(noise_jpeg, body["megabytes"])
            attachments.append(fake.add_attachment(f"photo{n}.jpg", data, "image/jpeg"))
        return web.json_response({"bytes": sum(a["size"] for a in attachments)})

    async def burst(request: web.Request) -> web.Response:
        sent = [
            await fake.slash("video", {"image": a, "prompt": f"burst {n}"}, sub="image", user=f"member{n}")
            for n, a in enumerate(attachments)
        ]
        return web.json_response({"ids": [i.id for i in sent], "t0": sent[0].sent_at})

    async def quota(request: web.Request) -> web.Response:
        sent = await fake.slash("quota", {}, user=(await request.json())["user"])
        return web.json_response({"id": sent.id})

    async def answers(request: web.Request) -> web.Response:
        ids = (await request.json())["ids"]
        found = {i: fake.interactions[i] for i in ids if i in fake.interactions}
        return web.json_response({n: (i.sent_at, i.first_answer_at, i.last_answer_at) for n, i in found.items()})

    async def cards(request: web.Request) -> web.Response:
        return web.json_response(posted)

    control = web.Application()
    for path, handler in (("/prepare", prepare), ("/burst", burst), ("/quota", quota), ("/answers", answers)):
        control.router.add_post(path, handler)
    control.router.add_post("/cards", cards)
    await serve_control(fake, sim, control)
    await sim.close()
    await fake.close()


# --- the measuring process: the bot ------------------------------------------------------------------------------


async def read_whole_attachment(attachment: discord.Attachment, images: Any) -> tuple[Any, str, str | None]:
    """Today's way (before the bounds): every attachment read whole at once and held in memory until sent."""
    from bot.core.jobs import InvalidRequest

    data = await attachment.read()
    try:
        frame = await check_first_frame(data)
    except ImageRejected as exc:
        raise InvalidRequest(str(exc)) from None
    return frame, attachment.filename, attachment.url if frame.converted_from is None else None


async def full_frame(frame: FirstFrame) -> bytes:
    """Today's card: the whole first frame, re-uploaded."""
    return frame.data


def reset_peak() -> int:
    """Make the resident high-water mark the current size (Linux); returns that size in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return kib("VmRSS")


def kib(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key + ":"))


async def measure(images: int, megabytes: float, quota_every: float, before: bool) -> dict[str, Any]:
    async with fakes_process(module="bench.burst_discord") as where, aiohttp.ClientSession() as control:

        async def call(path: str, **body: Any) -> Any:
            async with control.post(where["control"] + path, json=body) as response:
                return await response.json()

        await call("/prepare", images=images, megabytes=megabytes)
        with tempfile.TemporaryDirectory(prefix="burst-discord-") as folder:
            async with running_bot(where, Path(folder)) as bot:
                if before:  # the cogs module discord.py loaded (it replaces sys.modules' entry)
                    video = sys.modules["cogs.video"]
                    video.read_first_frame = read_whole_attachment  # type: ignore[attr-defined]
                    video.card_preview = full_frame  # type: ignore[attr-defined]
                await asyncio.sleep(1.0)  # idle: startup's requests are over
                idle = reset_peak()
                started = await call("/burst")
                ids: list[str] = started["ids"]
                quota_ids: list[str] = []

                async def ask() -> None:
                    n = 0
                    while True:
                        quota_ids.append((await call("/quota", user=f"asker{n % ASKERS}"))["id"])
                        n += 1
                        await asyncio.sleep(quota_every)

                asker = asyncio.create_task(ask())
                deadline = time.monotonic() + 60 + images * 3
                while time.monotonic() < deadline:
                    done = await call("/answers", ids=ids)
                    if len(done) == len(ids) and all(a[2] for a in done.values()):
                        break
                    await asyncio.sleep(0.25)
                asker.cancel()
                peak = kib("VmHWM")
                image_answers = await call("/answers", ids=ids)
                quota_answers = await call("/answers", ids=quota_ids)
                cards = await call("/cards")
                jobs = {j.request_key: j for j in await bot.resources.store.jobs_in(("submitted", "processing"))}
    t0 = started["t0"]
    per_job = []
    for n, interaction in enumerate(ids):
        _, first, last = image_answers.get(interaction, (t0, None, None))
        job = jobs.get(f"interaction:{interaction}")
        card = cards.get(str(job.message_id)) if job and job.message_id else None
        per_job.append([n, first and first - t0, card and card - t0, last and last - t0])
    waits = [(last - sent) * 1000 for sent, _, last in quota_answers.values() if last]
    return {
        "peak_mb": (peak - idle) / 1024,
        "quota_p50": percentile(waits, 0.50) if waits else float("nan"),
        "quota_p99": percentile(waits, 0.99) if waits else float("nan"),
        "quota_asked": len(quota_ids),
        "quota_answered": len(waits),
        "jobs": per_job,
        "submitted": len(jobs),
        "t0": t0,
    }


def show(label: str, result: dict[str, Any]) -> None:
    print(f"== {label} ==")
    print(f"jobs submitted: {result['submitted']} of {len(result['jobs'])}")
    print(f"memory (MB): peak RSS over idle {result['peak_mb']:.0f}")
    print(
        f"/quota final answer (ms): p50 {result['quota_p50']:.0f}, p99 {result['quota_p99']:.0f} "
        f"({result['quota_answered']} of {result['quota_asked']} answered)"
    )
    print("| job | first answer (s) | card (s) | on its way (s) |\n|---|---|---|---|")
    for n, first, card, last in result["jobs"]:
        cells = [f"{v:.2f}" if v is not None else "-" for v in (first, card, last)]
        print(f"| {n} | {' | '.join(cells)} |")


def summary(result: dict[str, Any]) -> dict[str, float]:
    def most(column: int) -> float:
        values = [row[column] for row in result["jobs"] if row[column] is not None]
        return max(values) if values else float("nan")

    return {
        "peak RSS over idle (MB)": result["peak_mb"],
        "/quota p50 (ms)": result["quota_p50"],
        "/quota p99 (ms)": result["quota_p99"],
        "last first answer (s)": most(1),
        "last card (s)": most(2),
        "last on-its-way answer (s)": most(3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--megabytes", type=float, default=9.5, help="size of each image")
    parser.add_argument("--quota-every", type=float, default=0.05, help="seconds between /quota commands")
    parser.add_argument("--before", action="store_true", help="also today's way first, then the ratio")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the fakes' child process
    parser.add_argument("--measure", choices=["before", "after"], help=argparse.SUPPRESS)  # one measuring process
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve_fakes())
        return
    sizes = [f"--images={args.images}", f"--megabytes={args.megabytes}", f"--quota-every={args.quota_every}"]
    if args.measure:
        result = asyncio.run(measure(args.images, args.megabytes, args.quota_every, args.measure == "before"))
        print(json.dumps(result))
        return
    print(f"{args.images} images of ~{args.megabytes} MB at once; /quota every {args.quota_every * 1000:.0f} ms")
    results = {}
    for mode in ["before", "after"] if args.before else ["after"]:
        # Each in a fresh process: memory one run freed is not the next one's idle.
        done = subprocess_run([sys.executable, "-m", "bench.burst_discord", f"--measure={mode}", *sizes])
        results[mode] = json.loads(done.splitlines()[-1])
        show("today's way (whole attachments in memory, full frame on every card)" if mode == "before" else
             "bounded downloads, frames in files, preview cards", results[mode])  # fmt: skip
    if args.before:
        before, after = summary(results["before"]), summary(results["after"])
        print("| measure | before | after | after / before |\n|---|---|---|---|")
        for measure_name, old in before.items():
            new = after[measure_name]
            print(f"| {measure_name} | {old:.2f} | {new:.2f} | {new / old if old else float('nan'):.2f} |")


def subprocess_run(command: list[str]) -> str:
    import subprocess

    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


if __name__ == "__main__":
    main()
