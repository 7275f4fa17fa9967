# The stand-in OPA image for tests (no OPA image can be pulled here): the control-plane image, whose
# venv already holds regopy, aiohttp and the policies' engine, plus tests/opa_api.py and the
# stand-in `opa` executable (tests/bin/opa) as the entrypoint, so it runs with OPA's own arguments:
#   docker run swiftdeploy/opa-standin run --server --addr=0.0.0.0:8181 --watch /policies
ARG BASE_IMAGE=swiftdeploy/controlplane:latest
FROM ${BASE_IMAGE}

COPY standin /opt/opa-standin
RUN python /opt/opa-standin/tests/bin/opa version
USER nobody
ENTRYPOINT ["python", "/opt/opa-standin/tests/bin/opa"]
CMD ["run", "--server", "--addr=0.0.0.0:8181", "/policies"]
