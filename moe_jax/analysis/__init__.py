"""Routing analysis: record what the routers did, then measure it.

trace.py records and stores routing traces; routing.py, dynamics.py and
drops.py compute statistics of a trace as plain arrays; capacity.py is the
eval-capacity counterfactual of a checkpoint; plots.py draws all of them.
"""
