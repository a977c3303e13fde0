"""Helpers shared by the test suites (imported as `tests.support.*`; pytest runs with `pythonpath = .`)."""
