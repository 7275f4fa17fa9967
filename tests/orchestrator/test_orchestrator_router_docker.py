"""Router measurement on the docker runtime: nginx in its container writes its access log into a
host folder bind-mounted on /var/log/nginx, and the collector (a host process) tails it.

A canary is judged on those figures only: router chaos makes nginx itself fail half the canary's
requests (the service's /chaos is never called), and the canary is rolled back automatically.
"""

from __future__ import annotations

import pytest

from swiftdeploy_core.project.router import router_access_log
from tests.orchestration import LoadLoop

pytestmark = pytest.mark.docker
COLLECTOR = {"interval": 0.5, "window": 4}
MANIFEST: dict = {}  # filled with the built images' tags by `docker_images`
CANARY = {"version": "2.0.0", "steps": [50], "interval": 1.0, "failure_limit": 2}


@pytest.fixture(autouse=True)
def docker_images(request: pytest.FixtureRequest, docker_daemon: str, workload_image: str, nginx_image: str) -> None:
    request.module.MANIFEST = {
        "runtime": "docker",
        "services": {"image": workload_image, "metrics": "router"},
        "nginx": {"image": nginx_image},
        "canary": {**CANARY, "image": workload_image},
    }


async def test_router_figures_from_the_containers_log_roll_a_failing_canary_back(stack):
    assert (await stack.sd("deploy")).code == 0
    async with LoadLoop(await stack.url(), rate=50) as load:
        assert (await stack.sd("promote", "canary")).code == 0
        await stack.phase("canary_complete", timeout=60)  # healthy router figures first
        log = router_access_log(stack.driver_manifest(), stack.root)
        assert '"track":"canary","kind":"app"' in log.read_text()  # written by nginx in its container
        back, elapsed = await stack.rolled_back_after("error", "--rate", "0.5", "--router", timeout=30)
    print(f"docker: rolled back {elapsed:.1f}s after router chaos; reasons {back.last_reasons}")
    assert back.canary is None and back.stable.version == "1.0.0"
    assert "error rate" in " ".join(back.last_reasons)
    assert load.statuses[500] > 0
