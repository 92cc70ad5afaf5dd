# The slorouter image: the router (`slorouter serve`) and the simulated engines
# (`slorouter sim`). Used by docker-compose.yml; the config is mounted at /config.
# Core dependencies only: the load generator's plots are the `plots` extra
# (`pip install ".[plots]"`), the tests' openai client is in `dev`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY slorouter ./slorouter
COPY loadgen ./loadgen
COPY slojudge ./slojudge
RUN pip install . && useradd --create-home --uid 10001 slorouter
USER slorouter
EXPOSE 8080
CMD ["slorouter", "serve", "--config", "/config/compose.yaml"]
