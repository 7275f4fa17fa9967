# The control-plane image (compose.dev.yml): redis-server from the base, and the whole swiftdeploy
# package (client and the four services) in /opt/venv. Dependencies and the project are separate
# layers, so a change to the project's sources rebuilds only the last one.
ARG BASE_IMAGE=swiftdeploy/base:latest
FROM ${BASE_IMAGE}

COPY wheels /tmp/wheels
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
      --find-links /tmp/wheels -r /tmp/wheels/requirements.txt \
 && rm -rf /tmp/wheels
COPY project /tmp/project
RUN /opt/venv/bin/pip install --no-index --no-deps --no-cache-dir --disable-pip-version-check /tmp/project/*.whl \
 && rm -rf /tmp/project \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/python -c "import swiftdeploy_core, services, workload" \
 && redis-server --version

ENV PATH=/opt/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /srv/swiftdeploy
CMD ["swiftdeploy", "--help"]
