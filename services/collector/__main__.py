"""`python -m services.collector`: run one collector replica until SIGTERM/SIGINT."""

from services.collector.service import build_spec
from swiftdeploy_core.bus.runner import run
from swiftdeploy_core.settings import Settings

if __name__ == "__main__":
    settings = Settings()
    run(build_spec(settings), settings)
