"""Fixtures shared by every test tree: the real servers of this run, and the stack on them."""

pytest_plugins = [
    "tests.fixtures.alone",
    "tests.fixtures.threads",
    "tests.fixtures.logs",
    "tests.fixtures.scheduling",
    "tests.fixtures.servers",
    "tests.fixtures.stacks",
    "tests.fixtures.stack",
]
