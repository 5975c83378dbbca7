"""Random bytes, random YAML text and random documents given to the loader: it returns a spec
or raises SpecErrors, never anything else, within time and memory bounds."""

from __future__ import annotations

import tracemalloc
from datetime import timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitops_nodes.spec.errors import SpecErrors
from gitops_nodes.spec.load import load_spec
from gitops_nodes.spec.state import DesiredState

MEMORY = 64 * 2**20  # bytes one load of these small inputs may allocate at its peak
FUZZ = settings(
    max_examples=100,
    deadline=timedelta(seconds=3),
    suppress_health_check=[HealthCheck.too_slow],
)

# The characters YAML gives meaning to, so random text reaches the parser's corners.
YAML_TEXT = st.text(
    alphabet=st.sampled_from(list("[]{}:-,&*!|>'\"#%@`?<~.0123456789 \n\tabcxyz_=+\\\x00\x85é")),
    max_size=400,
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(["no", "on", "0755", "12:30", "1.10", "0x1F", "<<", "~", ".inf", "Node"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
NODE_FIELDS = st.fixed_dictionaries(
    {
        "apiVersion": st.sampled_from(["gitops-nodes/v1", "gitops-nodes/v2", "v1"]),
        "kind": st.sampled_from(["Node", "Alias", "Nod"]),
        "metadata": st.fixed_dictionaries({"name": st.one_of(st.text(max_size=10), VALUES)}),
        "spec": st.dictionaries(
            st.sampled_from(
                ["image", "instances", "env", "resources", "healthCheck", "nodes", "python"]
            ),
            VALUES,
            max_size=4,
        ),
    }
)


def _load_bounded(data: bytes) -> DesiredState | SpecErrors:
    with TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "spec.yaml").write_bytes(data)
        tracemalloc.start()
        try:
            return load_spec(root)
        except SpecErrors as exc:  # the one error type a load may raise
            return exc
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert peak < MEMORY, f"a load of {len(data)} bytes peaked at {peak} bytes"


def _dump(documents: list[Any]) -> bytes:
    return yaml.safe_dump_all(documents, allow_unicode=True).encode()


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes_load_or_raise_spec_errors(data: bytes) -> None:
    assert isinstance(_load_bounded(data), DesiredState | SpecErrors)


@FUZZ
@given(YAML_TEXT)
def test_random_yaml_text_loads_or_raises_spec_errors(text: str) -> None:
    assert isinstance(_load_bounded(text.encode()), DesiredState | SpecErrors)


@FUZZ
@given(st.lists(st.one_of(NODE_FIELDS, VALUES), min_size=1, max_size=4))
def test_random_documents_load_or_raise_spec_errors(documents: list[Any]) -> None:
    assert isinstance(_load_bounded(_dump(documents)), DesiredState | SpecErrors)
