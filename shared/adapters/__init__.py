"""Adapters: the ports implemented twice, on Azure SDKs (`azure/`) and in memory (`memory/`).

Rule: both implementations of a port pass the same contract suite (tests/contract).
"""
