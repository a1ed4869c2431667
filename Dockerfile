# clickwatch: the capturing proxy (8080) and the dashboard, API and /metrics (8000) in one process, with its
# store process (python -m clickwatch.store.worker) as a child; SIGTERM (docker stop) lets both write everything first.
#
#   docker build -t clickwatch .
#   docker run -e CLICKWATCH_TOKEN=... -p 127.0.0.1:8080:8080 -p 127.0.0.1:8000:8000 \
#     -v clickwatch-data:/data -v clickwatch-ca:/home/clickwatch/.mitmproxy clickwatch
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN groupadd --system --gid 10001 clickwatch \
 && useradd --system --uid 10001 --gid clickwatch --home-dir /home/clickwatch --create-home \
      --shell /usr/sbin/nologin clickwatch

# The pinned versions of requirements.lock, the project itself, no development extras.
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY clickwatch/__init__.py clickwatch/
COPY addon/ addon/
COPY cli/ cli/
COPY core/ core/
COPY dashboard/ dashboard/
COPY standin/ standin/
COPY store/ store/
RUN pip install -c requirements.lock . \
 && rm -rf /src

# Created here, owned by the user, before VOLUME: new named volumes start with this ownership.
RUN mkdir -p /data /home/clickwatch/.mitmproxy \
 && chown clickwatch:clickwatch /data /home/clickwatch/.mitmproxy

USER clickwatch
ENV HOME=/home/clickwatch
WORKDIR /data
# The SQLite store, and mitmproxy's CA (created on first start): browsers keep trusting it across upgrades.
VOLUME ["/data", "/home/clickwatch/.mitmproxy"]
EXPOSE 8080 8000

# /healthz needs no token: 200 once the store can be read. The slim image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8000/healthz', timeout=4)"]

# Beyond loopback the token is required: CLICKWATCH_TOKEN from the environment (docker run -e, compose).
CMD ["clickwatch", "up", "--listen-host", "0.0.0.0", "--db", "/data/clickwatch.db"]
