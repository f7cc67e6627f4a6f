"""The command line: `python -m bot [run|check|generate|simulate|sync|backup|web]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from bot.config import ConfigError, Settings, load_settings
from bot.core.jobs import InvalidRequest, JobRequest, JobService, SubmitRefused
from bot.core.model import HOLDING_A_SLOT
from bot.core.options import OPTIONS, with_defaults
from bot.media.downloads import MAX_VIDEO_BYTES, DownloadFailed, VideoTooLarge, download_video
from bot.media.images import ImageRejected, prepare_first_frame
from bot.resources import open_resources
from bot.storage.sqlite import Store, StoreUnavailable

log = logging.getLogger("bot")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def setup_logging(level: str = "INFO") -> None:
    """One place that decides how the bot logs: timestamped lines on stderr."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr, force=True
    )
    logging.getLogger("discord").setLevel(max(logging.INFO, logging.getLevelName(level)))


def build_parser() -> argparse.ArgumentParser:
    """The command line's grammar."""
    parser = argparse.ArgumentParser(prog="python -m bot", description="Kling video bot for Discord.")
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="start the bot (the default)")
    run.add_argument("--shard-ids", help="the Discord shards this process runs: 0-3 or 0,2 (SHARD_IDS)")
    run.add_argument("--shard-count", type=int, help="how many shards the bot has in all (SHARD_COUNT)")
    commands.add_parser("check", help="validate the settings and make one authenticated call to the API")
    commands.add_parser("web", help="serve the moderators' dashboard alone, beside a PostgreSQL fleet (WEB_PORT)")
    commands.add_parser("sync", help="register the slash commands (in DISCORD_GUILD_ID if set, else globally)")
    migrate = commands.add_parser("migrate-to", help="copy the SQLite database (DATABASE_PATH) into PostgreSQL")
    migrate.add_argument("url", help="postgresql://user:password@host/database (an empty database)")
    backup = commands.add_parser("backup", help="take a consistent copy of the database while the bot runs")
    backup.add_argument("file", type=Path)
    generate = commands.add_parser("generate", help="make one video without Discord")
    generate.add_argument("--prompt", default="", help="what the video shows")
    generate.add_argument("--image", help="first frame: a file path or an http(s) URL")
    for opt in OPTIONS:  # a value outside the declaration is refused by the intake, in its words
        generate.add_argument("--" + opt.name.replace("_", "-"), type=type(opt.allowed[0]), help=opt.help)
    generate.add_argument("--out", type=Path, required=True, help="where to write the mp4")
    simulate = commands.add_parser("simulate", help="run a local Kling API simulator (no key, no cost)")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=8765)
    simulate.add_argument("--api-key", default="sim-key")
    simulate.add_argument("--endpoint-path", default="sim")
    simulate.add_argument("--render-seconds", type=float, default=8.0)
    simulate.add_argument("--model", default="kling-3.0-turbo", help="the model at the submit paths (KLING_MODEL)")
    simulate.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE", help="a gateway variant")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bot` and the `kling-bot` script."""
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    if command == "simulate":
        from bot.provider.simulator import run_forever

        setup_logging()
        return _run(
            run_forever(
                args.host, args.port, args.api_key, args.endpoint_path, args.render_seconds, args.variant, args.model
            )
        )
    # The flags take the place of SHARD_IDS / SHARD_COUNT from the environment.
    shards = {"shard_ids": getattr(args, "shard_ids", None), "shard_count": getattr(args, "shard_count", None)}
    try:
        settings = load_settings(**{k: v for k, v in shards.items() if v is not None})
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(settings.log_level)
    if command == "check":
        return _run(check(settings), settings.database_setting)
    if command == "generate":
        return _run(generate(settings, args), settings.database_setting)
    if command == "migrate-to":
        return _run(migrate_to(settings, args.url), "the target database")
    if command == "backup":
        return _run(backup(settings, args.file), settings.database_setting)
    if command == "web":
        from bot.web.hosting import serve_alone

        try:
            return _run(serve_alone(settings), settings.database_setting)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    from bot import app  # Discord is only imported by the commands that need it

    try:
        settings.shard_plan()  # checked before anything opens
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if command == "sync":
        return _run(app.sync_commands(settings), settings.database_setting)
    return _run(app.run_bot(settings), settings.database_setting)


def _run(coroutine: Coroutine[Any, Any, int], database_setting: str = "DATABASE_PATH") -> int:
    try:
        result = asyncio.run(coroutine)
    except KeyboardInterrupt:
        return 130
    except StoreUnavailable as exc:
        print(f"error: {database_setting}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return result


async def check(settings: Settings) -> int:
    """The preflight: one line per check on stdout, the blocking ones again on stderr; exit 1 if any blocks."""
    from bot.ops.preflight import preflight  # imported here to keep this command's dependencies out of the others

    items = await preflight(settings)
    for item in items:
        print(item.line())
    blocking = [item for item in items if item.status == "fail"]
    for item in blocking:
        print(f"error: {item.name}: {item.detail}", file=sys.stderr)
    return EXIT_FAILED if blocking else EXIT_OK


async def migrate_to(settings: Settings, url: str) -> int:
    """Copy the SQLite database into an empty PostgreSQL one; then set DATABASE_URL and start the bot on it."""
    from bot.storage.interface import is_postgres

    if not is_postgres(url):
        print("error: migrate-to takes a postgresql:// URL", file=sys.stderr)
        return EXIT_USAGE
    from bot.storage.postgres import PgStore

    # The bot's own lock on the SQLite file, held until the copy ends: no bot may start on it and write meanwhile.
    source = await Store.open(settings.database_path, single_instance=True)
    try:
        target = await PgStore.open(url)
        try:
            copied = await target.copy_from_sqlite(settings.database_path)
        finally:
            await target.close()
    finally:
        await source.close()
    rows = ", ".join(f"{count} {table}" for table, count in copied.items())
    print(f"ok: copied {settings.database_path} into PostgreSQL ({rows}); now set DATABASE_URL and start the bot")
    return EXIT_OK


async def backup(settings: Settings, target: Path) -> int:
    """Copy the database consistently, even while the bot writes to it."""
    async with open_resources(settings) as resources:
        await resources.store.backup(target)
    print(f"ok: database copied to {target}")
    return EXIT_OK


def _request_from_args(settings: Settings, args: argparse.Namespace) -> JobRequest:
    """Turn the options into a validated request; raises InvalidRequest before anything is sent."""
    image = image_url = None
    if args.image:
        if args.image.startswith(("http://", "https://")):
            image_url = args.image
        else:
            path = Path(args.image)
            if not path.is_file():
                raise InvalidRequest(f"No image file at {path}.")
            try:
                image = prepare_first_frame(path.read_bytes())
            except ImageRejected as exc:
                raise InvalidRequest(str(exc)) from None
    request = JobRequest(
        kind="image" if args.image else "text",
        prompt=args.prompt,
        **with_defaults({opt.name: getattr(args, opt.name) for opt in OPTIONS}, settings),
        image=image,
        image_url=image_url,
        image_source=args.image,
    )
    JobService.validate(request)
    return request


async def generate(settings: Settings, args: argparse.Namespace) -> int:
    """One job through JobService, polled until it ends, the video written to --out."""
    try:
        request = _request_from_args(settings, args)
    except InvalidRequest as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    async with open_resources(settings, origin="cli") as resources:
        try:
            job = await resources.jobs.create(request)
        except SubmitRefused as exc:
            print(f"error: job {exc.job.id} refused: {exc.reason} ({exc.error})", file=sys.stderr)
            return EXIT_FAILED
        started = time.monotonic()
        while job.status in HOLDING_A_SLOT:
            print(f"job {job.id}: {job.status}, {time.monotonic() - started:.0f}s elapsed", file=sys.stderr)
            await asyncio.sleep(settings.poll_interval_seconds)
            await resources.jobs.poll_once()
            current = await resources.store.get_job(job.id)
            assert current is not None
            job = current
        if job.status != "succeeded" or job.video_url is None:
            print(f"error: job {job.id} {job.status}: {job.error}", file=sys.stderr)
            return EXIT_FAILED
        try:
            size = await download_video(resources.session, job.video_url, args.out, max_bytes=MAX_VIDEO_BYTES)
        except (DownloadFailed, VideoTooLarge) as exc:
            await resources.jobs.mark_undeliverable(job.id, str(exc))
            print(f"error: job {job.id}: {exc}; the link was {job.video_url}", file=sys.stderr)
            return EXIT_FAILED
        await resources.jobs.mark_delivered(job.id)
    print(f"ok: job {job.id} wrote {size} bytes to {args.out} in {time.monotonic() - started:.0f}s")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
