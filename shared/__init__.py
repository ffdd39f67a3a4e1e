"""Evergreen's domain: typed events, policies, decisions, and the adapters that execute them."""
