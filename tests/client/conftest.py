"""The API tests' fixtures: real ``vesper serve`` processes."""

from tests.api.conftest import start_node  # noqa: F401 - fixture
