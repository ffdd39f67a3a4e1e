"""The ports in memory, with the same semantics as Azure (ETags, conflicts, paging, delayed visibility).

Used by the service tests and by the fault-injection harness; never by the deployed app.
"""
