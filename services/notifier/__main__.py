"""`python -m services.notifier`: run one notifier replica until SIGTERM/SIGINT."""

from services.notifier.service import build_spec
from swiftdeploy_core.bus.runner import run
from swiftdeploy_core.settings import Settings

if __name__ == "__main__":
    settings = Settings()
    run(build_spec(settings), settings)
