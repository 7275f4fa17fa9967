"""Whatever a manifest file holds, the loader answers with a manifest or one `ManifestError` line."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swiftdeploy_core.errors import ManifestError
from swiftdeploy_core.project.manifest import Manifest, parse_manifest_text, validate_manifest
from tests.servers import REPO_ROOT

ORIGINAL = (REPO_ROOT / "manifest.yaml").read_bytes()
KNOWN_KEYS = sorted(
    {name for model in (Manifest, *(f.annotation for f in Manifest.model_fields.values())) if isinstance(model, type)
     and hasattr(model, "model_fields") for name in model.model_fields}
)  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["stable", "canary", "docker", "process", "bridge", "embedded", "opa", "http://x", "1.0.0"]),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=10), st.integers(), st.booleans())
documents = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=8)),
    max_leaves=40,
)


def load(raw: bytes) -> None:
    """The loader's whole path after reading the file; only ManifestError may escape."""
    try:
        validate_manifest(parse_manifest_text(raw))
    except ManifestError as exc:
        message = str(exc)
        assert message and "\n" not in message and len(message) < 1000, message


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_random_documents_never_crash_the_loader(document):
    load(yaml.safe_dump(document, allow_unicode=True).encode())


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(KNOWN_KEYS), documents, max_size=6))
def test_random_sections_with_known_names_never_crash_the_loader(sections):
    load(yaml.safe_dump(sections, allow_unicode=True).encode())


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_random_edits_of_the_original_never_crash_the_loader(data):
    raw = bytearray(ORIGINAL)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw)))
        if data.draw(st.booleans()) and at < len(raw):
            del raw[at : at + data.draw(st.integers(1, 8))]
        else:
            raw[at:at] = data.draw(
                st.binary(min_size=1, max_size=6) | st.sampled_from([b":", b"- ", b"\t", b"{", b"&a", b"*a", b"!!"])
            )
    load(bytes(raw))


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_random_bytes_never_crash_the_loader(raw):
    load(raw)


SECTIONS = {
    name: sorted(field.annotation.model_fields)
    for name, field in Manifest.model_fields.items()
    if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields")
}


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_one_random_value_in_a_valid_manifest_never_crashes_the_loader(data):
    document = yaml.safe_load(ORIGINAL)
    section = data.draw(st.sampled_from(sorted(SECTIONS)))
    field = data.draw(st.sampled_from(SECTIONS[section]))
    document.setdefault(section, {})[field] = data.draw(documents)
    load(yaml.safe_dump(document, allow_unicode=True).encode())
