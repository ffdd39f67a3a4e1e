"""Services: the executors of each flow. They gather facts through ports, ask a pure plan, act.

Rule: they take only ports (`shared.ports`), never an Azure SDK client (tests/test_layers.py).
"""
