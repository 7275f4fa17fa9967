from pathlib import Path

from swiftdeploy_core.project.manifest import load_manifest

REPO = Path(__file__).resolve().parents[2]


def test_the_originals_manifest_is_valid_as_it_is():
    loaded = load_manifest(REPO / "manifest.yaml")
    assert loaded.manifest.services.name == "app"
    assert loaded.manifest.nginx.port == 8080
    assert loaded.manifest.runtime.value == "docker"
