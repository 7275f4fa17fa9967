# The control-plane image (compose.dev.yml): redis-server from the base, and the whole swiftdeploy
# package (client and the four services) installed from the wheelhouse into /opt/venv.
ARG BASE_IMAGE=swiftdeploy/base:latest
FROM ${BASE_IMAGE}

COPY wheels /tmp/wheels
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
      --find-links /tmp/wheels -r /tmp/wheels/requirements.txt \
 && rm -rf /tmp/wheels \
 && /opt/venv/bin/python -c "import swiftdeploy_core, services, workload" \
 && redis-server --version

ENV PATH=/opt/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /srv/swiftdeploy
CMD ["swiftdeploy", "--help"]
