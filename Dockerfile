# A small image that runs the bot as a non-root user, with the SQLite database on a volume (or DATABASE_URL set to
# a PostgreSQL server: its driver is installed).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DATABASE_PATH=/data/bot.sqlite3

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
RUN pip install '.[postgres]' && useradd --create-home --uid 10001 bot && mkdir /data && chown bot:bot /data

USER bot
VOLUME ["/data"]
# Only used when set: CALLBACK_PORT (the provider's callbacks) and METRICS_PORT (Prometheus).
EXPOSE 8090 9100
# `docker stop` sends SIGTERM: the bot finishes its tick, closes the database and exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "bot"]
CMD ["run"]
