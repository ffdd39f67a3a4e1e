"""Evergreen's local stack: Azurite, an Azure ML emulator, a local Event Grid and a Functions host."""
