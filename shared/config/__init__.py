"""Configuration: app settings and the whole `evergreen.yaml` schema, parsed once into frozen objects.

Rule: pure validation (pydantic), no I/O beyond reading the policy file; every problem is reported
at once, each with its path, in one `ConfigurationError`.
"""
