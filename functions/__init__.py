"""Trigger blueprints: bind, parse into a typed event, call `shared`, return. No SDK calls here."""
