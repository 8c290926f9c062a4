# One image for every process of the platform (docker-compose.yml): the gRPC code server
# (user code; it also runs the run workers), dagster-webserver, dagster-daemon, the read API
# (etl-platform serve), the one-shot init step and Celery workers (deploy/compose.celery.yaml).
# The command picks the process.
#
#   docker build -t etl-platform:latest .
#   docker build --build-arg ETL_EXTRAS=k8s -t REGISTRY/etl-platform:TAG .   (Kubernetes: deploy/helm)
#
# Python matches the version the platform is tested on (3.11).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    ETL_TENANTS_FILE=/opt/dagster/app/tenants.yaml

RUN groupadd --system --gid 10001 etl \
    && useradd --system --uid 10001 --gid etl --create-home --home-dir /home/etl \
       --shell /usr/sbin/nologin etl

WORKDIR /opt/dagster/app

# Dependencies alone, from pyproject.toml: this layer is rebuilt only when pyproject.toml
# changes, not when the platform's code does. Every dependency ships manylinux wheels for
# Python 3.11 (psycopg[binary], psycopg2-binary, duckdb, pyarrow, grpcio): no compiler needed.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; open('/tmp/requirements.txt', 'w').write(chr(10).join(p['dependencies']) + chr(10))" \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
# ETL_EXTRAS adds optional dependencies in a layer of their own (so images with and without
# them share the one above): `--build-arg ETL_EXTRAS=k8s` for Kubernetes (dagster-k8s).
ARG ETL_EXTRAS=""
RUN python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; deps = [d for e in os.environ['ETL_EXTRAS'].split(',') if e for d in p['optional-dependencies'][e]]; open('/tmp/requirements.txt', 'w').write(''.join(d + chr(10) for d in deps))" \
    && if [ -s /tmp/requirements.txt ]; then pip install --no-cache-dir -r /tmp/requirements.txt; fi \
    && rm /tmp/requirements.txt

# The platform (editable, so that the tenants file's relative paths, e.g. the demo's
# etl_platform/samples/*, resolve next to /opt/dagster/app/tenants.yaml), the default tenants
# file and the deployment files; the production instance config becomes $DAGSTER_HOME's.
COPY README.md* setup.cfg ./
COPY etl_platform ./etl_platform
COPY tenants.yaml ./
COPY deploy ./deploy
RUN pip install --no-cache-dir --no-deps -e . \
    && mkdir -p "$DAGSTER_HOME/storage" "$DAGSTER_HOME/data" \
    && cp deploy/dagster.yaml "$DAGSTER_HOME/dagster.yaml" \
    && chown -R etl:etl "$DAGSTER_HOME"

USER 10001:10001

# 4000 gRPC code server, 3000 dagster-webserver, 8000 read API
EXPOSE 3000 4000 8000

# ETL_ROLE (code-server | webserver | daemon | api | init) says what to check; without it the
# running process is recognised from its command line. See deploy/healthcheck.py.
HEALTHCHECK --interval=30s --timeout=30s --start-period=120s --retries=3 \
    CMD ["python", "/opt/dagster/app/deploy/healthcheck.py"]

CMD ["etl-platform", "--help"]
